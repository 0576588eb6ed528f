"""A/B of the runners' 2 MiB pages (runtime/huge_pages.py): the same bundle, backend and batch with and without,
each in a fresh process, alternated for a few rounds, with or without CPU burners beside them.

Reports each process's median CPU ms per call (process CPU time, all threads) and its AnonHugePages, so the
page size is seen, not assumed.

    python bench/huge_pages_ab.py /tmp/vitb32 --backend onnxruntime --rounds 3 --calls 8 \
        --burners 4 --json bench/results/huge_pages_ab.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time

import numpy as np


def one_process(bundle: str, backend: str, batch: int, calls: int) -> dict:
    """In this process: load, wait for the page move, time ``calls`` calls (CPU ms), read AnonHugePages."""
    from clap_edge.export.bundle import Bundle
    from clap_edge.runtime.backends import RunnerOptions, create_runner

    b = Bundle.open(bundle)
    x = np.random.default_rng(batch).standard_normal((batch, *b.input_shape)).astype(np.float32)
    with create_runner(b, backend, RunnerOptions(threads=1)) as runner:
        pages = runner.wait_for_huge_pages()
        for _ in range(2):
            runner.infer(x)
        cpu = []
        for _ in range(calls):
            start = time.process_time()
            runner.infer(x)
            cpu.append(time.process_time() - start)
        huge_kb = next((int(line.split()[1]) for line in open("/proc/self/smaps_rollup")
                        if line.startswith("AnonHugePages:")), None)
    return {"cpu_ms_p50": round(float(np.median(cpu)) * 1e3, 2), "anon_huge_mb": (huge_kb or 0) // 1024,
            "collapsed_mb": pages.collapsed_mb if pages else 0.0}


def _burn() -> None:
    while True:
        pass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=8)
    p.add_argument("--burners", type=int, default=0, help="CPU-burning processes beside the A/B")
    p.add_argument("--json")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one_process(args.bundle, args.backend, args.batch, args.calls)))
        return 0
    burners = [mp.get_context("spawn").Process(target=_burn, daemon=True) for _ in range(args.burners)]
    for b in burners:
        b.start()
    rows = []
    try:
        for r in range(args.rounds):
            for pages in ("1", "0") if r % 2 == 0 else ("0", "1"):  # alternate who goes first
                done = subprocess.run([sys.executable, __file__, args.bundle, "--backend", args.backend, "--batch",
                                       str(args.batch), "--calls", str(args.calls), "--child"], check=True,
                                      capture_output=True, text=True, env={**os.environ, "CLAP_EDGE_HUGE_PAGES": pages})
                row = {"round": r, "huge_pages": pages == "1", "load_1min": round(os.getloadavg()[0], 2),
                       **json.loads(done.stdout.strip().splitlines()[-1])}
                rows.append(row)
                print(row, file=sys.stderr)
    finally:
        for b in burners:
            b.terminate()
    on = [r["cpu_ms_p50"] for r in rows if r["huge_pages"]]
    off = [r["cpu_ms_p50"] for r in rows if not r["huge_pages"]]
    summary = {"bundle": args.bundle, "backend": args.backend, "batch": args.batch, "burners": args.burners,
               "cpu_ms_median_2mib": float(np.median(on)), "cpu_ms_median_4kib": float(np.median(off)),
               "speedup": round(float(np.median(off)) / float(np.median(on)), 3), "rows": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    if args.json:
        from clap_edge.core.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
