"""Bundle: open and verify a bundle directory or .tar. Every check on a bundle happens here.

A bundle is a directory (or a .tar of one) with ``manifest.json``, ``manifest.sha256`` and the
files the manifest lists (optionally ``bundle.sig``). This module needs only the standard library,
numpy and safetensors: the runtime opens bundles on devices without torch or open_clip. It trusts
nothing: a .tar is unpacked within bounds; the manifest must match its digest and pass
:meth:`Manifest.from_dict` (types, ranges, finiteness, depth, sizes, shapes vs the class list);
with trusted keys the signature must verify; each file is checked against its sha256 before it is
handed out, and the class embeddings against the manifest. Every error names the bundle as the
user gave it (the .tar, not a temp folder), the file and the problem.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from clap_edge.core.errors import BundleError
from clap_edge.core.io import read_regular, staging_tempdir
from clap_edge.core.preprocess import PreprocessCfg
from clap_edge.export.bundle.filehead import check_file
from clap_edge.export.bundle.manifest import LIMITS, Manifest, ManifestFieldError, check_version, loads
from clap_edge.export.bundle.names import (CALIBRATION_FILE, CLASSES_BIAS, CLASSES_FILE, CLASSES_TENSOR, MANIFEST,
                                             MANIFEST_DIGEST, sha256_file)


@dataclass(frozen=True)
class TarLimits:
    """Bounds on unpacking a .tar bundle (a small archive must not fill the disk)."""

    max_bytes: int = 16 << 30
    max_members: int = 10_000
    max_ratio: float = 50.0  # unpacked bytes per archive byte, checked past `ratio_floor`
    ratio_floor: int = 64 << 20


@dataclass
class Bundle:
    """An opened, verified bundle. Use :meth:`open`; files are checked before they are handed out."""

    root: Path
    manifest: Manifest | None  # None only while :meth:`open` reads it
    manifest_sha256: str | None = None  # of the manifest.json bytes `manifest` was parsed from
    source: Path | None = None  # what the user named (the .tar for a tar bundle)
    signature: Any = None  # a SignatureCheck when opened with trusted keys
    _verified: set[str] = field(default_factory=set, repr=False)
    _tmpdir: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    # ---- opening ------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True,
             trusted_keys: Iterable[str | os.PathLike] | None = None, tar_limits: TarLimits | None = None
             ) -> "Bundle":
        """Open a bundle directory or .tar: manifest, its digest, (signature), class embeddings.

        ``trusted_keys``: public key PEMs; when given, the bundle must carry a signature by one of
        them covering every file (:mod:`clap_edge.export.bundle.signing`)."""
        path = Path(path)
        tmp = None
        if path.is_file() and _is_tar(path):
            tmp = staging_tempdir("bundle")
            try:
                root = _extract_tar(path, Path(tmp.name), tar_limits or TarLimits())
            except BaseException:
                tmp.cleanup()
                raise
        elif path.is_dir():
            root = path
        else:
            problem = "a file, but not a tar archive" if path.is_file() else \
                "not a regular file or folder" if path.exists() else "no such file or directory"
            raise BundleError(f"{path}: not a bundle directory or .tar ({problem})")
        bundle = cls(root, None, source=path, _tmpdir=tmp)
        try:
            if trusted_keys is not None:
                from clap_edge.export.bundle.signing import verify_signature

                bundle.signature = verify_signature(root, list(trusted_keys), label=bundle.label)
            bundle.manifest, bundle.manifest_sha256 = _read_manifest(root, bundle.label)
            if bundle.signature is not None:
                bundle._check_signed_digests()
            if verify:
                bundle.class_embeddings()  # checks sha256, dtype, finiteness and [C, d] against the manifest
        except BaseException:
            bundle.close()
            raise
        return bundle

    @property
    def label(self) -> str:
        """The bundle as the user named it, for messages."""
        return str(self.source if self.source is not None else self.root)

    def _check_signed_digests(self) -> None:
        """The manifest read after the signature check must be the signed one, and every file it lists must
        have been signed with the digest it lists. Files are still hashed again when loaded (:meth:`file`):
        the signature must cover the bytes that are loaded, not the bytes that were there at the check."""
        digests = self.signature.digests
        if digests.get(MANIFEST) != self.manifest_sha256:
            raise BundleError(f"{self.label}: {MANIFEST} changed after its signature was checked (sha256 "
                              f"{self.manifest_sha256[:16]}... is not the signed one); nothing was loaded")
        for name, entry in self.manifest.files.items():
            if name not in digests:
                raise BundleError(f"{self.label}: {name!r} is listed in {MANIFEST} but missing from the bundle")
            if digests[name] != entry.sha256:
                raise BundleError(f"{self.label}: {name!r} was signed with sha256 {digests[name][:16]}... but the "
                                  f"manifest lists {entry.sha256[:16]}...; re-export and sign again")

    # ---- manifest views -----------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.class_names)

    @property
    def embed_dim(self) -> int:
        return self.manifest.embed_dim

    @property
    def preprocess(self) -> PreprocessCfg:
        return self.manifest.preprocess

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(3, H, W) of the model input."""
        return self.manifest.input_shape

    @property
    def variants(self) -> dict[str, str]:
        """Variant name -> file name, for the variants present in this bundle."""
        return dict(self.manifest.variants)

    @property
    def file_names(self) -> list[str]:
        """Every file the manifest lists (bundle-relative)."""
        return list(self.manifest.files)

    def has_variant(self, name: str) -> bool:
        return name in self.variants

    # ---- files --------------------------------------------------------------------

    def file(self, name: str, verify: bool = True) -> Path:
        """Path of a bundle file after checking it exists and matches its sha256."""
        entry = self.manifest.files.get(name)
        if entry is None:
            raise BundleError(f"{self.label}: {name!r} is not listed in {MANIFEST}")
        path = self.root / name
        if path.is_symlink() or not path.is_file():
            what = "a symbolic link" if path.is_symlink() else "not a regular file" if path.exists() else None
            raise BundleError(f"{self.label}: " + (f"{name!r} is {what}" if what else
                                                    f"missing file {name!r} (listed in {MANIFEST})"))
        if verify and name not in self._verified:
            problem = check_file(path, name, int(entry.bytes))  # size and magic bytes before hashing
            if problem:
                raise BundleError(f"{self.label}: {name!r} {problem}")
            actual = sha256_file(path)
            if actual != entry.sha256:
                raise BundleError(
                    f"{self.label}: {name!r} is corrupt or was modified: sha256 {actual[:16]}... "
                    f"does not match the manifest's {entry.sha256[:16]}..."
                )
            self._verified.add(name)
        return path

    def variant_file(self, variant: str) -> Path:
        if variant not in self.variants:
            have = ", ".join(self.variants) or "none"
            raise BundleError(f"{self.label}: no {variant!r} model in this bundle (it has: {have})")
        return self.file(self.variants[variant])

    def verify_all(self) -> dict[str, str]:
        """Check every listed file; returns name -> 'ok' or the problem (never raises for a bad file)."""
        report = {}
        for name in self.manifest.files:
            try:
                self.file(name)
                report[name] = "ok"
            except BundleError as e:
                report[name] = str(e)[len(self.label) + 2:] if str(e).startswith(self.label) else str(e)
        return report

    def calibration(self) -> np.ndarray | None:
        """The preprocessed parity batch [n, 3, H, W] the export recorded (sha256-checked), or None if absent."""
        if CALIBRATION_FILE not in self.manifest.files:
            return None
        path = self.file(CALIBRATION_FILE)
        try:  # sha256 matching proves only that the exporter wrote these bytes, not that they are an array
            batch = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise BundleError(f"{self.label}: {CALIBRATION_FILE} is unreadable ({e})") from None
        if batch.ndim != 4 or batch.shape[0] < 1 or batch.shape[1] != 3 or batch.dtype.kind != "f" \
                or not np.isfinite(batch).all():
            raise BundleError(f"{self.label}: {CALIBRATION_FILE} must be a finite float batch [n, 3, H, W] "
                              f"(found {batch.dtype} {list(batch.shape)})")
        return batch.astype(np.float32)

    def class_embeddings(self) -> np.ndarray:
        """The class matrix W [C, d] (float32, finite), checked against the manifest."""
        return self.class_tensors()[0]

    def class_bias(self) -> np.ndarray | None:
        """The class bias b [C] (float32, finite) when the manifest's ``classes.bias`` is true, else None."""
        return self.class_tensors()[1]

    def class_tensors(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(W [C, d], b [C] or None) from classes.safetensors, checked against the manifest."""
        from safetensors.numpy import load_file

        path = self.file(CLASSES_FILE)
        try:
            tensors = load_file(str(path))
            emb = tensors[CLASSES_TENSOR]
        except Exception as e:
            raise BundleError(f"{self.label}: {CLASSES_FILE} is unreadable ({e})") from e
        expected = (len(self.class_names), self.embed_dim)
        if emb.shape != expected:
            raise BundleError(
                f"{self.label}: {CLASSES_FILE} has shape {list(emb.shape)} but the manifest lists "
                f"{expected[0]} classes of dimension {expected[1]}"
            )
        _check_finite32(emb, self.label, CLASSES_TENSOR)
        bias = None
        if self.manifest.classes.bias:
            bias = tensors.get(CLASSES_BIAS)
            if bias is None or bias.shape != (expected[0],):
                raise BundleError(f"{self.label}: {CLASSES_FILE} must hold {CLASSES_BIAS} of shape [{expected[0]}] "
                                  "(the manifest's classes.bias is true), found "
                                  f"{'none' if bias is None else list(bias.shape)}")
            _check_finite32(bias, self.label, CLASSES_BIAS)
        return emb, bias

    def close(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _check_finite32(a: np.ndarray, label: str, name: str) -> None:
    if a.dtype != np.float32 or not np.isfinite(a).all():
        raise BundleError(f"{label}: {CLASSES_FILE} must hold finite float32 values "
                          f"({name}: dtype {a.dtype}, {int((~np.isfinite(a)).sum())} non-finite)")


def _read_manifest(root: Path, label: str) -> tuple[Manifest, str]:
    """The manifest, parsed and checked completely (version, digest, then every field), and the sha256 of
    the bytes it was parsed from."""
    where = f"{label}: {MANIFEST}"
    try:
        raw = read_regular(root / MANIFEST, LIMITS["manifest_bytes"])
    except FileNotFoundError:
        raise BundleError(f"{label}: missing file {MANIFEST!r} (not a clap-edge bundle?)") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"{where}: cannot read it ({e})") from None
    try:
        data = loads(raw)
        check_version(data)  # before the digest: a newer layout may keep its digest elsewhere
    except ManifestFieldError as e:
        raise BundleError(f"{where}: {e}") from None
    digest = _check_digest(root, raw, label)
    try:
        return Manifest.from_dict(data), digest
    except ManifestFieldError as e:
        raise BundleError(f"{where}: {e}") from None


def _check_digest(root: Path, raw: bytes, label: str) -> str:
    try:
        line = read_regular(root / MANIFEST_DIGEST, 4096).decode("ascii", "replace").split()
    except FileNotFoundError:
        raise BundleError(f"{label}: missing file {MANIFEST_DIGEST!r} (the manifest's checksum); "
                          f"re-export the bundle") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"{label}: {MANIFEST_DIGEST}: cannot read it ({e})") from None
    actual = hashlib.sha256(raw).hexdigest()
    if len(line) != 2 or line[0].lower() != actual or line[1].lstrip("*") != MANIFEST:
        raise BundleError(f"{label}: {MANIFEST} was modified after export: its sha256 {actual[:16]}... does not "
                          f"match {MANIFEST_DIGEST}")
    return actual


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def _extract_tar(tar_path: Path, dest: Path, limits: TarLimits) -> Path:
    """Unpack within bounds: member count, total bytes, and bytes per archive byte (a gzip bomb)."""
    archive_bytes = max(1, tar_path.stat().st_size)
    members, total = [], 0
    try:
        with tarfile.open(tar_path) as tar:
            for member in tar:  # headers only: stops at the first bound, before writing anything
                members.append(member)
                total += max(0, member.size)
                if len(members) > limits.max_members:
                    raise BundleError(f"{tar_path}: bundle tar has more than {limits.max_members:,} members; "
                                      "refusing to unpack it")
                if total > limits.max_bytes:
                    raise BundleError(f"{tar_path}: bundle tar unpacks to more than {limits.max_bytes:,} bytes; "
                                      "refusing to unpack it")
                if total > limits.ratio_floor and total > limits.max_ratio * archive_bytes:
                    raise BundleError(f"{tar_path}: bundle tar unpacks to over {limits.max_ratio:g}x its size "
                                      f"({archive_bytes:,} bytes -> {total:,}+); refusing to unpack it")
            tar.extractall(dest, members=members, filter="data")  # refuses absolute paths, '..', links out
    except BundleError:
        raise
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BundleError(f"{tar_path}: cannot unpack bundle tar ({_relabel(e, dest, tar_path)})") from None
    return dest


def _relabel(error: BaseException, tmp: Path, tar_path: Path) -> str:
    return str(error).replace(str(tmp), f"{tar_path}:")
