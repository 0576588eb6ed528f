"""``torch-compile``: the torch runner's ``model.pt2`` program, passed through ``torch.compile``.

Same weights and loading as :class:`TorchRunner` (so parity with it is exact up to kernel
choices); only the module is compiled. Compilation happens lazily on the first ``infer``
of each new batch shape (``dynamic=False``: one specialised graph per batch size, which is
what a server with fixed batch sizes wants), so benchmarks must warm up first.
``options.extra["mode"]`` picks the compile mode (default "default"; on CUDA
"reduce-overhead" adds CUDA graphs).
"""

from __future__ import annotations

from clap_edge.runtime.backends.torch.runner import TorchRunner

__all__ = ["TorchCompileRunner"]


class TorchCompileRunner(TorchRunner):
    name = "torch-compile"

    def activate_impl(self) -> None:
        super().activate_impl()
        mode = self.options.extra.get("mode", "default")
        self.compile_mode = mode
        self.module = self._torch.compile(self.module, mode=mode, dynamic=False)
