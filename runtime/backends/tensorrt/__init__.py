"""The TensorRT backend: loader (finds and deserialises the engine) and runner (CUDA buffers, execute_async_v3)."""
