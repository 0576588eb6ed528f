"""A private copy of a bundle, opened from the copy: a check then covers the very bytes that are loaded.

Checking a bundle at a path and loading it later (another process, another moment) lets a bundle
swapped in between be loaded unchecked. :func:`open_snapshot` copies the bundle (regular files only,
no symlinks, bounded) into a fresh 0700 staging folder and opens *the copy* with the usual checks
(signature with ``trusted_keys``, manifest digest, file digests); ``manifest_sha256`` pins the
manifest a driver checked, so a differently signed bundle swapped in is refused too.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable

from clap_edge.core.errors import BundleError
from clap_edge.core.io import open_no_wait, staging_tempdir
from clap_edge.export.bundle.reader import Bundle, TarLimits

__all__ = ["open_snapshot", "copy_bundle"]


def open_snapshot(path: str | os.PathLike, trusted_keys: Iterable[str | os.PathLike] | None = None,
                  manifest_sha256: str | None = None, trusted_pems: Iterable[bytes] = ()) -> Bundle:
    """Copy ``path`` (directory or .tar) privately and open the copy; closing the bundle removes it.

    ``trusted_pems``: public keys as PEM bytes (for a process that cannot read the caller's key files)."""
    tmp = staging_tempdir("snapshot")
    try:
        root = Path(tmp.name)
        os.chmod(root, 0o700)
        keys = list(trusted_keys or ())
        for i, pem in enumerate(trusted_pems):
            key = root / f"key{i}.pem"
            key.write_bytes(pem)  # the key bytes the driver read: a key file swapped later changes nothing
            keys.append(key)
        try:
            copy = copy_bundle(Path(path), root / "bundle")
        except OSError as e:  # a full temp disk, an unreadable file: one line, the partial copy is removed
            raise BundleError(f"{path}: cannot make a private copy to check ({e.strerror or e}; in {root.parent})") \
                from None
        bundle = Bundle.open(copy, trusted_keys=keys or None)
        bundle.source = Path(path)  # messages name what the user gave
        actual = bundle.manifest_sha256  # of the very bytes the copy was opened from
        if manifest_sha256 is not None and actual != manifest_sha256:
            bundle.close()
            raise BundleError(f"{path}: the bundle changed since it was checked (manifest sha256 {actual[:16]}... "
                              f"is not the checked {manifest_sha256[:16]}...); refusing to load it")
    except BaseException:
        tmp.cleanup()
        raise
    _own(bundle, tmp)
    return bundle


def copy_bundle(src: Path, dest: Path, limits: TarLimits | None = None) -> Path:
    """Copy a .tar (one file) or a bundle folder (its regular files, one level) to ``dest``; bounded."""
    limits = limits or TarLimits()
    if src.is_file() and not src.is_symlink():
        dest.mkdir()
        target = dest / src.name
        _copy_regular(src, target, limits.max_bytes)
        return target
    if src.is_symlink() or not src.is_dir():
        raise BundleError(f"{src}: not a bundle directory or .tar (no such file or directory)"
                          if not src.exists() else f"{src}: not a bundle directory or .tar")
    dest.mkdir()
    total = 0
    with os.scandir(src) as entries:
        for n, entry in enumerate(entries):
            if n >= limits.max_members:
                raise BundleError(f"{src}: more than {limits.max_members} entries")
            if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                continue  # never listed by a valid manifest: Bundle.open refuses what is missing
            total += _copy_regular(Path(entry.path), dest / entry.name, limits.max_bytes - total)
    return dest


def _copy_regular(src: Path, dest: Path, budget: int) -> int:
    """Copy one regular file (never a FIFO, device or symlink), at most ``budget`` bytes; returns its size."""
    fd, st = open_no_wait(src, follow_symlinks=False)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{src}: not a regular file")
        if st.st_size > budget:
            raise BundleError(f"{src}: the bundle is larger than the {budget:,} bytes allowed for a copy")
        with open(dest, "wb") as out:
            shutil.copyfileobj(f, out, 1 << 20)
            size = out.tell()
    if size > budget:
        raise BundleError(f"{src}: grew past the {budget:,} bytes allowed while being copied")
    return size


def _own(bundle: Bundle, tmp: tempfile.TemporaryDirectory) -> None:
    """Make ``bundle.close()`` also remove the snapshot (after a .tar's own unpacked folder)."""
    inner = bundle._tmpdir

    class _Both:
        name = tmp.name

        @staticmethod
        def cleanup() -> None:
            if inner is not None:
                inner.cleanup()
            tmp.cleanup()

    bundle._tmpdir = _Both()  # type: ignore[assignment]
