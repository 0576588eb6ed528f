"""Zero-shot evaluation, CLIP vs CLAP heads, per domain (CLAP.md, "Inference").

The frozen encoder runs once: raw (pre-head, unnormalised) image features of every
image and raw text features of every class prompt are computed a single time; each
head and each alpha is then a cheap matrix operation on them. That is what makes
choosing alpha on the validation split affordable.

Prompt formats (CLAP.md): ``C`` "dog", ``CP`` "a dog in a photo", ``PC`` "a photo of a
dog", ``NC`` the class name with noise context.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clap_edge.core.datasets import DomainImages, find_splits, scan_domains
from clap_edge.core.errors import ClapEdgeError, ImageError
from clap_edge.head import CLAPHead
from clap_edge.core.images import load_image
from clap_edge.core.metrics import Top1, paired_bootstrap, select_alpha, top1_correct
from clap_edge.core.progress import Progress, or_silent
from clap_edge.models import LoadedModel, tokenize_checked

log = logging.getLogger(__name__)

PROMPT_FORMATS = {"C": "{c}", "CP": "a {c} in a photo", "PC": "a photo of a {c}", "NC": "{c}"}
DEFAULT_ALPHAS = (0.0, 0.02, 0.056, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)


@dataclass
class EvalConfig:
    prompt_formats: tuple[str, ...] = ("C",)
    alpha: float | None = None  # given: used as is; None: chosen on the validation split
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 128
    noise_ctx: int = 4
    noise_std: float = 0.02

    def __post_init__(self) -> None:
        unknown = [f for f in self.prompt_formats if f not in PROMPT_FORMATS]
        if unknown:
            raise ClapEdgeError(f"unknown prompt formats {unknown}; known: {', '.join(PROMPT_FORMATS)}")


@dataclass
class Features:
    """Raw image features of one domain, with labels and the files that could not be read."""

    domain: str
    features: torch.Tensor  # [N, d], unnormalised, before any head
    labels: np.ndarray
    failed: list[str] = field(default_factory=list)


@dataclass
class EvalResult:
    """Per domain and per model key (e.g. ``clip/C``, ``clap/C``): top-1 with CI; and the alphas chosen."""

    domains: dict[str, dict[str, Top1]]
    alphas: dict[str, float]
    val_scores: dict[str, dict[float, float]]
    failed: list[str]

    def as_dict(self) -> dict:
        return {
            "domains": {d: {k: t.as_dict() for k, t in models.items()} for d, models in self.domains.items()},
            "alphas": self.alphas,
            "alpha_validation_top1": {k: {str(a): s for a, s in v.items()} for k, v in self.val_scores.items()},
            "failed_images": self.failed,
        }


# ---- encoding ------------------------------------------------------------------


@torch.no_grad()
def encode_images(loaded: LoadedModel, images: DomainImages, batch_size: int = 128) -> Features:
    """Raw image features for every readable file; unreadable ones are listed, not fatal."""
    from open_clip.transform import image_transform_v2

    transform = image_transform_v2(loaded.preprocess_cfg, is_train=False)
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


@torch.no_grad()
def encode_class_prompts(loaded: LoadedModel, class_names: Sequence[str], prompt_format: str,
                         config: EvalConfig | None = None) -> torch.Tensor:
    """Raw text features [C, d] of each class in ``prompt_format`` (NC: with seeded noise context)."""
    from clap_edge.text_encoder import NoiseConfig, NoiseTextEncoder, draw_noise

    config = config or EvalConfig()
    from clap_edge.fuse import format_template

    texts = [format_template(PROMPT_FORMATS[prompt_format], c) for c in class_names]
    if prompt_format != "NC":
        return loaded.model.encode_text(tokenize_checked(loaded.tokenizer, texts)).float().cpu()
    noise_cfg = NoiseConfig(n_ctx=config.noise_ctx, std=config.noise_std)
    tokens = tokenize_checked(loaded.tokenizer, texts, reserve=noise_cfg.n_ctx)
    encoder = NoiseTextEncoder(loaded.model)
    noise, where = draw_noise([f"eval-NC:{t}" for t in texts], noise_cfg, encoder.width, config.seed)
    return encoder.encode(tokens, noise, encoder.insert_positions(tokens, where)).float().cpu()


# ---- scoring -------------------------------------------------------------------


@torch.no_grad()
def zero_shot_logits(image_features: torch.Tensor, text_features: torch.Tensor,
                     head: CLAPHead | None = None, alpha: float = 0.0) -> np.ndarray:
    """Cosine logits [N, C] after passing both sides through ``head`` at ``alpha`` (none: plain CLIP)."""
    if head is not None and alpha != 0.0:
        image_features, text_features = head(image_features, alpha=alpha), head(text_features, alpha=alpha)
    return (F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T).numpy()


def choose_alpha(head: CLAPHead, val: Iterable[Features], text_features: torch.Tensor,
                 alphas: Sequence[float]) -> tuple[float, dict[float, float]]:
    """The alpha with the best top-1 over all validation images pooled (never the test split)."""
    val = list(val)
    if not val:
        raise ClapEdgeError("choosing alpha needs a validation split (a val/ folder); or pass --alpha")
    feats = torch.cat([v.features for v in val])
    labels = np.concatenate([v.labels for v in val])
    return select_alpha(alphas, lambda a: zero_shot_logits(feats, text_features, head, a), labels)


def evaluate(loaded: LoadedModel, class_names: list[str], heads: dict[str, CLAPHead],
             test: dict[str, Features], val: dict[str, Features] | None = None,
             config: EvalConfig | None = None) -> EvalResult:
    """Top-1 with paired-bootstrap CIs per test domain for CLIP (``clip``) and every head, per prompt format."""
    config = config or EvalConfig()
    alphas: dict[str, float] = {}
    val_scores: dict[str, dict[float, float]] = {}
    correct: dict[str, dict[str, np.ndarray]] = {d: {} for d in test}
    for fmt in config.prompt_formats:
        text = encode_class_prompts(loaded, class_names, fmt, config)
        models: dict[str, tuple[CLAPHead | None, float]] = {f"clip/{fmt}": (None, 0.0)}
        for name, head in heads.items():
            key = f"{name}/{fmt}"
            if config.alpha is not None:
                alphas[key] = float(config.alpha)
            else:
                alphas[key], val_scores[key] = choose_alpha(head, (val or {}).values(), text, config.alphas)
            models[key] = (head, alphas[key])
        for domain, feats in test.items():
            for key, (head, alpha) in models.items():
                correct[domain][key] = top1_correct(zero_shot_logits(feats.features, text, head, alpha), feats.labels)
    domains = {d: paired_bootstrap(c, config.n_boot, config.seed) for d, c in correct.items()}
    failed = [p for split in (test, val or {}) for f in split.values() for p in f.failed]
    return EvalResult(domains, alphas, val_scores, failed)


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
