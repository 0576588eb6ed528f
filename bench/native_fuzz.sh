#!/usr/bin/env bash
# Fuzz the native runtime's two parsers of untrusted bytes with libFuzzer (clang, ASan + UBSan):
#   fuzz_manifest: manifest.json text -> parse_manifest_json + validate_manifest (runtime/cpp/src/manifest.cpp)
#   fuzz_decode:   image bytes -> decode_image (JPEG/PNG, EXIF, draft scaling) + preprocess (decode.cpp, preprocess.cpp)
#
# Usage: bench/native_fuzz.sh [SECONDS_PER_HARNESS] [HARNESS...]     (default 1800 s, both harnesses)
#   needs: apt-get install clang-14 libfuzzer-14-dev libclang-rt-14-dev (+ the native build's -dev packages)
#   env:   FUZZ_CPU_S (stop each harness after this many CPU seconds; SECONDS is then the wall ceiling),
#          FUZZ_OUT (default build/fuzz), FUZZ_NICE (default 15), CLAP_EDGE_CONFORMANCE_OUT (materialised
#          conformance cases for seeds; made with tests/conformance/materialize.py when absent)
# The harnesses run one after the other or in parallel (FUZZ_PARALLEL=1), each under `nice`, with
# -max_total_time; the CPU seconds each used (from /usr/bin/time) go to $FUZZ_OUT/<harness>.time and the
# summary to bench/results/native_fuzz.json. Seeds: the committed corpus runtime/cpp/fuzz/corpus/<harness>/ plus
# every conformance manifest / image. At the end the corpus found is merged (-merge=1, smallest set that keeps the
# coverage) back into runtime/cpp/fuzz/corpus/<harness>/. A crash leaves crash-* files in $FUZZ_OUT/<harness>/;
# the script exits 1 then. Regression: `bench/native_fuzz.sh 0` replays the committed corpora only.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${1:-1800}; shift || true
HARNESSES=("${@:-fuzz_manifest fuzz_decode}")
read -r -a HARNESSES <<< "${HARNESSES[*]}"
OUT=$(realpath -m "${FUZZ_OUT:-build/fuzz}"); NICE=${FUZZ_NICE:-15}
CXX=${FUZZ_CXX:-$(command -v clang++-14 || command -v clang++)}
mkdir -p "$OUT/bin"

# ---- build: our sources + the system's libjpeg/libpng (not instrumented: ASan still sees our side of every buffer)
SRC=runtime/cpp/src
FLAGS=(-std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -Iruntime/cpp/include -I$SRC)
"$CXX" "${FLAGS[@]}" runtime/cpp/fuzz/fuzz_manifest.cpp $SRC/manifest.cpp -o "$OUT/bin/fuzz_manifest"
"$CXX" "${FLAGS[@]}" runtime/cpp/fuzz/fuzz_decode.cpp $SRC/decode.cpp $SRC/exif.cpp $SRC/preprocess.cpp \
  -ljpeg -lpng -o "$OUT/bin/fuzz_decode"

# ---- seeds
CONF=${CLAP_EDGE_CONFORMANCE_OUT:-$OUT/conformance}
if [ ! -d "$CONF/_base" ]; then python tests/conformance/materialize.py "$CONF" >&2; fi
seed_dir() {  # harness -> a folder of seeds from the conformance cases
  local d="$OUT/seeds/$1"; rm -rf "$d"; mkdir -p "$d"; local i=0
  if [ "$1" = fuzz_manifest ]; then
    find "$CONF" -name manifest.json -type f -size -64k -print0 | while IFS= read -r -d '' f; do cp "$f" "$d/m$((i++))"; done
  else
    find "$CONF" \( -iname '*.png' -o -iname '*.jpg' -o -iname '*.jpeg' \) -type f -size -256k \
      -print0 | while IFS= read -r -d '' f; do cp "$f" "$d/i$((i++))"; done
  fi
  echo "$d"
}

status=0
run_one() {
  local h=$1 corpus=runtime/cpp/fuzz/corpus/$1 work="$OUT/$1"
  mkdir -p "$corpus" "$work/corpus"
  if [ "$SECS" = 0 ]; then  # replay the committed corpus only (a regression run)
    "$OUT/bin/$h" -runs=0 "$corpus"; return
  fi
  rm -f "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-*  # findings of an earlier run: not this one's
  local seeds; seeds=$(seed_dir "$h")
  ( cd "$work" && exec /usr/bin/time -f '%U %S %e' -o "$h.time" nice -n "$NICE" "$OUT/bin/$h" -max_total_time="$SECS" \
      -rss_limit_mb=2048 -timeout=20 -max_len=65536 -print_final_stats=1 corpus "$ROOT/$corpus" "$seeds" \
      > "$work/$h.log" 2>&1 ) &
  local tpid=$!
  if [ -n "${FUZZ_CPU_S:-}" ]; then  # stop at a CPU-time budget (SIGINT: libFuzzer prints its stats and exits)
    local fpid=""
    while kill -0 "$tpid" 2>/dev/null; do
      sleep 20
      [ -n "$fpid" ] || fpid=$(pgrep -P "$tpid" | head -1 || true)
      [ -n "$fpid" ] && [ -r "/proc/$fpid/stat" ] || continue
      local ticks; ticks=$(awk '{print $14 + $15}' "/proc/$fpid/stat" 2>/dev/null || echo 0)
      if [ $((ticks / $(getconf CLK_TCK))) -ge "$FUZZ_CPU_S" ]; then kill -INT "$fpid"; break; fi
    done
  fi
  wait "$tpid" || status=1
  # the smallest set of inputs that keeps the coverage reached, written back to the committed corpus
  local merged="$work/merged"; rm -rf "$merged"; mkdir -p "$merged"
  "$OUT/bin/$h" -merge=1 -max_len=65536 "$merged" "$corpus" "$work/corpus" "$seeds" > "$work/merge.log" 2>&1
  rm -rf "$corpus"; mv "$merged" "$corpus"
}
if [ "${FUZZ_PARALLEL:-0}" = 1 ]; then
  for h in "${HARNESSES[@]}"; do run_one "$h" & done; wait
else
  for h in "${HARNESSES[@]}"; do run_one "$h"; done
fi
[ "$SECS" = 0 ] && exit 0

# ---- summary: CPU seconds (user + sys of the fuzzer process), executions, crashes
python - "$OUT" "$SECS" "${HARNESSES[@]}" <<'PY'
import json, os, platform, re, subprocess, sys, glob
out, secs, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
model = re.search(r"Model name:\s*(.*)", lscpu)
res = {"machine": {"cpu": model.group(1) if model else platform.processor(), "cores": os.cpu_count(),
                   "loadavg_at_end": os.getloadavg()},
       "max_total_time_s": secs, "harnesses": {}}
for h in names:
    user, sys_, wall = (float(x) for x in open(f"{out}/{h}/{h}.time").read().split()[-3:])
    log = open(f"{out}/{h}/{h}.log", errors="replace").read()
    execs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    cov = re.findall(r"cov: (\d+) ft: (\d+)", log)
    res["harnesses"][h] = {"cpu_s": round(user + sys_, 1), "cpu_minutes": round((user + sys_) / 60, 1), "wall_s": wall,
                           "executions": int(execs[-1]) if execs else None,
                           "coverage_edges": int(cov[-1][0]) if cov else None,
                           "crashes": sorted(os.path.basename(p) for p in glob.glob(f"{out}/{h}/crash-*") +
                                             glob.glob(f"{out}/{h}/leak-*") + glob.glob(f"{out}/{h}/timeout-*") +
                                             glob.glob(f"{out}/{h}/oom-*")),
                           "corpus_files": len(os.listdir(f"runtime/cpp/fuzz/corpus/{h}"))}
os.makedirs("bench/results", exist_ok=True)
tmp = "bench/results/native_fuzz.json.tmp"
with open(tmp, "w") as f: json.dump(res, f, indent=1)
os.replace(tmp, "bench/results/native_fuzz.json")
print(json.dumps(res, indent=1))
PY
exit $status
