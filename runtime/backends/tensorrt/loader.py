"""Deserialise the bundle's TensorRT engine for this GPU and hold the CUDA resources it runs with.

Device memory, pinned host buffers and the stream come from cuda-python's runtime bindings
(``cuda.bindings.runtime``), so the TensorRT backend needs no torch. Buffers are allocated once
for the engine's largest batch; the runner sets the input shape per call.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from clap_edge.core.errors import BackendUnavailableError, BundleError
from clap_edge.export.bundle.names import INPUT_IMAGE, OUTPUT_EMBEDDING

INPUT_NAME = INPUT_IMAGE
OUTPUT_NAMES = (OUTPUT_EMBEDDING,)  # schema 4: the model ends at the embedding

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "check_cuda", "TrtBuffers", "deserialize"]


def check_cuda(result: Any, what: str) -> Any:
    """cuda-python calls return (error, value...): raise on an error, return the value(s)."""
    from cuda.bindings import runtime as cudart

    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA {what} failed: {cudart.cudaGetErrorString(err)[1].decode()}")
    return values[0] if len(values) == 1 else values


def deserialize(trt: Any, plan: bytes, where: str) -> tuple[Any, Any, Any]:
    """(runtime, engine, context) for a serialized plan; the runtime must outlive the engine."""
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise BundleError(f"{where}: TensorRT cannot deserialise this engine (built by another TensorRT version "
                          f"or for another GPU?)")
    context = engine.create_execution_context()
    return runtime, engine, context


@dataclass
class TrtBuffers:
    """Device + pinned host buffers for the engine's I/O tensors at its largest batch."""

    max_batch: int
    device: dict[str, int] = field(default_factory=dict)
    host_ptr: dict[str, int] = field(default_factory=dict)
    host: dict[str, np.ndarray] = field(default_factory=dict)  # numpy views of the pinned buffers
    nbytes_per_row: dict[str, int] = field(default_factory=dict)

    @classmethod
    def allocate(cls, trt: Any, engine: Any, max_batch: int) -> "TrtBuffers":
        from cuda.bindings import runtime as cudart

        buffers = cls(max_batch)
        for name in (INPUT_NAME, *OUTPUT_NAMES):
            if engine.get_tensor_dtype(name) != trt.float32:
                raise BundleError(f"engine tensor {name!r} is {engine.get_tensor_dtype(name)}, expected float32 I/O")
            row = [int(d) for d in engine.get_tensor_shape(name)][1:]  # [-1, ...]: the batch dim is dynamic
            if any(d < 0 for d in row):
                raise BundleError(f"engine tensor {name!r} has dynamic non-batch dims {row}")
            count = max_batch * int(np.prod(row))
            nbytes = count * 4
            buffers.device[name] = check_cuda(cudart.cudaMalloc(nbytes), "cudaMalloc")
            buffers.host_ptr[name] = check_cuda(cudart.cudaMallocHost(nbytes), "cudaMallocHost")
            flat = np.ctypeslib.as_array((ctypes.c_float * count).from_address(int(buffers.host_ptr[name])))
            buffers.host[name] = flat.reshape(max_batch, *row)
            buffers.nbytes_per_row[name] = nbytes // max_batch
        return buffers

    def free(self) -> None:
        from cuda.bindings import runtime as cudart

        for ptr in self.device.values():
            cudart.cudaFree(ptr)
        for ptr in self.host_ptr.values():
            cudart.cudaFreeHost(ptr)
        self.device.clear(), self.host_ptr.clear(), self.host.clear()


def import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as e:
        raise BackendUnavailableError("the tensorrt backend needs cuda-python for device memory: "
                                      "pip install 'clap-edge[gpu]'") from e
    return cudart
