"""Writing the toy world to disk as real PNG files.

Layout (one folder per split, each the ``<domain>/<class>/*.png`` layout that ``eval``,
``classify`` and ``bench --end-to-end`` read)::

    ROOT/
      classes.txt                 the class names, one per line (``load_class_names(ROOT / "classes.txt")``)
      toyworld.json               how the folder was made: seed, per_class, domains, splits
      val/<domain>/<class>/*.png  validation split: choose alpha, prompts... here
      test/<domain>/<class>/*.png test split: report numbers here, never tune on it

``load_class_names(ROOT / "test")`` (or ``/ "val"``) gives the class names in order.
Each (domain, split) has its own random stream, so the splits never share an image.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from clap_edge.core.errors import ClapEdgeError
from clap_edge.core.io import atomic_directory
from clap_edge.toyworld.render import render
from clap_edge.toyworld.world import CLASSES, DOMAINS, Factors, domain_spec, sample_factors, split_seed

DATASET_SPLITS = ("val", "test")
INFO_FILE = "toyworld.json"


@dataclass
class DatasetInfo:
    root: str
    seed: int
    per_class: int
    domains: list[str] = field(default_factory=lambda: list(DOMAINS))
    splits: list[str] = field(default_factory=lambda: list(DATASET_SPLITS))
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    test_per_class: int | None = None  # None: per_class (a larger test split narrows the reported CIs)

    def split_root(self, split: str) -> Path:
        """The ``<domain>/<class>/*.png`` root of ``split``."""
        return split_root(self.root, split)


def split_root(root: str | Path, split: str) -> Path:
    if split not in DATASET_SPLITS:
        raise ClapEdgeError(f"unknown dataset split {split!r}; known: {', '.join(DATASET_SPLITS)}")
    return Path(root) / split


def generate(domain: str, split: str, per_class: int, seed: int = 0) -> tuple[np.ndarray, Factors]:
    """``per_class`` images of every class for one (domain, split): uint8 [N, 32, 32, 3] and their factors."""
    if per_class < 1:
        raise ClapEdgeError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(split_seed(seed, domain, split))
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    factors = sample_factors(len(labels), domain, rng, labels=labels)
    return render(factors), factors


def write_dataset(root: str | Path, domains: tuple[str, ...] | list[str] = DOMAINS,
                  splits: tuple[str, ...] | list[str] = DATASET_SPLITS, per_class: int = 100, seed: int = 0,
                  overwrite: bool = False, progress: Callable[[str, str], None] | None = None,
                  test_per_class: int | None = None) -> DatasetInfo:
    """Write PNGs for every (split, domain) under ``root`` (atomically: all or nothing).

    ``test_per_class`` sizes the test split on its own (default: ``per_class``)."""
    from PIL import Image

    for d in domains:
        domain_spec(d)
    for s in splits:
        split_root(root, s)
    info = DatasetInfo(str(root), seed, per_class, list(domains), list(splits), test_per_class=test_per_class)
    sizes = {s: per_class for s in splits} | ({"test": test_per_class} if test_per_class else {})
    try:
        with atomic_directory(root, overwrite=overwrite) as tmp:
            for split in splits:
                for domain in domains:
                    images, factors = generate(domain, split, sizes[split], seed)
                    _write_pngs(tmp / split / domain, images, factors.label, Image)
                    if progress is not None:
                        progress(split, domain)
            (tmp / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
            (tmp / INFO_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")
    except FileExistsError as e:
        raise ClapEdgeError(f"{root}: already exists; pass --force to replace it") from e
    return info


def _write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, Image) -> None:
    for c, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True, exist_ok=True)
    counts = [0] * len(CLASSES)
    for img, label in zip(images, labels):
        Image.fromarray(img).save(folder / CLASSES[label] / f"{CLASSES[label]}_{counts[label]:05d}.png")
        counts[label] += 1


def read_info(root: str | Path) -> DatasetInfo:
    path = Path(root) / INFO_FILE
    try:
        return DatasetInfo(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as e:
        raise ClapEdgeError(f"{path}: not a toy world dataset ({e})") from e
