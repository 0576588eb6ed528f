"""One benchmark worker process per backend (used by :mod:`clap_edge.apps.bench`).

Why processes: each backend then has its own peak RSS (``VmHWM``, reset per batch size) and
its own thread pools, while the parent still interleaves them round by round. The worker
holds one activated runner and answers small commands over a pipe; timing happens inside
the worker, so pipe overhead is never measured.
"""

from __future__ import annotations

import dataclasses

import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _read_status_kb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float | None:
    kb = _read_status_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS) never resets
        import resource
        import sys

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return round(kb / 1024, 1)


def reset_peak_rss() -> None:
    # Linux >= 4.0: writing 5 to clear_refs resets VmHWM to the current RSS.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def gpu_peak_mb() -> float | None:
    import sys

    torch = sys.modules.get("torch")  # only if the backend already imported it
    if torch is not None and torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return None


class _Worker:
    def __init__(self, bundle_path: str, backend: str, threads: int | None, extra: dict[str, Any],
                 device: str = "cpu", runner_factory: Callable[..., Any] | None = None):
        from clap_edge.export.bundle import Bundle
        from clap_edge.runtime.backends import RunnerOptions, create_runner

        self.bundle = Bundle.open(bundle_path)
        start = time.perf_counter()
        if runner_factory is not None:  # e.g. the bench's peers (a plain tool on the same model file)
            self.runner = runner_factory(self.bundle, backend, threads)
        else:
            self.runner = create_runner(self.bundle, backend, RunnerOptions(threads=threads, device=device,
                                                                         extra=dict(extra)))
        self.runner.activate()
        wait = getattr(self.runner, "wait_for_huge_pages", None)  # peers have none: plain tools as a user gets them
        self.huge_pages = wait() if wait else None  # time the steady state, after the move to huge pages
        self.load_s = time.perf_counter() - start
        self._inputs: dict[int, np.ndarray] = {}

    def info(self) -> dict[str, Any]:
        return {"precision": self.runner.precision, "load_s": round(self.load_s, 3), "peak_rss_mb": peak_rss_mb(),
                "huge_pages": dataclasses.asdict(self.huge_pages) if self.huge_pages is not None else None}

    def start_batch(self, batch_size: int) -> None:
        reset_peak_rss()
        rng = np.random.default_rng(batch_size)
        self._inputs[batch_size] = rng.standard_normal((batch_size, *self.bundle.input_shape)).astype(np.float32)

    def time(self, batch_size: int, n: int) -> list[tuple[float, float]]:
        """``n`` timed calls: (wall seconds, CPU seconds) each. CPU time is the whole process's
        (``time.process_time``), so a runner's own thread pool is counted: on a shared machine the
        CPU time of a call barely moves with the load, while its wall time includes waiting for a core."""
        x = self._inputs[batch_size]
        times = []
        for _ in range(n):
            start, cpu = time.perf_counter(), time.process_time()
            self.runner.infer(x)
            times.append((time.perf_counter() - start, time.process_time() - cpu))
        return times

    def memory(self) -> dict[str, Any]:
        return {"peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": gpu_peak_mb()}

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.runner.infer(batch).logits

    def end_to_end(self, files: list[str], batch_size: int) -> dict[str, Any]:
        """Files -> predictions through the pipelined path (decode overlaps inference)."""
        from clap_edge.runtime.classifier import Classifier

        clf = Classifier(self.bundle, self.runner)  # the runner already loaded here: no second model in memory

        def run(paths: list[str]) -> list[Any]:
            return [result for _, result in clf.predict_files(paths, batch_size=batch_size, top_k=1)]

        run(files[:batch_size])  # warm-up: first decode, allocator growth
        start = time.perf_counter()
        predictions = run(files)
        seconds = time.perf_counter() - start
        failed = sum(1 for p in predictions if isinstance(p, BaseException))
        return {"n_images": len(files), "seconds": seconds, "failed": failed}


def worker_main(conn: Any, bundle_path: str, backend: str, threads: int | None, extra: dict[str, Any],
                device: str = "cpu", runner_factory: Callable[..., Any] | None = None) -> None:
    """Entry point of the worker process: build the runner, then serve commands until "stop"."""
    try:
        worker = _Worker(bundle_path, backend, threads, extra, device, runner_factory)
        conn.send(("ok", worker.info()))
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    while True:
        command, *args = conn.recv()
        if command == "stop":
            worker.runner.deactivate()
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", getattr(worker, command)(*args)))
        except BaseException as e:
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"))
