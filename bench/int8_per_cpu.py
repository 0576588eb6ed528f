"""int8 accuracy and speed per CPU int8 path, on the trained toy bundles, with the export's accuracy control off and on.

For each int8 path reachable here, export ``clap-edge-toy/toyworld`` (``--bundles clip``: no head, as
tests/test_int8.py builds it; ``clap``: a CLAP head trained as bench/int8_calibration.py trains it, or ``--head``)
with the dynamic (``int8``), static QDQ
(``qdq``) and OpenVINO NNCF (``openvino-int8``) variants and score their drift against fp32 on the test
split (top-1 agreement, top-1 change per domain), plus the export's CPU-time speed vs fp32:

- ``native``: this CPU as it is (flags in the JSON);
- ``avx2``: the remedies an AVX2-only CPU gets (``CLAP_EDGE_INT8_PATH=avx2``: ORT ``reduce_range``, NNCF
  overflow fix on all layers), with OpenVINO capped to oneDNN's AVX2 kernels (``ONEDNN_MAX_CPU_ISA=AVX2``:
  no VNNI / AMX). ONNX Runtime has no such switch, so its ``avx2`` figures still run its VNNI/AMX kernels
  (only the remedy is emulated, not the saturation); say so wherever they are quoted.

Two dataset seeds: 5 (the tests' data; the control's margin and the head's alpha were chosen on it) and 23 (not used
to tune anything), 800 validation and 800 test images each. The accuracy control (export/builders/int8_control.py)
only sees the validation split. Each export runs in its own process (the ISA cap must be set before OpenVINO loads).

    python bench/int8_per_cpu.py --out bench/results/int8_per_cpu.json
    python bench/int8_per_cpu.py --bundles clap --out bench/results/int8_per_cpu_clap.json
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

PATHS = {"native": {}, "avx2": {"CLAP_EDGE_INT8_PATH": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
SEEDS = (5, 23)
DEMO_ALPHA = 0.056
PER_CLASS = 50  # images per class, domain and split: 800 validation and 800 test images per seed


def one(seed: int, work: Path, max_drop: float | None, head: str | None = None, alpha: float | None = None) -> dict:
    """Export and score in this process (its environment picks the path)."""
    import torch

    from clap_edge.core.machine import cpu_info, int8_path
    from clap_edge.export.builders.exporter import ExportConfig, export_bundle
    from clap_edge.export.bundle import Bundle
    from clap_edge.toyworld.dataset import write_dataset
    from clap_edge.toyworld.world import CLASSES

    data = work.parent / f"data{seed}"  # one dataset per seed, shared by the paths and modes
    if not data.exists():
        write_dataset(data, domains=("id", "both"), per_class=PER_CLASS, seed=seed)
    torch.manual_seed(0)
    out = export_bundle(ExportConfig(out=work / "bundle", model_name="clap-edge-toy", pretrained="toyworld",
                                     head=head, alpha=alpha,
                                     classes=list(CLASSES), int8=True, int8_static=True, openvino_int8=True,
                                     torch_program=False, calibration=data / "val", eval=data,
                                     int8_val_count=2 * 8 * PER_CLASS, int8_max_drop=max_drop))
    manifest = Bundle.open(out).manifest
    rows = {}
    for variant, drift in (manifest.drift or {}).items():
        parity = manifest.parity.get(variant, {})
        rows[variant] = {
            "agreement": drift["agreement"], "min_domain_agreement": drift["min_domain_agreement"],
            "n_images": drift["n_images"], "top1": drift["top1"], "fp32_top1": drift["fp32_top1"],
            "max_domain_top1_drop_pts": round(max(d["fp32_top1"] - d["top1"] for d in drift["domains"].values())
                                              * 100, 3),
            "speed_vs_fp32": parity.get("speed_vs_fp32"), "remedies": parity.get("remedies"),
            "accuracy_control": parity.get("accuracy_control"),
        }
    return {"seed": seed, "int8_path": int8_path(), "cpu_model": cpu_info()[0],
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "load_average": list(os.getloadavg()),
            "variants": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/int8_per_cpu.json")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--modes", default="off,on",
                        help="accuracy control off (plain post-training int8) and/or on (the export's default)")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--bundles", default="clip", help="clip (no head) and/or clap (a trained head)")
    parser.add_argument("--head", default=None, help="trained toy CLAP head (default: train one, ~minutes)")
    parser.add_argument("--alpha", type=float, default=None, help="the head's alpha (with --head)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--max-drop", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one(args.child, Path(args.work), None if args.max_drop == "off" else float(args.max_drop),
                             args.head, args.alpha)))
        return 0
    from clap_edge.apps.ceiling import cpu_isa_flags
    from clap_edge.core.report import write_json
    from clap_edge.export.builders.int8_control import DEFAULT_MAX_DROP
    from clap_edge.runtime.bench_record import INT8_AGREEMENT_FLOOR

    results, start = [], time.time()
    with tempfile.TemporaryDirectory(prefix="clap-edge-int8cpu-") as tmp:
        heads = {"clip": (None, None)}
        if "clap" in args.bundles.split(","):
            heads["clap"] = (args.head, args.alpha) if args.head else _train_head(Path(tmp))
        for bundle in args.bundles.split(","):
            head, alpha = heads[bundle]
            for path in args.paths.split(","):
                for seed in map(int, args.seeds.split(",")):
                    for mode in args.modes.split(","):
                        print(f"{bundle} {path} seed {seed} accuracy control {mode}", file=sys.stderr)
                        work = Path(tmp) / f"{bundle}-{path}-{seed}-{mode}"
                        work.mkdir()
                        drop = "off" if mode == "off" else str(DEFAULT_MAX_DROP)
                        extra = ["--head", str(head), "--alpha", str(alpha)] if head else []
                        done = subprocess.run([sys.executable, __file__, "--child", str(seed), "--work", str(work),
                                               "--max-drop", drop, *extra], env={**os.environ, **PATHS[path]},
                                              capture_output=True, text=True, check=True)
                        results.append({"bundle": bundle, "path": path, "accuracy_control": mode,
                                        **json.loads(done.stdout.strip().splitlines()[-1])})
                        print(json.dumps(results[-1]["variants"], indent=None), file=sys.stderr)
    report = {"cpu_flags": cpu_isa_flags(), "floor": INT8_AGREEMENT_FLOOR, "per_class": PER_CLASS,
              "heads": {b: {"head": str(h) if h else None, "alpha": a} for b, (h, a) in heads.items()},
              "max_drop_on_validation": DEFAULT_MAX_DROP, "calibration_images": 64,
              "seconds": round(time.time() - start),
              "load_average": list(os.getloadavg()), "results": results,
              "note": "ONNX Runtime has no ISA cap: its 'avx2' rows apply the AVX2 remedies but run VNNI/AMX kernels"}
    write_json(args.out, report)
    return 0


def _train_head(work: Path) -> tuple[Path, float]:
    """A CLAP head for the toy CLIP, trained as bench/int8_calibration.py trains it (seed 5's data), at DEMO_ALPHA."""
    sys.path.insert(0, str(Path(__file__).parent))
    from int8_calibration import _prepare
    from clap_edge.toyworld.dataset import write_dataset

    data = work / "data5"
    write_dataset(data, domains=("id", "both"), per_class=PER_CLASS, seed=5)
    _, head, _ = _prepare(data, None, None, work, PER_CLASS)
    # the demo's alpha (bench/results/int8_calibration.json used it too): the authors' rule picks 0.0 for this head
    # on seed 5's val (68.5% vs 68.0% at 0.056), which would make the CLAP bundle the CLIP one
    return head, DEMO_ALPHA


if __name__ == "__main__":
    sys.exit(main())
