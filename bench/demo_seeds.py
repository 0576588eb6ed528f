"""The demo on several seeds: do its headline verdicts hold, and what does one demo cost in CPU time? (not a test)

Runs ``clap-edge demo --seed S`` once per seed (each seed sets the dataset, the head's training
and the bootstrap; the backend bench only on the first seed), each under ``/usr/bin/time``
(user + sys CPU seconds beside wall seconds), then writes the spread of every headline line
over the seeds into the first seed's report and copies that report to ``bench/results/demo/``.

    python bench/demo_seeds.py                         # seeds 0-4 -> bench/results/demo_seeds.json
    python bench/demo_seeds.py --seeds 0,1 --jobs 1 --out /tmp/seeds --results /tmp/s.json --report-dir /tmp/r
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from clap_edge.apps.demo_spread import attach_spread, spread
from clap_edge.core.machine import cpu_info
from clap_edge.core.report import write_json

ROOT = Path(__file__).resolve().parent.parent


def run_seed(seed: int, out: Path, full: bool, extra: list[str], reuse: bool) -> dict:
    """The first seed runs the whole demo; the others stop after the headline (--headline-only)."""
    folder, timing = out / f"seed-{seed}", out / f"seed-{seed}.time"
    cmd = ["clap-edge", "demo", "--seed", str(seed), "--out", str(folder), *extra] + ([] if full else ["--headline-only"])
    print(" ".join(cmd), file=sys.stderr, flush=True)
    if not (reuse and timing.exists() and (folder / "report.json").exists()):
        with open(out / f"seed-{seed}.log", "w") as log:
            subprocess.run(["/usr/bin/time", "-f", "%U %S %e %M", "-o", str(timing), *cmd], stdout=log,
                           stderr=subprocess.STDOUT, check=True)
    user, system, wall, rss_kb = timing.read_text().split()[-4:]
    report = json.loads((folder / "report.json").read_text())
    return {"seed": seed, "command": " ".join(cmd), "user_s": float(user), "sys_s": float(system),
            "cpu_s": round(float(user) + float(system), 1), "wall_s": float(wall), "max_rss_mb": int(rss_kb) // 1024,
            "headline_only": bool(report.get("headline_only")), "step_wall_s": report["timings_s"],
            "headline": report["headline"], "alphas": report["alphas"],
            "attacks": report.get("attacks", {}).get("clap_minus_clip")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once (each demo uses one thread)")
    p.add_argument("--out", default="/tmp/clap-edge-demo-seeds")
    p.add_argument("--results", default=str(ROOT / "bench/results/demo_seeds.json"))
    p.add_argument("--report-dir", default=str(ROOT / "bench/results/demo"),
                   help="where the first seed's report (with the spread) is copied")
    p.add_argument("--reuse", action="store_true", help="keep seeds whose report.json and timing exist")
    p.add_argument("demo_args", nargs="*", help="extra `clap-edge demo` options, after --")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda s: run_seed(s, out, s == seeds[0], args.demo_args, args.reuse), seeds))
    load_after = os.getloadavg()
    s = spread([json.loads((out / f"seed-{r['seed']}" / "report.json").read_text()) for r in runs])
    first = out / f"seed-{seeds[0]}"
    if runs[0]["headline_only"]:  # collected with --reuse from headline-only runs: no full report to update
        print(f"{first}: a headline-only run; the demo report is left as it is", file=sys.stderr)
    else:
        attach_spread(first, s)
        report_dir = Path(args.report_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        for f in first.iterdir():
            if f.suffix in (".md", ".json", ".png"):
                shutil.copy(f, report_dir / f.name)
    model, flags = cpu_info()
    write_json(args.results, {
        "command": "python bench/demo_seeds.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": model, "cores": os.cpu_count(),
                    "flags": [f for f in flags if re.match(r"avx|amx|fma|sse4|vnni", f)],
                    "load_average_1_5_15_before": [round(x, 2) for x in load_before],
                    "load_average_1_5_15_after": [round(x, 2) for x in load_after],
                    "note": "2-core x86 dev box shared with other jobs; CPU seconds are the comparable figure"},
        "jobs": args.jobs, "seeds": seeds, "runs": runs, "spread": s,
        "cpu_s_max": max(r["cpu_s"] for r in runs),
    })
    print(json.dumps({"cpu_s": [r["cpu_s"] for r in runs],
                      "holds": {k: v["holds"] for k, v in s["headline"].items()}}, indent=1))


if __name__ == "__main__":
    main()
