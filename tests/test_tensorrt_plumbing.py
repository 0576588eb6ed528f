"""The TensorRT builder and runner driven end to end through stand-ins for ``tensorrt`` and cuda-python's
``cuda.bindings.runtime`` (no GPU or TensorRT here).

What this checks is *our* side: which model is parsed, the profile / workspace / flags / fp32 pins and
timing cache handed to the builder, the sidecar and manifest written, and the runner's data plumbing
(pinned host buffers, host<->device copies, per-call input shapes, profile-sized chunks). The stand-in
"engine" runs the parsed ONNX file with ONNX Runtime on the bytes the runner copied to "device"
memory, so outputs are compared with ONNX Runtime run directly. It says nothing about TensorRT's own
behaviour: the real-GPU tests in test_engines_build.py do, where a GPU and TensorRT exist.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import json
import shutil
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner

from clap_edge.export.bundle import Bundle, sha256_file
from clap_edge.export.bundle.engines import DeviceInfo

GPU = DeviceInfo("cuda", "Stand-in GPU", compute_capability="9.0")


def _fake_tensorrt(log: dict) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = "10.8.0.43"
    trt.float32 = "float32"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Named:
        def __init__(self, name):
            self.name = name

    class Layer:
        def __init__(self, kind):
            self.type, self.precision, self.num_outputs, self.out_types = Named(kind), None, 1, {}

        def set_output_type(self, index, dtype):
            self.out_types[index] = dtype

    class Network:
        def __init__(self, flags):
            self.flags, self.layers, self.onnx = flags, [], None

        @property
        def num_layers(self):
            return len(self.layers)

        def get_layer(self, i):
            return self.layers[i]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            self.network.onnx = path
            self.network.layers = [Layer(k) for k in ("CONVOLUTION", "NORMALIZATION", "MATRIX_MULTIPLY", "SOFTMAX")]
            return True

    class Cache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+timings"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            log["profile"] = (name, tuple(lo), tuple(opt), tuple(hi))

    class Config:
        def __init__(self):
            self.flags, self.cache, self.progress_monitor = [], None, None

        def set_memory_pool_limit(self, pool, size):
            log["workspace"] = (pool, size)

        def set_flag(self, flag):
            self.flags.append(flag)

        def add_optimization_profile(self, profile):
            log["profiles_added"] = log.get("profiles_added", 0) + 1

        def create_timing_cache(self, blob):
            return Cache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            log.update(flags=config.flags, network_flags=network.flags, layers=network.layers,
                       cache_in=config.cache.blob, monitor=config.progress_monitor)
            return json.dumps({"onnx": network.onnx, "profile": log["profile"]}).encode()

    class Engine:
        def __init__(self, plan):
            import onnxruntime as ort

            self.plan = json.loads(plan)
            self.session = ort.InferenceSession(self.plan["onnx"], providers=["CPUExecutionProvider"])
            self.shapes = {o.name: o.shape for o in [*self.session.get_inputs(), *self.session.get_outputs()]}

        def get_tensor_dtype(self, name):
            return "float32"

        def get_tensor_shape(self, name):
            return [-1, *self.shapes[name][1:]]

        def get_tensor_profile_shape(self, name, index):
            return self.plan["profile"][1:]

        def create_execution_context(self):
            return Context(self)

    class Context:
        def __init__(self, engine):
            self.engine, self.addresses, self.shape = engine, {}, None

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def set_input_shape(self, name, shape):
            lo, hi = self.engine.plan["profile"][1][0], self.engine.plan["profile"][3][0]
            assert lo <= shape[0] <= hi, f"batch {shape[0]} outside the profile [{lo}, {hi}]"
            self.shape = tuple(shape)
            log.setdefault("shapes", []).append(shape[0])

        def execute_async_v3(self, stream):
            memory = log["device_memory"]
            x = np.frombuffer(memory[self.addresses["image"]], np.float32)[: int(np.prod(self.shape))]
            (embedding,) = self.engine.session.run(["embedding"], {"image": x.reshape(self.shape)})
            for name, value in (("embedding", embedding),):
                raw = np.ascontiguousarray(value, np.float32).tobytes()
                memory[self.addresses[name]][: len(raw)] = raw
            return True

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return Engine(plan)

    class IProgressMonitor:
        def __init__(self):
            pass

    ns = dict(Logger=Logger, Builder=Builder, OnnxParser=OnnxParser, Runtime=Runtime, IProgressMonitor=IProgressMonitor,
              NetworkDefinitionCreationFlag=types.SimpleNamespace(STRONGLY_TYPED=3),
              MemoryPoolType=types.SimpleNamespace(WORKSPACE="WORKSPACE"),
              BuilderFlag=types.SimpleNamespace(FP16="FP16", BF16="BF16", INT8="INT8",
                                                OBEY_PRECISION_CONSTRAINTS="OBEY_PRECISION_CONSTRAINTS"))
    trt.__dict__.update(ns)
    return trt


def _fake_cudart(log: dict) -> types.ModuleType:
    """Device memory as bytearrays keyed by fake pointers; pinned host memory as real ctypes buffers."""
    rt = types.ModuleType("cuda.bindings.runtime")
    ok = "success"
    rt.cudaError_t = types.SimpleNamespace(cudaSuccess=ok)
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="h2d", cudaMemcpyDeviceToHost="d2h")
    memory, host = log.setdefault("device_memory", {}), log.setdefault("host_memory", {})

    def cudaMalloc(size):
        ptr = 0x1000 + len(memory)
        memory[ptr] = bytearray(size)
        return ok, ptr

    def cudaMallocHost(size):
        buf = ctypes.create_string_buffer(size)
        host[ctypes.addressof(buf)] = buf
        return ok, ctypes.addressof(buf)

    def cudaMemcpyAsync(dst, src, count, kind, stream):
        if kind == "h2d":
            memory[dst][:count] = ctypes.string_at(src, count)
        else:
            ctypes.memmove(dst, bytes(memory[src][:count]), count)
        log["copies"] = log.get("copies", 0) + 1
        return (ok,)

    rt.__dict__.update(
        cudaMalloc=cudaMalloc, cudaMallocHost=cudaMallocHost, cudaMemcpyAsync=cudaMemcpyAsync,
        cudaFree=lambda p: (memory.pop(p), (ok,))[1], cudaFreeHost=lambda p: (host.pop(p), (ok,))[1],
        cudaSetDevice=lambda i: (ok,), cudaStreamCreate=lambda: (ok, 7), cudaStreamSynchronize=lambda s: (ok,),
        cudaStreamDestroy=lambda s: (ok,), cudaGetErrorString=lambda e: (ok, b"error"),
        cudaGetDeviceProperties=lambda i: (ok, types.SimpleNamespace(name=b"Stand-in GPU", major=9, minor=0)))
    return rt


@pytest.fixture()
def fake_gpu(monkeypatch):
    from clap_edge.runtime.backends.tensorrt.runner import TensorRTRunner

    log: dict = {}
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(log))
    cudart = _fake_cudart(log)
    try:
        import cuda.bindings as bindings

        monkeypatch.setattr(bindings, "runtime", cudart, raising=False)
    except ImportError:
        monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
        monkeypatch.setitem(sys.modules, "cuda.bindings", types.ModuleType("cuda.bindings"))
        sys.modules["cuda.bindings"].runtime = cudart
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)
    monkeypatch.setattr(TensorRTRunner, "candidate_hosts", classmethod(lambda cls: [GPU]))  # what nvidia-smi would list
    return log


def test_tensorrt_build_and_run_plumbing(fake_gpu, runtime_bundle, tmp_path):
    from clap_edge.apps.cli import main
    from clap_edge.runtime.backends import RunnerOptions, available_backends, create_runner

    log = fake_gpu
    root = tmp_path / "bundle"
    shutil.copytree(runtime_bundle, root)
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"old")
    result = CliRunner().invoke(main, ["build-engine", str(root), "--engine", "tensorrt", "--precision", "fp16",
                                       "--batch", "1,2,3", "--workspace-mb", "512", "--timing-cache", str(cache),
                                       "--json"])
    assert result.exit_code == 0, result.output
    sidecar = json.loads(result.stdout)

    h, w = Bundle.open(root).input_shape[1:]
    # no model.fp16.onnx in this bundle: TensorRT 10 weak typing, model.onnx, FP16 with fp32 pins
    assert log["profile"] == ("image", (1, 3, h, w), (2, 3, h, w), (3, 3, h, w))
    assert log["workspace"] == ("WORKSPACE", 512 << 20) and log["profiles_added"] == 1
    assert log["flags"] == ["FP16", "OBEY_PRECISION_CONSTRAINTS"] and log["network_flags"] == 0
    pinned = [layer.type.name for layer in log["layers"] if layer.precision == "float32"]
    assert pinned == ["NORMALIZATION", "SOFTMAX"] and log["layers"][1].out_types == {0: "float32"}
    assert log["cache_in"] == b"old" and cache.read_bytes() == b"old+timings" and log["monitor"] is not None
    assert sidecar["source_model"] == "model.onnx" and sidecar["device"]["name"] == "Stand-in GPU"
    assert sidecar["file"] == "engines/tensorrt-stand-in-gpu-sm90-fp16-b1-2-3.plan"
    assert sidecar["engine_sha256"] == sha256_file(root / sidecar["file"])  # the engine's own digest
    assert sidecar["source_sha256"] == sha256_file(root / "model.onnx")
    assert sidecar["parity"]["n_images"] == 8 and sidecar["parity"]["max_abs_logit_diff_vs_onnxruntime"] < 1e-4
    assert log["shapes"] == [3, 3, 2]  # 8 calibration images through a [1, 3] profile

    bundle = Bundle.open(root)
    assert "tensorrt:fp16" in available_backends(bundle)
    x = np.random.default_rng(0).standard_normal((7, 3, h, w)).astype(np.float32)
    log["shapes"] = []
    with create_runner(bundle, "tensorrt:fp16", RunnerOptions(device="cuda:0")) as runner:
        out = runner.infer(x)
        assert runner.precision == "fp16"
    assert log["shapes"] == [3, 3, 1]
    assert not log["host_memory"] and not log["device_memory"]  # freed on deactivate
    with create_runner(bundle, "onnxruntime") as ort:
        ref = ort.infer(x)
    np.testing.assert_allclose(out.logits, ref.logits, atol=1e-5)
    np.testing.assert_allclose(out.embedding, ref.embedding, atol=1e-6)
