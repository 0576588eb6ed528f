"""The ExecuTorch runner: the bundle's .pte (XNNPACK delegate) in ExecuTorch's Python runtime, on CPU.

Precisions (precision -> bundle variant -> file): ``fp32`` -> ``executorch-fp32`` -> ``model.pte``;
``int8`` -> ``executorch-int8`` -> ``model.int8.pte`` (PT2E static int8, XNNPACK quantizer). Batches above
the program's bound (8) run in chunks. Needs torch at run time (see the loader).
"""

from __future__ import annotations

import numpy as np

from clap_edge.runtime.backends.base import Runner
from clap_edge.runtime.backends.executorch.loader import ET_MAX_BATCH, check_outputs, load_method, set_threads

__all__ = ["ExecuTorchRunner"]


class ExecuTorchRunner(Runner):
    name = "executorch"
    pip_extra = "executorch"
    library = "executorch"
    precisions = {"fp32": "executorch-fp32", "int8": "executorch-int8"}

    def __init__(self, bundle, options=None):
        super().__init__(bundle, options)
        self._method = None
        self._checked = False

    def activate_impl(self) -> None:
        import torch

        set_threads(self.options.threads)
        self._torch = torch
        self._method = load_method(self.bundle, self.variant)
        self.precision = self.requested_precision

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        embedding = []
        for i in range(0, len(batch), ET_MAX_BATCH):
            part = batch[i:i + ET_MAX_BATCH]
            outs = [o.numpy() for o in self._method.execute([self._torch.from_numpy(part)])]
            if not self._checked:
                check_outputs(self.bundle, self.bundle.variants[self.variant], outs, len(part))
                self._checked = True
            embedding.append(outs[0])
        return np.concatenate(embedding).astype(np.float32, copy=False)

    def deactivate_impl(self) -> None:
        self._method = None
