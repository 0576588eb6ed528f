"""Open a bundle's ONNX model in an ``onnxruntime.InferenceSession`` and check its inputs / outputs.

CPU by default; device ``cuda`` uses the CUDA execution provider and ``tensorrt`` the TensorRT one
(both from onnxruntime-gpu), each falling back to the next provider for the ops it does not take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clap_edge.core.errors import BackendUnavailableError, BundleError
from clap_edge.export.bundle import Bundle

# device -> execution providers, best first (CPU last as the fallback for unsupported ops)
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}

# ONNX Runtime's TensorRT EP builds its own TensorRT engines for the subgraphs it takes: cache them (and the
# tactic timings) inside the bundle's engines/ folder, so only the first session on a GPU pays the build.
ORT_TRT_CACHE_DIR = "engines/onnxruntime-tensorrt"

# ORT's session config key for the intra-op pool's spin-wait (default "1": spin)
ALLOW_SPINNING = "session.intra_op.allow_spinning"

__all__ = ["ALLOW_SPINNING", "PROVIDERS", "ORT_TRT_CACHE_DIR", "load_session", "providers_for", "provider_options", "check_io"]


def session_options(ort: Any, threads: int | None) -> Any:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1  # the graph is one chain; parallelism is inside the ops
        if int(threads) > 1:
            # idle pool threads sleep instead of spinning between ops: the spin is CPU time for nothing, and on
            # a shared machine it takes the core from whoever would work (ViT-B-32 int8 batch 1, 2 threads:
            # 1.7-1.9x images per CPU-second and faster wall; bench/README.md "Peers and the lead")
            so.add_session_config_entry(ALLOW_SPINNING, "0")
    so.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are noise here
    return so


def providers_for(device: str, available: set[str]) -> list[str]:
    """The execution providers for ``device``, or a one-line error naming what this build lacks."""
    if device not in PROVIDERS:
        raise BackendUnavailableError(f"onnxruntime: unknown device {device!r}; expected one of {list(PROVIDERS)}")
    wanted = PROVIDERS[device]
    if wanted[0] not in available:
        raise BackendUnavailableError(
            f"onnxruntime: {wanted[0]} is not available in this onnxruntime build "
            f"(have {sorted(available)}). Install it with: pip install 'clap-edge[gpu]'")
    return [p for p in wanted if p in available]


def provider_options(providers: list[str], bundle_root: Path, precision: str = "fp32",
                     device_id: int = 0) -> list[dict[str, Any]]:
    """Options for each provider (same order): the TensorRT EP's engine and timing caches inside the bundle."""
    options: list[dict[str, Any]] = []
    for provider in providers:
        if provider == "TensorrtExecutionProvider":
            cache = str(Path(bundle_root) / ORT_TRT_CACHE_DIR)
            options.append({"device_id": device_id, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
                            "trt_timing_cache_enable": True, "trt_timing_cache_path": cache,
                            "trt_fp16_enable": precision == "fp16", "trt_int8_enable": precision == "int8"})
        elif provider == "CUDAExecutionProvider":
            options.append({"device_id": device_id})
        else:
            options.append({})
    return options


def load_session(bundle: Bundle, variant: str, threads: int | None = None, device: str = "cpu",
                 precision: str = "fp32") -> Any:
    """An InferenceSession for the bundle's ``variant`` model (sha256-checked), with its I/O checked.

    ``device`` is "cpu", "cuda" or "tensorrt", optionally with a GPU index ("cuda:1")."""
    import onnxruntime as ort

    path = bundle.variant_file(variant)
    kind, _, index = device.partition(":")
    providers = providers_for(kind, set(ort.get_available_providers()))
    options = provider_options(providers, bundle.root, precision, int(index or 0))
    if kind == "tensorrt":
        (bundle.root / ORT_TRT_CACHE_DIR).mkdir(parents=True, exist_ok=True)
    try:
        session = ort.InferenceSession(str(path), sess_options=session_options(ort, threads), providers=providers,
                                       provider_options=options)
    except Exception as e:  # ORT raises its own Fail / InvalidGraph / ... types
        raise BundleError(f"{bundle.root}: ONNX Runtime cannot load {path.name}: {e}") from e
    check_io(bundle, path, session.get_inputs(), session.get_outputs())
    return session


def check_io(bundle: Bundle, path: Path, inputs: list, outputs: list) -> None:
    """The model's declared input / outputs must be the manifest's, with the same static dims."""
    declared = {o.name: o.shape for o in outputs}
    for spec in bundle.manifest.outputs:
        if spec.name not in declared:
            raise BundleError(f"{bundle.root}: {path.name} has no output {spec.name!r} "
                              f"(it has {sorted(declared)})")
        _check_static_dims(bundle, path.name, spec.name, declared[spec.name], list(spec.shape))
    spec = bundle.manifest.inputs[0]
    if len(inputs) != 1 or inputs[0].name != spec.name:
        raise BundleError(f"{bundle.root}: {path.name} takes inputs {[i.name for i in inputs]}, "
                          f"the manifest says [{spec.name!r}]")
    _check_static_dims(bundle, path.name, spec.name, inputs[0].shape, list(spec.shape))


def _check_static_dims(bundle: Bundle, filename: str, name: str, actual: list, expected: list) -> None:
    """Compare every dim that both sides state as an int (the batch dim is symbolic on both)."""
    if len(actual) != len(expected) or any(
        isinstance(a, int) and isinstance(e, int) and a != e for a, e in zip(actual, expected)
    ):
        raise BundleError(f"{bundle.root}: {filename} declares {name!r} with shape {actual}, "
                          f"the manifest says {expected}")
