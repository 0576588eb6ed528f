"""Time `clap-edge adapt` (16 shots x 8 classes) on the toy model and ViT-B-32 (random weights), torch-free.

    python bench/adapt_speed.py --out bench/results/adapt_speed.json

Each model is exported once (plain CLIP bundle, fp32 ONNX). The shots are seeded synthetic 640x480 JPEGs
(what a phone or camera gives; decoding is part of the cost). Every run is a fresh process that calls
``adapt_bundle`` (the `clap-edge adapt` code path) and checks that torch was never imported. Reported per
model and method: the median over ``--rounds`` of wall seconds and of the process's CPU seconds (user +
sys), the adapt report's own step timings (embedding, held-out check, fit, write), the load average before
and after, and the CPU model and flags.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPORT = """
import sys, torch
from clap_edge.export.builders.exporter import ExportConfig, export_bundle
torch.manual_seed(0)
name, pretrained = sys.argv[2], (sys.argv[3] if sys.argv[3] != "none" else None)
export_bundle(ExportConfig(out=sys.argv[1], model_name=name, pretrained=pretrained,
                           classes=[f"class {i}" for i in range(8)], torch_program=False))
"""

RUN = """
import json, resource, sys, time
t0 = time.perf_counter()
from clap_edge.runtime.adapt import AdaptConfig, adapt_bundle
report = adapt_bundle(sys.argv[1], sys.argv[2], sys.argv[3], config=AdaptConfig(method=sys.argv[4], backend="onnxruntime"))
wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_SELF)
assert "torch" not in sys.modules, "adapt imported torch"
print(json.dumps({"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "timings_s": report["timings_s"],
                  "held_out_check": report["held_out_check"], "epochs_run": report["probe"]["epochs_run"]}))
"""

MODELS = {"toy": ("clap-edge-toy", "toyworld"), "vit-b-32": ("ViT-B-32", "none")}


def write_shots(root: Path, classes: int, shots: int, seed: int = 0) -> Path:
    """Seeded smooth-noise 640x480 JPEGs, a colour tint per class, ``shots`` per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        tint = rng.uniform(0, 255, size=3)
        for k in range(shots):
            small = rng.uniform(0, 255, size=(30, 40, 3)) * 0.5 + tint * 0.5
            img = Image.fromarray(small.astype("uint8")).resize((640, 480), Image.BILINEAR)
            img.save(folder / f"{k:03d}.jpg", quality=90)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="toy,vit-b-32")
    ap.add_argument("--methods", default="linear,prototype")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench/results/adapt_speed.json")
    args = ap.parse_args()
    from clap_edge.core.machine import cpu_info
    from clap_edge.core.report import write_json

    cpu, flags = cpu_info()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shots = write_shots(tmp / "shots", args.classes, args.shots)
        for key in args.models.split(","):
            name, pretrained = MODELS[key]
            bundle = tmp / f"bundle-{key}"
            print(f"exporting {name}", file=sys.stderr)
            subprocess.run([sys.executable, "-c", EXPORT, str(bundle), name, pretrained], check=True)
            for method in args.methods.split(","):
                runs = []
                for r in range(args.rounds):
                    load_before = os.getloadavg()
                    out = subprocess.run([sys.executable, "-c", RUN, str(bundle), str(shots), str(tmp / f"out-{r}"),
                                          method], check=True, capture_output=True, text=True)
                    runs.append({**json.loads(out.stdout.strip().splitlines()[-1]),
                                 "load_average_before": load_before, "load_average_after": os.getloadavg()})
                    print(f"{key} {method} round {r}: {runs[-1]['wall_s']:.2f} s wall, {runs[-1]['cpu_s']:.2f} s CPU",
                          file=sys.stderr)
                results.append({"model": key, "model_name": name, "method": method, "shots_per_class": args.shots,
                                "classes": args.classes, "median_wall_s": round(statistics.median(r["wall_s"] for r in runs), 3),
                                "median_cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 3), "runs": runs})
    write_json(args.out, {"command": "python bench/adapt_speed.py " + " ".join(sys.argv[1:]),
                          "machine": "2-core x86 dev box (shared with other jobs)", "cpu_model": cpu,
                          "cpu_flags": flags, "nproc": os.cpu_count(), "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                                 time.gmtime()),
                          "shots": "seeded synthetic 640x480 JPEGs", "backend": "onnxruntime (the base install; torch never imported)",
                          "results": results})
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
