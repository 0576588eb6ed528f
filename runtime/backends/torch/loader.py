"""Load the bundle's ``model.pt2`` (a ``torch.export`` program) as a module on a device and dtype.

It holds exactly the weights that were exported, never a re-initialised model, so the torch
runner is the reference the other backends are compared with.
"""

from __future__ import annotations

from typing import Any

from clap_edge.core.errors import BundleError
from clap_edge.export.bundle import Bundle

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

__all__ = ["DTYPES", "load_program_module"]


def load_program_module(bundle: Bundle, variant: str, device: str = "cpu", precision: str = "fp32") -> Any:
    import torch

    path = bundle.variant_file(variant)  # sha256-checked against the manifest
    try:
        program = torch.export.load(str(path))
    except Exception as e:
        raise BundleError(f"{bundle.root}: torch cannot load {path.name}: {e}") from e
    module = program.module().to(torch.device(device))
    if precision != "fp32":
        module = module.to(getattr(torch, DTYPES[precision]))
    return module
