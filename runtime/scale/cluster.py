"""Joining or starting Ray, and checking a bundle before any Ray process exists (shared by serve and Ray Data)."""

from __future__ import annotations

import os

from clap_edge.core.errors import ClapEdgeError, first_line

__all__ = ["check_bundle", "connect", "import_ray"]


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
