"""TensorRT engines: the bundle's ONNX model parsed and built into a serialized plan for this GPU.

Written against the documented ``tensorrt`` Python API (Builder, OnnxParser, IBuilderConfig,
IOptimizationProfile, ITimingCache, IProgressMonitor). Precision is where TensorRT 10 and 11 differ:
TensorRT 11 removed the weak-typing flags (FP16 / BF16 / INT8 / OBEY_PRECISION_CONSTRAINTS), so

- fp16 builds the bundle's ``model.fp16.onnx`` (precision already in the graph: LayerNorm, Softmax and
  the reductions stay fp32 there) as a *strongly typed* network, on either version; without that file,
  TensorRT 10 falls back to ``model.onnx`` with the FP16 flag and LayerNorm / Softmax / Reduce layers
  pinned to fp32 (``layer.precision`` + OBEY_PRECISION_CONSTRAINTS);
- bf16 is TensorRT 10 only (``model.onnx``, BF16 flag, the same fp32 pins);
- int8 builds ``model.qdq.onnx`` (explicit quantisation: the Q/DQ scales come from the model, no
  calibrator); TensorRT 10 adds INT8 + FP16 flags so unquantised layers may run fp16 (pins as above),
  TensorRT 11 builds it strongly typed.
The choice is :func:`plan_build`, pure and unit-tested without TensorRT.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from clap_edge.core.errors import BackendUnavailableError, BundleError, ClapEdgeError
from clap_edge.core.io import atomic_path
from clap_edge.export.builders.engines import BuiltEngine
from clap_edge.export.bundle import Bundle
from clap_edge.export.bundle.engines import TENSORRT_MISSING, cudart_device
from clap_edge.export.bundle.names import INPUT_IMAGE

log = logging.getLogger(__name__)

# Layer types kept in fp32 in reduced-precision builds: CLIP's fp16 failures are in LayerNorm and Softmax,
# and the reductions behind the embedding's L2 norm (as the fp16 ONNX variant keeps them).
KEEP_FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")

__all__ = ["TENSORRT_MISSING", "KEEP_FP32_LAYER_TYPES", "TrtPlan", "plan_build", "fp32_layer_indices",
           "import_tensorrt", "build_tensorrt"]


@dataclass(frozen=True)
class TrtPlan:
    source_variant: str  # bundle variant parsed: "fp32", "fp16", "qdq"
    strongly_typed: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED: precision comes from the graph
    flags: tuple[str, ...]  # BuilderFlag names to set
    pin_fp32: bool  # pin KEEP_FP32_LAYER_TYPES layers to fp32 (weak typing only)


def plan_build(precision: str, trt_major: int, variants: set[str] | dict[str, str]) -> TrtPlan:
    """Which model to parse and how to type the network, for ``precision`` on TensorRT ``trt_major``."""
    weak_ok = trt_major < 11  # TensorRT 11 removed the weak-typing builder flags
    if precision == "fp32":
        return TrtPlan("fp32", False, (), False)
    if precision == "fp16":
        if "fp16" in variants:
            return TrtPlan("fp16", True, (), False)
        if weak_ok:
            return TrtPlan("fp32", False, ("FP16", "OBEY_PRECISION_CONSTRAINTS"), True)
        raise BundleError("a TensorRT 11 fp16 engine needs the bundle's model.fp16.onnx (TensorRT 11 has no FP16 "
                          "flag); re-export with: clap-edge export ... --fp16")
    if precision == "bf16":
        if weak_ok:
            return TrtPlan("fp32", False, ("BF16", "OBEY_PRECISION_CONSTRAINTS"), True)
        raise ClapEdgeError("bf16 TensorRT engines need TensorRT 10 (TensorRT 11 removed the BF16 flag and the "
                            "bundle has no bf16 ONNX model); use --precision fp16")
    if precision == "int8":
        if "qdq" not in variants:
            raise BundleError("an int8 TensorRT engine is built from the bundle's static int8 QDQ model "
                              "(model.qdq.onnx), which this bundle lacks; re-export it with the qdq variant")
        if weak_ok:
            return TrtPlan("qdq", False, ("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"), True)
        return TrtPlan("qdq", True, (), False)
    raise ClapEdgeError(f"unknown precision {precision!r}; TensorRT engines are fp32, fp16, bf16 or int8")


def fp32_layer_indices(layer_types: list[str]) -> list[int]:
    """Indices of the layers (by ``layer.type.name``) to pin to fp32 in a reduced-precision build."""
    return [i for i, t in enumerate(layer_types) if t in KEEP_FP32_LAYER_TYPES]


def import_tensorrt() -> Any:
    """``tensorrt``, or a one-line error naming what is missing and how to install it."""
    try:
        import tensorrt
    except ImportError as e:
        raise BackendUnavailableError(TENSORRT_MISSING) from e
    return tensorrt


def build_tensorrt(bundle: Bundle, precision: str, batch: tuple[int, int, int], out: Path,
                   workspace_mb: int = 4096, timing_cache: str | None = None, device_index: int = 0,
                   say: Callable[[str], None] = log.info) -> BuiltEngine:
    """Parse, configure and build a serialized TensorRT plan into ``out``."""
    trt = import_tensorrt()
    try:
        device = cudart_device(device_index)
    except (ImportError, RuntimeError) as e:
        raise BackendUnavailableError(f"TensorRT needs a CUDA GPU and cuda-python here: {e}") from e
    major = int(trt.__version__.split(".")[0])
    plan = plan_build(precision, major, bundle.variants)
    onnx_path = bundle.variant_file(plan.source_variant)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {onnx_path.name} (TensorRT {trt.__version__})")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"{onnx_path}: TensorRT cannot parse it: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    pinned = _pin_fp32(trt, network) if plan.pin_fp32 else 0
    _add_profile(builder, config, bundle.input_shape, batch)
    cache = _load_timing_cache(config, timing_cache)
    monitor = _progress_monitor(trt, say)
    if monitor is not None:
        config.progress_monitor = monitor  # kept referenced until the build returns

    say(f"building {precision} engine for {device.describe()} (minutes)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ClapEdgeError("TensorRT failed to build the engine (see the TensorRT messages above)")
    if timing_cache:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
    out.write_bytes(memoryview(serialized))
    options = {"workspace_mb": int(workspace_mb), "timing_cache": bool(timing_cache), "timing_cache_reused": cache,
               "strongly_typed": plan.strongly_typed, "flags": list(plan.flags), "fp32_layers": pinned,
               "parsed": onnx_path.name}
    return BuiltEngine(path=out, device=device, library="tensorrt", library_version=trt.__version__,
                       source_model=onnx_path.name, options=options)


def _pin_fp32(trt: Any, network: Any) -> int:
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    keep = fp32_layer_indices([layer.type.name for layer in layers])
    for i in keep:
        layers[i].precision = trt.float32
        for j in range(layers[i].num_outputs):
            layers[i].set_output_type(j, trt.float32)
    return len(keep)


def _add_profile(builder: Any, config: Any, input_shape: tuple[int, int, int], batch: tuple[int, int, int]) -> None:
    profile = builder.create_optimization_profile()
    lo, opt, hi = (tuple([n, *input_shape]) for n in batch)
    profile.set_shape(INPUT_IMAGE, lo, opt, hi)
    config.add_optimization_profile(profile)


def _load_timing_cache(config: Any, path: str | None) -> bool:
    """Attach a timing cache (from ``path`` if it exists): tactic timings reused across builds. Returns reused."""
    blob = Path(path).read_bytes() if path and Path(path).is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return bool(blob)


def _progress_monitor(trt: Any, say: Callable[[str], None]) -> Any:
    """An IProgressMonitor that reports top-level phases through ``say`` (None where TensorRT lacks it)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                say(f"TensorRT: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            pass

    return _Monitor()
