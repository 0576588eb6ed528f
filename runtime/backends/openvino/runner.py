"""The OpenVINO runner: the bundle's ``model.onnx`` on OpenVINO's CPU plugin (or another device it has).

Precisions: ``auto`` (default: the plugin's fastest for this CPU), ``fp32``, ``bf16``, ``fp16`` (all from
``model.onnx``), and ``int8``: the bundle's ``openvino-int8`` variant (``model.int8.xml`` + ``.bin``, NNCF
post-training int8 written by ``clap-edge export --openvino-int8``), its float parts pinned to fp32 so it
runs as its recorded drift was measured. ``runner.precision`` records what the compiled model actually
uses, so benchmarks say what they measured.
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
        self._compiled = None
        self._request = None
        self._out_index: dict[str, int] = {}

    def activate_impl(self) -> None:
        config = compile_config(self.options.threads, self.requested_precision)
        device = "CPU" if self.options.device == "cpu" else self.options.device.upper()
        self._compiled = compile_bundle_model(self.bundle, self.variant, config, device)
        self._request = self._compiled.create_infer_request()
        self._out_index = {out.get_any_name(): i for i, out in enumerate(self._compiled.outputs)}
        self.precision = "int8" if self.requested_precision == "int8" else compiled_precision(self._compiled)

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        outs = list(self._request.infer({0: batch}, share_inputs=True).values())
        # a copy: the request reuses its output tensors on the next call
        return np.array(outs[self._out_index[OUTPUT_EMBEDDING]], dtype=np.float32)

    def deactivate_impl(self) -> None:
        self._request = None
        self._compiled = None
