"""Peer rows for ``clap-edge bench --peers``: the plain tools a user would run by hand on the same model.

A toolkit that optimises inference must show what it gains over the obvious alternative, on the
user's own machine. Each peer runs the bundle's own weights with that tool's *default* settings
(only the thread count is matched, so rows compare at equal cores):

- ``peer:onnxruntime``  a bare ``onnxruntime.InferenceSession(model.onnx)`` (CPU provider, default options)
- ``peer:openvino``     ``openvino.Core().compile_model(model.onnx, "CPU")`` with the default config
                        (OpenVINO's Python API rather than ``benchmark_app``: the bench alternates every
                        call with ours in one round, which ``benchmark_app``'s own loop cannot do)
- ``peer:open_clip``    open_clip eager: ``open_clip.create_model(model_name).visual`` with the bundle's
                        weights (from ``model.pt2``), then the same normalise / class-matrix maths.
                        This is the ``torch`` baseline speed-ups are quoted against.

Each peer is a duck-typed runner (``infer(batch) -> .logits``, ``precision``, ``deactivate()``), built in
the bench worker process, so the peers are timed, CPU-timed and memory-measured exactly as ours. The model
ends at the embedding (schema 4); every peer applies the bundle's class matrix with numpy, as ours do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from clap_edge.core.errors import BackendUnavailableError
from clap_edge.export.bundle import Bundle, ClassMatrix

PEER_PREFIX = "peer:"
PEERS = ("peer:onnxruntime", "peer:openvino", "peer:open_clip")
PEER_LIBRARY = {"peer:onnxruntime": "onnxruntime", "peer:openvino": "openvino", "peer:open_clip": "torch"}

__all__ = ["PEER_PREFIX", "PEERS", "PEER_LIBRARY", "create_peer_runner", "available_peers"]


@dataclass
class _Output:
    logits: np.ndarray
    embedding: np.ndarray | None = None


class _PeerRunner:
    def __init__(self, name: str, precision: str, infer: Callable[[np.ndarray], Any]):
        self.name, self.precision, self._infer = name, precision, infer

    def activate(self) -> "_PeerRunner":
        return self

    def infer(self, batch: np.ndarray) -> _Output:
        return self._infer(np.ascontiguousarray(batch, dtype=np.float32))

    def deactivate(self) -> None:
        self._infer = None


def available_peers() -> list[str]:
    import importlib.util

    return [p for p in PEERS if importlib.util.find_spec({"torch": "open_clip"}.get(PEER_LIBRARY[p],
                                                                                    PEER_LIBRARY[p]))]


def create_peer_runner(bundle: Bundle, name: str, threads: int | None) -> _PeerRunner:
    builders = {"peer:onnxruntime": _onnxruntime, "peer:openvino": _openvino, "peer:open_clip": _open_clip}
    if name not in builders:
        raise BackendUnavailableError(f"unknown peer {name!r}; expected one of {', '.join(PEERS)}")
    classes = ClassMatrix.from_bundle(bundle)
    peer = builders[name](bundle, threads)
    embed = peer._infer
    peer._infer = lambda x: (lambda z: _Output(classes.logits(z), z))(embed(x))
    return peer


def _onnxruntime(bundle: Bundle, threads: int | None) -> _PeerRunner:
    import onnxruntime as ort

    so = ort.SessionOptions()  # defaults (ORT_ENABLE_ALL already), only the thread count matched
    if threads:
        so.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(str(bundle.variant_file("fp32")), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return _PeerRunner("peer:onnxruntime", "fp32", lambda x: session.run(None, {name: x})[0])


def _openvino(bundle: Bundle, threads: int | None) -> _PeerRunner:
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
    compiled = ov.Core().compile_model(str(bundle.variant_file("fp32")), "CPU", config)
    request = compiled.create_infer_request()
    hint = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()  # e.g. "<Type: 'bfloat16'>" or "bf16"
    precision = "bf16" if "bf16" in hint or "bfloat16" in hint else "fp16" if "f16" in hint else "fp32"

    return _PeerRunner("peer:openvino", precision, lambda x: np.asarray(list(request.infer({0: x}).values())[0]))


def _open_clip(bundle: Bundle, threads: int | None) -> _PeerRunner:
    """open_clip's own image tower, eager, with the weights the bundle's ``model.pt2`` holds."""
    import open_clip
    import torch

    import clap_edge.models  # noqa: F401  (registers the project's model configs with open_clip)

    if not bundle.has_variant("torch"):
        raise BackendUnavailableError(f"{bundle.root}: peer:open_clip needs model.pt2 for the bundle's weights")
    if threads:
        torch.set_num_threads(int(threads))
    state = _program_state(torch.export.load(str(bundle.variant_file("torch"))))
    visual = open_clip.create_model(bundle.manifest.model.model_name).visual.eval()
    prefix = "image_encoder."
    missing, unexpected = visual.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                                  if k.startswith(prefix)}, strict=False)
    if missing:
        raise BackendUnavailableError(f"{bundle.root}: model.pt2 does not hold open_clip's {missing[0]!r} "
                                      f"(a head or a non-CLIP tower): peer:open_clip cannot rebuild it")

    def infer(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            z = visual(torch.from_numpy(x))
            return (z * torch.rsqrt((z * z).sum(-1, keepdim=True).clamp_min(1e-24))).numpy()

    return _PeerRunner("peer:open_clip", "fp32", infer)


def _program_state(program: Any) -> dict[str, Any]:
    """Parameters, buffers and lifted constants of an ExportedProgram, by their module names."""
    state = dict(program.state_dict)
    state.update(getattr(program, "constants", {}) or {})
    return state
