"""The ONNX Runtime runner: the bundle's ONNX model at the asked precision, on CPU (or CUDA / TensorRT EPs).

Precisions (precision -> bundle variant -> file):
- ``fp32`` -> ``fp32`` -> ``model.onnx``
- ``int8`` -> ``int8`` -> ``model.int8.onnx``: *dynamic* int8 GEMMs on CPU (activation ranges taken per call;
  the older ``onnxruntime-int8`` name)
- ``int8-static`` -> ``qdq`` -> ``model.qdq.onnx``: *static* int8 in QDQ form (ranges calibrated at export;
  ``clap-edge export --int8-static``); ORT's CPU provider fuses the QDQ pairs into integer kernels, and
  the TensorRT provider / engines read the same graph
- ``fp16`` -> ``fp16`` -> ``model.fp16.onnx``, for the GPU providers.
"""

from __future__ import annotations

import numpy as np

from clap_edge.export.bundle.names import OUTPUT_EMBEDDING
from clap_edge.runtime.backends.base import Runner
from clap_edge.runtime.backends.onnxruntime.loader import PROVIDERS, load_session

__all__ = ["OnnxRuntimeRunner", "OnnxRuntimeInt8Runner", "PROVIDERS"]


class OnnxRuntimeRunner(Runner):
    """Runs one of the bundle's ONNX models in an ``onnxruntime.InferenceSession``."""

    name = "onnxruntime"
    pip_extra = None  # onnxruntime is a core dependency; onnxruntime-gpu comes with the 'gpu' extra
    library = "onnxruntime"
    precisions = {"fp32": "fp32", "int8": "int8", "int8-static": "qdq", "fp16": "fp16"}

    def __init__(self, bundle, options=None):
        super().__init__(bundle, options)
        self.session = None
        self.providers: list[str] = []

    def activate_impl(self) -> None:
        self.session = load_session(self.bundle, self.variant, self.options.threads, self.options.device,
                                    self.requested_precision)
        self.providers = list(self.session.get_providers())
        self._input_name = self.bundle.manifest.inputs[0].name
        # by name, not by the manifest's order: the outputs list may be in any order (the C++ runtime agrees)
        self._output_names = [OUTPUT_EMBEDDING]
        self.precision = self.requested_precision

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(self._output_names, {self._input_name: batch})[0]

    def deactivate_impl(self) -> None:
        self.session = None


class OnnxRuntimeInt8Runner(OnnxRuntimeRunner):
    """``onnxruntime`` defaulting to precision ``int8`` (the older ``onnxruntime-int8`` name), for existing callers."""

    default_precision = "int8"
