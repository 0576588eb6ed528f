"""The OpenVINO runner: the bundle's ``model.onnx`` on OpenVINO's CPU plugin (or another device it has).

Precisions: ``auto`` (default: the plugin's fastest for this CPU), ``fp32``, ``bf16``, ``fp16`` (all from
``model.onnx``), and ``int8``: the bundle's ``openvino-int8`` variant (``model.int8.xml`` + ``.bin``, NNCF
post-training int8 written by ``clap-edge export --openvino-int8``), its float parts pinned to fp32 so it
runs as its recorded drift was measured. ``runner.precision`` records what the compiled model actually
uses, so benchmarks say what they measured.

Threads >= 2: a batch of at least that many images is split over one single-thread stream per thread
(THROUGHPUT hint, one infer request per stream, run asynchronously), because each core then runs whole
images instead of synchronising with the other on every op: measured 1.1x images per CPU-second and
1.3x per wall second over one two-thread stream at batch 8 on the 2-core dev box (``bench/lead_ab.py``,
``bench/README.md`` "Peers and the lead"). Smaller batches run on a LATENCY-hint model compiled on first
use (a second copy of the weights in memory, only if such batches come). ``extra={"streams": 1}`` turns the
split off.
"""

from __future__ import annotations

import numpy as np

from clap_edge.export.bundle import Bundle
from clap_edge.export.bundle.names import OUTPUT_EMBEDDING
from clap_edge.runtime.backends.base import Runner, RunnerOptions
from clap_edge.runtime.backends.openvino.loader import compile_bundle_model, compile_config, compiled_precision

__all__ = ["OpenVINORunner"]


class OpenVINORunner(Runner):
    name = "openvino"
    pip_extra = "openvino"
    library = "openvino"
    precisions = {"auto": "fp32", "fp32": "fp32", "bf16": "fp32", "fp16": "fp32", "int8": "openvino-int8"}
    default_precision = "auto"

    def __init__(self, bundle: Bundle, options: RunnerOptions | None = None):
        options = options or RunnerOptions()
        if options.precision is None and options.extra.get("precision"):  # the older spelling
            options = RunnerOptions(options.threads, options.device, options.extra["precision"], options.extra)
        super().__init__(bundle, options)
        self._compiled = None  # the model every call uses (streams == 1) or split batches use (streams > 1)
        self._latency = None  # streams > 1: (compiled, request) for batches too small to split, made on first use
        self._requests: list = []
        self._out = 0

    @property
    def streams(self) -> int:
        """Streams a batch is split over: one per thread (``extra["streams"]`` overrides; 1 = no split)."""
        wanted = self.options.extra.get("streams", self.options.threads or 1)
        return max(1, min(int(wanted), int(self.options.threads or 1)))

    def activate_impl(self) -> None:
        self._compiled = self._compile(self.streams)
        self._requests = [self._compiled.create_infer_request() for _ in range(self.streams)]
        names = [out.get_any_name() for out in self._compiled.outputs]
        self._out = names.index(OUTPUT_EMBEDDING)
        self.precision = "int8" if self.requested_precision == "int8" else compiled_precision(self._compiled)

    def _compile(self, streams: int):
        config = compile_config(self.options.threads, self.requested_precision, streams)
        device = "CPU" if self.options.device == "cpu" else self.options.device.upper()
        return compile_bundle_model(self.bundle, self.variant, config, device)

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        if len(self._requests) == 1:
            return self._run(self._requests[0], batch)
        if len(batch) < len(self._requests):
            if self._latency is None:
                compiled = self._compile(1)
                self._latency = (compiled, compiled.create_infer_request())
            return self._run(self._latency[1], batch)
        parts = np.array_split(batch, len(self._requests))
        for request, part in zip(self._requests, parts):
            request.start_async({0: part}, share_inputs=True)
        for request in self._requests:
            request.wait()
        return np.concatenate([self._output(request) for request in self._requests])

    def _run(self, request, batch: np.ndarray) -> np.ndarray:
        request.infer({0: batch}, share_inputs=True)
        return self._output(request)

    def _output(self, request) -> np.ndarray:
        # a copy: the request reuses its output tensors on the next call
        return np.array(request.get_output_tensor(self._out).data, dtype=np.float32)

    def deactivate_impl(self) -> None:
        self._requests = []
        self._latency = None
        self._compiled = None
