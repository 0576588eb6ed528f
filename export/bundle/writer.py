"""BundleWriter: collect files and manifest fields, write the bundle directory atomically."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from clap_edge import __version__
from clap_edge.core.errors import BundleError
from clap_edge.core.io import atomic_directory, atomic_path
from clap_edge.export.bundle.manifest import (EngineEntry, FileEntry, Manifest, ManifestFieldError, dumps, loads,
                                                to_json)
from clap_edge.export.bundle.names import (CLASSES_BIAS, CLASSES_FILE, CLASSES_TENSOR, MANIFEST, MANIFEST_DIGEST, META_FILES,
                                             SCHEMA_VERSION, SIGNATURE_FILE, VARIANT_FILES, sha256_file)

log = logging.getLogger(__name__)

__all__ = ["BundleWriter", "save_classes", "pack_tar", "write_manifest", "file_entries", "add_to_bundle"]


class BundleWriter:
    """Collects files and manifest fields, then writes the bundle directory atomically.

    >>> with BundleWriter(out, overwrite=True) as w:       # doctest: +SKIP
    ...     w.add_file("model.onnx", tmp_onnx_path)
    ...     w.manifest = Manifest(model=..., class_names=..., files={}, ...)
    The directory appears, complete, only when the block exits without an error. The writer fills in
    ``files`` (every staged file with its sha256), the variants of the files it was given, the schema
    version and the clap-edge version; everything else is the :class:`Manifest` it was handed.
    """

    def __init__(self, out: str | os.PathLike, overwrite: bool = False):
        self.out = Path(out)
        self.overwrite = overwrite
        self.manifest: Manifest | None = None
        self._variants: dict[str, str] = {}
        self._ctx = None
        self.staging: Path | None = None

    def __enter__(self) -> "BundleWriter":
        self._ctx = atomic_directory(self.out, overwrite=self.overwrite)
        self.staging = self._ctx.__enter__()
        return self

    def add_file(self, name: str, source: str | os.PathLike | bytes | None = None) -> Path:
        """Place a file in the bundle (copied from a path, written from bytes, or already in staging)."""
        assert self.staging is not None, "use BundleWriter as a context manager"
        dest = self.staging / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            dest.write_bytes(source)
        elif source is not None and Path(source) != dest:
            shutil.copyfile(source, dest)
        if not dest.is_file():
            raise BundleError(f"bundle file {name!r} was never written")
        variant = next((v for v, f in VARIANT_FILES.items() if f == name), None)
        if variant is not None:
            self._variants[variant] = name
        return dest

    def add_class_embeddings(self, embeddings: np.ndarray, bias: np.ndarray | None = None) -> Path:
        """classes.safetensors: the class matrix [C, d] (and the bias [C]; the manifest's classes.bias says so)."""
        assert self.staging is not None
        save_classes(self.staging / CLASSES_FILE, embeddings, bias)
        return self.add_file(CLASSES_FILE)

    def _finalise(self) -> None:
        assert self.staging is not None
        if not isinstance(self.manifest, Manifest):
            raise BundleError(f"{self.out}: no manifest to write (set BundleWriter.manifest to a Manifest)")
        names = sorted(p.relative_to(self.staging).as_posix() for p in self.staging.rglob("*") if p.is_file())
        listed = file_entries(self.staging, [n for n in names if n not in META_FILES])
        files = {n: FileEntry(**e) for n, e in listed.items()}
        final = replace(self.manifest, files=files, variants={**self._variants, **self.manifest.variants},
                        schema_version=SCHEMA_VERSION, clap_edge_version=self.manifest.clap_edge_version or __version__)
        write_manifest(self.staging, final)

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._ctx is not None
        if exc_type is None:
            try:
                self._finalise()
            except BaseException as e:
                self._ctx.__exit__(type(e), e, e.__traceback__)
                raise
        self._ctx.__exit__(exc_type, exc, tb)


def save_classes(path: str | os.PathLike, embeddings: np.ndarray, bias: np.ndarray | None = None) -> None:
    """Write classes.safetensors (W under CLASSES_TENSOR, b under CLASSES_BIAS if given) atomically."""
    from safetensors.numpy import save_file

    tensors = {CLASSES_TENSOR: np.ascontiguousarray(embeddings, dtype=np.float32)}
    if bias is not None:
        tensors[CLASSES_BIAS] = np.ascontiguousarray(bias, dtype=np.float32)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def pack_tar(bundle_dir: str | os.PathLike, tar_path: str | os.PathLike) -> Path:
    """Pack a bundle directory into a .tar (atomically) for shipping to a device."""
    bundle_dir = Path(bundle_dir)
    with atomic_path(tar_path) as tmp:
        with tarfile.open(tmp, "w") as tar:
            for path in sorted(bundle_dir.rglob("*")):
                tar.add(path, arcname=path.relative_to(bundle_dir).as_posix(), recursive=False)
    return Path(tar_path)


def write_manifest(root: str | os.PathLike, manifest: "Manifest | dict[str, Any]", validate: bool = True) -> Path:
    """Write ``manifest.json`` and its digest ``manifest.sha256`` into a bundle directory: the one place a
    manifest is written. The manifest is checked first (:meth:`Manifest.from_dict`, as a reader would) and
    what is written is that checked :class:`Manifest`; a raw dict is accepted for tests that craft cases
    (``validate=False`` writes it as it is, for tests that make broken bundles on purpose)."""
    data = manifest.to_dict() if isinstance(manifest, Manifest) else manifest
    if validate:
        try:
            data = Manifest.from_dict(data).to_dict()
        except ManifestFieldError as e:
            raise BundleError(f"{root}: refusing to write an invalid {MANIFEST}: {e}") from None
    text = dumps(data) if validate else json.dumps(data, indent=2)
    raw = text.encode("utf-8")
    path = Path(root) / MANIFEST
    with atomic_path(path) as tmp:
        tmp.write_bytes(raw)
    # Written second: a crash in between leaves a mismatch that the reader reports (never a silent one).
    with atomic_path(Path(root) / MANIFEST_DIGEST) as tmp:
        tmp.write_text(f"{hashlib.sha256(raw).hexdigest()}  {MANIFEST}\n", encoding="ascii")
    return path


def file_entries(root: str | os.PathLike, names: list[str]) -> dict[str, dict[str, Any]]:
    """``files`` entries ({sha256, bytes}) for bundle-relative ``names``."""
    root = Path(root)
    return {n: {"sha256": sha256_file(root / n), "bytes": (root / n).stat().st_size} for n in names}


def add_to_bundle(root: str | os.PathLike, files: dict[str, str | os.PathLike | bytes],
                  engines: "Iterable[EngineEntry | dict[str, Any]] | None" = None) -> Manifest:
    """Add files to an existing bundle directory (e.g. compiled engines) and list them in its manifest;
    ``engines`` (if given) replaces the manifest's ``engines`` index.

    Each file is written atomically before the manifest that lists it, so a crash leaves either the
    old manifest (the new file unlisted, ignored) or the new one with every listed file complete.
    Returns the new manifest."""
    root = Path(root)
    try:
        manifest = Manifest.from_dict(loads((root / MANIFEST).read_bytes()))
    except (OSError, ManifestFieldError) as e:
        raise BundleError(f"{root}: cannot read {MANIFEST} ({e})") from None
    if (root / SIGNATURE_FILE).exists():  # it no longer matches: say so rather than leave a stale signature
        (root / SIGNATURE_FILE).unlink()
        log.warning("%s: %s removed (the bundle changed); sign it again with `clap-edge sign`", root, SIGNATURE_FILE)
    for name, source in files.items():
        dest = root / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            if isinstance(source, bytes):
                tmp.write_bytes(source)
            else:
                shutil.copyfile(source, tmp)
    data = manifest.to_dict()  # edited as JSON and checked again in full: the new entries obey the same rules
    data["files"].update(file_entries(root, list(files)))
    if engines is not None:
        data["engines"] = [to_json(e) for e in engines]
    try:
        manifest = Manifest.from_dict(data)
    except ManifestFieldError as e:
        raise BundleError(f"{root}: refusing to write an invalid {MANIFEST}: {e}") from None
    write_manifest(root, manifest)
    return manifest
