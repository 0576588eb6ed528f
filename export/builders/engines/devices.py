"""Which devices this machine has, described as engine sidecars describe them (:class:`DeviceInfo`).

Here the torch-free sources: ``nvidia-smi`` (no Python GPU library at all, for listing) and
cuda-python's runtime bindings (the TensorRT backend, which needs no torch). The torch ones (the
AOTInductor backend and builder) are in ``torch_devices``, so the runtime's torch-free backends
never reach torch through this module.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from clap_edge.export.builders.engines.sidecar import DeviceInfo, host_cpu

__all__ = ["visible_gpus", "cudart_device", "host_cpu"]


@functools.lru_cache(maxsize=1)
def visible_gpus() -> tuple[DeviceInfo, ...]:
    """GPUs ``nvidia-smi`` lists (name, compute capability); empty without a driver."""
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ()
    if out.returncode != 0:
        return ()
    gpus = []
    for line in out.stdout.strip().splitlines():
        name, _, cc = line.rpartition(",")
        if name.strip():
            gpus.append(DeviceInfo(type="cuda", name=name.strip(), compute_capability=cc.strip()))
    return tuple(gpus)


def cudart_device(index: int = 0) -> DeviceInfo:
    """The CUDA device ``index`` through cuda-python (``cuda.bindings.runtime``); RuntimeError if unusable."""
    from cuda.bindings import runtime as cudart

    err, props = cudart.cudaGetDeviceProperties(index)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA device {index} is not usable: {cudart.cudaGetErrorString(err)[1].decode()}")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return DeviceInfo(type="cuda", name=name.strip("\x00 "), compute_capability=f"{props.major}.{props.minor}")
