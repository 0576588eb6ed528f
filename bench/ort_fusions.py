"""Try ONNX Runtime's transformer optimizer on a bundle's model.onnx: which fusions apply, CPU time vs plain.

Issue 21 part 4 (a lead over the peers): ``onnxruntime.transformers.optimizer.optimize_model`` with
model_type ``vit`` and ``clip`` (12 heads, hidden 768 for ViT-B), then batch 1 at 1 thread, calls
alternated, median process CPU time per call, and the max |diff| of the outputs vs the plain model.

    python bench/ort_fusions.py /tmp/vitb32/model.onnx --out bench/results/ort_fusions_vit-b-32.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--out", required=True)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    import onnxruntime as ort
    from onnxruntime.transformers.optimizer import optimize_model

    from clap_edge.core.machine import cpu_info
    from clap_edge.core.report import write_json

    out: dict = {"model": args.model, "cpu_model": cpu_info()[0], "load_average_before": list(os.getloadavg()),
                 "variants": {}}
    tmp = tempfile.mkdtemp(prefix="clap-edge-fusions-")
    paths = {"plain": args.model}
    for model_type in ("vit", "clip"):
        optimised = optimize_model(args.model, model_type=model_type, num_heads=args.heads, hidden_size=args.hidden,
                                   opt_level=0)
        paths[model_type] = os.path.join(tmp, f"{model_type}.onnx")
        optimised.save_model_to_file(paths[model_type])
        out["variants"][model_type] = {"fused": {k: v for k, v in optimised.get_fused_operator_statistics().items()
                                                 if v}}

    def session(path):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

    sessions = {k: session(p) for k, p in paths.items()}
    name = sessions["plain"].get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    ref = sessions["plain"].run(None, {name: x})[0]
    cpu: dict = {k: [] for k in sessions}
    for k, s in sessions.items():
        out["variants"].setdefault(k, {})["max_abs_diff"] = float(np.abs(s.run(None, {name: x})[0] - ref).max())
    for _ in range(args.calls):
        for k, s in sessions.items():
            start = time.process_time()
            s.run(None, {name: x})
            cpu[k].append(time.process_time() - start)
    plain = float(np.median(cpu["plain"]))
    for k, times in cpu.items():
        out["variants"][k].update(cpu_ms=round(float(np.median(times)) * 1e3, 2),
                                  speed_vs_plain=round(plain / float(np.median(times)), 3), calls=len(times))
    out["load_average_after"] = list(os.getloadavg())
    write_json(args.out, out)
    print(out["variants"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
