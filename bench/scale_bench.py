"""Scale-out overheads: `clap-edge serve` vs the in-process BatchingClassifier, Ray Data vs predict_files.

Both comparisons alternate the two sides for --rounds rounds and report each side's median round
(a shared machine's load drifts; alternation spreads the drift over both).

1. serve: C closed-loop clients (threads) each send the bytes of a JPEG and wait for the answer,
   against `clap-edge serve` (a subprocess, local 2-CPU Ray, loopback HTTP) and against an in-process
   BatchingClassifier fed the same files, with the same max batch size, batch wait and backend threads.
   Reported: p50 / p99 latency per request and requests/s; ratio = serve / in-process requests/s.
2. ray data: the same files through `Classifier.predict_files` (1 decode worker, `threads` backend threads)
   and through Ray Data (`actors` actors x `threads` backend threads, 1 decode thread each), with the
   same total threads; wall time includes opening the bundle (once, or once per actor).

    python bench/scale_bench.py BUNDLE --label tiny --out bench/results/scale_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_images(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = root / f"{i:05d}.jpg"
        if not path.exists():
            # smooth random images (JPEG-typical sizes) rather than noise, which JPEG compresses badly
            small = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
            Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(path, quality=90)
        paths.append(str(path))
    return paths


def closed_loop(call, bodies: list, clients: int, requests: int) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    errors = []

    def run(c: int) -> None:
        mine = []
        for i in range(c, requests, clients):
            t = time.perf_counter()
            try:
                call(bodies[i % len(bodies)])
            except Exception as e:
                errors.append(repr(e))
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "errors": len(errors), "wall_s": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def _median_round(rounds: list[dict], key: str) -> dict:
    return sorted(rounds, key=lambda r: r[key])[len(rounds) // 2]


def bench_serve(bundle: str, paths: list[str], args) -> dict:
    """Rounds alternate in-process and serve (both kept up), so load drift on a shared machine hits both."""
    from clap_edge.runtime import BatchingClassifier, Classifier
    from clap_edge.runtime.scale.client import Client

    bodies = [open(p, "rb").read() for p in paths]
    settings = {"max_batch_size": args.max_batch_size, "batch_wait_ms": args.batch_wait_ms,
                "threads": args.threads, "clients": args.clients, "requests": args.requests, "rounds": args.rounds}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-c", "from clap_edge.apps.cli import main; main()", "serve", bundle, "--backend",
           args.backend, "--threads", str(args.threads), "--port", str(port), "--num-cpus", "2",
           "--max-batch-size", str(args.max_batch_size), "--batch-wait-ms", str(args.batch_wait_ms)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    in_rounds, serve_rounds = [], []
    try:
        client = Client(f"http://127.0.0.1:{port}", timeout=120)
        deadline = time.monotonic() + 180
        while True:
            try:
                client.health()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("serve did not start")
                time.sleep(0.5)
        warm = min(args.requests, 4 * args.clients)
        closed_loop(client.classify, bodies, args.clients, warm)
        with Classifier.open(bundle, backend=args.backend, threads=args.threads) as clf, \
                BatchingClassifier(clf, max_batch_size=args.max_batch_size, max_delay_ms=args.batch_wait_ms,
                                   top_k=5) as bc:
            closed_loop(lambda p: bc.submit(p).result(), paths, args.clients, warm)
            for _ in range(args.rounds):
                n0 = len(bc.batch_sizes)
                r = closed_loop(lambda p: bc.submit(p).result(), paths, args.clients, args.requests)
                r["mean_batch"] = round(float(np.mean(bc.batch_sizes[n0:])), 2)
                in_rounds.append(r)
                serve_rounds.append(closed_loop(client.classify, bodies, args.clients, args.requests))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
    in_process, served = _median_round(in_rounds, "requests_per_s"), _median_round(serve_rounds, "requests_per_s")
    return {"settings": settings, "in_process_batching": in_process, "serve": served,
            "serve_vs_in_process": round(served["requests_per_s"] / in_process["requests_per_s"], 3),
            "rounds": {"in_process_requests_per_s": [r["requests_per_s"] for r in in_rounds],
                       "serve_requests_per_s": [r["requests_per_s"] for r in serve_rounds]}}


def bench_ray_data(bundle: str, paths: list[str], args) -> dict:
    """Rounds alternate predict_files and Ray Data; the median round of each is reported."""
    import ray

    from clap_edge.runtime import Classifier
    from clap_edge.runtime.scale.ray_data import classify

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 << 20,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    local_s, ray_s = [], []
    try:
        classify(paths[: 4 * 32 * args.actors], bundle, backend=args.backend, threads=args.threads,
                 actors=args.actors)  # warm-up: workers started, modules imported
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            with Classifier.open(bundle, backend=args.backend, threads=args.actors * args.threads) as clf:
                n = sum(1 for _ in clf.predict_files(paths, batch_size=32, workers=1))
            local_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            result = classify(paths, bundle, backend=args.backend, threads=args.threads, actors=args.actors,
                              batch_size=32)
            ray_s.append(time.perf_counter() - t0)
            assert result.rows == n == len(paths)
    finally:
        ray.shutdown()
    local, ray_t = float(np.median(local_s)), float(np.median(ray_s))
    n = len(paths)
    return {"images": n, "predict_files": {"threads": args.actors * args.threads, "decode_workers": 1,
                                           "wall_s": round(local, 2), "images_per_s": round(n / local, 1)},
            "ray_data": {"actors": args.actors, "threads_per_actor": args.threads, "wall_s": round(ray_t, 2),
                         "images_per_s": round(n / ray_t, 1)},
            "ray_vs_predict_files": round(local / ray_t, 3),
            "rounds": {"predict_files_s": [round(x, 2) for x in local_s], "ray_data_s": [round(x, 2) for x in ray_s]}}


def env() -> dict:
    import onnxruntime
    import ray

    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__,
            "onnxruntime": onnxruntime.__version__, "load_avg": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--label", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--image-size", default="320x240")
    parser.add_argument("--image-dir", default="/tmp/clap-edge-scale-bench")
    parser.add_argument("--skip", choices=["serve", "ray"], default=None)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per side; medians reported")
    args = parser.parse_args()
    w, h = map(int, args.image_size.split("x"))
    paths = make_images(Path(args.image_dir) / args.image_size, args.images, (w, h))
    report = {"label": args.label, "bundle": os.path.basename(os.path.normpath(args.bundle)),
              "backend": args.backend, "image_size": args.image_size, "env_before": env()}
    if args.skip != "serve":
        report["serve"] = bench_serve(args.bundle, paths, args)
        print(json.dumps(report["serve"]), flush=True)
    if args.skip != "ray":
        report["ray_data"] = bench_ray_data(args.bundle, paths, args)
        print(json.dumps(report["ray_data"]), flush=True)
    report["load_avg_after"] = os.getloadavg()
    from clap_edge.core.io import atomic_write_text

    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
