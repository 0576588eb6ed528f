"""Benchmark backends x batch sizes on one bundle: latency, throughput, memory, drift.

Each backend runs in its own worker process (:mod:`clap_edge.runtime.bench_worker`) and the
backends are interleaved round by round (one timed call per backend per round), so drift of
a shared machine hits all backends equally. Results have the shape the bench issue fixes:
``{"env": {...}, "results": [{"backend", "batch_size", "threads", "p50_ms", "p90_ms",
"p99_ms", "images_per_s", "speedup_vs_torch", "gflops_per_s", "peak_rss_mb",
"top1_agreement_vs_fp32", "ceiling_gflops_per_s", "fraction_of_ceiling", ...}]}``.

A ceiling process (:mod:`clap_edge.apps.ceiling`) holds one large GEMM per library and precision
benchmarked; in every timed round, right after each backend's call, it times that backend's GEMM once,
so each ceiling is sampled in the same moments as the rows compared with it (on a shared machine the
load moves within seconds). Every model row is reported as a fraction of its own ceiling
(``env["ceiling"]``: the ceilings, the shape and the CPU's instruction-set flags).

``record_bench`` stores a report in the user cache so that ``backend="auto"`` can pick the
fastest backend measured on this machine for this model (:func:`recorded_fastest_backend`).
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from clap_edge.core.errors import BundleError
from clap_edge.core.machine import cpu_info
from clap_edge.export.bundle import Bundle
from clap_edge.runtime.bench_record import load_bench_record, record_bench, recorded_fastest_backend

__all__ = ["BenchConfig", "run_bench", "preprocess_folder", "record_bench", "load_bench_record",
           "recorded_fastest_backend", "environment"]

REFERENCE_BACKENDS = ("onnxruntime", "torch")  # fp32 references for the agreement columns, in preference


@dataclass
class BenchConfig:
    bundle: str
    backends: list[str] | None = None  # None: every backend installed here that can run the bundle
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    threads: int | None = 1
    warmup: int = 3
    iters: int = 20
    end_to_end: str | None = None  # image folder: also time files -> predictions at each batch size
    agreement: np.ndarray | None = None  # preprocessed [n,3,H,W]; default: the bundle's calibration.npy
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> RunnerOptions.extra
    ceiling: bool = True  # sample each library's GEMM ceiling, interleaved with the timed rounds
    device: str = "cpu"  # RunnerOptions.device for every backend: "cpu", "cuda[:i]" (torch, aoti, tensorrt)


# ---- workers --------------------------------------------------------------------------


class _WorkerHandle:
    """Parent side of one worker process."""

    def __init__(self, ctx: Any, cfg: BenchConfig, backend: str):
        from clap_edge.runtime.bench_worker import worker_main

        self.backend = backend
        self.conn, child = ctx.Pipe()
        extra = cfg.backend_options.get(backend, {})
        self.process = ctx.Process(target=worker_main, args=(child, str(cfg.bundle), backend, cfg.threads, extra,
                                                             cfg.device),
                                   name=f"clap-edge-bench-{backend}", daemon=True)
        self.process.start()
        child.close()
        self.info = self._reply()

    def call(self, command: str, *args: Any) -> Any:
        self.conn.send((command, *args))
        return self._reply()

    def _reply(self) -> Any:
        try:
            status, payload = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"bench worker for {self.backend!r} died (exit code {self.process.exitcode})") from None
        if status != "ok":
            raise RuntimeError(f"backend {self.backend!r}: {payload}")
        return payload

    def stop(self) -> None:
        try:
            if self.process.is_alive():
                self.call("stop")
        except Exception:
            pass
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class _CeilingHandle(_WorkerHandle):
    """Parent side of the ceiling process: one GEMM per (library, precision) of the benchmarked backends."""

    @classmethod
    def start(cls, ctx: Any, threads: int | None, workers: dict[str, _WorkerHandle],
              errors: dict[str, str]) -> "_CeilingHandle | None":
        from clap_edge.apps.ceiling import CeilingConfig, ceiling_key, ceiling_worker_main

        key_of = {name: ceiling_key(name, w.info["precision"]) for name, w in workers.items()}
        keys = sorted({k for k in key_of.values() if k})
        libraries = tuple(dict.fromkeys(k.split(":")[0] for k in keys))
        handle = cls.__new__(cls)
        handle.backend, handle.key_of = "ceiling", key_of
        handle.conn, child = ctx.Pipe()
        handle.process = ctx.Process(target=ceiling_worker_main, daemon=True, name="clap-edge-bench-ceiling",
                                     args=(child, CeilingConfig(threads=threads, libraries=libraries), keys))
        handle.process.start()
        child.close()
        try:
            handle.info = handle._reply()
        except RuntimeError as e:  # the ceiling is context for the figures; never lose the bench over it
            errors["ceiling"] = str(e)
            handle.stop()
            return None
        handle.samples = {k: [] for k in handle.info["keys"]}
        return handle

    def sample(self, backend: str) -> None:
        key = self.key_of.get(backend)
        if key in self.samples:
            self.samples[key].append(self.call("time", key))

    def report(self) -> dict[str, Any]:
        from clap_edge.apps.ceiling import ceiling_row, flops

        work = flops(tuple(self.info["shape"]))
        ceilings = {k: ceiling_row(self.info["keys"][k], work, t) for k, t in self.samples.items() if t}
        return {"shape": self.info["shape"], "threads": self.info["threads"], "cpu_flags": self.info["cpu_flags"],
                "ceilings": ceilings, "errors": self.info["errors"], "interleaved": True}


# ---- the run ------------------------------------------------------------------------


def run_bench(cfg: BenchConfig, progress: bool = False) -> dict[str, Any]:
    """Run the benchmark and return the report (see the module docstring for its shape)."""
    import multiprocessing

    bundle = Bundle.open(cfg.bundle)
    backends = _check_backends(bundle, cfg.backends)
    files = _image_files(cfg.end_to_end) if cfg.end_to_end else []
    env = environment(cfg.threads)
    env["device"] = cfg.device
    env["bundle"] = {"path": str(cfg.bundle), "model_name": bundle.manifest.model.model_name,
                     "flops_per_image": bundle.manifest.flops_per_image,
                     "input_shape": list(bundle.input_shape), "n_classes": len(bundle.class_names)}
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited thread pools or allocations
    steps = len(backends) * (1 + len(cfg.batch_sizes) * (cfg.warmup + cfg.iters + (1 if files else 0)))
    workers: dict[str, _WorkerHandle] = {}
    ceiling: _CeilingHandle | None = None
    errors: dict[str, str] = {}
    results: list[dict[str, Any]] = []
    with _progress(progress, steps) as advance:
        for name in backends:
            advance(f"loading {name}")
            try:
                workers[name] = _WorkerHandle(ctx, cfg, name)
            except RuntimeError as e:
                errors[name] = str(e)
        if cfg.ceiling and workers:
            advance("loading the GEMM ceiling")
            ceiling_errors: dict[str, str] = {}  # context for the figures, not a backend failure: no exit 1
            ceiling = _CeilingHandle.start(ctx, cfg.threads, workers, ceiling_errors)
            if ceiling_errors:
                env["ceiling"] = {"error": ceiling_errors["ceiling"], "ceilings": {}}
        try:
            for batch_size in cfg.batch_sizes:
                results += _bench_batch(workers, cfg, batch_size, advance, errors, ceiling)
            drift = _agreement(workers, bundle, cfg)
            for row in results:
                row.update(drift.get(row["backend"], {"top1_agreement_vs_fp32": None}))
            if files:
                for batch_size in cfg.batch_sizes:
                    results += _bench_end_to_end(workers, files, batch_size, cfg.threads, results, advance, errors)
        finally:
            for worker in workers.values():
                worker.stop()
            if ceiling is not None:
                env["ceiling"] = ceiling.report()
                ceiling.stop()
    _add_ratios(results, env["bundle"]["flops_per_image"])
    _add_ceiling_fractions(results, env.get("ceiling"))
    env["load_average_after"] = _load_average()
    env["load_s"] = {name: w.info["load_s"] for name, w in workers.items()}
    report = {"env": env, "config": {"backends": backends, "batch_sizes": cfg.batch_sizes, "threads": cfg.threads,
                                     "warmup": cfg.warmup, "iters": cfg.iters, "end_to_end": cfg.end_to_end},
              "results": results}
    if errors:
        report["errors"] = errors
    return report


def _bench_batch(workers: dict[str, _WorkerHandle], cfg: BenchConfig, batch_size: int,
                 advance: Callable[[str], None], errors: dict[str, str],
                 ceiling: "_CeilingHandle | None" = None) -> list[dict[str, Any]]:
    live = dict(workers)
    times: dict[str, list[float]] = {name: [] for name in live}

    def each_round(label: str, record: bool) -> None:
        for name, worker in list(live.items()):
            advance(f"{label} {name} batch {batch_size}")
            try:
                t = worker.call("time", batch_size, 1)
            except RuntimeError as e:  # e.g. out of memory at a large batch: report, keep the others going
                errors[f"{name}@{batch_size}"] = str(e)
                del live[name]
                continue
            if record:
                times[name] += t
                if ceiling is not None:
                    ceiling.sample(name)

    for worker in live.values():
        worker.call("start_batch", batch_size)
    for _ in range(cfg.warmup):
        each_round("warm-up", record=False)
    for _ in range(cfg.iters):
        each_round("timing", record=True)
    rows = []
    for name, worker in live.items():
        ms = np.asarray(times[name]) * 1000.0
        memory = worker.call("memory")
        rows.append({
            "backend": name, "mode": "model", "batch_size": batch_size, "threads": cfg.threads,
            "precision": worker.info["precision"],
            "p50_ms": _r(np.percentile(ms, 50), 3), "p90_ms": _r(np.percentile(ms, 90), 3),
            "p99_ms": _r(np.percentile(ms, 99), 3), "mean_ms": _r(ms.mean(), 3),
            "images_per_s": _r(batch_size * len(ms) / (ms.sum() / 1000.0)),
            "peak_rss_mb": memory["peak_rss_mb"], "peak_gpu_mb": memory["peak_gpu_mb"], "iters": len(ms),
        })
    return rows


def _agreement(workers: dict[str, _WorkerHandle], bundle: Bundle, cfg: BenchConfig) -> dict[str, dict[str, Any]]:
    """Top-1 agreement and max |dlogit| of every backend against the fp32 reference backend."""
    batch = cfg.agreement if cfg.agreement is not None else bundle.calibration()
    reference = next((name for name in REFERENCE_BACKENDS if name in workers), None)
    if batch is None or reference is None:
        return {}
    from clap_edge.export.parity import compare_logits  # numpy only

    ref = workers[reference].call("logits", batch)
    out = {}
    for name, worker in workers.items():
        parity = compare_logits(ref, worker.call("logits", batch))
        out[name] = {
            "top1_agreement_vs_fp32": _r(parity.top1_agreement, 4),
            "max_abs_logit_diff_vs_fp32": _r(parity.max_abs_logit_diff, 6),
            "agreement_n_images": int(len(batch)), "agreement_reference": reference,
        }
    return out


def _bench_end_to_end(workers: dict[str, _WorkerHandle], files: list[str], batch_size: int, threads: int | None,
                      results: list[dict[str, Any]], advance: Callable[[str], None],
                      errors: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    for name, worker in workers.items():
        advance(f"end-to-end {name} batch {batch_size}")
        reps = max(1, -(-6 * batch_size // len(files)))  # >= 6 batches, so pipeline fill is a small part
        try:
            e2e = worker.call("end_to_end", files * reps, batch_size)
        except RuntimeError as e:
            errors[f"{name}@{batch_size}/end_to_end"] = str(e)
            continue
        model = next((r for r in results if r["backend"] == name and r["batch_size"] == batch_size
                      and r["mode"] == "model"), None)
        ips = e2e["n_images"] / e2e["seconds"]
        rows.append({
            "backend": name, "mode": "end_to_end", "batch_size": batch_size, "threads": threads,
            "images_per_s": _r(ips), "n_images": e2e["n_images"], "failed": e2e["failed"],
            "model_only_images_per_s": model["images_per_s"] if model else None,
            "fraction_of_model_only": _r(ips / model["images_per_s"], 3) if model else None,
        })
    return rows


def _add_ratios(results: list[dict[str, Any]], flops_per_image: float | None) -> None:
    torch_ips = {r["batch_size"]: r["images_per_s"] for r in results if r["backend"] == "torch" and r["mode"] == "model"}
    for row in results:
        if row["mode"] != "model":
            continue
        base = torch_ips.get(row["batch_size"])
        row["speedup_vs_torch"] = _r(row["images_per_s"] / base, 3) if base else None
        row["gflops_per_s"] = _r(flops_per_image * row["images_per_s"] / 1e9) if flops_per_image else None


def _add_ceiling_fractions(results: list[dict[str, Any]], ceiling: dict[str, Any] | None) -> None:
    """``ceiling`` (which), ``ceiling_gflops_per_s`` and ``fraction_of_ceiling`` on every model row."""
    from clap_edge.apps.ceiling import ceiling_key

    ceilings = (ceiling or {}).get("ceilings", {})
    for row in results:
        if row["mode"] != "model":
            continue
        key = ceiling_key(row["backend"], row.get("precision"))
        peak = ceilings.get(key, {}).get("gflops_per_s") if key else None
        row["ceiling"] = key if peak else None
        row["ceiling_gflops_per_s"] = peak
        row["fraction_of_ceiling"] = _r(row["gflops_per_s"] / peak, 3) if peak and row.get("gflops_per_s") else None


# ---- inputs and environment --------------------------------------------------------


def _check_backends(bundle: Bundle, names: list[str] | None) -> list[str]:
    from clap_edge.runtime.backends import available_backends, usable_runner_class

    if not names:
        return available_backends(bundle)
    for name in names:
        usable_runner_class(bundle, name)  # raises naming what is wrong: unknown, not installed, no model file
    return list(dict.fromkeys(names))


def preprocess_folder(bundle: Bundle, folder: str, limit: int = 256) -> np.ndarray:
    """Up to ``limit`` images of ``folder``, preprocessed for ``bundle``: a batch for the agreement columns."""
    from clap_edge.core.images import load_image
    from clap_edge.core.preprocess import Preprocessor

    preprocessor = Preprocessor(bundle.preprocess)
    return np.stack([preprocessor(load_image(path)) for path in _image_files(folder)[:limit]])


def _image_files(folder: str) -> list[str]:
    from clap_edge.core.images import IMAGE_EXTENSIONS, list_images

    if not Path(folder).is_dir():
        raise BundleError(f"{folder}: --end-to-end needs a folder of images")
    files = [str(p) for p in list_images([folder])]
    if not files:
        raise BundleError(f"{folder}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
    return files


def environment(threads: int | None) -> dict[str, Any]:
    """CPU, cores, threads, library versions, GPU and machine load: what a number depends on."""
    from importlib import metadata

    from clap_edge.apps.ceiling import cpu_isa_flags

    versions = {}
    for lib in ("numpy", "onnxruntime", "onnxruntime-gpu", "openvino", "torch", "open_clip_torch", "pillow"):
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return {
        "cpu_model": cpu_info()[0], "cpu_flags": cpu_isa_flags(), "machine": platform.machine(),
        "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads, "python": platform.python_version(), "libraries": versions, "gpu": _gpu_name(),
        "load_average_before": _load_average(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _gpu_name() -> str | None:
    from clap_edge.export.bundle.engines import visible_gpus

    gpus = visible_gpus()
    return gpus[0].name if gpus else None


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# ---- helpers ------------------------------------------------------------------


def _r(x: float, digits: int = 2) -> float:
    return round(float(x), digits)


class _progress:
    """A rich progress bar on stderr (or nothing): ``advance(description)`` per step."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self._bar = enabled, total, None

    def __enter__(self) -> Callable[[str], None]:
        if not self.enabled:
            return lambda description: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("{task.description:<36}"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), console=Console(stderr=True), transient=True)
        self._bar.start()
        task = self._bar.add_task("bench", total=self.total)
        return lambda description: self._bar.update(task, advance=1, description=description)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
