"""The README's first-hour timings: how long a new user waits for each command, in wall and CPU seconds.

    python bench/first_hour.py bench/results/first_hour.json            # every command, the demo included
    python bench/first_hour.py bench/results/first_hour.json --no-demo  # the quick ones only

Runs each command as the installed ``clap-edge`` console script in a fresh process and records its wall
time, its CPU time (user + system of the process and its children, from ``os.wait4``), its exit code and
first stderr line, with the load average before and after and the CPU's model and flags: the machine
is shared, so the CPU time is the figure to compare; wall time is only meaningful beside the load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clap_edge.core.machine import cpu_info


def measure(args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run ``clap-edge ARGS``; wall and CPU seconds, exit code, the first stderr line, load before/after."""
    load_before = os.getloadavg()
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(["clap-edge", *args], stdout=out, stderr=err, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace").rstrip().splitlines()
        lines = err.read().decode(errors="replace").strip().splitlines()
    return {"command": "clap-edge " + " ".join(args), "env": env or {}, "exit_code": os.waitstatus_to_exitcode(status),
            "wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "stdout_lines": len(stdout), "stdout": stdout if len(stdout) <= 40 else stdout[:3] + ["..."],
            "stderr_first_line": lines[0][:200] if lines else "", "stderr_lines": len(lines),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="JSON file to write")
    parser.add_argument("--no-demo", action="store_true", help="skip `clap-edge demo` (minutes)")
    opts = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [(["train", "--model", "ViT-B-99", "--classes", "a,b", "--out", f"{tmp}/h.safetensors"], None),
                 (["train", "--model", "ViT-B-32", "--pretrained", "openai", "--classes", "a,b", "--out",
                   f"{tmp}/h.safetensors"], {"HF_HUB_OFFLINE": "1"}),
                 (["models"], None)]
        if not opts.no_demo:
            cases.append((["demo", "--out", f"{tmp}/demo-out"], None))
        for args, env in cases:
            runs.append(measure(args, env))
            runs[-1]["command"] = runs[-1]["command"].replace(tmp, "$TMP")
            print(json.dumps(runs[-1]), file=sys.stderr)
    model, flags = cpu_info()
    report = {"machine": {"cpu_model": model, "cpu_flags": flags, "cpus": os.cpu_count()}, "runs": runs}
    Path(opts.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
