"""White-box attacks (FGSM, PGD-20, CW-20) in pixel space through the fused classifier, CLIP vs CLAP, per domain.

The settings are the authors' (``eval_oneshot_adv.py`` -> ``main/evaluate.py``, ``adversarial_attack``):
eps 0.031 (L-inf); FGSM one step of eps from the clean image; PGD-20 twenty steps of eps/10 from a
uniform random start in the eps ball, cross-entropy loss; CW-20 the same steps with the CW margin loss
(confidence 50); true labels; zero-shot scores are the cosine similarities (no logit scale) of the C
prompts. One difference, on purpose: the authors perturb the *normalised* tensor and clamp it to
[0, 1]; here the attack perturbs pixels in [0, 1] and the normalisation sits inside the attacked model,
so eps means 0.031 of the pixel range (about 8/255), the usual meaning.

The attacks are the Adversarial Robustness Toolbox's (``art``, the ``[robust]`` extra): maintained,
a clean install beside the dev extras (torchattacks 3.5.1 pins requests ~=2.25.1), and its
estimator takes any loss, so CW-20 is its PGD with the authors' CW loss rather than a hand-written loop.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from clap_edge.core.datasets import DomainImages
from clap_edge.core.errors import ClapEdgeError, ImageError
from clap_edge.core.metrics import Top1, paired_bootstrap, paired_difference_ci
from clap_edge.core.progress import Progress, or_silent
from clap_edge.fuse import FusedClassifier

log = logging.getLogger(__name__)

AUTHORS_EPS = 0.031  # main/evaluate.py: epsilon = 0.031
CW_CONFIDENCE = 50.0  # main/evaluate.py: cw_loss(confidence=50)


@dataclass(frozen=True)
class AttackSpec:
    """One L-inf attack: ``steps`` sign-gradient steps of ``step_size``, projected to the ``eps`` ball."""

    name: str
    loss: str  # "ce" (cross-entropy) or "cw" (the CW margin loss)
    steps: int
    eps: float
    step_size: float
    random_start: bool


def authors_attack(name: str, eps: float = AUTHORS_EPS) -> AttackSpec:
    """The authors' FGSM, PGD-20 or CW-20 (step size eps for one step, eps/10 for twenty)."""
    kinds = {"fgsm": ("ce", 1), "pgd20": ("ce", 20), "cw20": ("cw", 20)}
    if name not in kinds:
        raise ClapEdgeError(f"unknown attack {name!r}; known: {', '.join(kinds)}")
    loss, steps = kinds[name]
    # PGD starts at a random point only when it takes more than one step (pgd_attack: "if k > 1").
    return AttackSpec(name, loss, steps, eps, eps if steps == 1 else eps / 10, random_start=steps > 1)


def parse_attacks(text: str, eps: float = AUTHORS_EPS) -> list[AttackSpec]:
    """``"fgsm,pgd20,cw20"`` -> the authors' specs at ``eps``."""
    if not 0 < eps <= 1:
        raise ClapEdgeError(f"--eps {eps}: must be in (0, 1] (pixels are in [0, 1])")
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise ClapEdgeError("--attack: no attack named (fgsm, pgd20, cw20)")
    return [authors_attack(n, eps) for n in dict.fromkeys(names)]


class PixelSpaceModel(nn.Module):
    """Pixels in [0, 1] -> normalise -> fused classifier -> the scores the attack ascends.

    Normalisation is inside the model, so the attack's eps ball and its [0, 1] clip are in pixel
    space. ``cosine``: return the cosine similarities, as the authors' zero-shot attack does (the
    fused logits divided back by the logit scale); otherwise the deployed logits.
    """

    def __init__(self, fused: FusedClassifier, mean: Sequence[float], std: Sequence[float], cosine: bool = True):
        super().__init__()
        self.fused = fused.eval()
        self.cosine = cosine
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits, _ = self.fused((pixels - self.mean) / self.std)
        if not self.cosine:
            return logits
        if self.fused.logit_bias is not None:
            logits = logits - self.fused.logit_bias
        return logits / self.fused.logit_scale


class CWLoss(nn.Module):
    """The authors' ``cw_loss``: -max(real - best other + confidence, 0), summed; labels one-hot (as ART passes)."""

    def __init__(self, confidence: float = CW_CONFIDENCE):
        super().__init__()
        self.confidence = confidence

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        onehot = target.float() if target.dim() == 2 else nn.functional.one_hot(target, outputs.shape[1]).float()
        real = (onehot * outputs).sum(1)
        other = ((1.0 - onehot) * outputs - onehot * 10000.0).max(1)[0]
        return -torch.clamp(real - other + self.confidence, min=0.0).sum()


def _estimator(model: PixelSpaceModel, loss: str, input_shape: tuple[int, ...], nb_classes: int):
    try:
        from art.estimators.classification import PyTorchClassifier
    except ImportError as e:
        raise ClapEdgeError("attacks need the Adversarial Robustness Toolbox: pip install 'clap-edge[robust]'") from e
    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss() if loss == "ce" else CWLoss(),
                             input_shape=input_shape, nb_classes=nb_classes, clip_values=(0.0, 1.0),
                             device_type="cpu" if next(model.parameters()).device.type == "cpu" else "gpu")


def make_attack(spec: AttackSpec, model: PixelSpaceModel, input_shape: tuple[int, ...], nb_classes: int,
                batch_size: int = 64):
    """The ART attack for ``spec`` on ``model`` (FGSM: FastGradientMethod; PGD-20, CW-20: ProjectedGradientDescent)."""
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

    est = _estimator(model, spec.loss, input_shape, nb_classes)
    if spec.steps == 1 and not spec.random_start:
        return FastGradientMethod(est, norm=np.inf, eps=spec.eps, eps_step=spec.step_size, batch_size=batch_size)
    return ProjectedGradientDescent(est, norm=np.inf, eps=spec.eps, eps_step=spec.step_size, max_iter=spec.steps,
                                    num_random_init=int(spec.random_start), batch_size=batch_size, verbose=False)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """ART draws its random starts from numpy's global generator: seed it, then put it back."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            yield
    finally:
        np.random.set_state(state)


def attack_images(model: PixelSpaceModel, pixels: np.ndarray, labels: np.ndarray, spec: AttackSpec,
                  nb_classes: int, seed: int = 0, batch_size: int = 64) -> np.ndarray:
    """Adversarial pixels (float32 [N, 3, H, W] in [0, 1]) for ``spec`` against ``model``, with the true labels."""
    attack = make_attack(spec, model, tuple(pixels.shape[1:]), nb_classes, batch_size)
    onehot = np.eye(nb_classes, dtype=np.float32)[labels]
    with _seeded(seed):
        return attack.generate(x=pixels.astype(np.float32), y=onehot).astype(np.float32)


@torch.no_grad()
def predict(model: nn.Module, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
    out = [model(torch.from_numpy(pixels[i:i + batch_size])).argmax(1).numpy()
           for i in range(0, len(pixels), batch_size)]
    return np.concatenate(out)


def load_pixels(images: DomainImages, preprocess_cfg) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A domain's images resized and cropped as the runtime does, as float32 [N, 3, H, W] pixels in [0, 1]."""
    from clap_edge.core.images import load_image
    from clap_edge.core.preprocess import resize_and_crop, to_rgb

    pixels, labels, failed = [], [], []
    for path, label in zip(images.paths, images.labels):
        try:
            hwc = np.asarray(resize_and_crop(to_rgb(load_image(path)), preprocess_cfg), dtype=np.uint8)
        except ImageError as e:
            log.warning("%s", e)
            failed.append(str(path))
            continue
        pixels.append(hwc.transpose(2, 0, 1).astype(np.float32) / 255.0)
        labels.append(label)
    if not pixels:
        raise ClapEdgeError(f"domain {images.domain!r}: no readable images")
    return np.stack(pixels), np.asarray(labels), failed


@dataclass
class RobustResult:
    """Top-1 per domain of every model under every attack (``clean`` included), and CLAP minus CLIP per attack."""

    table: dict[str, dict[str, Top1]]  # domain -> "<model> <attack>" -> top-1 with paired CI
    gains: dict[str, dict[str, dict[str, tuple]]]  # head -> attack -> domain -> (points, ci95) vs CLIP
    attacks: list[AttackSpec]
    alphas: dict[str, float]
    prompt: str
    cosine: bool
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "attacks": [asdict(a) for a in self.attacks], "alphas": self.alphas, "prompt": self.prompt,
            "scores": "cosine" if self.cosine else "logits",
            "domains": {d: {k: t.as_dict() for k, t in cells.items()} for d, cells in self.table.items()},
            "clap_minus_clip": {h: {a: {d: {"points": round(p, 2), "ci95": [round(lo, 2), round(hi, 2)]}
                                        for d, (p, (lo, hi)) in per.items()} for a, per in by_attack.items()}
                                for h, by_attack in self.gains.items()},
            "failed_images": self.failed,
        }


def evaluate_attacks(models: dict[str, PixelSpaceModel], domains: dict[str, DomainImages], preprocess_cfg,
                     attacks: Sequence[AttackSpec], nb_classes: int, alphas: dict[str, float], prompt: str,
                     n_boot: int = 1000, seed: int = 0, progress: Progress | None = None) -> RobustResult:
    """Every model (``clip`` first, then heads) under every attack, per domain, paired over the same images."""
    progress = or_silent(progress)
    table, correct_by, failed = {}, {}, []
    progress("attacking", 0, len(domains) * len(models) * len(attacks))
    for d, images in domains.items():
        pixels, labels, bad = load_pixels(images, preprocess_cfg)
        failed += bad
        correct = {}
        for name, model in models.items():
            correct[f"{name} clean"] = predict(model, pixels) == labels
            for spec in attacks:
                adv = attack_images(model, pixels, labels, spec, nb_classes, seed)
                correct[f"{name} {spec.name}"] = predict(model, adv) == labels
                progress("attacking")
        table[d] = paired_bootstrap(correct, n_boot, seed)
        correct_by[d] = correct
    gains = {h: {a: {d: paired_difference_ci(correct_by[d][f"{h} {a}"], correct_by[d][f"clip {a}"], n_boot, seed)
                     for d in domains} for a in ["clean", *(s.name for s in attacks)]}
             for h in models if h != "clip"}
    return RobustResult(table, gains, list(attacks), alphas, prompt, next(iter(models.values())).cosine, failed)


def build_models(loaded, class_names: Sequence[str], heads: dict, alphas: dict[str, float], template: str,
                 cosine: bool = True) -> dict[str, PixelSpaceModel]:
    """CLIP and each head at its alpha as fused classifiers behind pixel-space normalisation."""
    from clap_edge.core.preprocess import PreprocessCfg
    from clap_edge.fuse import build_fused

    cfg = PreprocessCfg.from_open_clip(loaded.preprocess_cfg)
    models = {"clip": build_fused(loaded, class_names, None, None, (template,))}
    for name, head in heads.items():
        models[name] = build_fused(loaded, class_names, head, alphas[name], (template,))
    return {k: PixelSpaceModel(m, cfg.mean, cfg.std, cosine) for k, m in models.items()}
