"""AOTInductor engines: the bundle's ``torch.export`` program compiled ahead of time into a ``.pt2`` package.

The package holds generated C++/CUDA kernels for one device and precision, with a dynamic batch
dimension within the profile's [min, max]; it runs without Python graph capture
(``torch._inductor.aoti_load_package``) and loads from C++ with libtorch
(``torch::inductor::AOTIModelPackageLoader``). fp16 / bf16 re-export the program after
:func:`~clap_edge.export.builders.engines.casting.cast_program_module` (LayerNorm kept in fp32).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from clap_edge.core.errors import BundleError, ClapEdgeError, first_line
from clap_edge.export.builders.engines import BuiltEngine
from clap_edge.export.builders.engines.casting import DTYPE_NAMES, cast_program_module
from clap_edge.export.bundle import Bundle

log = logging.getLogger(__name__)

AOTI_PRECISIONS = tuple(DTYPE_NAMES)  # fp32, fp16, bf16 (int8 is TensorRT's, from the QDQ model)

__all__ = ["AOTI_PRECISIONS", "build_aoti", "export_for_engine"]


def export_for_engine(bundle: Bundle, precision: str, batch: tuple[int, int, int], device: str):
    """The bundle's program re-exported on ``device`` at ``precision`` with batch dim in [min, max]."""
    import torch

    path = bundle.variant_file("torch")  # model.pt2, sha256-checked
    try:
        module = torch.export.load(str(path)).module()
    except Exception as e:
        raise BundleError(f"{bundle.root}: torch cannot load {path.name}: {first_line(e)}") from e
    module = cast_program_module(module, precision).to(torch.device(device))
    lo, opt, hi = batch
    # An example of size 1 would make torch.export specialise the batch dim (0/1 specialisation).
    size = min(hi, max(2, opt)) if hi > 1 else 1
    example = torch.zeros((size, *bundle.input_shape), device=device)
    dynamic = ({0: torch.export.Dim("batch", min=lo, max=hi)},) if hi > lo else None
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=dynamic, strict=False)


def build_aoti(bundle: Bundle, precision: str, batch: tuple[int, int, int], device: str, out: Path,
               say: Callable[[str], None] = log.info) -> BuiltEngine:
    """Compile the bundle's program for ``device`` ("cpu" or "cuda[:i]") into the package ``out``."""
    import torch

    from clap_edge.export.builders.engines.torch_devices import torch_cpu_device, torch_cuda_device

    if precision not in AOTI_PRECISIONS:
        raise ClapEdgeError(f"aoti engines run {', '.join(AOTI_PRECISIONS)}; int8 is a TensorRT engine "
                            f"(--engine tensorrt --precision int8, from model.qdq.onnx)")
    if "torch" not in bundle.variants:
        raise BundleError(f"{bundle.root}: no model.pt2 (torch.export program) to compile; re-export the bundle "
                          f"with its torch program (the default of clap-edge export)")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ClapEdgeError("--device cuda: torch sees no CUDA GPU here (build a CPU engine with --device cpu)")
        index = torch.device(device).index or 0
        info = torch_cuda_device(torch, index)
    else:
        info = torch_cpu_device()
    say(f"exporting {precision} program for {info.describe()}")
    program = export_for_engine(bundle, precision, batch, device)
    say("compiling with AOTInductor (minutes on a small CPU)")
    try:
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(out))
    except Exception as e:
        raise ClapEdgeError(f"AOTInductor compilation failed: {first_line(e)}") from e
    return BuiltEngine(path=Path(path), device=info, library="torch", library_version=torch.__version__,
                       source_model=bundle.variants["torch"], options={"device": device})
