"""Labelled image folders: ``root/<domain>/<class>/*`` (or ``root/<class>/*``), with optional splits.

No torch, so the runtime can read the same layout the
evaluator reads. A dataset root may hold ``val/`` and ``test/`` split folders (the toy
world writes them); otherwise the whole root is the test split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from clap_edge.core.errors import ClapEdgeError
from clap_edge.core.images import is_image_file

SPLITS = ("val", "test")


@dataclass
class DomainImages:
    """The image files of one domain and their class indices."""

    domain: str
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def head(self, n: int | None) -> "DomainImages":
        """The first ``n`` images per class (all if ``n`` is None): a smaller, still balanced, set."""
        if n is None:
            return self
        kept, count = DomainImages(self.domain), {}
        for path, label in zip(self.paths, self.labels):
            if count.get(label, 0) < n:
                count[label] = count.get(label, 0) + 1
                kept.paths.append(path)
                kept.labels.append(label)
        return kept


def find_splits(root: str | Path) -> dict[str, Path]:
    """``{"val": ..., "test": ...}`` when ``root`` has split folders, else ``{"test": root}``."""
    root = Path(root)
    if not root.is_dir():
        raise ClapEdgeError(f"dataset {root}: no such folder")
    splits = {s: root / s for s in SPLITS if (root / s).is_dir()}
    return splits if "test" in splits else {"test": root}


def scan_domains(root: str | Path, class_names: list[str] | None = None) -> tuple[list[str], dict[str, DomainImages]]:
    """Class names and images per domain under ``root``.

    ``root/<domain>/<class>/*`` gives one entry per domain; ``root/<class>/*`` gives one
    domain named after the folder. Folder names map to class names with ``_`` read as a
    space. With ``class_names`` given, a folder whose class is not in the list is an error
    (an unknown class cannot be scored against the model's classes).
    """
    root = Path(root)
    subdirs = _subdirs(root)
    if not subdirs:
        raise ClapEdgeError(f"dataset {root}: no class or domain folders")
    layout = {root.name: root} if any(_images_in(d) for d in subdirs) else {d.name: d for d in subdirs}
    found = class_names is None
    names = list(class_names or [])
    domains = {}
    for domain, folder in layout.items():
        images = DomainImages(domain)
        for class_dir in _subdirs(folder):
            name = class_dir.name.replace("_", " ")
            if name not in names:
                if not found:
                    raise ClapEdgeError(f"dataset {class_dir}: class {name!r} is not among the model's classes "
                                        f"({', '.join(names)})")
                names.append(name)
            files = _images_in(class_dir)
            images.paths += files
            images.labels += [names.index(name)] * len(files)
        if images.paths:
            domains[domain] = images
    if not domains:
        raise ClapEdgeError(f"dataset {root}: no image files found")
    return names, domains


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and is_image_file(f))
