"""Load the bundle's ``model.pt2`` (a ``torch.export`` program) as a module on a device and dtype.

It holds exactly the weights that were exported, never a re-initialised model, so the torch
runner is the reference the other backends are compared with. fp16 / bf16 go through
``cast_program_module`` (LayerNorm kept in fp32; a plain ``module.half()`` fails the program's
export-time dtype asserts), on CPU or CUDA alike.
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
    from clap_edge.runtime.backends.torch.casting import cast_program_module

    module = cast_program_module(program.module(), precision)
    return module.to(torch.device(device))
