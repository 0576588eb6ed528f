"""Input checks a command runs before its first expensive step: names, paths, extras, class sets, outputs.

Each check is cheap (no torch, no open_clip import, no image decoded) and raises ClapEdgeError, which the
CLI prints as one line with exit code 2. A command calls them all before it imports a heavy library,
writes a file or encodes an image, so a typo costs milliseconds, not a model load.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from pathlib import Path

from clap_edge.core.errors import ClapEdgeError, ModelLoadError

# pip extra -> the top-level modules it installs that commands import (pyproject.toml).
EXTRA_MODULES = {"train": ("torch", "torchvision", "open_clip", "onnx", "matplotlib"), "openvino": ("openvino",),
                 "serve": ("ray",), "sign": ("model_signing",)}
HF_HUB_PREFIX = "hf-hub:"


def require_extra(command: str, extra: str) -> None:
    """Fail (one line naming the extra) when a module of ``extra`` is not installed; imports nothing."""
    for module in EXTRA_MODULES[extra]:
        if importlib.util.find_spec(module) is None:
            raise ClapEdgeError(f"`clap-edge {command}` needs the [{extra}] extra ({module} is not installed): "
                                f"pip install 'clap-edge[{extra}]'")


def known_model_names() -> list[str]:
    """The model names open_clip knows (its JSON configs) plus ours, read from the config folders.

    open_clip's ``list_models()`` is the same list, but importing open_clip imports torch and
    torchvision (6+ CPU-seconds); the config files are what it lists (tests/test_readme.py checks
    that the two agree)."""
    spec = importlib.util.find_spec("open_clip")
    folders = [Path(__file__).resolve().parents[2] / "model_configs"]
    if spec is not None and spec.submodule_search_locations:
        folders.append(Path(next(iter(spec.submodule_search_locations))) / "model_configs")
    return sorted({p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.json")})


def check_model_name(model_name: str | None) -> None:
    """An unknown ``--model`` fails here, suggesting the closest names (``hf-hub:`` ids pass through)."""
    if model_name is None or model_name.startswith(HF_HUB_PREFIX):
        return
    known = known_model_names()
    if model_name in known:
        return
    close = difflib.get_close_matches(model_name, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See `clap-edge models` for the list."
    raise ModelLoadError(f"unknown model {model_name!r}.{hint}")


def check_pretrained_path(pretrained: str | None) -> None:
    """A ``--pretrained`` that names a file (has a folder or a suffix) must exist; tags are checked on load."""
    if not pretrained or pretrained.startswith(HF_HUB_PREFIX):
        return
    if os.path.sep in pretrained or Path(pretrained).suffix:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"checkpoint file not found: {path}")


def check_output_file(path: str | os.PathLike, option: str = "--out") -> None:
    """``path`` can be created: not a folder, and its nearest existing parent is a writable folder."""
    target = Path(path)
    if target.is_dir():
        raise ClapEdgeError(f"{option} {target}: is a folder, expected a file path")
    _check_writable_parent(target, option)


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> None:
    """``path`` is (or can become) a writable folder."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ClapEdgeError(f"{option} {target}: exists and is not a folder")
    if target.is_dir():
        if not os.access(target, os.W_OK | os.X_OK):
            raise ClapEdgeError(f"{option} {target}: folder is not writable")
        return
    _check_writable_parent(target, option)


def _check_writable_parent(target: Path, option: str) -> None:
    parent = target.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ClapEdgeError(f"{option} {target}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ClapEdgeError(f"{option} {target}: cannot write in {parent} (permission denied)")


def dataset_classes(dataset: str | os.PathLike) -> tuple[Path, list[str]]:
    """The test split of a dataset folder and its class names (a folder listing: no image is opened)."""
    from clap_edge.core.datasets import find_splits, scan_domains

    test = find_splits(dataset)["test"]
    return test, scan_domains(test)[0]


def check_bundle_classes(bundle_label: str, bundle_classes: list[str], dataset: str | os.PathLike,
                         data_classes: list[str]) -> None:
    """A bundle scored on a dataset must know every class the dataset has, and the dataset every bundle class."""
    extra = [c for c in bundle_classes if c not in data_classes]
    unknown = [c for c in data_classes if c not in bundle_classes]
    if extra or unknown:
        parts = ([f"the bundle has classes the dataset does not: {extra}"] if extra else []) + \
                ([f"the dataset has classes the bundle does not: {unknown}"] if unknown else [])
        raise ClapEdgeError(f"bundle {bundle_label} vs dataset {dataset}: " + "; ".join(parts))


__all__ = ["require_extra", "known_model_names", "check_model_name", "check_pretrained_path", "check_output_file",
           "check_output_dir", "dataset_classes", "check_bundle_classes"]
