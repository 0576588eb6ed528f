"""End to end vs model only, native vs Python, from JPEG files: one committed JSON (bench/results/native_e2e.json).

Usage: python bench/native_e2e.py BUNDLE CLAP_EDGE_BENCH [--runs 5] [--iters 10] [--out bench/results/native_e2e.json]

Both runtimes measure the same thing the same way: a batch is `bs` JPEG files (16 generated here, seeded, 500x375
to 1024x768); each timed batch is run as files -> predictions (decode + preprocess on one thread, infer, top-k)
and, interleaved with it (alternating which goes first), its preprocessed tensor through the same model call
(prepared untimed), with one monotonic clock. Native: `clap-edge-bench --end-to-end --workers 1`; Python:
clap_edge.runtime Classifier.predict / runner.infer on OpenVINO. Runs alternate native and Python, for batch 1
and 32 and threads 1 and 2, `--runs` times; each row keeps every run's means, the medians, CPU ms per batch
(process CPU time: all threads) and the load average around it. The machine's lscpu model/flags are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

BATCHES = (1, 32)
THREADS = (1, 2)


def make_jpegs(out: Path, n: int = 16) -> list[str]:
    rng = np.random.default_rng(0)
    sizes = [(640, 480), (800, 600), (500, 375), (1024, 768)]
    paths = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([x * 255 / w, y * 255 / h, (x + y) % 256], -1) + rng.normal(0, 25, (h, w, 3))
        path = out / f"img{i:02d}.jpg"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def python_run(bundle: str, files: list[str], threads: int, iters: int) -> list[dict]:
    from clap_edge.runtime import Classifier

    rows = []
    with Classifier.open(bundle, backend="openvino", threads=threads) as clf:
        for bs in BATCHES:
            e2e, model, e2e_cpu, model_cpu, nxt = [], [], 0.0, 0.0, 0
            for i in range(-1, iters):  # i = -1: untimed warm-up
                paths = [files[(nxt + k) % len(files)] for k in range(bs)]
                nxt += bs
                x = np.stack([clf.preprocess(p) for p in paths])

                def time_e2e():
                    c, t = time.process_time(), time.perf_counter()
                    clf.predict(paths, top_k=1, batch_size=bs)
                    return time.perf_counter() - t, time.process_time() - c

                def time_model():
                    c, t = time.process_time(), time.perf_counter()
                    clf.runner.infer(x)
                    return time.perf_counter() - t, time.process_time() - c

                order = (time_e2e, time_model) if i % 2 == 0 else (time_model, time_e2e)
                got = {f: f() for f in order}
                if i >= 0:
                    e2e.append(got[time_e2e][0] * 1000)
                    model.append(got[time_model][0] * 1000)
                    e2e_cpu += got[time_e2e][1]
                    model_cpu += got[time_model][1]
            rows.append({"batch_size": bs, "ms_per_batch": statistics.fmean(e2e),
                         "model_ms_per_batch": statistics.fmean(model),
                         "cpu_ms_per_batch": 1000 * e2e_cpu / iters, "model_cpu_ms_per_batch": 1000 * model_cpu / iters})
    return rows


def native_run(tool: str, bundle: str, images: Path, threads: int, iters: int) -> list[dict]:
    out = subprocess.run([tool, bundle, "--backend", "openvino", "--batch-sizes", ",".join(map(str, BATCHES)),
                          "--threads", str(threads), "--workers", "1", "--warmup", "1", "--iters", str(iters),
                          "--end-to-end", str(images), "--json"], capture_output=True, text=True, check=True)
    keys = ("batch_size", "ms_per_batch", "model_ms_per_batch", "cpu_ms_per_batch", "model_cpu_ms_per_batch")
    return [{k: r[k] for k in keys} for r in json.loads(out.stdout)["results"] if r["mode"] == "end_to_end"]


def lscpu() -> dict:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {"model": fields.get("Model name", "").strip(), "cpus": os.cpu_count(),
            "flags": fields.get("Flags", "").split()}


def summarise(runs: list[dict]) -> dict:
    med = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0] if k != "batch_size"}
    med["overhead_ms_per_batch"] = round(med["ms_per_batch"] - med["model_ms_per_batch"], 3)
    med["end_to_end_over_model_only"] = round(med["model_ms_per_batch"] / med["ms_per_batch"], 3)  # throughput ratio
    return med


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("tool", help="the built clap-edge-bench")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default="bench/results/native_e2e.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = make_jpegs(Path(tmp))
        raw: dict[tuple, list] = {}
        for run in range(a.runs):
            for threads in THREADS:
                for runtime in ("native", "python"):  # interleaved: each run has both, back to back
                    load = os.getloadavg()
                    rows = (native_run(a.tool, a.bundle, Path(tmp), threads, a.iters) if runtime == "native"
                            else python_run(a.bundle, files, threads, a.iters))
                    for row in rows:
                        raw.setdefault((runtime, threads, row["batch_size"]), []).append(
                            {**row, "load_average_1m": load[0]})
                    print(f"run {run + 1}/{a.runs} threads {threads} {runtime}: "
                          + ", ".join(f"b{r['batch_size']} {r['ms_per_batch']:.1f}/{r['model_ms_per_batch']:.1f} ms"
                                      for r in rows), file=sys.stderr)
    rows = []
    for (runtime, threads, bs), runs in sorted(raw.items()):
        rows.append({"runtime": runtime, "threads": threads, "batch_size": bs, **summarise(runs), "runs": runs})
    for row in rows:
        if row["runtime"] == "native":
            py = next(r for r in rows if r["runtime"] == "python" and r["threads"] == row["threads"]
                      and r["batch_size"] == row["batch_size"])
            row["native_over_python_end_to_end"] = round(py["ms_per_batch"] / row["ms_per_batch"], 3)  # speed-up
            row["native_over_python_model_only"] = round(py["model_ms_per_batch"] / row["model_ms_per_batch"], 3)
    report = {"command": " ".join(sys.argv), "machine": {**lscpu(), "platform": platform.platform()},
              "bundle": a.bundle, "images": "16 JPEGs 500x375..1024x768 (make_jpegs, seed 0)",
              "load_average_end": os.getloadavg(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "note": "medians over runs of per-run means; ratios: >1 means the first is faster", "rows": rows}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp_out, out)
    for r in rows:
        print(f"{r['runtime']:6} t{r['threads']} b{r['batch_size']:<2} e2e {r['ms_per_batch']:8.2f} ms  model "
              f"{r['model_ms_per_batch']:8.2f} ms  overhead {r['overhead_ms_per_batch']:8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
