"""A/B the session / compile options behind the lead over the peers, in CPU time, call by call.

Every candidate (a plain peer-like session, ours, ours + one option) runs the same bundle model on the same
batch; the candidates are called in turn, round after round, in one process, so the machine's drift hits all
of them alike. Reports images per CPU-second (process CPU time: every library thread counted, spinning
included) and per wall second, median over the rounds, and each candidate's ratio to the first one.

    python bench/lead_ab.py /tmp/lead_vitb32 --library openvino --batch 8 --threads 1 --rounds 20 \
        --only latency,static --json bench/results/lead_ab/openvino_b8_t1.json

Candidates: ``ORT`` and ``OV`` below (``plain`` = the peer: default options, threads matched), and with
``--model NAME=PATH`` another model file of the same network on OpenVINO (``bench/lead_models.py`` writes
them: a leaner attention export, int8 weight compression). ``bench/lead_ab.sh`` runs the committed set.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from clap_edge.core.io import atomic_write_text
from clap_edge.export.bundle import Bundle


# candidate name -> options; "plain" is the peer (default options, threads matched)
ORT: dict[str, dict[str, Any]] = {
    "plain": {}, "ours": {"ours": True}, "override": {"ours": True, "override": True},
    "no_spin": {"ours": True, "no_spin": True}, "override+no_spin": {"ours": True, "override": True, "no_spin": True},
    "no_arena": {"ours": True, "no_arena": True}, "dev_alloc": {"ours": True, "dev_alloc": True}}
MODELS: dict[str, str] = {}  # --model NAME=PATH, set in each worker
OV: dict[str, dict[str, Any]] = {
    "plain": {}, "latency": {"PERFORMANCE_HINT": "LATENCY"},
    "static+latency": {"static": True, "PERFORMANCE_HINT": "LATENCY"},
    "static": {"static": True},
    "split": {"split": True},
    "static+throughput": {"static": True, "PERFORMANCE_HINT": "THROUGHPUT"},
    "static+latency+denormals": {"static": True, "PERFORMANCE_HINT": "LATENCY", "CPU_DENORMALS_OPTIMIZATION": True},
    "static+latency+f16": {"static": True, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f16"}}


def ort_candidates(bundle: Bundle, batch: int, threads: int, variant: str, only: str) -> dict[str, Callable]:
    import onnxruntime as ort

    path = str(bundle.variant_file(variant))
    name = bundle.manifest.inputs[0].name
    probe = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    dim = probe.get_inputs()[0].shape[0]  # the symbolic batch dim's name ("N")
    del probe

    def session(**opts: Any) -> Callable:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        if opts.get("ours"):
            so.inter_op_num_threads = 1
        if opts.get("override"):
            so.add_free_dimension_override_by_name(dim, batch)
        if opts.get("no_spin"):
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if opts.get("no_arena"):
            so.enable_cpu_mem_arena = False
        if opts.get("dev_alloc"):
            so.add_session_config_entry("session.use_device_allocator_for_initializers", "1")
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        return lambda x: s.run(None, {name: x})[0]

    return {only: session(**ORT[only])}


def ov_candidates(bundle: Bundle, batch: int, threads: int, variant: str, only: str) -> dict[str, Callable]:
    import openvino as ov

    core = ov.Core()
    path = str(bundle.variant_file(variant))

    def compiled(static: bool = False, model_path: str | None = None, split: bool = False, **config: Any) -> Callable:
        model = core.read_model(model_path or path)
        if split:  # one stream of one thread per core, the batch split over them
            c = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": threads,
                                                  "PERFORMANCE_HINT": "THROUGHPUT", **config})
            reqs = [c.create_infer_request() for _ in range(threads)]

            def run(x: np.ndarray) -> np.ndarray:
                parts = np.array_split(x, len(reqs))
                for r, p in zip(reqs, parts):
                    r.start_async({0: p}, share_inputs=True)
                for r in reqs:
                    r.wait()
                return np.concatenate([r.get_output_tensor(0).data.copy() for r in reqs])
            return run
        if static:
            model.reshape({0: [batch, *bundle.input_shape]})
        c = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, **config})
        r = c.create_infer_request()
        return lambda x: np.array(list(r.infer({0: x}, share_inputs=True).values())[0])

    if only.startswith("model:"):  # another model file of the same network (bench/lead_models.py)
        return {only: compiled(model_path=MODELS[only[len("model:"):]], PERFORMANCE_HINT="LATENCY")}
    return {only: compiled(**OV[only])}


def _worker(conn: Any, bundle_path: str, library: str, name: str, batch: int, threads: int, variant: str,
            models: dict[str, str]) -> None:
    """One candidate per process (as `clap-edge bench` runs each backend): its own threads, its own CPU clock."""
    MODELS.update(models)
    bundle = Bundle.open(bundle_path)
    build = ort_candidates if library == "onnxruntime" else ov_candidates
    f = build(bundle, batch, threads, variant, only=name)[name]
    x = np.random.default_rng(0).standard_normal((batch, *bundle.input_shape)).astype(np.float32)
    conn.send(f(x))
    while (n := conn.recv()) > 0:
        times = []
        for _ in range(n):
            w, c = time.perf_counter(), time.process_time()
            f(x)
            times.append((time.perf_counter() - w, time.process_time() - c))
        conn.send(times)


def run(a: argparse.Namespace, names: list[str]) -> dict[str, dict]:
    ctx = mp.get_context("spawn")
    pipes = {}
    for name in names:
        parent, child = ctx.Pipe()
        ctx.Process(target=_worker, args=(child, a.bundle, a.library, name, a.batch, a.threads, a.variant, a.models),
                    daemon=True).start()
        pipes[name] = parent
    ref = {k: c.recv() for k, c in pipes.items()}
    base = ref[names[0]]
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    for r in range(a.warmup + a.rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: no candidate always follows the same one
        for k in order:
            pipes[k].send(1)
            t = pipes[k].recv()
            if r >= a.warmup:
                times[k] += t
        print(f"round {r + 1}/{a.warmup + a.rounds}", file=sys.stderr, end="\r")
    for c in pipes.values():
        c.send(0)
    out, first = {}, None
    for k, t in times.items():
        cpu = statistics.median(c for _, c in t)
        wall = statistics.median(w for w, _ in t)
        first = first or cpu
        out[k] = {"img_per_cpu_s": round(a.batch / cpu, 3), "img_per_wall_s": round(a.batch / wall, 3),
                  "cpu_over_wall": round(cpu / wall, 3), "ratio_vs_first_cpu": round(first / cpu, 3),
                  "max_abs_diff_vs_first": float(np.abs(ref[k] - base).max())}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("--library", choices=["onnxruntime", "openvino"], required=True)
    p.add_argument("--variant", default="fp32")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated candidate names to keep (default: all)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="openvino: also run this model file as candidate model:NAME (LATENCY hint)")
    p.add_argument("--json")
    a = p.parse_args()
    a.models = dict(m.split("=", 1) for m in a.model)
    names = list((ORT if a.library == "onnxruntime" else OV))
    if a.only:
        names = ["plain"] + [n for n in a.only.split(",") if n != "plain"]
    names += [f"model:{m}" for m in a.models]
    load0 = os.getloadavg()[0]
    res = run(a, names)
    report = {"args": vars(a), "load_start": load0, "load_end": os.getloadavg()[0],
              "cpu": _cpu_model(), "candidates": res}
    text = json.dumps(report, indent=1)
    print(text)
    if a.json:
        atomic_write_text(Path(a.json), text + "\n")


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
