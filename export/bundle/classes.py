"""Classes as data (schema 4): the class matrix every runtime applies, and rewriting it in a bundle.

The image model ends at the L2-normalised embedding; ``classes.safetensors`` holds W [C, d] (and b [C] when the
manifest's ``classes.bias`` is true), so a runtime computes ``logits = logit_scale * embedding @ W.T + b``.
Changing a bundle's classes (``clap-edge classes``, ``clap-edge adapt``) is then :func:`rewrite_classes`: one
small file and the manifest, never a model, a variant or an engine. Torch-free (numpy, safetensors).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clap_edge.core.errors import BundleError
from clap_edge.core.io import atomic_directory
from clap_edge.export.bundle.manifest import ClassesInfo, Manifest, ManifestFieldError, check_unique_names
from clap_edge.export.bundle.names import CLASSES_FILE, META_FILES, SIGNATURE_FILE
from clap_edge.export.bundle.reader import Bundle
from clap_edge.export.bundle.writer import file_entries, save_classes, write_manifest

log = logging.getLogger(__name__)

__all__ = ["ClassMatrix", "checked_class_tensors", "rewrite_classes"]


@dataclass(frozen=True)
class ClassMatrix:
    """W [C, d], optional b [C] and the logit scale: ``logits(emb) = scale * emb @ W.T + b``."""

    weights: np.ndarray
    bias: np.ndarray | None
    scale: float

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> "ClassMatrix":
        weights, bias = bundle.class_tensors()
        return cls(weights, bias, float(bundle.manifest.logit_scale))

    @property
    def num_classes(self) -> int:
        return int(self.weights.shape[0])

    def logits(self, embedding: np.ndarray) -> np.ndarray:
        """[N, d] float32 embeddings -> [N, C] float32 logits (float32 math, as the C++ runtime does)."""
        out = (np.float32(self.scale) * np.asarray(embedding, np.float32)) @ self.weights.T
        if self.bias is not None:
            out += self.bias
        return out.astype(np.float32, copy=False)


def rewrite_classes(bundle: str | os.PathLike | Bundle, out: str | os.PathLike | None = None, *,
                    class_names: Sequence[str], class_matrix: np.ndarray, bias: np.ndarray | None = None,
                    provenance: dict[str, Any] | None = None, key: str | os.PathLike | None = None,
                    in_place: bool = False) -> Path:
    """Write ``bundle`` with new classes: a new bundle at ``out`` (atomically) or, with ``in_place``, the same one.

    ``class_matrix`` float32 [C, d] (used as given: normalise it first if the classes are zero-shot text),
    ``bias`` float32 [C] or None, ``provenance`` a small JSON dict recorded as the manifest's
    ``classes.provenance``. Only classes.safetensors and the manifest change (other files are hard-linked
    when possible, else copied). A signature no longer matches: it is dropped with a warning, or made
    again with ``key`` (a private key PEM). Returns the written bundle's directory."""
    opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle, verify=False)
    try:
        return _rewrite(opened, out, list(class_names), class_matrix, bias, provenance, key, in_place)
    finally:
        if not isinstance(bundle, Bundle):
            opened.close()


def _rewrite(b: Bundle, out, names: list[str], matrix, bias, provenance, key, in_place: bool) -> Path:
    if in_place == (out is not None):
        raise BundleError(f"{b.label}: give either an output folder or in_place=True (not both, not neither)")
    if in_place and b.root != b.source:
        raise BundleError(f"{b.label}: a .tar bundle cannot be changed in place; write a new bundle with out=")
    weights, bias = _checked_tensors(b, names, matrix, bias)
    data = replace(b.manifest, class_names=tuple(names),
                   classes=ClassesInfo(bias=bias is not None, provenance=dict(provenance or {}))).to_dict()
    try:  # the same checks a reader makes (names, JSON values of the provenance)
        Manifest.from_dict(data)
    except ManifestFieldError as e:
        raise BundleError(f"{b.label}: the new classes make an invalid manifest: {e}") from None
    had_signature = (b.root / SIGNATURE_FILE).exists()
    if in_place:
        target = b.root
        if had_signature:  # it no longer matches; remove it first so no moment shows a stale one as valid
            (target / SIGNATURE_FILE).unlink()
        _write(target, data, weights, bias)
    else:
        target = Path(out)
        if target.resolve() == b.root.resolve():
            raise BundleError(f"{target}: the output is the bundle itself; use in_place=True")
        with atomic_directory(target, overwrite=True) as staging:
            for name in b.manifest.files:
                if name != CLASSES_FILE:
                    _link_or_copy(b.root / name, staging / name)
            _write(staging, data, weights, bias)
    if key is not None:
        from clap_edge.export.bundle.signing import sign_bundle

        sign_bundle(target, key)
    elif had_signature:
        log.warning("%s: %s dropped (the classes changed); sign it again with `clap-edge sign` or pass a key",
                    target, SIGNATURE_FILE)
    return target


def _write(root: Path, data: dict[str, Any], weights: np.ndarray, bias: np.ndarray | None) -> None:
    # classes first, manifest second: a crash between them leaves a digest mismatch a reader reports
    save_classes(root / CLASSES_FILE, weights, bias)
    data["files"].update(file_entries(root, [CLASSES_FILE]))
    write_manifest(root, data)


def _checked_tensors(b: Bundle, names: list[str], matrix, bias) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        return checked_class_tensors(names, matrix, bias, b.manifest.embed_dim)
    except ValueError as e:
        raise BundleError(f"{b.label}: {e}") from None


def checked_class_tensors(names: list[str], matrix, bias, embed_dim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """W [C, d] and b [C] (or None) as float32 for ``names``; ValueError when a name, shape or value is wrong.

    The one check of a class matrix, for a bundle being rewritten and for Classifier.set_class_matrix."""
    if not names:
        raise ValueError("no class names")
    try:
        check_unique_names(names)
    except ManifestFieldError as e:
        raise ValueError(str(e)) from None
    weights = np.ascontiguousarray(matrix, dtype=np.float32)
    want = (len(names), embed_dim)
    if weights.shape != want:
        raise ValueError(f"the class matrix has shape {list(weights.shape)}; {len(names)} classes of "
                         f"this bundle's embedding need {list(want)}")
    if bias is not None:
        bias = np.ascontiguousarray(bias, dtype=np.float32)
        if bias.shape != (len(names),):
            raise ValueError(f"the class bias has shape {list(bias.shape)}, expected [{len(names)}]")
    for what, a in (("class matrix", weights), ("class bias", bias)):
        if a is not None and not np.isfinite(a).all():
            raise ValueError(f"the {what} holds {int((~np.isfinite(a)).sum())} NaN or infinite values")
    return weights, bias


def _link_or_copy(src: Path, dest: Path) -> None:
    """Hard-link (no copy of a large model; files are only ever replaced by rename, never edited) or copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.name in META_FILES:
        return
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
