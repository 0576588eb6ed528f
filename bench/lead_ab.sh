#!/usr/bin/env bash
# The A/B runs behind "Peers and the lead" in bench/README.md: each option against the plain peer, in CPU time,
# candidates alternated call by call in separate processes (bench/lead_ab.py). Writes bench/results/lead_ab/.
#   bash bench/lead_ab.sh BUNDLE [MODELS_DIR]   # BUNDLE: ViT-B-32 from `clap-edge export ... --int8`;
#                                               # MODELS_DIR: bench/lead_models.py --out (default /tmp/lead_models)
set -euo pipefail
bundle=${1:?usage: bench/lead_ab.sh BUNDLE [MODELS_DIR]}
models=${2:-/tmp/lead_models}
out=bench/results/lead_ab
mkdir -p "$out"
ab() { local name=$1; shift; echo "== $name" >&2; python bench/lead_ab.py "$bundle" "$@" --json "$out/$name.json" > /dev/null; }
ov_opts=latency,static,static+latency,static+throughput,static+latency+denormals,static+latency+f16
ab openvino_b1_t1 --library openvino --batch 1 --threads 1 --rounds 20 --only $ov_opts
ab openvino_b8_t1 --library openvino --batch 8 --threads 1 --rounds 20 --only $ov_opts
ab openvino_b8_t2 --library openvino --batch 8 --threads 2 --rounds 20 --only latency,split,static+throughput
ab onnxruntime_int8_b1_t2 --library onnxruntime --variant int8 --batch 1 --threads 2 --rounds 20 \
    --only ours,no_spin,override,override+no_spin
ab onnxruntime_fp32_b8_t2 --library onnxruntime --batch 8 --threads 2 --rounds 12 --only ours,no_spin
ab onnxruntime_fp32_b1_t1 --library onnxruntime --batch 1 --threads 1 --rounds 20 \
    --only ours,override,dev_alloc,no_arena
if [ -d "$models" ]; then
  for b in 1 8; do
    ab "openvino_models_b${b}_t1" --library openvino --batch $b --threads 1 --rounds 20 --only latency \
        --model plain="$models/plain.onnx" --model lean="$models/lean.onnx" \
        --model lean_cls="$models/lean_cls.onnx" --model wc_int8="$models/wc_int8.xml"
  done
fi
