"""The torch runner: the bundle's own ``model.pt2`` program, run eagerly (the reference backend).

Precisions ``fp32`` (default), ``fp16`` and ``bf16`` (the program cast to that dtype; mainly for GPUs).
torch is imported in ``activate()`` only.
"""

from __future__ import annotations

import numpy as np

from clap_edge.runtime.backends.base import Runner
from clap_edge.runtime.backends.torch.loader import DTYPES, load_program_module

__all__ = ["TorchRunner"]


class TorchRunner(Runner):
    name = "torch"
    pip_extra = "torch"
    library = "torch"
    precisions = {"fp32": "torch", "fp16": "torch", "bf16": "torch"}

    def __init__(self, bundle, options=None):
        super().__init__(bundle, options)
        self.module = None
        self._torch = None

    def activate_impl(self) -> None:
        import torch

        if self.options.threads:
            torch.set_num_threads(int(self.options.threads))  # process-wide: torch has no per-module pool
        self.device = torch.device(self.options.device)
        self.module = load_program_module(self.bundle, self.variant, self.options.device, self.requested_precision)
        self._dtype = getattr(torch, DTYPES[self.requested_precision])
        self._torch = torch
        self.precision = self.requested_precision

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            embedding = self.module(torch.from_numpy(batch).to(self.device, self._dtype))
        return embedding.float().cpu().numpy()

    def deactivate_impl(self) -> None:
        self.module = None
