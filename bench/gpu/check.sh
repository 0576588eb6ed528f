#!/usr/bin/env bash
# The GPU check of issue 12, in one go (about 8 minutes on an H100/H200):
#   1. install the carried wheels (bench/gpu/wheels, from fetch_wheels.sh) that the machine lacks,
#   2. export ViT-B-16 (random init: speed only, no weights needed) with its torch.export program,
#   3. build the AOTInductor engine at fp16 (batch profile 1,64,256) for this GPU,
#   4. clap-edge bench: torch eager fp32, torch fp16, torch-compile fp16 (reduce-overhead: CUDA graphs) and
#      aoti fp16 at batch 1, 8, 64, 256,
# writing bench.json, the engine sidecar, nvidia-smi output, logs and status.json (each step's exit code and
# seconds) into OUT_DIR. A failed step is recorded and the later steps still run where they can.
#
#   bench/gpu/check.sh OUT_DIR            # on the GPU machine
#   bench/gpu/check.sh OUT_DIR --cpu      # the same logic on this CPU with clap-edge-tiny (bf16, batch 1,8)
set -uo pipefail
OUT=${1:?usage: bench/gpu/check.sh OUT_DIR [--cpu]}
MODE=${2:-cuda}
cd "$(dirname "$0")/../.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${CHECK_WORK:-$(mktemp -d /tmp/clap-edge-gpu-check.XXXXXX)}  # the bundle (~0.7 GB for ViT-B-16) stays out of OUT

if [ "$MODE" = "--cpu" ]; then
  MODEL=clap-edge-tiny; DEVICE=cpu; PREC=bf16; BATCHES=1,8; PROFILE=1,8,8; COMPILE_MODE=default; ITERS=5
  T_EXPORT=300; T_ENGINE=400; T_BENCH=600
else
  MODEL=ViT-B-16; DEVICE=cuda; PREC=fp16; BATCHES=1,8,64,256; PROFILE=1,64,256; COMPILE_MODE=reduce-overhead
  ITERS=10; T_EXPORT=140; T_ENGINE=160; T_BENCH=160  # + install 20: 8 minutes at most in all
fi

STATUS="$OUT/status.json"
echo "{}" > "$STATUS"
record() {  # record STEP RC SECONDS
  python - "$STATUS" "$1" "$2" "$3" <<'PY'
import json, sys
path, step, rc, secs = sys.argv[1:]
d = json.load(open(path)); d[step] = {"rc": int(rc), "seconds": float(secs)}
json.dump(d, open(path, "w"), indent=2)
PY
}
step() {  # step NAME TIMEOUT CMD...: run with a time limit, log to OUT/NAME.log, record rc + seconds
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name (limit ${limit}s)" >&2
  timeout "$limit" bash -c '"$@"' _ "$@" > "$OUT/$name.log" 2>&1  # bash -c: steps may be shell functions
  local rc=$?
  record "$name" "$rc" "$((SECONDS - start))"
  echo "   rc=$rc in $((SECONDS - start)) s" >&2
  return $rc
}
ce() { python -c 'import sys; from clap_edge.apps.cli import main; sys.argv[0] = "clap-edge"; main()' "$@"; }

# 1. Python environment: the repo's packages, then any carried wheel whose distribution is missing.
if ! python -c "import clap_edge.export, clap_edge.runtime" 2>/dev/null; then
  # a source checkout without `pip install`: export/ and runtime/ install as clap_edge.export / clap_edge.runtime
  [ -e clap_edge/export ] || ln -s ../export clap_edge/export
  [ -e clap_edge/runtime ] || ln -s ../runtime clap_edge/runtime
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
install_missing() {
  shopt -s nullglob
  for whl in bench/gpu/wheels/*.whl; do
    dist=$(basename "$whl" | cut -d- -f1)
    python -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null \
      || pip install --no-deps --no-index --quiet "$whl"
  done
  python -c "import open_clip, onnxscript, click, rich, torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
}
export -f ce install_missing
step install 20 install_missing
{ nvidia-smi || true; python -c "import torch; print(torch.__version__, torch.version.cuda)"; } > "$OUT/machine.txt" 2>&1
lscpu >> "$OUT/machine.txt" 2>&1 || true

# 2. Export (random init; the parity check vs ONNX Runtime runs as usual).
B="$WORK/bundle"
step export "$T_EXPORT" ce export --model "$MODEL" --no-head --classes cat,dog,car,tree,boat,house,person,bird,fish,cup \
  --out "$B" --force

# 3. The AOTInductor engine for this device at $PREC.
step engine "$T_ENGINE" ce build-engine "$B" --engine aoti --device "$DEVICE" --precision "$PREC" --batch "$PROFILE" --json
cp "$B"/engines/*.json "$OUT/" 2>/dev/null  # the engine's sidecar (build time, parity vs ONNX Runtime)
BACKENDS="torch,torch:$PREC,torch-compile:$PREC"
python -c "import json,sys; m=json.load(open(sys.argv[1])); sys.exit(0 if m.get('engines') else 1)" "$B/manifest.json" \
  2>/dev/null && BACKENDS="$BACKENDS,aoti:$PREC"

# 4. The benchmark (every backend in its own process, interleaved round by round).
step bench "$T_BENCH" ce bench "$B" --device "$DEVICE" --backends "$BACKENDS" --compile-mode "$COMPILE_MODE" \
  --batch-sizes "$BATCHES" --threads 1 --warmup 2 --iters "$ITERS" --json "$OUT/bench.json" --quiet
cat "$STATUS"
[ -f "$OUT/bench.json" ]
