"""This machine's devices as engine sidecars describe them, through torch (AOTInductor backend and builder)."""

from __future__ import annotations

from typing import Any

from clap_edge.export.bundle.engines import DeviceInfo, host_cpu

__all__ = ["torch_device", "torch_cuda_device", "torch_cpu_device"]


def torch_device(torch: Any, device: str) -> DeviceInfo:
    """The device ``device`` names ("cpu", "cuda", "cuda:1") as sidecars describe it (CUDA must be available)."""
    if device.startswith("cuda"):
        return torch_cuda_device(torch, torch.device(device).index or 0)
    return torch_cpu_device()


def torch_cuda_device(torch: Any, index: int = 0) -> DeviceInfo:
    major, minor = torch.cuda.get_device_capability(index)
    return DeviceInfo(type="cuda", name=torch.cuda.get_device_name(index), compute_capability=f"{major}.{minor}")


def torch_cpu_device() -> DeviceInfo:
    """This CPU with the vector ISA torch inductor compiles for here (what a CPU AOTInductor engine needs)."""
    from dataclasses import replace

    from torch._inductor import cpu_vec_isa

    isa = str(cpu_vec_isa.pick_vec_isa()).strip() or None
    return replace(host_cpu(), isa=isa)
