#!/usr/bin/env bash
# The native runtime under AddressSanitizer + UndefinedBehaviorSanitizer: configure build/asan with
# -DCLAP_EDGE_SANITIZE=ON (runtime/cpp/CMakeLists.txt), build, run the whole CTest suite (GoogleTest units,
# the tools, the C API example, the install/find_package test and the conformance suite through
# clap-edge-classify). Any sanitizer report fails the run (halt_on_error, UBSan without recovery).
#
# Usage: bench/native_sanitize.sh [BUILD_DIR]          (default build/asan; about 12 min on the 2-core dev box)
# OpenVINO / TBB are not instrumented; leak checking stays on for our code (detect_leaks=1) with the
# OpenVINO/TBB allocations suppressed (bench/native_lsan.supp). The wall/CPU time goes to stderr at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build/asan}
start=$(date +%s)
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCLAP_EDGE_SANITIZE=ON \
  -DCLAP_EDGE_INSTALL_RUNTIME_LIBS=OFF -DPython3_EXECUTABLE="$(command -v python)" >/dev/null
ninja -C "$BUILD" -j2
# OpenVINO's TBB dlopens libtbbbind (NUMA / hybrid-core binding) with RTLD_DEEPBIND, which the sanitizer
# runtime refuses (google/sanitizers#611): a preloaded dlopen (bench/sanitize/no_deepbind.c) drops that flag.
# It must come before libasan in the lookup order, hence verify_asan_link_order=0.
cc -shared -fPIC -O2 -o "$BUILD/libno_deepbind.so" bench/sanitize/no_deepbind.c -ldl
export LD_PRELOAD="$PWD/$BUILD/libno_deepbind.so"
export ASAN_OPTIONS=verify_asan_link_order=0:halt_on_error=1:abort_on_error=0:detect_leaks=1:detect_odr_violation=0
export LSAN_OPTIONS=suppressions=$PWD/bench/native_lsan.supp:print_suppressions=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
ctest --test-dir "$BUILD" --output-on-failure -E install_and_find_package
echo "native_sanitize: passed in $(( $(date +%s) - start )) s wall" >&2
