"""Scale-out adapters: serve a bundle on Ray Serve, classify datasets on Ray Data.

Ray is imported inside the functions that need it, never at import: ``pip install clap-edge[serve]``
brings it. ``Client`` (stdlib only) talks to a running ``clap-edge serve``.

    from clap_edge.runtime.scale import Client, ServeConfig, classify_dataset
    from clap_edge.runtime.scale.serve import serve            # run a server (what `clap-edge serve` calls)
    from clap_edge.runtime.scale.ray_data import classify      # = classify_dataset
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Client": "clap_edge.runtime.scale.client",
    "ServeConfig": "clap_edge.runtime.scale.serve",
    "classify_dataset": "clap_edge.runtime.scale.ray_data",
    "RayDataResult": "clap_edge.runtime.scale.ray_data",
    "decode_bytes": "clap_edge.runtime.scale.decode",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clap_edge.runtime.scale' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
