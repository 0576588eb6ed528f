"""Where OpenVINO's time goes on a bundle's model.onnx, beside the rate of one isolated FullyConnected.

OpenVINO's per-op counters (``PERF_COUNT``) for the peer's configuration (default config, threads matched),
summed by op type over a few calls, and the GFLOP per CPU-second of one [M, 768] x [768, 3072] MatMul
(M = batch x 50 tokens for ViT-B-32) compiled alone at the plugin's default precision (its 9 MB of weights
stay in cache, the model's 172 MB do not): how close the model's GEMMs run to what the library does on this
CPU. The model's FC rate uses the FC share of the op counters (wall) times the calls' CPU time.

    python bench/lead_profile.py /tmp/lead_vitb32b --batch 8 --json bench/results/lead_profile_b8.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time
from pathlib import Path

import numpy as np

from clap_edge.core.io import atomic_write_text


def profile(model: str, batch: int, threads: int, calls: int = 5) -> tuple[dict[str, float], float]:
    """Per-op wall ms per call (OpenVINO's counters), and the CPU ms per call of the same calls."""
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    for _ in range(3):
        request.infer({0: x})
    ms: collections.Counter = collections.Counter()
    cpu = 0.0
    for _ in range(calls):
        start = time.process_time()
        request.infer({0: x})
        cpu += (time.process_time() - start) * 1e3 / calls
        for p in request.profiling_info:
            ms[f"{p.node_type} ({p.exec_type})"] += p.real_time.total_seconds() * 1e3 / calls
    return dict(ms.most_common()), cpu


def gemm_rate(m: int, threads: int, k: int = 768, n: int = 3072, calls: int = 50) -> float:
    import openvino as ov
    import openvino.opset13 as ops

    x = ops.parameter([m, k], np.float32)
    w = ops.constant(np.random.default_rng(0).standard_normal((n, k)).astype(np.float32) * 0.02)
    compiled = ov.Core().compile_model(ov.Model([ops.matmul(x, w, False, True)], [x]), "CPU",
                                       {"INFERENCE_NUM_THREADS": threads})
    request, a = compiled.create_infer_request(), np.ones((m, k), np.float32)
    for _ in range(5):
        request.infer({0: a})
    start = time.process_time()
    for _ in range(calls):
        request.infer({0: a})
    return 2 * m * k * n / ((time.process_time() - start) / calls) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    load = os.getloadavg()[0]
    ops_ms, cpu_ms = profile(str(a.bundle / "model.onnx"), a.batch, a.threads)
    total = sum(ops_ms.values())
    fc_share = sum(v for k, v in ops_ms.items() if k.startswith("FullyConnected")) / total
    # ViT-B-32: 12 blocks x 50 tokens x (QKV + out + 2 MLP) MACs, and the final projection
    fc_gflop = a.batch * (12 * 50 * 768 * (3 * 768 + 768 + 2 * 3072) * 2 + 768 * 512 * 2) / 1e9
    report = {"batch": a.batch, "threads": a.threads, "load_1min": load, "total_ms": round(total, 2),
              "cpu_ms_per_call": round(cpu_ms, 2),
              "model_fc_gflops_per_cpu_s": round(fc_gflop / (fc_share * cpu_ms / 1e3), 1),
              "share_by_op": {k: round(v / total, 4) for k, v in ops_ms.items() if v / total >= 0.001},
              "ms_by_op": {k: round(v, 2) for k, v in ops_ms.items()},
              "isolated_fc_gflops_per_cpu_s": round(gemm_rate(a.batch * 50, a.threads), 1)}
    text = json.dumps(report, indent=1)
    print(text)
    if a.json:
        atomic_write_text(a.json, text + "\n")


if __name__ == "__main__":
    main()
