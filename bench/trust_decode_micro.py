"""Per-image cost of the issue-9 checks in the decode path, old vs new, in one process (interleaved, min of N).

    PYTHONPATH=. python bench/trust_decode_micro.py --base /path/to/checkout-before --out bench/results/trust_decode_micro.json

Loads the old clap_edge/core/images.py from --base beside the new one and times, alternately,
load_image over a folder of 640x480 JPEGs (as the classifier calls it, with a draft size) and the
folder walk (list_images). The minimum over rounds is the figure least disturbed by other load.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, type=Path)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import clap_edge.core.images as new

    old = _load_module(args.base / "clap_edge" / "core" / "images.py", "clap_edge_base_images")
    folder = Path(tempfile.mkdtemp(prefix="trust-decode-"))
    rng = np.random.default_rng(0)
    for i in range(args.images):
        low = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(low).resize((640, 480), Image.BICUBIC).save(folder / f"{i:04d}.jpg", quality=90)
    files = sorted(folder.iterdir())
    timings: dict[str, list[float]] = {"decode_old": [], "decode_new": [], "walk_old": [], "walk_new": []}
    for _ in range(args.rounds):
        for tag, mod in (("old", old), ("new", new)):
            t = time.perf_counter()
            for f in files:
                mod.load_image(f, draft_size=(448, 448))
            timings[f"decode_{tag}"].append((time.perf_counter() - t) / len(files))
            t = time.perf_counter()
            mod.list_images([folder])
            timings[f"walk_{tag}"].append(time.perf_counter() - t)
    report = {"what": "load_image per 640x480 JPEG (draft 448) and list_images over the folder; min and median "
                      "over interleaved rounds; old = code before issue 9, new = this branch",
              "machine": "Intel(R) Xeon(R) Processor, 2 CPUs (shared with other jobs)",
              "images": args.images, "rounds": args.rounds,
              "results": {k: {"min_s": min(v), "median_s": sorted(v)[len(v) // 2]} for k, v in timings.items()}}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for k, v in report["results"].items():
        print(f"{k}: min {v['min_s'] * 1e3:.3f} ms, median {v['median_s'] * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
