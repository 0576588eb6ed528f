"""Size, peak RSS, cold start and batch-1 latency of every variant of one bundle, as device users ask.

For each variant (ONNX fp32/int8/qdq/fp16, OpenVINO, ExecuTorch .pte fp32/int8, LiteRT .tflite fp32/int8):
- ``file_mb``: the model file(s) the variant ships (OpenVINO IR: .xml + .bin);
- ``cold_start_s`` / ``cold_start_cpu_s``: a fresh ``python`` process, from spawn to its first answer (open the
  bundle with sha256 checks, load the model, decode + preprocess + classify one image), wall and CPU seconds;
- ``peak_rss_mb``: that process's peak resident set (getrusage ru_maxrss, Python + libraries included);
- ``latency_ms_t1`` / ``latency_ms_t2``: median of batch-1 inferences (model only) with 1 and 2 threads,
  each in its own process.

    python bench/mobile_table.py --model clap-edge-toy --pretrained toyworld --out bench/results/mobile_toy.json
    python bench/mobile_table.py --model ViT-B-32 --out bench/results/mobile_vit-b-32.json --iters 10

LiteRT export needs litert-torch (its own environment: --litert-python or $CLAP_EDGE_LITERT_PYTHON).
The JSON also holds a markdown table (``markdown``) for the README, the machine (lscpu) and load averages.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# (label, backend spec, bundle variant)
VARIANTS = [
    ("onnx fp32", "onnxruntime:fp32", "fp32"), ("onnx int8 (dynamic)", "onnxruntime:int8", "int8"),
    ("onnx qdq (static int8)", "onnxruntime:int8-static", "qdq"), ("onnx fp16", "onnxruntime:fp16", "fp16"),
    ("openvino fp32", "openvino:fp32", "fp32"), ("openvino int8", "openvino:int8", "openvino-int8"),
    ("executorch fp32 (.pte)", "executorch:fp32", "executorch-fp32"),
    ("executorch int8 (.pte)", "executorch:int8", "executorch-int8"),
    ("litert fp32 (.tflite)", "litert:fp32", "litert-fp32"), ("litert int8 (.tflite)", "litert:int8", "litert-int8"),
]
EXTRA_FILES = {"openvino-int8": ["model.int8.bin"]}


def child(bundle: str, backend: str, image: str, threads: int, iters: int) -> None:
    """The measured process: first answer, then ``iters`` batch-1 inferences; one JSON line on stdout."""
    import resource

    from clap_edge.runtime.classifier import Classifier

    with Classifier.open(bundle, backend=backend, threads=threads) as clf:
        top = clf.predict([image], top_k=1)[0]
        first = time.time()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        batch = clf.preprocess(image)[None]
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            clf.runner.infer(batch)
            times.append(time.perf_counter() - start)
    times.sort()
    print(json.dumps({"first_answer_at": first, "first_answer_cpu_s": usage.ru_utime + usage.ru_stime,
                      "label": top.labels[0], "rss_kb": _peak_rss_kb(), "p50_ms": 1000 * times[len(times) // 2] if times else None}), flush=True)


def _peak_rss_kb() -> int:
    """VmHWM of this process (ru_maxrss survives execve on Linux, so it would report the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure(bundle: Path, backend: str, image: str, threads: int, iters: int) -> dict:
    start = time.time()
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(bundle), backend, image, str(threads),
                             str(iters)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return {"error": (err.strip().splitlines() or ["?"])[-1][:200]}
    rec = json.loads(out.strip().splitlines()[-1])
    return {"cold_start_s": round(rec["first_answer_at"] - start, 3), "cold_start_cpu_s": round(rec["first_answer_cpu_s"], 2),
            "label": rec["label"], "peak_rss_mb": round(rec["rss_kb"] / 1024, 1),
            "p50_ms": round(rec["p50_ms"], 3) if rec["p50_ms"] is not None else None}


def export(args) -> Path:
    from clap_edge.export.builders.exporter import ExportConfig, export_bundle

    out = Path(args.bundle)
    if out.exists():
        return out
    full = args.set == "full"  # "light": fp32 everywhere + dynamic int8 (what a loaded 2-core box finishes)
    cfg = ExportConfig(out=out, model_name=args.model, pretrained=args.pretrained, classes=args.classes.split(","),
                       int8=True, int8_static=full, openvino_int8=full, fp16=full, torch_program=False,
                       executorch=("fp32", "int8") if full else ("fp32",),
                       litert=tuple(args.litert.split(",")) if args.litert else (),
                       litert_python=args.litert_python, calibration=args.calibration, calibration_count=16,
                       eval=args.eval, eval_per_class=args.eval_per_class,
                       progress=lambda m: print(f"[export] {m}", file=sys.stderr, flush=True))
    return export_bundle(cfg)


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    return {"cpu": fields.get("Model name", "?").strip(), "cores": os.cpu_count(),
            "flags": fields.get("Flags", "").strip(), "load_average": list(os.getloadavg())}


def markdown(rows: list[dict], model: str) -> str:
    lines = [f"| {model} variant | file MB | peak RSS MB | cold start s (CPU s) | batch-1 ms, 1 thread | 2 threads |"
             " agreement vs fp32 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r.get('file_mb', '-')} | - | - | - | - | not built/run: {r['error'][:80]} |")
            continue
        agree = r.get("agreement_vs_fp32")
        lines.append(f"| {r['variant']} | {r['file_mb']} | {r['peak_rss_mb']} | {r['cold_start_s']} "
                     f"({r['cold_start_cpu_s']}) | {r['latency_ms_t1']} | {r['latency_ms_t2']} | "
                     f"{'-' if agree is None else agree} |")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="clap-edge-toy")
    p.add_argument("--pretrained", default=None, help="toyworld for clap-edge-toy; none (random) for ViT-B-32")
    p.add_argument("--classes", default="circle,square,triangle,star,cross,ring,heart,moon")
    p.add_argument("--bundle", default=None, help="bundle dir to (re)use (default: bench/results/.mobile-<model>)")
    p.add_argument("--calibration", required=True, help="folder of images: int8 calibration, the first one is "
                                                        "the image each process classifies")
    p.add_argument("--eval", default=None, help="labelled toy-world dataset: per-domain drift into the manifest")
    p.add_argument("--eval-per-class", type=int, default=None)
    p.add_argument("--litert", default="fp32,int8", help="LiteRT precisions to build ('' for none)")
    p.add_argument("--litert-python", default=None)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--set", choices=("full", "light"), default="full",
                   help="full: every variant; light: fp32 variants + ONNX dynamic int8 (use --litert fp32)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    args.bundle = args.bundle or f"/tmp/clap-edge-mobile-{args.model}"
    from clap_edge.core.images import list_images
    from clap_edge.export.bundle import Bundle

    t0, reused = time.time(), Path(args.bundle).exists()
    bundle = export(args)
    export_s = None if reused else round(time.time() - t0, 1)  # None: an existing bundle was measured
    image = str(list_images([Path(args.calibration)])[0])
    with Bundle.open(bundle) as b:
        manifest = b.manifest
    rows = []
    for label, backend, variant in VARIANTS:
        row = {"variant": label, "backend": backend}
        file = manifest.variants.get(variant)
        if file is None:
            rows.append({**row, "error": "variant not in the bundle"})
            continue
        files = [file, *EXTRA_FILES.get(variant, [])]
        row["file_mb"] = round(sum(manifest.files[f].bytes for f in files) / 1e6, 2)
        drift = (manifest.drift or {}).get(variant) or {}
        parity = manifest.parity.get(variant, {})
        row["agreement_vs_fp32"] = drift.get("agreement", parity.get("top1_agreement_vs_fp32"))
        row["min_domain_agreement"] = drift.get("min_domain_agreement")
        print(f"[measure] {label}", file=sys.stderr, flush=True)
        one = measure(bundle, backend, image, 1, args.iters)
        if "error" in one:
            rows.append({**row, **one})
            continue
        two = measure(bundle, backend, image, 2, args.iters)
        row.update(cold_start_s=one["cold_start_s"], cold_start_cpu_s=one["cold_start_cpu_s"], answer=one["label"],
                   peak_rss_mb=one["peak_rss_mb"], latency_ms_t1=one["p50_ms"],
                   latency_ms_t2=two.get("p50_ms"), load_average=list(os.getloadavg()))
        rows.append(row)
    report = {"command": " ".join(sys.argv), "model": args.model, "pretrained": args.pretrained,
              "export_wall_s": export_s, "machine": machine(), "rows": rows,
              "notes": "cold start = process spawn to first answer (bundle sha256 checks + model load + one image); "
                       "peak RSS includes the Python interpreter and the backend library; latency = median of "
                       f"{args.iters} batch-1 model calls. Machine shared with other jobs: see load_average."}
    report["markdown"] = markdown(rows, args.model)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(report["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
