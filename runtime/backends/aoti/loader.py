"""Load an AOTInductor package (``engines/aoti-*.pt2``) with ``torch._inductor.aoti_load_package``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clap_edge.core.errors import BundleError, first_line

__all__ = ["hosts_for", "load_package"]


def hosts_for(torch: Any, device: str) -> list:
    """The device ``device`` names ("cpu", "cuda", "cuda:1"), described as sidecars describe devices."""
    from clap_edge.runtime.backends.aoti.devices import torch_device

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BundleError("aoti: --device cuda asked for, but torch sees no CUDA GPU here")
    return [torch_device(torch, device)]


def load_package(torch: Any, path: Path, device: str) -> Any:
    try:
        index = torch.device(device).index if device.startswith("cuda") else None
        if index is not None:
            return torch._inductor.aoti_load_package(str(path), device_index=index)
        return torch._inductor.aoti_load_package(str(path))
    except Exception as e:
        raise BundleError(f"{path}: AOTInductor cannot load this package: {first_line(e)}") from e
