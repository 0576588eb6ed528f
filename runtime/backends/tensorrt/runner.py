"""The ``tensorrt`` runner: the bundle's TensorRT engine for this GPU, run with ``execute_async_v3``.

Per call: copy the batch into pinned host memory, set the input shape (within the engine's
optimisation profile; larger batches run in profile-max chunks, short ones are padded to its
min), copy host -> device, enqueue on our CUDA stream, copy the outputs back, synchronise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clap_edge.export.bundle.names import OUTPUT_EMBEDDING
from clap_edge.runtime.backends.engines import EngineRunner, run_in_chunks
from clap_edge.runtime.backends.tensorrt.loader import (INPUT_NAME, OUTPUT_NAMES, TrtBuffers, check_cuda, deserialize,
                                                        import_cudart)

__all__ = ["TensorRTRunner"]


class TensorRTRunner(EngineRunner):
    name = "tensorrt"
    engine_kind = "tensorrt"
    pip_extra = "gpu"
    library = "tensorrt"
    precisions = {"fp32": None, "fp16": None, "bf16": None, "int8": None}

    @classmethod
    def not_installed_error(cls):
        from clap_edge.core.errors import BackendUnavailableError
        from clap_edge.export.bundle.engines import TENSORRT_MISSING

        return BackendUnavailableError(TENSORRT_MISSING)

    def activate_impl(self) -> None:
        import tensorrt as trt

        from clap_edge.export.bundle.engines import cudart_device

        cudart = import_cudart()
        device = self.options.device
        index = int(device.partition(":")[2] or 0) if device.startswith("cuda") else 0
        check_cuda(cudart.cudaSetDevice(index), "cudaSetDevice")
        choice = self.select([cudart_device(index)], trt.__version__)
        self._runtime, self.engine, self.context = deserialize(trt, choice.path.read_bytes(), str(choice.path))
        lo, hi = self.batch_range
        profile_min, _, profile_max = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
        if (int(profile_min[0]), int(profile_max[0])) != (lo, hi):
            raise RuntimeError(f"{choice.path}: engine profile batch [{profile_min[0]}, {profile_max[0]}] "
                               f"differs from its sidecar's [{lo}, {hi}]")
        self.buffers = TrtBuffers.allocate(trt, self.engine, hi)
        for name, ptr in self.buffers.device.items():
            self.context.set_tensor_address(name, int(ptr))
        self.stream = check_cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._cudart = cudart

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        lo, hi = self.batch_range
        return run_in_chunks(batch, lo, hi, self._run)

    def _run(self, x: np.ndarray) -> Any:
        cudart, b, n = self._cudart, self.buffers, len(x)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        b.host[INPUT_NAME][:n] = x
        self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
        check_cuda(cudart.cudaMemcpyAsync(b.device[INPUT_NAME], b.host_ptr[INPUT_NAME],
                                          n * b.nbytes_per_row[INPUT_NAME], h2d, self.stream), "copy to device")
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT messages above)")
        for name in OUTPUT_NAMES:
            check_cuda(cudart.cudaMemcpyAsync(b.host_ptr[name], b.device[name], n * b.nbytes_per_row[name], d2h,
                                              self.stream), "copy to host")
        check_cuda(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return b.host[OUTPUT_EMBEDDING][:n].copy()

    def deactivate_impl(self) -> None:
        if getattr(self, "buffers", None) is not None:
            self.buffers.free()
            self.buffers = None
        if getattr(self, "stream", None) is not None:
            self._cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = self.engine = self._runtime = None
