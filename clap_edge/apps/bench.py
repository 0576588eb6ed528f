"""Benchmark backends x batch sizes on one bundle: latency, throughput, memory, drift.

Each backend runs in its own worker process (:mod:`clap_edge.runtime.bench_worker`) and the
backends are interleaved round by round (one timed call per backend per round), so drift of
a shared machine hits all backends equally. Results have the shape the bench issue fixes:
``{"env": {...}, "results": [{"backend", "batch_size", "threads", "p50_ms", "p90_ms",
"p99_ms", "images_per_s", "speedup_vs_torch", "gflops_per_s", "peak_rss_mb",
"top1_agreement_vs_fp32", "ceiling_gflops_per_s", "fraction_of_ceiling", ...}]}``.

Every timed call records wall and process CPU time (:mod:`clap_edge.apps.bench_rows` turns them into
rows: CPU time is what holds on a busy machine). Timed rounds run for a time budget (``budget_s`` per
batch size, at least ``min_iters``), or exactly ``iters`` rounds; p90/p99 need >= 50 calls.

A ceiling process (:mod:`clap_edge.apps.ceiling`) holds one large GEMM per library and precision
benchmarked; in every timed round, right after the first backend using it, it samples that GEMM for
>= 200 ms of CPU, so each ceiling is measured in the same moments as the rows compared with it (on a
shared machine the load moves within seconds). Every model row is reported as a fraction of its own
ceiling on the same clock, and of the core's FMA / int8 peak (``env["ceiling"]``: the ceilings, the
peak, the shape and the CPU's instruction-set flags). ``peers=True`` adds the plain tools' rows
(:mod:`clap_edge.apps.bench_peers`), alternated call by call with ours, and ``report["lead"]``.

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

from clap_edge.apps.bench_ceiling import Ceilings
from clap_edge.apps.bench_workers import WorkerHandle
from clap_edge.apps.bench_rows import add_ceiling_fractions, add_ratios, lead_summary, model_row
from clap_edge.core.errors import BundleError
from clap_edge.core.machine import cpu_info, steal_ticks
from clap_edge.export.bundle import Bundle
from clap_edge.runtime.bench_record import load_bench_record, record_bench, recorded_fastest_backend

__all__ = ["BenchConfig", "run_bench", "preprocess_folder", "record_bench", "load_bench_record",
           "recorded_fastest_backend", "environment"]

REFERENCE_BACKENDS = ("onnxruntime", "torch", "peer:onnxruntime")  # fp32 references for the agreement columns, in preference


@dataclass
class BenchConfig:
    bundle: str
    backends: list[str] | None = None  # None: every backend installed here that can run the bundle
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    threads: int | None = 1
    warmup: int = 3
    iters: int | None = None  # exact timed rounds; None: rounds for budget_s (at least min_iters)
    budget_s: float = 15.0  # wall seconds of timed rounds per batch size (all backends, ceilings included)
    min_iters: int = 5
    max_iters: int = 500
    peers: bool = False  # also run the plain tools (bench_peers.PEERS installed here), alternated with ours
    end_to_end: str | None = None  # image folder: also time files -> predictions at each batch size
    agreement: np.ndarray | None = None  # preprocessed [n,3,H,W]; default: the bundle's calibration.npy
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> RunnerOptions.extra
    ceiling: bool = True  # sample each library's GEMM ceiling, interleaved with the timed rounds
    ceiling_sample_cpu_s: float = 0.2  # CPU time per ceiling sample (short samples are scheduler noise)
    device: str = "cpu"  # RunnerOptions.device for every backend: "cpu", "cuda[:i]" (torch, aoti, tensorrt)


# ---- workers --------------------------------------------------------------------------


# ---- the run ------------------------------------------------------------------------


def run_bench(cfg: BenchConfig, progress: bool = False) -> dict[str, Any]:
    """Run the benchmark and return the report (see the module docstring for its shape)."""
    import multiprocessing

    bundle = Bundle.open(cfg.bundle)
    backends = _check_backends(bundle, cfg.backends)
    if cfg.peers:
        from clap_edge.apps.bench_peers import available_peers

        backends += [p for p in available_peers() if p not in backends]
    files = _image_files(cfg.end_to_end) if cfg.end_to_end else []
    env = environment(cfg.threads)
    env["device"] = cfg.device
    env["bundle"] = {"path": str(cfg.bundle), "model_name": bundle.manifest.model.model_name,
                     "flops_per_image": bundle.manifest.flops_per_image,
                     "input_shape": list(bundle.input_shape), "n_classes": len(bundle.class_names)}
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited thread pools or allocations
    rounds = cfg.iters or cfg.min_iters  # the bar's length; budgeted rounds may go past it
    steps = len(backends) * (1 + len(cfg.batch_sizes) * (cfg.warmup + rounds + (1 if files else 0)))
    workers: dict[str, WorkerHandle] = {}
    ceiling: Ceilings | None = None
    errors: dict[str, str] = {}
    results: list[dict[str, Any]] = []
    with _progress(progress, steps) as advance:
        for name in backends:
            advance(f"loading {name}")
            try:
                workers[name] = WorkerHandle(ctx, cfg, name)
            except RuntimeError as e:
                errors[name] = str(e)
        if cfg.ceiling and workers:
            advance("loading the GEMM ceiling")
            ceiling_errors: dict[str, str] = {}  # context for the figures, not a backend failure: no exit 1
            ceiling = Ceilings.start(ctx, cfg.threads, workers, ceiling_errors, cfg.ceiling_sample_cpu_s)
            if ceiling_errors:
                env["ceiling"] = {"error": ceiling_errors["ceiling"], "ceilings": {}}
        try:
            for batch_size in cfg.batch_sizes:
                results += _bench_batch(workers, cfg, batch_size, advance, errors, ceiling, bundle)
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
    env["speedup_baseline"] = add_ratios(results, env["bundle"]["flops_per_image"])
    add_ceiling_fractions(results, env.get("ceiling"))
    env["load_average_after"], env["steal_ticks_after"] = _load_average(), steal_ticks()
    env["load_s"] = {name: w.info["load_s"] for name, w in workers.items()}
    env["huge_pages"] = {name: w.info.get("huge_pages") for name, w in workers.items()}  # runtime/huge_pages.py
    report = {"env": env, "config": {"backends": backends, "batch_sizes": cfg.batch_sizes, "threads": cfg.threads,
                                     "warmup": cfg.warmup, "iters": cfg.iters, "budget_s": cfg.budget_s,
                                     "min_iters": cfg.min_iters, "peers": cfg.peers, "end_to_end": cfg.end_to_end},
              "results": results}
    lead = lead_summary(results)
    if lead is not None:
        report["lead"] = lead
    if errors:
        report["errors"] = errors
    return report


def _bench_batch(workers: dict[str, WorkerHandle], cfg: BenchConfig, batch_size: int,
                 advance: Callable[[str], None], errors: dict[str, str],
                 ceiling: Ceilings | None = None, bundle: Bundle | None = None) -> list[dict[str, Any]]:
    live = dict(workers)
    times: dict[str, list] = {name: [] for name in live}
    loads: list[float] = []

    def each_round(label: str, record: bool) -> None:
        sampled: set[str] = set()  # ceiling keys sampled this round: one sample per key and round
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
                    ceiling.sample(name, sampled, batch_size)
        if record and (load := _load_average()):
            loads.append(load[0])

    for worker in live.values():
        worker.call("start_batch", batch_size)
    if ceiling is not None and bundle is not None:
        advance(f"building the model-GEMM ceiling at batch {batch_size}")
        ceiling.start_model_batch(bundle, batch_size)
    for _ in range(cfg.warmup):
        each_round("warm-up", record=False)
    start, done = time.perf_counter(), 0
    while live and not _enough(cfg, done, time.perf_counter() - start):
        each_round("timing", record=True)
        done += 1
    rows = [model_row(name, batch_size, cfg.threads, worker.info["precision"], times[name],
                      worker.call("memory"), loads) for name, worker in live.items()]
    if ceiling is not None:
        for row in rows:
            row["model_gemms_paired"] = ceiling.paired_fraction(row["backend"], batch_size, times[row["backend"]])
    return rows


def _enough(cfg: BenchConfig, rounds: int, elapsed: float) -> bool:
    """Exactly ``iters`` rounds, or the time budget spent after ``min_iters`` (never past ``max_iters``)."""
    if cfg.iters:
        return rounds >= cfg.iters
    return rounds >= cfg.max_iters or (rounds >= cfg.min_iters and elapsed >= cfg.budget_s)


def _agreement(workers: dict[str, WorkerHandle], bundle: Bundle, cfg: BenchConfig) -> dict[str, dict[str, Any]]:
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


def _bench_end_to_end(workers: dict[str, WorkerHandle], files: list[str], batch_size: int, threads: int | None,
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


# ---- inputs and environment --------------------------------------------------------


def _check_backends(bundle: Bundle, names: list[str] | None) -> list[str]:
    from clap_edge.runtime.backends import available_backends, usable_runner_class

    if not names:
        return available_backends(bundle)
    from clap_edge.apps.bench_peers import PEER_PREFIX

    names = [n for n in names if not n.startswith(PEER_PREFIX)] + [n for n in names if n.startswith(PEER_PREFIX)]
    for name in names:
        if name.startswith(PEER_PREFIX):
            continue  # checked when its worker starts (an error row, not a failed bench)
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
        "load_average_before": _load_average(), "virtual_machine": "hypervisor" in cpu_info()[1],
        "steal_ticks_before": steal_ticks(),
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
