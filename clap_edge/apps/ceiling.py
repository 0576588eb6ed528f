"""The machine's measured ceiling: large matrix products through each backend's own library and precision.

A speed figure says little on its own: the same code reaches very different GFLOP/s on an AVX2-only
CPU and on one with VNNI or AMX. So ``clap-edge bench`` first times one large GEMM (``M x K @ K x N``)
in every library and precision it benchmarks, at the bench's thread count, and reports each model row
as a fraction of the ceiling of *its* library and precision:

- ``onnxruntime:fp32``        an ONNX MatMul in ONNX Runtime (MLAS sgemm)
- ``onnxruntime:int8``        DynamicQuantizeLinear + MatMulInteger, the dynamic int8 variant's kernels
- ``onnxruntime:int8-static`` a QDQ MatMul (u8 activations, s8 per-channel weights, float output), as
                              the static int8 (``model.qdq.onnx``) variant; ORT fuses it to an integer GEMM
- ``openvino:fp32`` / ``openvino:bf16``  a MatMul in OpenVINO's CPU plugin with that inference precision
                              (bf16 only where the CPU has avx512_bf16 or amx_bf16)
- ``openvino:int8``           the same QDQ model read by OpenVINO (Q/DQ become FakeQuantize -> int8 GEMM)
- ``torch:fp32``              ``torch.matmul``

Each runs in a fresh spawned process (its own thread pools). A *sample* repeats the product until it
has used at least ``min_sample_cpu_s`` (200 ms) of process CPU time, all the library's threads counted,
and records products, wall seconds and CPU seconds; a ceiling is the median rate over its samples, both
per wall second (``gflops_per_s``) and per CPU-second (``gflops_per_cpu_s``; 2*M*K*N per product; for
int8 these are integer operations). On a shared machine the wall rate falls with the load while the CPU
rate holds, so the bench compares rows with ceilings per CPU-second, sampled in the same rounds.

Beside the library ceilings, :mod:`clap_edge.apps.peak_probe` measures the core's own FMA / int8 peak
(a hardware ceiling, per CPU-second of one thread).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

# A ViT-B MLP product over a batch of tokens: big enough for every library's peak kernel, short to run.
DEFAULT_SHAPE = (512, 768, 3072)
ISA_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
             "amx_bf16", "avx512_fp16", "neon", "asimd")

__all__ = ["DEFAULT_SHAPE", "ISA_FLAGS", "CeilingConfig", "measure_ceilings", "run_ceilings", "ceiling_key",
           "cpu_isa_flags", "build_runs", "ceiling_worker_main", "flops", "ceiling_row", "sample", "ort_runner",
           "openvino_runner", "error_line"]


@dataclass
class CeilingConfig:
    threads: int | None = 1
    shape: tuple[int, int, int] = DEFAULT_SHAPE
    seconds: float = 0.6  # timed time per row (after one warm-up call), standalone measure_ceilings only
    min_sample_cpu_s: float = 0.2  # CPU time per sample: long enough that scheduler noise is a small part
    libraries: tuple[str, ...] = ("onnxruntime", "openvino", "torch")
    probe_peak: bool = True  # the core's peak: the bench asks one of its ceiling processes only


def cpu_isa_flags() -> list[str]:
    """The instruction-set flags that decide the ceilings, from /proc/cpuinfo (empty where unreadable)."""
    from clap_edge.core.machine import cpu_info

    flags = set(cpu_info()[1])
    return [f for f in ISA_FLAGS if f in flags]


def ceiling_key(backend: str, precision: str | None) -> str | None:
    """The ceiling a bench row is compared with: ``(backend spec, measured precision)`` -> ceiling key.

    None where no ceiling is measured (GPU precisions, unknown backends)."""
    peer_library = {"peer:onnxruntime": "onnxruntime", "peer:openvino": "openvino", "peer:open_clip": "torch"}
    if backend in peer_library:  # a plain tool's row: its library's ceiling at the precision it ran
        backend = peer_library[backend]
    name, _, spec_precision = backend.partition(":")
    aliases = {"onnxruntime-int8": ("onnxruntime", "int8"), "onnxruntime-fp16": ("onnxruntime", "fp16")}
    name, alias_precision = aliases.get(name, (name, None))
    precision = precision or spec_precision or alias_precision or "fp32"
    if name == "onnxruntime":
        return {"fp32": "onnxruntime:fp32", "int8": "onnxruntime:int8",
                "int8-static": "onnxruntime:int8-static"}.get(spec_precision or alias_precision or precision)
    if name == "openvino":
        return {"fp32": "openvino:fp32", "bf16": "openvino:bf16", "int8": "openvino:int8"}.get(precision)
    if name in ("torch", "torch-compile"):
        return "torch:fp32" if precision == "fp32" else None
    return None


def run_ceilings(cfg: CeilingConfig) -> dict[str, Any]:
    """:func:`measure_ceilings` in a fresh spawned process (so no library's thread pool leaks into the caller)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure_ceilings, cfg).result()


def measure_ceilings(cfg: CeilingConfig) -> dict[str, Any]:
    """``{"shape", "threads", "cpu_flags", "ceilings": {key: {"gflops_per_s", "gflops_per_cpu_s", "ms",
    "iters", "library"}}, "errors": {key: message}}`` for every library installed here."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="clap-edge-ceiling-") as tmp:
        runs, out = build_runs(cfg, Path(tmp))
        for key, (library, run) in runs.items():
            try:
                samples = _time(run, cfg.seconds, cfg.min_sample_cpu_s)
            except Exception as e:  # a library without this kernel: say so, keep the others
                out["errors"][key] = error_line(e)
                continue
            out["ceilings"][key] = ceiling_row(library, flops(cfg.shape), samples)
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out


def flops(shape: tuple[int, int, int]) -> float:
    m, k, n = shape
    return 2.0 * m * k * n


def sample(run: Callable[[], Any], min_cpu_s: float) -> tuple[int, float, float]:
    """Repeat ``run`` until it used >= ``min_cpu_s`` of process CPU time: (products, wall s, CPU s)."""
    n, wall, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        run()
        n += 1
        spent = time.process_time() - cpu
        if spent >= min_cpu_s:
            return n, time.perf_counter() - wall, spent


def ceiling_row(library: str, work: float, samples: list) -> dict[str, Any]:
    """Median rates over ``samples`` of (products, wall s, CPU s); ``ms``: median wall time of one product."""
    n, wall, cpu = (np.asarray(col, dtype=float) for col in zip(*samples))
    ms = float(np.median(wall / n)) * 1e3
    return {"library": library, "gflops_per_s": round(work / ms / 1e6, 2),
            "gflops_per_cpu_s": round(float(np.median(work * n / cpu)) / 1e9, 2), "ms": round(ms, 6),
            "iters": len(samples), "cpu_s_per_sample": round(float(np.median(cpu)), 3)}


def error_line(e: Exception) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def build_runs(cfg: CeilingConfig, tmp: Path, keys: set[str] | None = None
               ) -> tuple[dict[str, tuple[str, Callable[[], Any]]], dict[str, Any]]:
    """key -> (library, a callable running one product), warmed up; plus the report skeleton with errors."""
    import importlib.util

    m, k, n = cfg.shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    flags = cpu_isa_flags()
    out: dict[str, Any] = {"shape": [m, k, n], "threads": cfg.threads, "cpu_flags": flags, "ceilings": {},
                           "errors": {}}
    try:
        models = _onnx_models(tmp, a, w)
    except ModuleNotFoundError as e:  # an edge install has onnxruntime but not onnx, which builds the GEMMs
        raise RuntimeError(f"the GEMM ceiling needs {e.name} to build its models: pip install 'clap-edge[train]'"
                           ) from None
    plan: list[tuple[str, str, Callable[[], Callable[[], Any]]]] = []
    if "onnxruntime" in cfg.libraries and importlib.util.find_spec("onnxruntime"):
        for key, model in (("fp32", "fp32"), ("int8", "dynamic"), ("int8-static", "qdq")):
            plan.append((f"onnxruntime:{key}", "onnxruntime", lambda p=models[model]: ort_runner(p, {"x": a}, cfg.threads)))
    if "openvino" in cfg.libraries and importlib.util.find_spec("openvino"):
        precisions = ["fp32"] + (["bf16"] if {"avx512_bf16", "amx_bf16"} & set(flags) else [])
        for p in precisions:
            plan.append((f"openvino:{p}", "openvino", lambda p=p: openvino_runner(models["fp32"], {"x": a}, cfg.threads, p)))
        plan.append(("openvino:int8", "openvino", lambda: openvino_runner(models["qdq"], {"x": a}, cfg.threads, "f32")))
    if "torch" in cfg.libraries and importlib.util.find_spec("torch"):
        plan.append(("torch:fp32", "torch", lambda: _torch(a, w, cfg.threads)))
    runs = {}
    for key, library, build in plan:
        if keys is not None and key not in keys:
            continue
        try:
            run = build()
            run()  # warm-up: allocation, weight packing, JIT
            runs[key] = (library, run)
        except Exception as e:
            out["errors"][key] = error_line(e)
    return runs, out


def ceiling_worker_main(conn: Any, cfg: CeilingConfig, keys: list[str] | None) -> None:
    """A process that holds one product per ceiling key and samples it on request:
    ``("time", key)`` -> (products, wall s, CPU s) of >= ``cfg.min_sample_cpu_s`` CPU.

    The bench calls it in every timed round, so each ceiling is measured in the same moments as the rows
    compared with it (on a shared machine the load moves within seconds). The core's FMA / int8 peak is
    probed once at start (``info["peak"]``) where ``cfg.probe_peak``."""
    from clap_edge.apps.peak_probe import peak_probe

    with tempfile.TemporaryDirectory(prefix="clap-edge-ceiling-") as tmp:
        try:
            runs, out = build_runs(cfg, Path(tmp), set(keys) if keys is not None else None)
            try:
                out["peak"] = peak_probe(cfg.min_sample_cpu_s) if cfg.probe_peak else None
            except Exception as e:  # context only: never lose the ceilings over it
                out["peak"] = {"error": error_line(e)}
            conn.send(("ok", {**out, "keys": {k: lib for k, (lib, _) in runs.items()}}))
        except BaseException as e:
            conn.send(("error", error_line(e)))
            return
        model_runs: dict[str, Callable[[], Any]] = {}
        while True:
            command, *args = conn.recv()
            if command == "stop":
                conn.send(("ok", None))
                return
            try:
                if command == "model_batch":  # (model path, input shape, batch): the model's own products
                    model_runs.clear()  # one batch size at a time: each copy holds the model's weights
                    model_runs, reply = _model_gemm_runs(cfg, Path(tmp), *args, keys=list(runs))
                    conn.send(("ok", reply))
                elif command == "time_model":  # one call, as the model row's: its weights are as cold
                    conn.send(("ok", sample(model_runs[args[0]], 0.0)))
                else:
                    _, run = runs[args[0]]
                    conn.send(("ok", sample(run, cfg.min_sample_cpu_s)))
            except BaseException as e:
                conn.send(("error", error_line(e)))


def _model_gemm_runs(cfg: CeilingConfig, tmp: Path, model_path: str, input_shape: list[int], batch: int,
                     keys: list[str]) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    """The model-GEMM ceiling runs at ``batch`` (:mod:`clap_edge.apps.model_gemms`) and what the parent needs."""
    import dataclasses

    from clap_edge.apps.model_gemms import build_model_gemms, model_gemm_runs
    from clap_edge.runtime.huge_pages import anonymous_regions, back_with_huge_pages, wanted

    gemms = build_model_gemms(model_path, tuple(input_shape), batch, tmp / f"model_gemms_b{batch}.onnx")
    before = anonymous_regions()
    runs, errors = model_gemm_runs(gemms, keys, cfg.threads, tmp)
    # the same page size under the products' weights as our runners give the model's (runtime/huge_pages.py)
    pages = back_with_huge_pages(skip=set(before)) if wanted() else None
    return runs, {"batch": batch, "flops": gemms.flops, "products": gemms.products, "keys": sorted(runs),
                  "errors": errors, "huge_pages": dataclasses.asdict(pages) if pages else None}


def _time(run: Callable[[], Any], seconds: float, min_cpu_s: float) -> list[tuple[int, float, float]]:
    """Samples of >= ``min_cpu_s`` CPU each for about ``seconds`` of wall time (at least 3)."""
    samples = []
    deadline = time.perf_counter() + seconds
    while len(samples) < 3 or time.perf_counter() < deadline:
        samples.append(sample(run, min_cpu_s))
        if len(samples) >= 100:
            break
    return samples


def _onnx_models(tmp: Path, a: np.ndarray, w: np.ndarray) -> dict[str, Path]:
    """The fp32 MatMul model and its dynamic and static (QDQ) int8 forms, as our variants make them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # static shapes: OpenVINO's CPU plugin runs a dynamic dimension through slower generic kernels
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(a.shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [a.shape[0], w.shape[1]])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="gemm")], "ceiling", [x], [y],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    paths = {"fp32": tmp / "fp32.onnx", "inner": tmp / "inner.onnx", "dynamic": tmp / "dynamic.onnx",
             "qdq": tmp / "qdq.onnx"}
    onnx.save_model(model, str(paths["fp32"]))
    # Our quantisers keep a GEMM that writes a graph output in float (the logits product), so the int8
    # forms are made from a copy whose MatMul feeds an Identity: an inner GEMM, as in the real models.
    model.graph.node[0].output[0] = "y_inner"
    model.graph.node.append(helper.make_node("Identity", ["y_inner"], ["y"], name="out"))
    onnx.save_model(model, str(paths["inner"]))
    from clap_edge.export.builders.variants import quantize_int8, quantize_qdq

    quantize_int8(paths["inner"], paths["dynamic"])
    quantize_qdq(paths["inner"], paths["qdq"], a, "minmax", batch=len(a))  # the static input shape
    return paths


def ort_runner(path: Path, feeds: dict[str, np.ndarray], threads: int | None) -> Callable[[], Any]:
    """One ONNX Runtime session on ``path`` at ``threads``: a callable running it on ``feeds``."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads, so.inter_op_num_threads = int(threads), 1
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feeds)


def openvino_runner(path: Path, feeds: dict[str, np.ndarray], threads: int | None, precision: str
                    ) -> Callable[[], Any]:
    """One OpenVINO CPU infer request on ``path`` at that inference precision: a callable running ``feeds``."""
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}.get(
        precision, precision)}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(int(threads))
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    return lambda: request.infer(feeds, share_inputs=True)


def _torch(a: np.ndarray, w: np.ndarray, threads: int | None) -> Callable[[], Any]:
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    ta, tw = torch.from_numpy(a), torch.from_numpy(w)

    def run() -> Any:
        with torch.inference_mode():
            return torch.matmul(ta, tw)

    return run


if __name__ == "__main__":  # python -m clap_edge.apps.ceiling [threads]
    import json
    import sys

    print(json.dumps(measure_ceilings(CeilingConfig(threads=int(sys.argv[1]) if len(sys.argv) > 1 else 1)),
                     indent=2))
    os._exit(0)
