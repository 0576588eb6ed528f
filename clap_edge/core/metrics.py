"""Accuracy with honest uncertainty: top-1, paired bootstrap CIs, alpha selection on validation only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class Top1:
    top1: float  # percent
    ci95: tuple[float, float]  # percent
    n: int

    def as_dict(self) -> dict:
        return {"top1": round(self.top1, 2), "ci95": [round(self.ci95[0], 2), round(self.ci95[1], 2)], "n": self.n}


def top1_correct(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Boolean [N]: whether the argmax of each row of ``logits`` is its label."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.shape[0] != labels.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit rows for {labels.shape[0]} labels")
    return logits.argmax(axis=1) == labels


def paired_bootstrap(
    correct: Mapping[str, np.ndarray], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Top1]:
    """Top-1 and percentile CI per model, resampling the *same* images for every model.

    Pairing matters: two models scored on one resample of the images share its luck, so
    their CIs (and the CI of their difference, :func:`paired_difference_ci`) are honest.
    Per image, ``correct`` is a bool or a fraction in [0, 1] (e.g. the share of several
    prompt draws that got the image right): the images are what is resampled.
    """
    arrays = {k: _scores(v) for k, v in correct.items()}
    n = _common_length(arrays)
    idx = _bootstrap_indices(n, n_boot, seed)
    return {name: Top1(float(c.mean() * 100), _percentile_ci(c[idx].mean(axis=1) * 100, level), n)
            for name, c in arrays.items()}


def paired_difference_ci(
    a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, tuple[float, float]]:
    """Top-1 of ``a`` minus top-1 of ``b`` (points) with its paired-bootstrap CI."""
    a, b = _scores(a), _scores(b)
    idx = _bootstrap_indices(_common_length({"a": a, "b": b}), n_boot, seed)
    diffs = (a[idx].mean(axis=1) - b[idx].mean(axis=1)) * 100
    return float((a.mean() - b.mean()) * 100), _percentile_ci(diffs, level)


def select_alpha(
    alphas: Sequence[float], val_logits_for: Callable[[float], np.ndarray], val_labels: np.ndarray
) -> tuple[float, dict[float, float]]:
    """The alpha with the best validation top-1 (ties: the smallest alpha, the least change).

    Only validation logits and labels are seen here, by construction: test data never
    enters the choice.
    """
    if not len(alphas):
        raise ValueError("no alpha values to choose from")
    scores = {float(a): float(top1_correct(val_logits_for(float(a)), val_labels).mean() * 100) for a in alphas}
    return best_alpha(scores), scores


def best_alpha(scores: Mapping[float, float]) -> float:
    """The alpha with the highest score; ties go to the smallest alpha (the least change to CLIP)."""
    if not scores:
        raise ValueError("no alpha values to choose from")
    best = max(scores.values())
    return min(a for a, s in scores.items() if s == best)


def _scores(values: np.ndarray) -> np.ndarray:
    """Per-image scores as float: booleans, or fractions in [0, 1]."""
    arr = np.asarray(values)
    if arr.dtype != bool and arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1):
        raise ValueError("per-image scores must be booleans or fractions in [0, 1]")
    return arr.astype(np.float64)


def _percentile_ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.percentile(samples, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def _bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    if n == 0:
        raise ValueError("cannot bootstrap an empty set of images")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _common_length(arrays: Mapping[str, np.ndarray]) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"paired bootstrap needs the same images for every model, got lengths {lengths}")
    return next(iter(lengths.values()))
