"""Good-path cost of the issue-9 checks: open a bundle and classify a folder of JPEGs, old code vs new.

    python bench/trust_goodpath.py --base /path/to/checkout-before --new . --out bench/results/trust_goodpath.json

Each side exports its own bundle (same seed, model and classes) with its own code, then the two sides
run alternately in fresh processes (`--rounds` times each), so machine load affects both alike. Reported:
median seconds for Bundle+Classifier.open and for classifying the folder end to end (decode included).
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
from pathlib import Path

EXPORT = """
import sys, torch
from clap_edge.export.builders.exporter import ExportConfig, export_bundle
torch.manual_seed(0)
export_bundle(ExportConfig(out=sys.argv[1], model_name="clap-edge-tiny", classes=["cat", "dog", "car", "tree", "boat"],
                           torch_program=False))
"""

MEASURE = """
import json, sys, time
from clap_edge.runtime.classifier import Classifier
from clap_edge.core.images import list_images
t0 = time.perf_counter()
clf = Classifier.open(sys.argv[1], backend="onnxruntime", threads=1)
t1 = time.perf_counter()
files = list_images([sys.argv[2]])
n = sum(1 for _ in clf.predict_files(files, batch_size=32, workers=2))
t2 = time.perf_counter()
clf.close()
print(json.dumps({"open_s": t1 - t0, "classify_s": t2 - t1, "images": n}))
"""


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _env(root: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(root)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, type=Path)
    ap.add_argument("--new", required=True, type=Path)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import numpy as np
    from PIL import Image

    work = Path(tempfile.mkdtemp(prefix="trust-goodpath-"))
    photos = work / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(args.images):
        low = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(low).resize((640, 480), Image.BICUBIC).save(photos / f"{i:04d}.jpg", quality=90)
    sides = {"base": args.base.resolve(), "new": args.new.resolve()}
    for name, root in sides.items():
        # cwd=work: `python -c` puts the current folder first on sys.path, which must not be either checkout
        subprocess.run([sys.executable, "-c", EXPORT, str(work / f"bundle-{name}")], env=_env(root), check=True,
                       capture_output=True, cwd=work)
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, root in sides.items():
            out = subprocess.run([sys.executable, "-c", MEASURE, str(work / f"bundle-{name}"), str(photos)],
                                 env=_env(root), check=True, capture_output=True, text=True, cwd=work).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    summary = {name: {"open_s_median": statistics.median(r["open_s"] for r in rs),
                      "classify_s_median": statistics.median(r["classify_s"] for r in rs),
                      "images_per_s_median": statistics.median(r["images"] / r["classify_s"] for r in rs),
                      "bundle_files": sorted(p.name for p in (work / f"bundle-{name}").iterdir()),
                      "runs": rs} for name, rs in runs.items()}
    report = {"what": "Bundle+Classifier.open and end-to-end classify of JPEG files (640x480), onnxruntime, "
                      "1 intra-op thread, batch 32, 2 decode workers; base vs new code, alternating rounds",
              "machine": f"{_cpu_name()}, {os.cpu_count()} CPUs (shared with other jobs)",
              "images": args.images, "rounds": args.rounds, "results": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for name, s in summary.items():
        print(f"{name}: open {s['open_s_median'] * 1000:.0f} ms, {s['images_per_s_median']:.1f} images/s")


if __name__ == "__main__":
    main()
