"""The ``aoti`` runner: the bundle's AOTInductor engine for this device and precision (CPU or CUDA).

The engine takes float32 input (the cast to fp16 / bf16 is compiled in) and a batch within the
range it was compiled for; larger batches run in chunks. torch is imported in ``activate()`` only.
"""

from __future__ import annotations

import numpy as np

from clap_edge.runtime.backends.aoti.loader import hosts_for, load_package
from clap_edge.runtime.backends.engines import EngineRunner, run_in_chunks

__all__ = ["AotiRunner"]


class AotiRunner(EngineRunner):
    name = "aoti"
    engine_kind = "aoti"
    pip_extra = "torch"
    library = "torch"
    precisions = {"fp32": None, "fp16": None, "bf16": None}

    def activate_impl(self) -> None:
        import torch

        if self.options.threads:
            torch.set_num_threads(int(self.options.threads))
        device = self.options.device
        choice = self.select(hosts_for(torch, device), torch.__version__)
        self._device = torch.device(device if choice.sidecar.device.type == "cuda" else "cpu")
        self.model = load_package(torch, choice.path, device)
        self._torch = torch

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        lo, hi = self.batch_range

        def run(x: np.ndarray):
            with torch.inference_mode():
                embedding = self.model(torch.from_numpy(np.ascontiguousarray(x)).to(self._device))
            if isinstance(embedding, (tuple, list)):  # AOTInductor packages return their outputs as a list
                embedding = embedding[0]
            return embedding.float().cpu().numpy()

        return run_in_chunks(batch, lo, hi, run)

    def deactivate_impl(self) -> None:
        self.model = None
