"""Zero-shot scoring and evaluation, CLIP vs CLAP heads, per domain, prompt family and alpha (CLAP.md, "Inference").

One scoring function, :func:`zero_shot_logits` (image features x class features, both through
the head at alpha, normalised, cosine), serves ``eval``, the demo and the toy CLIP's
pretraining report. The frozen encoder runs once: raw (pre-head, unnormalised) features of
every image and of every class prompt are computed a single time; each head and each alpha
is then a cheap matrix operation on them. That is what makes a whole alpha grid affordable.

Prompt families: ``C`` "dog", ``CP`` "a dog in a photo", ``PC`` "a photo of a dog", ``NC``
the class name with noise context (CLAP.md; as in the authors' evaluation, one draw shared by
every class, right after the start token), and ``S``, style-laden prompts: for each class,
``style_draws`` seeded prompts with a random word in every style slot of the vocabulary
("an impressionistic cartoon of a small orange dog on a gray background"). ``S`` is scored
per draw (each draw is one classifier with one random style prompt per class; an image's
score is the share of draws that classify it correctly), not with averaged class
embeddings: averaging would cancel the style words and hide what they do.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clap_edge.core.datasets import DomainImages, find_splits, scan_domains
from clap_edge.core.errors import ClapEdgeError, ImageError
from clap_edge.core.images import load_image
from clap_edge.core.metrics import Top1, best_alpha, paired_bootstrap, paired_difference_ci, top1_correct
from clap_edge.core.progress import Progress, or_silent
from clap_edge.head import CLAPHead
from clap_edge.models import LoadedModel, tokenize_checked
from clap_edge.prompts import Prompt, PromptVocab

log = logging.getLogger(__name__)

STYLE_FAMILY = "S"
PROMPT_FORMATS = {"C": "{c}", "CP": "a {c} in a photo", "PC": "a photo of a {c}", "NC": "{c}", STYLE_FAMILY: None}
DEFAULT_ALPHAS = (0.0, 0.02, 0.056, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
OBJECTIVES = ("pooled", "worst", "authors")  # or the name of a validation domain
# The authors' alpha search (YichaoCai1/CLAP search_alpha.py): this log grid (10^0.5 is not in their list),
# the alpha with the highest mean per-domain top-1 of the PC prompts, used for every prompt family; first on ties.
AUTHORS_ALPHAS = (10 ** -1.5, 10 ** -1.0, 10 ** -0.5, 1.0, 10 ** 1.0, 10 ** 1.5, 10 ** 2.0)
AUTHORS_FAMILY = "PC"


@dataclass
class EvalConfig:
    prompt_formats: tuple[str, ...] = ("C",)
    alpha: float | None = None  # given: used as is; None: chosen on the validation split
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    # what alpha maximises on validation: top-1 of all domains pooled, of the worst domain, of one domain, or
    # "authors": the mean per-domain top-1 of the PC prompts over AUTHORS_ALPHAS (unless alphas is given)
    alpha_objective: str = "pooled"
    style_draws: int = 5  # S: prompts per class, each draw scored as its own classifier
    style_vocab: PromptVocab = field(default_factory=PromptVocab)
    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 128
    noise_ctx: int = 4
    noise_std: float = 0.02

    def __post_init__(self) -> None:
        unknown = [f for f in self.prompt_formats if f not in PROMPT_FORMATS]
        if unknown:
            raise ClapEdgeError(f"unknown prompt formats {unknown}; known: {', '.join(PROMPT_FORMATS)}")
        if self.style_draws < 1:
            raise ClapEdgeError(f"style_draws must be >= 1, got {self.style_draws}")
        if self.alpha_objective == "authors" and tuple(self.alphas) == DEFAULT_ALPHAS:
            self.alphas = AUTHORS_ALPHAS  # their grid, unless another grid was asked for


@dataclass
class Features:
    """Raw image features of one domain, with labels and the files that could not be read."""

    domain: str
    features: torch.Tensor  # [N, d], unnormalised, before any head
    labels: np.ndarray
    failed: list[str] = field(default_factory=list)


@dataclass
class EvalResult:
    """Per model key (``clip/PC``, ``clap/PC``, ...): test top-1 at the chosen alpha, the alpha grid, the choice."""

    domains: dict[str, dict[str, Top1]]  # domain -> key -> top-1 (heads at their chosen alpha)
    alphas: dict[str, float]  # head key -> chosen alpha
    val_scores: dict[str, dict[float, float]]  # head key -> validation objective per alpha
    failed: list[str]
    grid: dict[str, dict[str, dict[float, dict]]] = field(default_factory=dict)  # key -> domain -> alpha -> cell
    gains: dict[str, dict[str, tuple[float, tuple[float, float]]]] = field(default_factory=dict)  # vs CLIP
    objective: str = "pooled"
    # key -> domain -> alpha -> per-image test scores (for pooled differences; not in as_dict)
    scores: dict[str, dict[str, dict[float, np.ndarray]]] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict:
        return {
            "domains": {d: {k: t.as_dict() for k, t in models.items()} for d, models in self.domains.items()},
            "alphas": self.alphas,
            "alpha_objective": self.objective,
            "alpha_validation": {k: {str(a): round(s, 2) for a, s in v.items()} for k, v in self.val_scores.items()},
            "clap_minus_clip": {k: {d: _diff_dict(g) for d, g in v.items()} for k, v in self.gains.items()},
            "alpha_grid": {k: {d: {str(a): c for a, c in cells.items()} for d, cells in v.items()}
                           for k, v in self.grid.items()},
            "failed_images": self.failed,
        }


# ---- encoding ------------------------------------------------------------------


@torch.no_grad()
def encode_images(loaded: LoadedModel, images: DomainImages, batch_size: int = 128) -> Features:
    """Raw image features for every readable file; unreadable ones are listed, not fatal.

    Images go through the runtime's preprocessing (``clap_edge.core.preprocess``, equal to open_clip's
    eval transform), so evaluation sees exactly what a deployed bundle sees."""
    from clap_edge.core.preprocess import PreprocessCfg, Preprocessor

    preprocess = Preprocessor(PreprocessCfg.from_open_clip(loaded.preprocess_cfg))
    transform = lambda image: torch.from_numpy(preprocess(image))  # noqa: E731
    device = next(loaded.model.parameters()).device
    feats, labels, failed = [], [], []
    for start in range(0, len(images), batch_size):
        batch = []
        for path, label in zip(images.paths[start:start + batch_size], images.labels[start:start + batch_size]):
            try:
                batch.append(transform(load_image(path)))
                labels.append(label)
            except ImageError as e:
                log.warning("%s", e)
                failed.append(str(path))
        if batch:
            feats.append(loaded.model.encode_image(torch.stack(batch).to(device)).float().cpu())
    if not feats:
        raise ClapEdgeError(f"domain {images.domain!r}: no readable images")
    return Features(images.domain, torch.cat(feats), np.asarray(labels), failed)


def style_prompts(class_names: Sequence[str], vocab: PromptVocab, draws: int, seed: int = 0) -> list[list[str]]:
    """``draws`` lists of one style-laden prompt per class; a random word in every style slot, seeded.

    Draw ``k`` of class ``c`` depends on (seed, k, c) only, so adding a class or a draw
    leaves the other prompts as they were.
    """
    out = []
    for k in range(draws):
        prompts = []
        for name in class_names:
            rng = random.Random(f"style:{seed}:{k}:{name}")
            prompts.append(Prompt(
                class_name=name, image_type=rng.choice(vocab.image_types), size=rng.choice(vocab.sizes),
                art_style=rng.choice(vocab.art_styles), color=rng.choice(vocab.colors),
                background=rng.choice(vocab.backgrounds) if vocab.backgrounds else None).text())
        out.append(prompts)
    return out


@torch.no_grad()
def encode_class_prompts(loaded: LoadedModel, class_names: Sequence[str], prompt_format: str,
                         config: EvalConfig | None = None) -> list[torch.Tensor]:
    """Raw text features of each class: a list of [C, d], one per draw (one draw except for ``S``)."""
    from clap_edge.fuse import format_template
    from clap_edge.text_encoder import NoiseConfig, NoiseTextEncoder, draw_noise

    config = config or EvalConfig()
    if prompt_format == STYLE_FAMILY:
        return [_encode_texts(loaded, texts)
                for texts in style_prompts(class_names, config.style_vocab, config.style_draws, config.seed)]
    texts = [format_template(PROMPT_FORMATS[prompt_format], c) for c in class_names]
    if prompt_format != "NC":
        return [_encode_texts(loaded, texts)]
    # As the authors' evaluation does: one noise draw shared by every class prompt, right after SOT.
    noise_cfg = NoiseConfig(n_ctx=config.noise_ctx, std=config.noise_std, positions=("front",))
    tokens = tokenize_checked(loaded.tokenizer, texts, reserve=noise_cfg.n_ctx)
    encoder = NoiseTextEncoder(loaded.model)
    noise, where = draw_noise([f"eval-NC:{t}" for t in texts], noise_cfg, encoder.width, config.seed,
                              draw_keys=["eval-NC"] * len(texts))
    return [encoder.encode(tokens, noise, encoder.insert_positions(tokens, where)).float().cpu()]


def _encode_texts(loaded: LoadedModel, texts: list[str]) -> torch.Tensor:
    return loaded.model.encode_text(tokenize_checked(loaded.tokenizer, texts)).float().cpu()


# ---- scoring: the one zero-shot function ------------------------------------------


@torch.no_grad()
def zero_shot_logits(image_features: torch.Tensor, text_features: torch.Tensor,
                     head: CLAPHead | None = None, alpha: float = 0.0) -> np.ndarray:
    """Cosine logits [N, C] after passing both sides through ``head`` at ``alpha`` (none or 0: plain CLIP)."""
    if head is not None and alpha != 0.0:
        image_features, text_features = head(image_features, alpha=alpha), head(text_features, alpha=alpha)
    return (F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T).numpy()


def image_scores(features: Features, texts: Sequence[torch.Tensor], head: CLAPHead | None = None,
                 alpha: float = 0.0) -> np.ndarray:
    """Per image, the share of prompt draws whose zero-shot prediction is its label (bool-valued for one draw)."""
    hits = [top1_correct(zero_shot_logits(features.features, t, head, alpha), features.labels) for t in texts]
    return hits[0] if len(hits) == 1 else np.mean(hits, axis=0)


def alpha_scores(split: Mapping[str, Features], texts: Sequence[torch.Tensor], head: CLAPHead,
                 alphas: Sequence[float]) -> dict[str, dict[float, np.ndarray]]:
    """domain -> alpha -> per-image scores (alpha 0 is plain CLIP)."""
    return {d: {float(a): image_scores(f, texts, head, float(a)) for a in alphas} for d, f in split.items()}


def objective_values(val: Mapping[str, Mapping[float, np.ndarray]], objective: str) -> dict[float, float]:
    """Validation top-1 (%) per alpha under ``objective``: pooled images, the worst domain, the mean of the
    per-domain top-1s (``authors``), or one domain."""
    if not val:
        raise ClapEdgeError("choosing alpha needs a validation split (a val/ folder); or pass --alpha")
    alphas = next(iter(val.values())).keys()
    if objective == "pooled":
        return {a: float(np.concatenate([s[a] for s in val.values()]).mean() * 100) for a in alphas}
    if objective == "worst":
        return {a: float(min(s[a].mean() for s in val.values()) * 100) for a in alphas}
    if objective == "authors":
        return {a: float(np.mean([s[a].mean() for s in val.values()]) * 100) for a in alphas}
    if objective not in val:
        raise ClapEdgeError(f"alpha objective {objective!r}: not 'pooled', 'worst', 'authors' or a validation domain "
                            f"({', '.join(val)})")
    return {a: float(val[objective][a].mean() * 100) for a in alphas}


def choose_alpha(val: Mapping[str, Mapping[float, np.ndarray]], objective: str = "pooled"
                 ) -> tuple[float, dict[float, float]]:
    """The alpha that maximises the validation objective (ties: the smallest); never sees the test split."""
    values = objective_values(val, objective)
    return best_alpha(values), values


def minus_clip(scores: Mapping[float, np.ndarray], n_boot: int, seed: int) -> dict[float, tuple]:
    """Per alpha: top-1 minus CLIP's (alpha 0) in points with its paired-bootstrap CI, unrounded."""
    return {a: paired_difference_ci(s, scores[0.0], n_boot, seed) for a, s in scores.items()}


def grid_cells(scores: Mapping[float, np.ndarray], n_boot: int, seed: int,
               differences: Mapping[float, tuple] | None = None) -> dict[float, dict]:
    """Per alpha: top-1 with CI, and minus CLIP (alpha 0) with its paired CI (``differences``: already computed)."""
    tops = paired_bootstrap({str(a): s for a, s in scores.items()}, n_boot, seed)
    differences = differences if differences is not None else minus_clip(scores, n_boot, seed)
    return {a: {**tops[str(a)].as_dict(), "minus_clip": _diff_dict(differences[a])} for a in scores}


def evaluate(loaded: LoadedModel, class_names: list[str], heads: dict[str, CLAPHead],
             test: dict[str, Features], val: dict[str, Features] | None = None,
             config: EvalConfig | None = None) -> EvalResult:
    """Per prompt family: the alpha grid on test, alpha chosen on val, top-1 and gains over CLIP with paired CIs."""
    config = config or EvalConfig()
    grid_alphas = tuple(dict.fromkeys([0.0, *config.alphas] + ([config.alpha] if config.alpha is not None else [])))
    result = EvalResult({d: {} for d in test}, {}, {}, [], objective=config.alpha_objective)
    authors = _authors_alphas(loaded, class_names, heads, val, config) if config.alpha is None and \
        config.alpha_objective == "authors" else {}
    for fmt in config.prompt_formats:
        texts = encode_class_prompts(loaded, class_names, fmt, config)
        clip_key = f"clip/{fmt}"
        chosen: dict[str, np.ndarray] = {}
        for name, head in heads.items():
            key = f"{name}/{fmt}"
            if config.alpha is not None:
                result.alphas[key] = float(config.alpha)
            elif name in authors:  # one alpha per head, chosen on the PC prompts, for every family
                result.alphas[key], result.val_scores[key] = authors[name]
            else:
                val_scores = alpha_scores(val or {}, texts, head, config.alphas)
                result.alphas[key], result.val_scores[key] = choose_alpha(val_scores, config.alpha_objective)
            test_scores = result.scores[key] = alpha_scores(test, texts, head, grid_alphas)
            diffs = {d: minus_clip(s, config.n_boot, config.seed) for d, s in test_scores.items()}  # once each
            result.grid[key] = {d: grid_cells(s, config.n_boot, config.seed, diffs[d]) for d, s in test_scores.items()}
            result.gains[key] = {d: diffs[d][result.alphas[key]] for d in test_scores}
            for d, s in test_scores.items():
                chosen.setdefault(d, {})[clip_key] = s[0.0]
                chosen[d][key] = s[result.alphas[key]]
        if not heads:
            chosen = {d: {clip_key: image_scores(f, texts)} for d, f in test.items()}
        for d, by_key in chosen.items():
            result.domains[d].update(paired_bootstrap(by_key, config.n_boot, config.seed))
    result.failed = [p for split in (test, val or {}) for f in split.values() for p in f.failed]
    return result


def _authors_alphas(loaded: LoadedModel, class_names: list[str], heads: dict[str, CLAPHead],
                    val: dict[str, Features] | None, config: EvalConfig) -> dict[str, tuple[float, dict]]:
    """Per head: the authors' alpha (mean per-domain val top-1 of the PC prompts) and the objective per alpha."""
    texts = encode_class_prompts(loaded, class_names, AUTHORS_FAMILY, config)
    return {name: choose_alpha(alpha_scores(val or {}, texts, head, config.alphas), "authors")
            for name, head in heads.items()}


def evaluate_folder(dataset: str | Path, loaded: LoadedModel, heads: dict[str, CLAPHead],
                    config: EvalConfig | None = None, class_names: list[str] | None = None,
                    per_class: int | None = None, progress: Progress | None = None
                    ) -> tuple[EvalResult, list[str]]:
    """Evaluate on a dataset folder (``val/`` and ``test/`` splits, or test only), per domain."""
    progress = or_silent(progress)
    config = config or EvalConfig()
    splits = find_splits(dataset)
    if class_names is None:  # every split's classes, so neither split's extra class reads as "unknown"
        class_names = list(dict.fromkeys(c for root in splits.values() for c in scan_domains(root)[0]))
    features: dict[str, dict[str, Features]] = {}
    for split, root in splits.items():
        _, domains = scan_domains(root, class_names)
        features[split] = {}
        progress(f"encoding {split} images", 0, len(domains))
        for name, images in domains.items():
            features[split][name] = encode_images(loaded, images.head(per_class), config.batch_size)
            progress(f"encoding {split} images")
    return evaluate(loaded, class_names, heads, features["test"], features.get("val"), config), class_names


def _diff_dict(diff: tuple[float, tuple[float, float]]) -> dict:
    points, (lo, hi) = diff
    return {"points": round(points, 2), "ci95": [round(lo, 2), round(hi, 2)]}
