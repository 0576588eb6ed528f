"""The core's own arithmetic peak: a tiny C loop of independent FMA / int8 dot-product instructions.

The library GEMM ceiling (:mod:`clap_edge.apps.ceiling`) says what a library reaches on a large
product; this probe says what the silicon can do at all, so a row can be read against both (the
gap between the two is the library's, the gap below the GEMM is the model's). It is plain C with
intrinsics, compiled here at first use with the system C compiler (``cc -O3 -march=native``) into a
temporary shared library and called through ctypes. No compiler: no hardware peak (reported as such).

Kernels, chosen at compile time from the flags ``-march=native`` enables:

- fp32: 12 independent ``vfmadd`` chains, 512-bit where AVX-512F exists, else 256-bit (AVX2 + FMA);
  2 FLOP per lane per FMA.
- int8: ``vpdpbusd`` (u8 x s8 -> s32) at 512 bits (AVX512-VNNI) or 256 bits (AVX-VNNI); without VNNI the
  AVX2 sequence ``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd`` that integer GEMMs use there (its 16-bit
  intermediate is the saturation the int8 remedies work around); 2 OP per u8 x s8 product.
  AMX tiles are not probed (they need a kernel permission request and tile configuration): on an AMX
  CPU an int8 library GEMM can exceed this int8 figure.

Figures are per CPU-second of one thread (``time.thread_time`` around the call), so they hold on a busy
machine and compare with the bench's per-CPU-second rows at any thread count.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["peak_probe", "SOURCE"]

SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#define CHAINS 12
#define UNROLL _Pragma("GCC unroll 12")  /* the accumulators must live in registers */
#if defined(__AVX512F__)
typedef __m512 vf; enum { FL = 16 };
#define FSET _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define FADD _mm512_add_ps
static float fsum(vf v) { return _mm512_reduce_add_ps(v); }
const char *fp32_isa(void) { return "avx512f"; }
#else
typedef __m256 vf; enum { FL = 8 };
#define FSET _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define FADD _mm256_add_ps
static float fsum(vf v) { float t[8]; _mm256_storeu_ps(t, v); float s = 0; for (int i = 0; i < 8; i++) s += t[i]; return s; }
const char *fp32_isa(void) { return "avx2+fma"; }
#endif

/* returns FLOPs done; *sink keeps the result alive */
double fp32_peak(long iters, float *sink) {
    vf acc[CHAINS], b = FSET(0.999999f), c = FSET(1e-7f);
    for (int i = 0; i < CHAINS; i++) acc[i] = FSET(1.0f + i);
    for (long n = 0; n < iters; n++)
        UNROLL for (int i = 0; i < CHAINS; i++) acc[i] = FMA(acc[i], b, c);
    vf s = acc[0];
    for (int i = 1; i < CHAINS; i++) s = FADD(s, acc[i]);
    *sink = fsum(s);
    return 2.0 * FL * CHAINS * (double)iters;
}

#if defined(__AVX512VNNI__)
typedef __m512i vi; enum { IB = 64 };
#define ISET _mm512_set1_epi8
#define DOT(acc, a, b) _mm512_dpbusd_epi32(acc, a, b)
#define IADD _mm512_add_epi32
static int32_t isum(vi v) { return _mm512_reduce_add_epi32(v); }
const char *int8_isa(void) { return "avx512_vnni"; }
#elif defined(__AVXVNNI__)
typedef __m256i vi; enum { IB = 32 };
#define ISET _mm256_set1_epi8
#define DOT(acc, a, b) _mm256_dpbusd_avx_epi32(acc, a, b)
#define IADD _mm256_add_epi32
static int32_t isum(vi v) { int32_t t[8]; _mm256_storeu_si256((__m256i *)t, v); int32_t s = 0; for (int i = 0; i < 8; i++) s += t[i]; return s; }
const char *int8_isa(void) { return "avx_vnni"; }
#else
typedef __m256i vi; enum { IB = 32 };
#define ISET _mm256_set1_epi8
#define DOT(acc, a, b) _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)))
#define IADD _mm256_add_epi32
static int32_t isum(vi v) { int32_t t[8]; _mm256_storeu_si256((__m256i *)t, v); int32_t s = 0; for (int i = 0; i < 8; i++) s += t[i]; return s; }
const char *int8_isa(void) { return "avx2 (pmaddubsw+pmaddwd)"; }
#endif

/* returns integer OPs done (2 per u8 x s8 product) */
double int8_peak(long iters, int32_t *sink) {
    vi acc[CHAINS], a = ISET(3), b = ISET(-2);
    for (int i = 0; i < CHAINS; i++) acc[i] = ISET((char)i);
    for (long n = 0; n < iters; n++)
        UNROLL for (int i = 0; i < CHAINS; i++) acc[i] = DOT(acc[i], a, b);
    vi s = acc[0];
    for (int i = 1; i < CHAINS; i++) s = IADD(s, acc[i]);
    *sink = isum(s);
    return 2.0 * IB * CHAINS * (double)iters;
}
"""


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | str:
    """The compiled probe, or a one-line reason why there is none."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return "no C compiler (cc) on PATH"
    import hashlib
    import platform

    # compiled once per source, compiler and machine: every bench's ceiling process reuses it
    key = hashlib.sha256(f"{SOURCE}{cc}{platform.machine()}{platform.node()}".encode()).hexdigest()[:16]
    so = Path(tempfile.gettempdir()) / f"clap-edge-peak-{key}.so"
    if not so.is_file():
        tmp = Path(tempfile.mkdtemp(prefix="clap-edge-peak-"))
        (tmp / "peak.c").write_text(SOURCE)
        result = subprocess.run([cc, "-O3", "-march=native", "-shared", "-fPIC", "-o", str(tmp / "peak.so"),
                                 str(tmp / "peak.c")], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            return f"the probe did not compile: {(result.stderr.strip().splitlines() or ['?'])[0]}"
        os.replace(tmp / "peak.so", so)  # atomic: a concurrent bench sees the whole file or none
    lib = ctypes.CDLL(str(so))
    lib.fp32_peak.restype = lib.int8_peak.restype = ctypes.c_double
    lib.fp32_peak.argtypes = [ctypes.c_long, ctypes.POINTER(ctypes.c_float)]
    lib.int8_peak.argtypes = [ctypes.c_long, ctypes.POINTER(ctypes.c_int32)]
    lib.fp32_isa.restype = lib.int8_isa.restype = ctypes.c_char_p
    return lib


def _rate(fn: Any, sink: Any, min_cpu_s: float) -> float:
    """Operations per CPU-second, growing the loop until one call takes >= ``min_cpu_s`` of CPU."""
    iters = 1 << 16
    while True:
        cpu = time.thread_time()
        ops = fn(iters, ctypes.byref(sink))
        spent = time.thread_time() - cpu
        if spent >= min_cpu_s:
            return ops / spent
        iters *= 2 if spent <= 0 else max(2, int(min_cpu_s / spent * 1.2) + 1)


def peak_probe(min_cpu_s: float = 0.2, samples: int = 2) -> dict[str, Any]:
    """``{"fp32": {"gflops_per_cpu_s", "isa"}, "int8": {"gops_per_cpu_s", "isa"}}`` for one thread,
    the best of ``samples`` runs of >= ``min_cpu_s`` CPU each; or ``{"error": reason}``."""
    lib = _library()
    if isinstance(lib, str):
        return {"error": lib}
    fp32 = max(_rate(lib.fp32_peak, ctypes.c_float(), min_cpu_s) for _ in range(samples))
    int8 = max(_rate(lib.int8_peak, ctypes.c_int32(), min_cpu_s) for _ in range(samples))
    return {"fp32": {"gflops_per_cpu_s": round(fp32 / 1e9, 1), "isa": lib.fp32_isa().decode()},
            "int8": {"gops_per_cpu_s": round(int8 / 1e9, 1), "isa": lib.int8_isa().decode()},
            "threads": 1, "how": "C intrinsics loop, cc -O3 -march=native; AMX not probed"}


if __name__ == "__main__":  # python -m clap_edge.apps.peak_probe
    import json

    print(json.dumps(peak_probe(), indent=2))
