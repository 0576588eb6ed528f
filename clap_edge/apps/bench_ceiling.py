"""The bench's ceilings: one process per library, sampled in the timed rounds (``clap-edge bench``).

Each process (:func:`clap_edge.apps.ceiling.ceiling_worker_main`) holds its library's square GEMM per
precision and, per batch size, the model's own matrix products (:mod:`clap_edge.apps.model_gemms`). One
process per library, so process CPU time counts only that library's threads (a pool left spinning by one
library would otherwise be billed to the next library's sample).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clap_edge.apps.bench_workers import WorkerHandle
from clap_edge.export.bundle import Bundle

__all__ = ["Ceilings", "CeilingProcess"]


class CeilingProcess(WorkerHandle):
    """Parent side of one library's ceiling process: its GEMM per precision, and the model's own products.

    One process per library: process CPU time then counts only that library's threads (a thread pool left
    spinning by one library would otherwise be billed to the next library's sample)."""

    def __init__(self, ctx: Any, library: str, keys: list[str], threads: int | None, sample_cpu_s: float,
                 probe_peak: bool):
        from clap_edge.apps.ceiling import CeilingConfig, ceiling_worker_main

        self.backend = f"ceiling:{library}"
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=ceiling_worker_main, daemon=True, name=f"clap-edge-bench-ceiling-{library}",
                                   args=(child, CeilingConfig(threads=threads, libraries=(library,),
                                                              min_sample_cpu_s=sample_cpu_s, probe_peak=probe_peak),
                                         keys))
        self.process.start()
        child.close()
        self.info = self._reply()


class Ceilings:
    """The ceilings of the benchmarked backends: one :class:`CeilingProcess` per library, sampled in the
    timed rounds (the square GEMM and, per batch size, the model's own products)."""

    @classmethod
    def start(cls, ctx: Any, threads: int | None, workers: dict[str, WorkerHandle],
              errors: dict[str, str], sample_cpu_s: float = 0.2) -> "Ceilings | None":
        from clap_edge.apps.ceiling import DEFAULT_SHAPE, ceiling_key, cpu_isa_flags

        handle = cls()
        handle.key_of = {name: ceiling_key(name, w.info["precision"]) for name, w in workers.items()}
        keys = sorted({k for k in handle.key_of.values() if k})
        handle.procs: dict[str, CeilingProcess] = {}
        try:
            for library in dict.fromkeys(k.split(":")[0] for k in keys):
                handle.procs[library] = CeilingProcess(ctx, library, [k for k in keys if k.startswith(library + ":")],
                                                       threads, sample_cpu_s, probe_peak=not handle.procs)
        except RuntimeError as e:  # the ceiling is context for the figures; never lose the bench over it
            errors["ceiling"] = str(e)
            handle.stop()
            return None
        infos = [p.info for p in handle.procs.values()]
        first = infos[0] if infos else {"shape": list(DEFAULT_SHAPE), "threads": threads, "cpu_flags": cpu_isa_flags()}
        handle.info = {"shape": first["shape"], "threads": first["threads"], "cpu_flags": first["cpu_flags"],
                       "keys": {k: lib for i in infos for k, lib in i["keys"].items()},
                       "errors": {k: e for i in infos for k, e in i["errors"].items()},
                       "peak": first.get("peak")}  # the core's peak: probed by the first process only
        handle.samples = {k: [] for k in handle.info["keys"]}
        handle.model_batches: dict[int, dict[str, Any]] = {}  # batch -> the model-GEMM ceiling's info + samples
        return handle

    def start_model_batch(self, bundle: Bundle, batch: int) -> None:
        """Build the model's own products at ``batch`` in each ceiling process (see apps/model_gemms.py)."""
        merged: dict[str, Any] = {"batch": batch, "keys": [], "errors": {}}
        for library, proc in self.procs.items():
            try:
                info = proc.call("model_batch", str(bundle.variant_file("fp32")), list(bundle.input_shape), batch)
            except RuntimeError as e:  # context only: the rows keep the square-GEMM ceiling
                merged["errors"][library] = str(e)
                continue
            merged.update(flops=info["flops"], products=info["products"])
            merged.setdefault("huge_pages", {})[library] = info.get("huge_pages")
            merged["keys"] += info["keys"]
            merged["errors"].update(info["errors"])
        self.model_batches[batch] = {**merged, "samples": {k: [] for k in merged["keys"]}}

    def sample(self, backend: str, done: set[str], batch: int | None = None) -> None:
        """One call of the model's own products at ``batch`` (paired with the model call just made) and one
        >= 200 ms-CPU sample of the square GEMM for ``backend``, unless this round already sampled them."""
        key = self.key_of.get(backend)
        if key in self.samples and key not in done:
            done.add(key)
            proc = self.procs[key.split(":")[0]]
            model = self.model_batches.get(batch, {}).get("samples", {})
            if key in model:  # first: right after the model call it is paired with
                model[key].append(proc.call("time_model", key))
            self.samples[key].append(proc.call("time", key))

    def paired_fraction(self, backend: str, batch: int, times: list) -> float | None:
        """Median over rounds of (the products' CPU time per image) / (the model's), each round's model
        call paired with the products sample taken right after it: drift slower than a round cancels."""
        key = self.key_of.get(backend)
        samples = self.model_batches.get(batch, {}).get("samples", {}).get(key or "", [])
        if not samples or len(samples) != len(times):  # a backend dropped mid-way: no pairing
            return None
        ratios = [(cpu / n) / model_cpu for (n, _, cpu), (_, model_cpu) in zip(samples, times) if model_cpu > 0]
        return round(float(np.median(ratios)), 3) if ratios else None

    def report(self) -> dict[str, Any]:
        from clap_edge.apps.ceiling import ceiling_row, flops

        work = flops(tuple(self.info["shape"]))
        ceilings = {k: ceiling_row(self.info["keys"][k], work, t) for k, t in self.samples.items() if t}
        model_gemms = {str(b): {"flops_per_call": m.get("flops"), "products": m.get("products"),
                                "huge_pages": m.get("huge_pages"),
                                "errors": m.get("errors", {}),
                                "ceilings": {k: {**ceiling_row(self.info["keys"][k], m["flops"], t),
                                                 "images_per_cpu_s": _images_per_cpu_s(b, t)}
                                             for k, t in m["samples"].items() if t}}
                       for b, m in self.model_batches.items()}
        return {"shape": self.info["shape"], "threads": self.info["threads"], "cpu_flags": self.info["cpu_flags"],
                "ceilings": ceilings, "model_gemms": model_gemms, "errors": self.info["errors"], "interleaved": True,
                "processes": "one per library", "peak": self.info.get("peak"),
                "clock": "process CPU time (all threads) and wall"}

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.stop()


def _images_per_cpu_s(batch: int, samples: list) -> float:
    """Median over samples of (products x batch) / CPU s: the model-GEMM ceiling in the rows' own unit."""
    return round(float(np.median([n * batch / cpu for n, _, cpu in samples])), 3)
