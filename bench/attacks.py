"""CLIP vs CLAP under the authors' attacks (FGSM, PGD-20, CW-20) on the toy world, per domain (not a test).

Runs ``clap-edge eval`` with ``--attack`` on a demo's dataset and CLAP head (prompt PC, alpha
chosen on val by the worst-domain objective, as the demo does) under ``/usr/bin/time``, one
intra-op thread, and records the machine, the load average and the CPU seconds beside the
eval's own outputs (``eval.md``, ``eval.json``, ``eval-attacks.png``).

    clap-edge demo --out /tmp/clap-edge-demo-seeds/seed-0      # or bench/demo_seeds.py
    python bench/attacks.py --demo /tmp/clap-edge-demo-seeds/seed-0   # -> bench/results/attacks/
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from clap_edge.core.machine import cpu_info
from clap_edge.core.report import write_json

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", required=True, help="a `clap-edge demo --out` folder (data/ and clap_head.safetensors)")
    p.add_argument("--attacks", default="fgsm,pgd20,cw20")
    p.add_argument("--per-class", type=int, default=25, help="attacked test images per class and domain")
    # --per-class 60 for the alpha grid: the demo's val split (60 per class) decides alpha, as in the demo
    p.add_argument("--out", default=str(ROOT / "bench/results/attacks"))
    args = p.parse_args()
    demo = Path(args.demo)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["clap-edge", "eval", str(demo / "data"), "--head", str(demo / "clap_head.safetensors"), "--prompts", "PC",
           "--alpha-objective", "worst", "--per-class", "60", "--attack", args.attacks, "--attack-per-class", str(args.per_class),
           "--out", str(out), "--json"]
    print(" ".join(cmd), file=sys.stderr, flush=True)
    load_before = os.getloadavg()
    timing = out / "time.txt"
    subprocess.run(["/usr/bin/time", "-f", "%U %S %e %M", "-o", str(timing), *cmd], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    user, system, wall, rss_kb = timing.read_text().split()[-4:]
    timing.unlink()
    model, flags = cpu_info()
    from clap_edge.toyworld.dataset import read_info

    write_json(out / "run.json", {
        "command": "python bench/attacks.py " + " ".join(sys.argv[1:]), "eval_command": " ".join(cmd),
        "dataset_seed": read_info(demo / "data").seed,  # the demo's report.json may not exist yet
        "machine": {"cpu": model, "cores": os.cpu_count(),
                    "flags": [f for f in flags if re.match(r"avx|amx|fma|sse4|vnni", f)],
                    "load_average_1_5_15_before": [round(x, 2) for x in load_before],
                    "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
                    "note": "2-core x86 dev box shared with other jobs; one intra-op thread"},
        "user_s": float(user), "sys_s": float(system), "cpu_s": round(float(user) + float(system), 1),
        "wall_s": float(wall), "max_rss_mb": int(rss_kb) // 1024,
    })


if __name__ == "__main__":
    main()
