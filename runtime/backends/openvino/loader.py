"""Read a bundle's model with OpenVINO and compile it for a device.

OpenVINO's ONNX frontend reads the same ``model.onnx`` ONNX Runtime runs: no conversion step and
no extra file. We pin the LATENCY performance hint and the thread count; the inference precision
is the CPU plugin's choice (bf16 on AMX / AVX512-BF16 machines, fp32 elsewhere) unless asked.
"""

from __future__ import annotations

from typing import Any

from clap_edge.core.errors import BundleError
from clap_edge.export.bundle import Bundle
from clap_edge.export.bundle.names import OUTPUT_EMBEDDING

# our precision names -> OpenVINO element types for INFERENCE_PRECISION_HINT (None: the plugin chooses)
# int8: the quantised IR's integer ops run in int8 whatever the hint; the hint is for the ops NNCF left in
# float, pinned to f32 so the variant runs as its drift was measured at export.
PRECISION_HINTS = {"auto": None, "fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
# IR variants: the graph file the manifest maps, and the weights file beside it (also sha256-checked)
IR_WEIGHTS = {"openvino-int8": "model.int8.bin"}

__all__ = ["PRECISION_HINTS", "compile_config", "compile_bundle_model", "compiled_precision"]


def compile_config(threads: int | None, precision: str) -> dict[str, str]:
    config = {"PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(int(threads))
    hint = PRECISION_HINTS.get(precision)
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    return config


def compile_bundle_model(bundle: Bundle, variant: str, config: dict[str, str], device: str = "CPU") -> Any:
    """The compiled model for the bundle's ``variant`` file (sha256-checked), with its outputs checked."""
    import openvino as ov

    path = bundle.variant_file(variant)
    if variant in IR_WEIGHTS:
        bundle.file(IR_WEIGHTS[variant])  # the weights must match the manifest too
    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(str(path)), device, config)
    except RuntimeError as e:
        raise BundleError(f"{bundle.root}: OpenVINO cannot load {path.name}: {str(e).strip().splitlines()[0]}") from e
    names = [out.get_any_name() for out in compiled.outputs]
    if OUTPUT_EMBEDDING not in names:
        raise BundleError(f"{bundle.root}: {path.name} has outputs {names}, expected {OUTPUT_EMBEDDING!r}")
    return compiled


def compiled_precision(compiled: Any) -> str:
    """The precision the plugin actually chose (the compiled model reports it, hint or default)."""
    try:
        value = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
    except Exception:  # older plugins may not expose it on the compiled model
        return "unknown"
    value = value.split(".")[-1]  # e.g. "<Type: 'bfloat16'>" or "bf16"
    for needle, ours in (("bfloat16", "bf16"), ("bf16", "bf16"), ("float16", "fp16"), ("f16", "fp16"),
                         ("float32", "fp32"), ("f32", "fp32")):
        if needle in value:
            return ours
    return value
