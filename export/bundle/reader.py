"""Bundle: open and verify a bundle directory or .tar.

A bundle is a directory (or a .tar of one) with ``manifest.json`` and the files it lists.
This module needs only the standard library, numpy and safetensors: the runtime opens
bundles on devices that have neither torch nor open_clip. It trusts nothing: schema
version, sha256 of every file it hands out, and shapes against the manifest are checked,
and every error names the bundle, the file and the problem.
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clap_edge import __version__
from clap_edge.core.errors import BundleError
from clap_edge.export.bundle.names import (CLASSES_FILE, CLASSES_TENSOR, MANIFEST, REQUIRED_KEYS, SCHEMA_VERSION,
                                             sha256_file)


@dataclass
class Bundle:
    """An opened, verified bundle. Use :meth:`open`; files are checked before they are handed out."""

    root: Path
    manifest: dict[str, Any]
    _verified: set[str] = field(default_factory=set, repr=False)
    _tmpdir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    # ---- opening ------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True) -> "Bundle":
        """Open a bundle directory or .tar, checking the manifest and the class embeddings."""
        path = Path(path)
        tmp = None
        if path.is_file() and tarfile.is_tarfile(path):
            tmp = tempfile.TemporaryDirectory(prefix="clap-edge-bundle-")
            root = _extract_tar(path, Path(tmp.name))
        elif path.is_dir():
            root = path
        else:
            problem = "a file, but not a tar archive" if path.is_file() else "no such file or directory"
            raise BundleError(f"{path}: not a bundle directory or .tar ({problem})")
        manifest = _read_manifest(root)
        bundle = cls(root, manifest, _tmpdir=tmp)
        if verify:
            bundle.class_embeddings()  # checks sha256 and [C, d] against the manifest
        return bundle

    # ---- manifest views -----------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def preprocess(self) -> dict[str, Any]:
        return dict(self.manifest["preprocess"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(3, H, W) of the model input."""
        shape = self.manifest["inputs"][0]["shape"]
        return tuple(int(s) for s in shape[1:])  # type: ignore[return-value]

    @property
    def variants(self) -> dict[str, str]:
        """Variant name -> file name, for the variants present in this bundle."""
        return dict(self.manifest.get("variants", {}))

    def has_variant(self, name: str) -> bool:
        return name in self.variants

    # ---- files --------------------------------------------------------------------

    def file(self, name: str, verify: bool = True) -> Path:
        """Path of a bundle file after checking it exists and matches its sha256."""
        entry = self.manifest["files"].get(name)
        if entry is None:
            raise BundleError(f"{self.root}: {name!r} is not listed in {MANIFEST}")
        path = self.root / name
        if not path.is_file():
            raise BundleError(f"{self.root}: missing file {name!r} (listed in {MANIFEST})")
        if verify and name not in self._verified:
            actual = sha256_file(path)
            if actual != entry["sha256"]:
                raise BundleError(
                    f"{self.root}: {name!r} is corrupt or was modified: sha256 {actual[:16]}... "
                    f"does not match the manifest's {entry['sha256'][:16]}..."
                )
            self._verified.add(name)
        return path

    def variant_file(self, variant: str) -> Path:
        if variant not in self.variants:
            have = ", ".join(self.variants) or "none"
            raise BundleError(f"{self.root}: no {variant!r} model in this bundle (it has: {have})")
        return self.file(self.variants[variant])

    def verify_all(self) -> dict[str, str]:
        """Check every listed file; returns name -> 'ok' or the problem (never raises for a bad file)."""
        report = {}
        for name in self.manifest["files"]:
            try:
                self.file(name)
                report[name] = "ok"
            except BundleError as e:
                report[name] = str(e).split(": ", 1)[-1]
        return report

    def class_embeddings(self) -> np.ndarray:
        """The L2-normalised class embeddings [C, d], checked against the manifest."""
        from safetensors.numpy import load_file

        path = self.file(CLASSES_FILE)
        try:
            emb = load_file(str(path))[CLASSES_TENSOR]
        except Exception as e:
            raise BundleError(f"{self.root}: {CLASSES_FILE} is unreadable ({e})") from e
        expected = (len(self.class_names), self.embed_dim)
        if emb.shape != expected:
            raise BundleError(
                f"{self.root}: {CLASSES_FILE} has shape {list(emb.shape)} but the manifest lists "
                f"{expected[0]} classes of dimension {expected[1]}"
            )
        return emb

    def close(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"{root}: missing file {MANIFEST!r} (not a clap-edge bundle?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: manifest must be a JSON object")
    version = manifest.get("schema_version")
    if not isinstance(version, int):
        raise BundleError(f"{path}: missing or non-integer schema_version")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{path}: schema_version {version} is newer than this clap-edge ({__version__}) reads "
            f"(<= {SCHEMA_VERSION}); upgrade clap-edge"
        )
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{path}: manifest is missing fields {missing}")
    _check_manifest_types(path, manifest)
    if len(set(manifest["class_names"])) != len(manifest["class_names"]):
        raise BundleError(f"{path}: class_names contains duplicates")
    return manifest


def _check_manifest_types(path: Path, m: dict[str, Any]) -> None:
    """The structure the rest of the code indexes into, so a malformed manifest is an error, not a traceback."""
    def bad(what: str) -> BundleError:
        return BundleError(f"{path}: manifest field {what}")

    names = m["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(c, str) for c in names):
        raise bad("class_names must be a non-empty list of strings")
    if not isinstance(m["embed_dim"], int) or m["embed_dim"] < 1:
        raise bad("embed_dim must be a positive integer")
    if not isinstance(m["preprocess"], dict):
        raise bad("preprocess must be an object")
    inputs = m["inputs"]
    if (not isinstance(inputs, list) or not inputs or not isinstance(inputs[0], dict)
            or not isinstance(inputs[0].get("shape"), list) or len(inputs[0]["shape"]) != 4):
        raise bad("inputs must list the image input with a 4-D shape [N, 3, H, W]")
    if not isinstance(m["outputs"], list) or not all(isinstance(o, dict) for o in m["outputs"]):
        raise bad("outputs must be a list of objects")
    files = m["files"]
    if not isinstance(files, dict):
        raise bad("files must be an object of file name -> {sha256, bytes}")
    for name, entry in files.items():
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or not parts:
            raise bad(f"files lists {name!r}, which is outside the bundle")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise bad(f"files[{name!r}] has no sha256")
    variants = m.get("variants", {})
    if not isinstance(variants, dict) or any(f not in files for f in variants.values()):
        raise bad("variants must map variant names to files listed in files")


def _extract_tar(tar_path: Path, dest: Path) -> Path:
    try:
        with tarfile.open(tar_path) as tar:
            tar.extractall(dest, filter="data")  # refuses absolute paths, '..' and links out of dest
    except (tarfile.TarError, OSError) as e:
        raise BundleError(f"{tar_path}: cannot unpack bundle tar ({e})") from e
    return dest
