"""Back a loaded model's weights with 2 MiB pages (Linux transparent huge pages, ``madvise(2)``).

A ViT-B model streams ~350 MB of weights per call. In 4 KiB pages that is ~90,000 pages, far beyond
the TLB's reach, so every call walks page tables, and after each context switch on a busy machine
walks them again. In 2 MiB pages the same weights are ~175 entries. Measured on the 2-core dev VM
(ViT-B-32 fp32, ONNX Runtime, 1 thread, batch 1; ``bench/huge_pages_ab.py``): 1.05x less CPU per call
quiet and at load 4; 1.3-2.3x at moments when the 4 KiB version's CPU time swelled under load (the
swelling comes and goes with the host's state, which the VM's load average does not show).

Most distributions set THP to ``madvise`` (only regions that ask get huge pages), and neither ONNX
Runtime nor OpenVINO asks. So after a runner has loaded its model, :func:`back_with_huge_pages` marks
every large private anonymous mapping ``MADV_HUGEPAGE`` and asks the kernel to collapse it now
(``MADV_COLLAPSE``, Linux >= 6.1; older kernels leave it to khugepaged in the background). Nothing
is copied at the Python level and no result changes: only the page size behind the same bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import Future

MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
HUGE_PAGE = 2 << 20
MIN_REGION = 8 << 20  # smaller regions fit in the TLB's reach anyway
COLLAPSE_CHUNK = 32 << 20
MIN_MODEL_BYTES = 32 << 20  # below this a model's weights fit in the TLB's reach: not worth the collapse
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"

__all__ = ["HugePages", "back_with_huge_pages", "back_in_background", "anonymous_regions", "thp_mode", "worth_it",
           "wanted", "MIN_MODEL_BYTES"]


@dataclass
class HugePages:
    applied: bool  # huge pages could be asked for here (THP on); the MB fields say what they cover
    collapsed_mb: float = 0.0  # bytes the kernel collapsed into 2 MiB pages now
    advised_mb: float = 0.0  # bytes marked MADV_HUGEPAGE (collapsed now or later by khugepaged)
    seconds: float = 0.0
    reason: str | None = None  # why not applied, or what fell back


def wanted() -> bool:
    """Whether runners should move large models to huge pages: yes unless ``CLAP_EDGE_HUGE_PAGES=0``."""
    return os.environ.get("CLAP_EDGE_HUGE_PAGES", "1") != "0"


def thp_mode() -> str | None:
    """``always``, ``madvise`` or ``never`` (the bracketed word of the THP setting); None off Linux."""
    try:
        text = open(THP_SETTING).read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else None


def worth_it(model_bytes: int) -> bool:
    """Whether a model file this large gains from huge pages (its weights beyond the TLB's reach)."""
    return model_bytes >= MIN_MODEL_BYTES


def back_with_huge_pages(min_region: int | None = None, skip: set[tuple[int, int]] | None = None) -> HugePages:
    """Advise and collapse every private anonymous read-write mapping of >= ``min_region`` bytes, but those
    in ``skip`` (spans from :func:`anonymous_regions` taken before the model was loaded: a runner backs
    what its library allocated, not the whole process)."""
    mode = thp_mode()
    if not sys.platform.startswith("linux") or mode is None:
        return HugePages(False, reason="not Linux, or no transparent huge pages in this kernel")
    if mode == "never":
        return HugePages(False, reason=f"transparent huge pages are off ({THP_SETTING}: never)")
    madvise = _libc_madvise()
    start, advised, collapsed, failures = time.perf_counter(), 0, 0, set()
    for lo, hi in anonymous_regions(min_region):
        if (lo, hi) in (skip or ()):
            continue
        if madvise(lo, hi - lo, MADV_HUGEPAGE) != 0:
            failures.add(os.strerror(ctypes.get_errno()))
            continue
        advised += hi - lo
        for at in range(lo, hi, COLLAPSE_CHUNK):  # in chunks: one unsuitable page range spoils only its chunk
            size = min(COLLAPSE_CHUNK, hi - at)
            if madvise(at, size, MADV_COLLAPSE) == 0:
                collapsed += size
            else:  # EINVAL before Linux 6.1; EAGAIN/ENOMEM when no free huge page: khugepaged may do it later
                failures.add(os.strerror(ctypes.get_errno()))
    reason = f"some regions left to khugepaged: {', '.join(sorted(failures))}" if failures else \
        None if advised else "no new anonymous mapping large enough"
    return HugePages(True, round(collapsed / 2**20, 1), round(advised / 2**20, 1),
                     round(time.perf_counter() - start, 3), reason)


def back_in_background(skip: set[tuple[int, int]] | None = None) -> "Future[HugePages]":
    """:func:`back_with_huge_pages` on a daemon thread: collapsing ~500 MB takes seconds (4 s on the quiet
    dev VM), and the model can answer meanwhile (the kernel swaps the pages under running code, as
    khugepaged does; ctypes releases the GIL for the syscall). The bench waits for it before timing."""
    from concurrent.futures import Future
    import threading

    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(back_with_huge_pages(skip=skip))
        except BaseException as e:  # never kill the process over a page-size hint
            future.set_exception(e)

    threading.Thread(target=run, name="clap-edge-huge-pages", daemon=True).start()
    return future


def _libc_madvise():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc.madvise


def anonymous_regions(min_region: int | None = None) -> list[tuple[int, int]]:
    """Huge-page-aligned [lo, hi) spans of private anonymous rw mappings (and the heap) in this process."""
    min_region = MIN_REGION if min_region is None else min_region
    spans = []
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            perms, path = parts[1], parts[5] if len(parts) > 5 else ""
            if not perms.startswith("rw") or perms[3] != "p" or (path and path != "[heap]"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            lo, hi = -(-lo // HUGE_PAGE) * HUGE_PAGE, hi // HUGE_PAGE * HUGE_PAGE
            if hi - lo >= min_region:
                spans.append((lo, hi))
    return spans
