"""runtime/huge_pages.py: 2 MiB pages under a loaded model's weights, never a changed result."""

from __future__ import annotations

import numpy as np
import pytest

from clap_edge.runtime import huge_pages
from clap_edge.runtime.backends import RunnerOptions, create_runner
from clap_edge.export.bundle import Bundle


def _anon_huge_kb(address: int) -> int | None:
    """AnonHugePages of the mapping holding ``address`` (/proc/self/smaps)."""
    current = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                current = lo <= address < hi
            elif current and line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    return None


def test_thp_mode_reads_the_bracketed_word(tmp_path, monkeypatch):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    monkeypatch.setattr(huge_pages, "THP_SETTING", str(setting))
    assert huge_pages.thp_mode() == "madvise"
    setting.write_text("always madvise [never]\n")
    report = huge_pages.back_with_huge_pages()
    assert report.applied is False and "never" in report.reason
    monkeypatch.setattr(huge_pages, "THP_SETTING", str(tmp_path / "missing"))
    assert huge_pages.thp_mode() is None and huge_pages.back_with_huge_pages().applied is False


@pytest.mark.skipif(huge_pages.thp_mode() not in ("always", "madvise"),
                    reason="this kernel has transparent huge pages off or absent")
def test_a_large_array_ends_on_huge_pages_with_its_bytes_unchanged():
    existing = set(huge_pages.anonymous_regions())  # leave the rest of this (test) process alone
    data = np.random.default_rng(0).standard_normal((64 << 20) // 8)  # 64 MiB of float64: its own mapping, touched
    before = data.copy()
    report = huge_pages.back_with_huge_pages(skip=existing)
    assert report.applied and report.advised_mb >= 64
    np.testing.assert_array_equal(data, before)  # the page size changes, never the bytes
    if report.collapsed_mb:  # MADV_COLLAPSE (Linux >= 6.1) did it now; else khugepaged will, later
        # the middle of the array: MADV_HUGEPAGE splits off the unaligned head and tail of its mapping
        assert _anon_huge_kb(data.ctypes.data + data.nbytes // 2) > 0


def test_runner_backs_a_large_model_and_gives_the_same_logits(runtime_bundle, monkeypatch):
    bundle = Bundle.open(runtime_bundle)
    batch = np.random.default_rng(1).standard_normal((3, *bundle.input_shape)).astype(np.float32)
    with create_runner(bundle, "onnxruntime", RunnerOptions(threads=1, huge_pages=False)) as plain:
        expected = plain.infer(batch).logits
        assert plain.wait_for_huge_pages() is None
    with create_runner(bundle, "onnxruntime", RunnerOptions(threads=1)) as small:
        assert small.wait_for_huge_pages() is None  # the toy model's weights fit in the TLB's reach: left alone
    monkeypatch.setattr(huge_pages, "MIN_MODEL_BYTES", 0)  # treat the toy model as large
    with create_runner(bundle, "onnxruntime", RunnerOptions(threads=1)) as backed:
        during = backed.infer(batch).logits  # answers while the pages move
        report = backed.wait_for_huge_pages()
        assert report is not None and report.applied == (huge_pages.thp_mode() in ("always", "madvise"))
        np.testing.assert_array_equal(backed.infer(batch).logits, expected)
        np.testing.assert_array_equal(during, expected)
