"""AOTInductor engines: the bundle's ``torch.export`` program compiled ahead of time into a ``.pt2`` package.

The package holds generated C++/CUDA kernels for one device and precision, with a dynamic batch
dimension within the profile's [min, max]; it runs without Python graph capture
(``torch._inductor.aoti_load_package``) and loads from C++ with libtorch
(``torch::inductor::AOTIModelPackageLoader``). fp16 / bf16 re-export the program after
:func:`~clap_edge.runtime.backends.torch.casting.cast_program_module` (LayerNorm kept in fp32), which the
caller hands in with the device description (both live in the runtime's torch backends, which may import
torch; export must not import the runtime).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from clap_edge.core.errors import BundleError, ClapEdgeError, first_line
from clap_edge.export.builders.engines import BuiltEngine
from clap_edge.export.bundle import Bundle
from clap_edge.export.bundle.engines import DeviceInfo

log = logging.getLogger(__name__)

AOTI_PRECISIONS = ("fp32", "fp16", "bf16")  # int8 is TensorRT's, from the QDQ model

__all__ = ["AOTI_PRECISIONS", "build_aoti", "export_for_engine"]


def export_for_engine(bundle: Bundle, precision: str, batch: tuple[int, int, int], device: str,
                      cast: Callable[[Any, str], Any]):
    """The bundle's program re-exported on ``device`` at ``precision`` (``cast(module, precision)``) with
    batch dim in [min, max]."""
    import torch

    path = bundle.variant_file("torch")  # model.pt2, sha256-checked
    try:
        module = torch.export.load(str(path)).module()
    except Exception as e:
        raise BundleError(f"{bundle.root}: torch cannot load {path.name}: {first_line(e)}") from e
    module = cast(module, precision).to(torch.device(device))
    lo, opt, hi = batch
    # An example of size 1 would make torch.export specialise the batch dim (0/1 specialisation).
    size = min(hi, max(2, opt)) if hi > 1 else 1
    example = torch.zeros((size, *bundle.input_shape), device=device)
    dynamic = ({0: torch.export.Dim("batch", min=lo, max=hi)},) if hi > lo else None
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=dynamic, strict=False)


def build_aoti(bundle: Bundle, precision: str, batch: tuple[int, int, int], device: str, out: Path,
               say: Callable[[str], None] = log.info, *, describe: Callable[[Any, str], DeviceInfo],
               cast: Callable[[Any, str], Any]) -> BuiltEngine:
    """Compile the bundle's program for ``device`` ("cpu" or "cuda[:i]") into the package ``out``.

    ``describe(torch, device)`` says what the device is, as sidecars describe devices; ``cast(module,
    precision)`` casts the program's module (the AOTInductor backend's own helpers, handed in by the app)."""
    import torch

    if precision not in AOTI_PRECISIONS:
        raise ClapEdgeError(f"aoti engines run {', '.join(AOTI_PRECISIONS)}; int8 is a TensorRT engine "
                            f"(--engine tensorrt --precision int8, from model.qdq.onnx)")
    if "torch" not in bundle.variants:
        raise BundleError(f"{bundle.root}: no model.pt2 (torch.export program) to compile; re-export the bundle "
                          f"with its torch program (the default of clap-edge export)")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ClapEdgeError("--device cuda: torch sees no CUDA GPU here (build a CPU engine with --device cpu)")
    info = describe(torch, device)
    say(f"exporting {precision} program for {info.describe()}")
    program = export_for_engine(bundle, precision, batch, device, cast)
    say("compiling with AOTInductor (minutes on a small CPU)")
    try:
        path = torch._inductor.aoti_compile_and_package(program, package_path=str(out))
    except Exception as e:
        raise ClapEdgeError(f"AOTInductor compilation failed: {first_line(e)}") from e
    return BuiltEngine(path=Path(path), device=info, library="torch", library_version=torch.__version__,
                       source_model=bundle.variants["torch"], options={"device": device})
