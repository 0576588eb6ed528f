"""Open a bundle's ExecuTorch program (.pte, XNNPACK delegate) in ExecuTorch's Python runtime.

The runtime (``executorch.runtime``, the pip ``executorch`` package) imports torch and takes and returns
torch tensors, so this backend needs torch at run time; a phone runs the same .pte from ExecuTorch's
C++/Java/Swift runtimes without it. (``executorch-numpy-runtime``, a torch-free reader, needs Python >= 3.12
and targets ExecuTorch 1.3.1: not used here.) The program takes batches of 1..ET_MAX_BATCH images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clap_edge.core.errors import BundleError
from clap_edge.export.bundle import Bundle

ET_MAX_BATCH = 8  # the bound the program was lowered with (clap_edge.export.builders.mobile.ET_MAX_BATCH)

__all__ = ["ET_MAX_BATCH", "load_method", "set_threads", "check_outputs"]


def load_method(bundle: Bundle, variant: str) -> Any:
    """The ``forward`` method of the bundle's ``variant`` .pte (sha256-checked first)."""
    from executorch.runtime import Runtime

    path = bundle.variant_file(variant)
    try:
        method = Runtime.get().load_program(str(path)).load_method("forward")
    except Exception as e:  # the runtime raises RuntimeError / ValueError with its own text
        raise BundleError(f"{bundle.root}: ExecuTorch cannot load {path.name}: {_first_line(e)}") from e
    if method is None:
        raise BundleError(f"{bundle.root}: {path.name} has no 'forward' method")
    return method


def set_threads(threads: int | None) -> None:
    """XNNPACK's thread pool is process-wide in the Python runtime: resize it (None: leave the default)."""
    if not threads:
        return
    try:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    except ImportError:  # older runtimes: no knob
        return
    _unsafe_reset_threadpool(int(threads))


def check_outputs(bundle: Bundle, filename: str, outputs: list[np.ndarray], batch: int) -> None:
    """One output, the embedding [N, d], as the manifest says (schema 4: the runtime applies the classes)."""
    want = [(batch, bundle.manifest.embed_dim)]
    got = [tuple(o.shape) for o in outputs]
    if got != want:
        raise BundleError(f"{bundle.root}: {filename} returns shapes {got}, the manifest says (embedding) {want}")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
