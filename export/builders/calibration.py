"""Images for quantisation and drift, preprocessed exactly as the runtime will preprocess them.

Calibrated int8 ranges are only right for the inputs the deployed model sees, so calibration
and evaluation images go through the runtime's own ``Preprocessor`` (numpy + PIL), not
open_clip's torch transform. :func:`preprocessor_for` is the one place that import lives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clap_edge.core.errors import ClapEdgeError

DEFAULT_CALIBRATION_COUNT = 64

__all__ = ["DEFAULT_CALIBRATION_COUNT", "preprocessor_for", "calibration_images", "EvalSet", "load_eval_set"]


def preprocessor_for(preprocess: Any):
    """The runtime's Preprocessor (the one preprocessing path, in core) for a :class:`PreprocessCfg`
    (the manifest's, as the exporter and Bundle hold it) or a dict of its fields."""
    from clap_edge.core.preprocess import PreprocessCfg, Preprocessor

    return Preprocessor(PreprocessCfg.from_dict(preprocess))


def calibration_images(folder: str | os.PathLike, preprocess: dict[str, Any],
                       count: int = DEFAULT_CALIBRATION_COUNT) -> np.ndarray:
    """Up to ``count`` images of ``folder`` (walked recursively, evenly spaced over the sorted files so a
    class-per-folder tree contributes every class), preprocessed: float32 [n, 3, H, W]."""
    from clap_edge.core.images import list_images, load_image

    folder = Path(folder)
    if not folder.is_dir():
        raise ClapEdgeError(f"calibration folder {folder} does not exist")
    paths = list_images([folder])
    if not paths:
        raise ClapEdgeError(f"calibration folder {folder} has no images")
    if count < 1:
        raise ClapEdgeError(f"calibration count must be >= 1, got {count}")
    picks = np.linspace(0, len(paths) - 1, num=min(count, len(paths))).round().astype(int)
    pre = preprocessor_for(preprocess)
    return np.stack([pre(load_image(paths[i])) for i in dict.fromkeys(picks.tolist())]).astype(np.float32)


@dataclass
class EvalSet:
    """Labelled, preprocessed images per domain of one split."""

    split: str
    root: Path
    images: dict[str, np.ndarray] = field(default_factory=dict)  # domain -> [n, 3, H, W]
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # domain -> [n] class indices


def load_eval_set(root: str | os.PathLike, class_names: list[str], preprocess: dict[str, Any],
                  split: str = "test", per_class: int | None = None) -> EvalSet:
    """The ``split`` of a dataset root in the toy world's layout (``root/{val,test}/<domain>/<class>/*``,
    or ``root/<domain>/<class>/*`` as the test split), preprocessed for the bundle."""
    from clap_edge.core.datasets import find_splits, scan_domains
    from clap_edge.core.images import load_image

    splits = find_splits(root)
    if split not in splits:
        raise ClapEdgeError(f"dataset {root}: no {split!r} split (found {', '.join(splits)})")
    _, domains = scan_domains(splits[split], list(class_names))
    pre = preprocessor_for(preprocess)
    out = EvalSet(split, splits[split])
    for domain, found in domains.items():
        found = found.head(per_class)
        out.images[domain] = np.stack([pre(load_image(p)) for p in found.paths]).astype(np.float32)
        out.labels[domain] = np.asarray(found.labels, dtype=np.int64)
    if not out.images:
        raise ClapEdgeError(f"dataset {splits[split]}: no images")
    return out
