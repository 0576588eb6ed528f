"""Native (C++) vs Python runtime on one bundle and machine: model-only and end-to-end from JPEG files.

Runs `clap-edge-bench` and `clap-edge bench --backends openvino` alternately (ROUNDS each, so load from
a shared machine hits both alike) with the same batch sizes, threads and iterations, and writes every raw
report plus a summary of medians to OUT:

    python bench/native_vs_python.py BUNDLE PHOTOS_DIR NATIVE_BENCH_EXE OUT.json [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run_native(exe: str, args: argparse.Namespace) -> dict:
    out = subprocess.run([exe, args.bundle, "--batch-sizes", args.batch_sizes, "--threads", str(args.threads),
                          "--warmup", str(args.warmup), "--iters", str(args.iters), "--end-to-end", args.photos,
                          "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def run_python(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.json"
        cmd = [sys.executable, "-c", "import sys; from clap_edge.apps.cli import main; sys.argv[0]='clap-edge'; main()",
               "bench", args.bundle, "--backends", "openvino", "--batch-sizes", args.batch_sizes, "--threads",
               str(args.threads), "--warmup", str(args.warmup), "--iters", str(args.iters), "--end-to-end",
               args.photos, "--json", str(path), "--quiet"]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(path.read_text())


def rows(report: dict, mode: str) -> dict[int, dict]:
    return {r["batch_size"]: r for r in report["results"] if r["mode"] == mode}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("photos")
    ap.add_argument("native_exe")
    ap.add_argument("out")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=6)
    args = ap.parse_args()
    runs = []
    for i in range(args.rounds):
        runs.append({"round": i, "runtime": "native", "report": run_native(args.native_exe, args)})
        runs.append({"round": i, "runtime": "python", "report": run_python(args)})
        print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
    summary = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        def med(runtime: str, mode: str, key: str) -> float | None:
            vals = [rows(r["report"], mode)[bs].get(key) for r in runs if r["runtime"] == runtime]
            vals = [v for v in vals if v is not None]
            return round(statistics.median(vals), 3) if vals else None
        n_model, p_model = med("native", "model", "images_per_s"), med("python", "model", "images_per_s")
        n_e2e, p_e2e = med("native", "end_to_end", "images_per_s"), med("python", "end_to_end", "images_per_s")
        summary.append({
            "batch_size": bs,
            "native_model_images_per_s": n_model, "python_model_images_per_s": p_model,
            "native_model_p50_ms": med("native", "model", "p50_ms"), "python_model_p50_ms": med("python", "model", "p50_ms"),
            "native_end_to_end_images_per_s": n_e2e, "python_end_to_end_images_per_s": p_e2e,
            "native_end_to_end_fraction_of_model_only": med("native", "end_to_end", "fraction_of_model_only"),
            "python_end_to_end_fraction_of_model_only": med("python", "end_to_end", "fraction_of_model_only"),
            "native_overhead_ms_per_batch": med("native", "end_to_end", "overhead_ms_per_batch"),
            "native_decode_preprocess_ms_per_image": med("native", "end_to_end", "decode_preprocess_ms_per_image"),
            "native_vs_python_end_to_end": round(n_e2e / p_e2e, 3) if n_e2e and p_e2e else None,
        })
    native_env = runs[0]["report"]["env"]
    report = {
        "what": "native C++ runtime (clap-edge-bench) vs Python runtime (clap-edge bench --backends openvino), "
                "same bundle, photos, threads and machine, interleaved rounds; medians in summary",
        "command": " ".join(["python", "bench/native_vs_python.py", *sys.argv[1:]]),
        "machine": {"cpu_model": native_env["cpu_model"], "cores": native_env["cores"],
                    "load_average": list(os.getloadavg())},
        "precision": {"native": rows(runs[0]["report"], "model")[int(args.batch_sizes.split(",")[0])]["precision"],
                      "python": rows(runs[1]["report"], "model")[int(args.batch_sizes.split(",")[0])]["precision"]},
        "summary": summary,
        "runs": runs,
    }
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(args.out)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
