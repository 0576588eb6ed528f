"""This machine's CPU as benchmarks and engine sidecars record it: model name and instruction-set flags."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_info"]


def cpu_info() -> tuple[str, list[str]]:
    """(CPU model name, /proc/cpuinfo flags); the platform's processor name and no flags where unreadable."""
    name, flags = _read_cpu()
    return name, list(flags)


@functools.lru_cache(maxsize=1)  # the CPU does not change under a process; `auto` and engine checks ask often
def _read_cpu() -> tuple[str, tuple[str, ...]]:
    cpu_model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    return cpu_model, tuple(flags)
