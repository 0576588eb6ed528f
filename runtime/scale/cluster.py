"""Joining or starting Ray, and checking a bundle before any Ray process exists (shared by serve and Ray Data)."""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from clap_edge.core.errors import ClapEdgeError, OutputError, first_line

__all__ = ["check_bundle", "connect", "import_ray", "pin_bundle", "PinnedBundle", "claim_out", "check_out"]

# Output paths on these are not files a run can write (or read back): refused before any work.
_SPECIAL_ROOTS = ("/proc", "/sys", "/dev")


@dataclass(frozen=True)
class PinnedBundle:
    """What the driver checked, handed to every actor: where to copy the bundle from, the manifest sha256
    it must have, and the trusted keys as bytes (an actor on another node cannot read the driver's files)."""

    source: str
    manifest_sha256: str
    trusted_pems: tuple[bytes, ...] = ()


@contextlib.contextmanager
def pin_bundle(bundle: str, backend: str, trusted_keys: tuple[str, ...] = (), remote: bool = False
               ) -> Iterator[PinnedBundle]:
    """Check a private snapshot of ``bundle`` here (signature, digests, the backend loads it) and pin it.

    Actors on this machine copy the driver's snapshot (a swap of ``bundle`` after the check changes
    nothing); on a remote cluster (``remote``) they copy ``bundle`` on their node and a swap is refused
    by the pinned manifest digest or the signature."""
    from clap_edge.core.io import read_regular
    from clap_edge.export.bundle.snapshot import open_snapshot
    from clap_edge.runtime.classifier import Classifier

    if not os.path.exists(bundle):
        raise ClapEdgeError(f"{bundle}: no such bundle")
    pems = []
    for key in trusted_keys:
        try:
            pems.append(read_regular(key, 1 << 20))
        except (OSError, ValueError) as e:
            raise ClapEdgeError(f"{key}: not a readable public key PEM ({e})") from None
    snapshot = open_snapshot(bundle, trusted_keys=list(trusted_keys) or None)
    try:
        Classifier.open(snapshot, backend=backend, threads=1).runner.deactivate()
        yield PinnedBundle(bundle if remote else str(snapshot.root), snapshot.manifest_sha256, tuple(pems))
    finally:
        snapshot.close()


def check_out(out: str | os.PathLike) -> Path:
    """Refuse an output path no run could write, before any work: a folder, a special file or a /proc
    path, a parent that is a file. Creates missing parent folders. Returns the absolute path."""
    path = Path(os.path.abspath(out))
    real = os.path.realpath(path)
    if any(real == root or real.startswith(root + "/") for root in _SPECIAL_ROOTS):
        raise OutputError(f"{out}: is under /{real.split('/')[1]} ({real}), not a place for a results file")
    if path.is_dir():
        raise OutputError(f"{out}: is a directory; --out names the results file (e.g. {path / 'results.parquet'})")
    if path.exists() and not stat.S_ISREG(path.stat().st_mode):
        raise OutputError(f"{out}: exists and is not a regular file")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out}: cannot create its folder {parent} ({e.strerror or first_line(e)})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{out}: its folder {parent} is not writable")
    return path


@contextlib.contextmanager
def claim_out(out: str | os.PathLike | None) -> Iterator[Path | None]:
    """Check ``out`` and hold a lock on it for the block: a second run on the same ``out`` fails at once
    with one line (an OutputError) and never touches the first run's rows."""
    if out is None:
        yield None
        return
    from clap_edge.core.io import claim

    path = check_out(out)
    try:
        lock = claim(path)
        lock.__enter__()
    except OSError as e:  # the lock file cannot be made: a read-only folder, a full disk
        raise OutputError(f"{out}: cannot lock it for writing ({e.strerror or first_line(e)})") from None
    try:
        yield path
    finally:
        lock.__exit__(None, None, None)


def check_bundle(bundle: str, backend: str, trusted_keys: tuple[str, ...] = ()) -> None:
    """Open the bundle here first, so a bad bundle or backend is one clear line before any Ray process
    starts (a replica or actor that fails in its constructor is retried by Ray and ends in a deep traceback)."""
    from clap_edge.runtime.classifier import Classifier

    if not os.path.exists(bundle):
        raise ClapEdgeError(f"{bundle}: no such bundle")
    Classifier.open(bundle, backend=backend, threads=1, trusted_keys=list(trusted_keys) or None).close()


def import_ray(what: str):
    try:
        import ray
    except ImportError as e:
        raise ClapEdgeError(f"{what} needs Ray: pip install 'clap-edge[serve]' ({e})") from None
    return ray


def connect(address: str | None, num_cpus: int, object_store_mb: int, metrics_port: int | None = None) -> bool:
    """Join this process's Ray, the cluster at ``address``, or start a small local one (no dashboard,
    ``num_cpus`` CPUs, a small object store). Returns True when this call connected or started it."""
    ray = import_ray("this")
    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address)
        except Exception as e:  # ConnectionError, RuntimeError, AuthenticationError: all say "cannot join"
            raise ClapEdgeError(
                f"cannot connect to the Ray cluster at {address}: {first_line(e)} (a cluster started with "
                "token authentication also needs RAY_AUTH_MODE=token and its token here)") from None
    else:
        extra = {"_metrics_export_port": metrics_port} if metrics_port else {}
        ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=object_store_mb << 20, **extra)
    return True
