"""ONNX Runtime runners: ``model.onnx`` (fp32) and ``model.int8.onnx`` (dynamic int8).

CPU by default; ``RunnerOptions(device="cuda")`` uses the CUDA execution provider and
``device="tensorrt"`` the TensorRT one (both from onnxruntime-gpu), each falling back to
the next provider for the ops it does not take. onnxruntime is imported in ``activate()``.
"""

from __future__ import annotations

import numpy as np

from clap_edge.errors import BackendUnavailableError, BundleError
from clap_edge.export.bundle import Bundle
from clap_edge.runtime.backends.base import Runner, RunnerOutput

# device -> execution providers, best first (CPU last as the fallback for unsupported ops)
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}

__all__ = ["OnnxRuntimeRunner", "OnnxRuntimeInt8Runner", "PROVIDERS"]


class OnnxRuntimeRunner(Runner):
    """Runs the bundle's fp32 ``model.onnx`` in an ``onnxruntime.InferenceSession``."""

    name = "onnxruntime"
    pip_extra = None  # onnxruntime is a core dependency; onnxruntime-gpu comes with the 'gpu' extra
    library = "onnxruntime"
    variant = "fp32"

    def __init__(self, bundle, options=None):
        super().__init__(bundle, options)
        self.session = None
        self.providers: list[str] = []

    def activate_impl(self) -> None:
        import onnxruntime as ort

        path = self.bundle.variant_file(self.variant)  # sha256-checked against the manifest
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.options.threads:
            so.intra_op_num_threads = int(self.options.threads)
            so.inter_op_num_threads = 1  # the graph is one chain; parallelism is inside the ops
        so.log_severity_level = 3  # errors only: ORT's warnings about unused initialisers are noise here
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=self._providers(ort))
        except Exception as e:  # ORT raises its own Fail / InvalidGraph / ... types
            raise BundleError(f"{self.bundle.root}: ONNX Runtime cannot load {path.name}: {e}") from e
        self.providers = list(self.session.get_providers())
        self._check_io(path.name)
        self.precision = self.variant

    def _providers(self, ort) -> list[str]:
        device = self.options.device
        if device not in PROVIDERS:
            raise BackendUnavailableError(f"{self.name}: unknown device {device!r}; expected one of {list(PROVIDERS)}")
        wanted, available = PROVIDERS[device], set(ort.get_available_providers())
        if wanted[0] not in available:
            raise BackendUnavailableError(
                f"{self.name}: {wanted[0]} is not available in this onnxruntime build "
                f"(have {sorted(available)}). Install it with: pip install 'clap-edge[gpu]'")
        return [p for p in wanted if p in available]

    def _check_io(self, filename: str) -> None:
        """The model's declared input / outputs must be the manifest's, with the same static dims."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        declared = {o.name: o.shape for o in outputs}
        for spec in self.bundle.manifest["outputs"]:
            if spec["name"] not in declared:
                raise BundleError(f"{self.bundle.root}: {filename} has no output {spec['name']!r} "
                                  f"(it has {sorted(declared)})")
            _check_static_dims(self.bundle, filename, spec["name"], declared[spec["name"]], spec["shape"])
        spec = self.bundle.manifest["inputs"][0]
        if len(inputs) != 1 or inputs[0].name != spec["name"]:
            raise BundleError(f"{self.bundle.root}: {filename} takes inputs {[i.name for i in inputs]}, "
                              f"the manifest says [{spec['name']!r}]")
        _check_static_dims(self.bundle, filename, spec["name"], inputs[0].shape, spec["shape"])
        self._input_name = spec["name"]
        self._output_names = [s["name"] for s in self.bundle.manifest["outputs"]]

    def infer_impl(self, batch: np.ndarray) -> RunnerOutput:
        logits, embedding = self.session.run(self._output_names, {self._input_name: batch})
        return RunnerOutput(logits=logits, embedding=embedding)

    def deactivate_impl(self) -> None:
        self.session = None


class OnnxRuntimeInt8Runner(OnnxRuntimeRunner):
    """Runs the bundle's dynamically quantised ``model.int8.onnx`` (CPU int8 GEMMs)."""

    name = "onnxruntime-int8"
    variant = "int8"


def _check_static_dims(bundle: Bundle, filename: str, name: str, actual: list, expected: list) -> None:
    """Compare every dim that both sides state as an int (the batch dim is symbolic on both)."""
    if len(actual) != len(expected) or any(
        isinstance(a, int) and isinstance(e, int) and a != e for a, e in zip(actual, expected)
    ):
        raise BundleError(f"{bundle.root}: {filename} declares {name!r} with shape {actual}, "
                          f"the manifest says {expected}")
