"""Few-shot evaluation as the CLAP authors' ``eval_fewshots.py``: leave one domain out, a linear probe on CLIP vs CLAP features.

For each held-out domain and shot count k: k images per class are drawn from every *other* domain
(the authors' ``gen_fewshot_dset.py``: k per class and domain, fewer if a class has fewer), the
probe of :mod:`clap_edge.core.probe` is fitted on their L2-normalised features, and it classifies
every test image of the held-out domain. CLIP features are the frozen model's; CLAP features are
the same features through a head at alpha. Both see the *same* shots in every draw, so their
difference is paired. Shots come from the ``val/`` split when the dataset has one (else from
``test/``, still never the held-out domain's images).

Draws: each (k, draw, domain, class) has its own seeded stream, so the shots of a domain do not
depend on which domain is held out; draw r fits the probe with seed ``probe.seed + r``. An image's
score is the share of draws that classify it right; CIs are paired bootstraps over the test
images of those scores (they cover image sampling; the per-draw top-1s show the spread of draws).
Shots are ordered class by class, domain by domain, file by file: the order ``clap-edge adapt``
reads a ``DIR/<class>/<domain>__<file>`` folder in, so the device path can repeat a draw exactly.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from clap_edge.core.datasets import find_splits, scan_domains
from clap_edge.core.errors import ClapEdgeError
from clap_edge.core.metrics import Top1, paired_bootstrap, paired_difference_ci
from clap_edge.core.probe import Probe, ProbeConfig, fit_probe, l2_normalize
from clap_edge.core.progress import Progress, or_silent
from clap_edge.head import CLAPHead
from clap_edge.models import LoadedModel

CLIP_KEY = "clip"
DEFAULT_SHOTS = (1, 2, 4, 8, 16)


@dataclass
class FewShotConfig:
    shots: tuple[int, ...] = DEFAULT_SHOTS
    draws: int = 3
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    alpha: float | None = None  # CLAP features at this alpha; None: each head's own alpha
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.shots or min(self.shots) < 1:
            raise ClapEdgeError(f"few-shot counts must be >= 1, got {list(self.shots)}")
        if self.draws < 1:
            raise ClapEdgeError(f"few-shot draws must be >= 1, got {self.draws}")

    def draw_probe(self, draw: int) -> ProbeConfig:
        """Draw r fits with seed ``probe.seed + r`` (``clap-edge adapt --seed`` repeats it)."""
        return replace(self.probe, seed=self.probe.seed + draw)

    def settings(self) -> dict:
        return {"shots": list(self.shots), "draws": self.draws, "alpha": self.alpha, "n_boot": self.n_boot,
                "seed": self.seed, "probe": self.probe.settings(),
                "protocol": "leave one domain out; k shots per class from every other domain (val split if any)"}


@dataclass
class FewShotResult:
    """domain -> k -> key (``clip``, head names) -> top-1 (mean over draws) with paired CI, and the rest."""

    top1: dict[str, dict[int, dict[str, Top1]]]
    draw_top1: dict[str, dict[int, dict[str, list[float]]]]  # per draw, for the spread
    minus_clip: dict[str, dict[int, dict[str, tuple[float, tuple[float, float]]]]]
    settings: dict
    alphas: dict[str, float]
    shot_split: str

    def mean(self) -> dict[int, dict[str, float]]:
        """Per k and key, top-1 averaged over the held-out domains (each domain weighs the same)."""
        ks = next(iter(self.top1.values()))
        return {k: {key: float(np.mean([self.top1[d][k][key].top1 for d in self.top1])) for key in ks[k]}
                for k in ks}

    def as_dict(self) -> dict:
        cell = lambda d, k, key: {**self.top1[d][k][key].as_dict(),  # noqa: E731
                                  "draws": [round(v, 2) for v in self.draw_top1[d][k][key]],
                                  **({"minus_clip": _diff(self.minus_clip[d][k][key])} if key != CLIP_KEY else {})}
        return {"settings": self.settings, "alphas": self.alphas, "shot_split": self.shot_split,
                "domains": {d: {str(k): {key: cell(d, k, key) for key in by_k[k]} for k in by_k}
                            for d, by_k in self.top1.items()},
                "mean": {str(k): {key: round(v, 2) for key, v in row.items()} for k, row in self.mean().items()}}


# ---- features ---------------------------------------------------------------------


@torch.no_grad()
def feature_sets(raw: Mapping[str, torch.Tensor], heads: Mapping[str, CLAPHead], alpha: float | None
                 ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """domain -> raw features  =>  key -> domain -> L2-normalised features (CLIP, then each head at alpha)."""
    alphas = {name: float(head.alpha if alpha is None else alpha) for name, head in heads.items()}
    sets = {CLIP_KEY: {d: l2_normalize(f.numpy()) for d, f in raw.items()}}
    for name, head in heads.items():
        sets[name] = {d: l2_normalize(head(f, alpha=alphas[name]).numpy()) for d, f in raw.items()}
    return sets, alphas


def draw_shots(labels: Mapping[str, np.ndarray], domains: list[str], n_classes: int, k: int, draw: int,
               seed: int) -> list[tuple[str, int]]:
    """``(domain, index)`` of k shots per class from each of ``domains``, class-major (see the module doc)."""
    out = []
    for c in range(n_classes):
        for d in domains:
            idx = np.flatnonzero(labels[d] == c)
            rng = np.random.default_rng([seed, k, draw, zlib.crc32(d.encode()), c])
            out += [(d, int(i)) for i in np.sort(rng.choice(idx, size=min(k, len(idx)), replace=False))]
    return out


def fit_draw(feats: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], shots: list[tuple[str, int]],
             n_classes: int, probe: ProbeConfig) -> Probe:
    """The probe of one draw: fitted on the shots' features in the shots' order (``clap-edge adapt``'s order)."""
    x = np.stack([feats[d][i] for d, i in shots])
    return fit_probe(x, np.asarray([labels[d][i] for d, i in shots]), n_classes, probe)


# ---- evaluation -------------------------------------------------------------------


def evaluate_fewshot(shot_feats: dict[str, dict[str, np.ndarray]], shot_labels: Mapping[str, np.ndarray],
                     test_feats: dict[str, dict[str, np.ndarray]], test_labels: Mapping[str, np.ndarray],
                     n_classes: int, config: FewShotConfig, alphas: dict[str, float] | None = None,
                     shot_split: str = "val", progress: Progress | None = None) -> FewShotResult:
    """Every held-out domain x shot count x draw x feature key: fit on the other domains' shots, score."""
    progress = or_silent(progress)
    keys, domains = list(test_feats), list(test_labels)
    if len(set(shot_labels) | set(domains)) < 2:
        raise ClapEdgeError("few-shot evaluation leaves one domain out: the dataset needs at least two domains")
    top1, draws_top1, diffs = {}, {}, {}
    progress("few-shot probes", 0, len(domains) * len(config.shots))
    for held in domains:
        train_domains = [d for d in shot_labels if d != held]
        top1[held], draws_top1[held], diffs[held] = {}, {}, {}
        for k in config.shots:
            hits = {key: [] for key in keys}
            for r in range(config.draws):
                shots = draw_shots(shot_labels, train_domains, n_classes, k, r, config.seed)
                for key in keys:
                    probe = fit_draw(shot_feats[key], shot_labels, shots, n_classes, config.draw_probe(r))
                    hits[key].append(probe.predict(test_feats[key][held]) == test_labels[held])
            scores = {key: np.mean(h, axis=0) for key, h in hits.items()}
            top1[held][k] = paired_bootstrap(scores, config.n_boot, config.seed)
            draws_top1[held][k] = {key: [float(h.mean() * 100) for h in hits[key]] for key in keys}
            diffs[held][k] = {key: paired_difference_ci(scores[key], scores[CLIP_KEY], config.n_boot, config.seed)
                              for key in keys if key != CLIP_KEY}
            progress("few-shot probes")
    return FewShotResult(top1, draws_top1, diffs, config.settings(), alphas or {}, shot_split)


def evaluate_fewshot_folder(dataset: str | Path, loaded: LoadedModel, heads: dict[str, CLAPHead],
                            config: FewShotConfig, class_names: list[str] | None = None,
                            per_class: int | None = None, shot_pool: int | None = None,
                            progress: Progress | None = None) -> tuple[FewShotResult, list[str]]:
    """Encode the dataset once with the frozen model, then :func:`evaluate_fewshot` on CLIP and every head.

    ``per_class`` caps the images per class and domain of every split; ``shot_pool`` those of the shot split
    only (the draws pick from the first ``shot_pool``: a cheaper encode when the split is large)."""
    from clap_edge.zeroshot import encode_images

    progress = or_silent(progress)
    splits = find_splits(dataset)
    shot_split = "val" if "val" in splits else "test"
    if class_names is None:
        class_names = list(dict.fromkeys(c for root in splits.values() for c in scan_domains(root)[0]))
    feats, labels = {}, {}
    for split in dict.fromkeys([shot_split, "test"]):
        _, domains = scan_domains(splits[split], class_names)
        progress(f"encoding {split} images", 0, len(domains))
        raw = {}
        for name, images in domains.items():
            cap = min(n for n in (per_class, shot_pool if split == shot_split != "test" else None, 1 << 30) if n is not None)
            f = encode_images(loaded, images.head(cap))
            if f.failed:  # a shot index must point at its file's features: skip nothing silently
                raise ClapEdgeError(f"few-shot evaluation: unreadable images {f.failed[:3]}")
            raw[name], labels.setdefault(split, {})[name] = f.features, f.labels
            progress(f"encoding {split} images")
        feats[split], alphas = feature_sets(raw, heads, config.alpha)
    result = evaluate_fewshot(feats[shot_split], labels[shot_split], feats["test"], labels["test"],
                              len(class_names), config, alphas, shot_split, progress)
    return result, class_names


def _diff(diff: tuple[float, tuple[float, float]]) -> dict:
    points, (lo, hi) = diff
    return {"points": round(points, 2), "ci95": [round(lo, 2), round(hi, 2)]}
