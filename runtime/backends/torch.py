"""The torch runner: the bundle's own ``model.pt2`` (a ``torch.export`` program), run eagerly.

It runs exactly the weights that were exported, never a re-initialised model, so it is the
reference the other backends are compared with. torch is imported in ``activate()`` only.
"""

from __future__ import annotations

import numpy as np

from clap_edge.errors import BundleError
from clap_edge.runtime.backends.base import Runner, RunnerOutput

__all__ = ["TorchRunner"]


class TorchRunner(Runner):
    name = "torch"
    pip_extra = "torch"
    library = "torch"
    variant = "torch"

    def __init__(self, bundle, options=None):
        super().__init__(bundle, options)
        self.module = None
        self._torch = None

    def activate_impl(self) -> None:
        import torch

        path = self.bundle.variant_file(self.variant)  # sha256-checked against the manifest
        try:
            program = torch.export.load(str(path))
        except Exception as e:
            raise BundleError(f"{self.bundle.root}: torch cannot load {path.name}: {e}") from e
        if self.options.threads:
            torch.set_num_threads(int(self.options.threads))  # process-wide: torch has no per-module pool
        self.device = torch.device(self.options.device)
        self.module = program.module().to(self.device)
        self._torch = torch
        self.precision = "fp32"

    def infer_impl(self, batch: np.ndarray) -> RunnerOutput:
        torch = self._torch
        with torch.inference_mode():
            logits, embedding = self.module(torch.from_numpy(batch).to(self.device))
        return RunnerOutput(logits=logits.float().cpu().numpy(), embedding=embedding.float().cpu().numpy())

    def deactivate_impl(self) -> None:
        self.module = None
