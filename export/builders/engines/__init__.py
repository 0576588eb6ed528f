"""Compiled engines (TensorRT plans, AOTInductor packages) stored in a bundle's ``engines/`` folder.

``aoti`` and ``tensorrt`` build them. Sidecars and engine selection are part of the bundle contract
(:mod:`clap_edge.export.bundle.engines`); the torch helpers the AOTInductor builder shares with its runtime
backend (casting to fp16 / bf16, torch's view of the device) live in that backend and are handed in.
Building, checking parity and storing are driven by :func:`clap_edge.apps.engine_build.build_engine`
(the parity check runs the engine through its runtime backend, which lives to the right of export).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clap_edge.export.bundle.engines import DeviceInfo

__all__ = ["BuiltEngine"]


@dataclass
class BuiltEngine:
    """What a builder hands back: the engine file (in a temp folder) and what it was built for."""

    path: Path
    device: DeviceInfo
    library: str
    library_version: str
    source_model: str  # the bundle file it was built from
    options: dict[str, Any] = field(default_factory=dict)
