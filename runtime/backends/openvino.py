"""OpenVINO backend: reads the bundle's ``model.onnx`` directly and runs it on the CPU plugin.

No conversion step and no extra file in the bundle: OpenVINO's ONNX frontend reads the same
fp32 model ONNX Runtime runs. By default the CPU plugin picks its best inference precision
for this CPU (bf16 on AMX / AVX512-BF16 machines, fp32 elsewhere); we pin the LATENCY
performance hint and the thread count, and record the precision the compiled model reports
in ``runner.precision`` so benchmarks say what they measured.
"""

from __future__ import annotations

import numpy as np

from clap_edge.errors import BundleError
from clap_edge.export.bundle import Bundle
from clap_edge.runtime.backends.base import Runner, RunnerOptions, RunnerOutput

# our precision names -> OpenVINO element types for INFERENCE_PRECISION_HINT
_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_OV_TO_OURS = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


class OpenVINORunner(Runner):
    """Runs ``model.onnx`` with OpenVINO on CPU.

    ``options.extra["precision"]``: "fp32", "bf16" or "fp16" to force an inference precision;
    unset (the default) lets the CPU plugin choose its fastest. ``options.threads`` maps to
    ``INFERENCE_NUM_THREADS``.
    """

    name = "openvino"
    pip_extra = "openvino"
    library = "openvino"
    variant = "fp32"  # OpenVINO's ONNX frontend reads model.onnx itself

    def __init__(self, bundle: Bundle, options: RunnerOptions | None = None):
        super().__init__(bundle, options)
        self._compiled = None
        self._request = None
        self._out_index: dict[str, int] = {}

    def activate_impl(self) -> None:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(self.bundle.variant_file(self.variant)))
        self._compiled = core.compile_model(model, "CPU", self._config())
        self._request = self._compiled.create_infer_request()
        names = [out.get_any_name() for out in self._compiled.outputs]
        self._out_index = {name: i for i, name in enumerate(names)}
        for required in ("logits", "embedding"):
            if required not in self._out_index:
                raise BundleError(f"{self.bundle.root}: model.onnx has outputs {names}, "
                                  "expected 'logits' and 'embedding'")
        self.precision = self._compiled_precision()

    def _config(self) -> dict[str, str]:
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if self.options.threads:
            config["INFERENCE_NUM_THREADS"] = str(int(self.options.threads))
        precision = self.options.extra.get("precision")
        if precision:
            if precision not in _PRECISIONS:
                raise ValueError(f"openvino precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
            config["INFERENCE_PRECISION_HINT"] = _PRECISIONS[precision]
        return config

    def _compiled_precision(self) -> str:
        # The compiled model reports the precision the plugin actually chose (hint or default).
        try:
            value = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        except Exception:  # older plugins may not expose it on the compiled model
            return "unknown"
        value = value.split(".")[-1].lower()  # e.g. "<Type: 'bfloat16'>" or "bf16"
        for ov_name, ours in _OV_TO_OURS.items():
            if ov_name in value:
                return ours
        if "bfloat16" in value:
            return "bf16"
        if "float16" in value:
            return "fp16"
        if "float32" in value:
            return "fp32"
        return value

    def infer_impl(self, batch: np.ndarray) -> RunnerOutput:
        results = self._request.infer({0: batch}, share_inputs=True)
        outs = list(results.values())
        logits = np.asarray(outs[self._out_index["logits"]], dtype=np.float32)
        embedding = np.asarray(outs[self._out_index["embedding"]], dtype=np.float32)
        # copies: the request reuses its output tensors on the next call
        return RunnerOutput(logits=logits.copy(), embedding=embedding.copy())

    def deactivate_impl(self) -> None:
        self._request = None
        self._compiled = None
