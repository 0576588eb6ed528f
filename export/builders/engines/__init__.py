"""Compiled engines (TensorRT plans, AOTInductor packages) stored in a bundle's ``engines/`` folder.

``sidecar`` (torch-free) describes an engine and picks the one that fits a machine; ``aoti`` and
``tensorrt`` build them; ``casting`` casts a torch.export program to fp16 / bf16 with LayerNorm in fp32.
Building, checking parity and storing are driven by :func:`clap_edge.apps.engine_build.build_engine`
(the parity check runs the engine through its runtime backend, which lives to the right of export).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clap_edge.export.builders.engines.sidecar import DeviceInfo

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
