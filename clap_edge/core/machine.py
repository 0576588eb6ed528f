"""This machine's CPU as benchmarks and engine sidecars record it: model name and instruction-set flags."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_info", "int8_path", "INT8_PATHS", "INT8_AGREEMENT_FLOOR"]

# The one int8 floor (top-1 agreement with fp32): the export's accuracy control, auto, the tests and the README
# all use it. Lives in core so that export (which holds int8 variants to it) and runtime (auto) share it.
INT8_AGREEMENT_FLOOR = 0.995


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


INT8_PATHS = ("amx", "vnni", "avx2", "arm-dot", "other")


def int8_path(flags: list[str] | tuple[str, ...] | None = None) -> str:
    """How this CPU multiplies int8 (the path int8 speed and accuracy depend on), from its flags:

    ``amx`` (AMX tiles), ``vnni`` (AVX512-VNNI / AVX-VNNI: u8 x s8 -> s32 in one instruction),
    ``avx2`` (``vpmaddubsw``: u8 x s8 pairs summed in *16 bits*, which saturates: the reason ONNX Runtime
    has ``reduce_range`` and NNCF an overflow fix), ``arm-dot`` (Arm SDOT/UDOT), else ``other``.
    ``CLAP_EDGE_INT8_PATH`` overrides it (to export for, or test, another CPU's path)."""
    import os

    forced = os.environ.get("CLAP_EDGE_INT8_PATH")
    if forced in INT8_PATHS:
        return forced
    have = set(cpu_info()[1] if flags is None else flags)
    if "amx_int8" in have:
        return "amx"
    if have & {"avx512_vnni", "avx_vnni", "avx_vnni_int8"}:
        return "vnni"
    if "avx2" in have:
        return "avx2"
    if have & {"asimddp", "dotprod"}:
        return "arm-dot"
    return "other"


def steal_ticks() -> int | None:
    """Steal time of all CPUs so far (USER_HZ ticks, the 8th field of /proc/stat's ``cpu`` line), None
    where unreadable: on a virtual machine, time the host ran something else while a vCPU wanted to run.
    The bench records it before and after a run: host contention slows a call without the guest's load
    average showing it."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) if fields[0] == "cpu" and len(fields) > 8 else None
    except (OSError, ValueError):
        return None
