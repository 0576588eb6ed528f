"""A Triton Inference Server model repository from a bundle: model file, ``config.pbtxt``, label file.

    REPO/
      <model_name>/
        config.pbtxt      generated from the manifest (names, dims without the batch axis, TYPE_FP32,
                          max_batch_size, dynamic_batching, instance_group, platform or backend)
        labels.txt        the class names, one a line, in logit order: ``label_filename`` on the logits
                          output, so Triton's classification extension (``class_count``) answers labels
        preprocess.json   the manifest's preprocessing (size, mean, std, interpolation, resize mode):
                          Triton receives the preprocessed float32 tensor [N, 3, H, W]
        1/model.onnx      (onnxruntime, openvino) or 1/model.plan (tensorrt, from the bundle's engines)

Only the bundle reader and the standard library are used: the repository is plain text plus copied files,
written atomically (a temp directory renamed into place). The text is the protobuf text format of Triton's
``ModelConfig`` (model_config.proto); the tests parse it with ``tritonclient.grpc.model_config_pb2``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clap_edge.core.errors import BundleError, ClapEdgeError
from clap_edge.core.io import atomic_directory
from clap_edge.export.bundle import Bundle
from clap_edge.export.bundle.manifest import Manifest, TensorSpec, to_json

__all__ = ["TritonConfig", "export_triton", "model_config_text", "TRITON_BACKENDS"]

# backend -> (config key, value, model file name in the version directory, instance kind)
TRITON_BACKENDS = {
    "onnxruntime": ("platform", "onnxruntime_onnx", "model.onnx", "KIND_CPU"),
    "openvino": ("backend", "openvino", "model.onnx", "KIND_CPU"),
    "tensorrt": ("platform", "tensorrt_plan", "model.plan", "KIND_GPU"),
}
_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
LABELS_FILE = "labels.txt"
PREPROCESS_FILE = "preprocess.json"
ENGINE_SIDECAR = "engine.json"  # tensorrt: the engine's sidecar (GPU, TensorRT version, precision, batch profile)


@dataclass
class TritonConfig:
    backend: str = "onnxruntime"
    precision: str = "fp32"               # the bundle variant for onnxruntime / openvino (fp32, int8, qdq, fp16)
    max_batch_size: int = 32
    instances: int = 1
    max_queue_delay_us: int = 1000         # dynamic batching: how long Triton may hold a request to fill a batch
    model_name: str = "clap_edge"
    engine: str | None = None              # tensorrt: which engine file of the bundle (default: the only one)
    instance_kind: str | None = None       # KIND_CPU / KIND_GPU (default: by backend)
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.backend not in TRITON_BACKENDS:
            raise ClapEdgeError(f"unknown Triton backend {self.backend!r}; expected one of {sorted(TRITON_BACKENDS)}")
        if self.max_batch_size < 1 or self.instances < 1 or self.max_queue_delay_us < 0:
            raise ClapEdgeError("max_batch_size and instances must be >= 1, max_queue_delay_us >= 0")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.model_name):
            raise ClapEdgeError(f"model name {self.model_name!r} must be letters, digits, '_', '.' or '-'")


def export_triton(bundle: str | os.PathLike | Bundle, repo: str | os.PathLike, config: TritonConfig | None = None
                  ) -> Path:
    """Write ``repo/<model_name>/`` for a stock Triton server; returns the model directory."""
    config = config or TritonConfig()
    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle)
    model_file, engine = _model_source(bundle, config)  # sha256-checked path in the bundle
    max_batch = config.max_batch_size
    if engine is not None and engine.get("max_batch") and max_batch > engine["max_batch"]:
        max_batch = int(engine["max_batch"])  # a TensorRT plan cannot run past its optimisation profile
    text = model_config_text(bundle.manifest, config, max_batch)
    dest = Path(repo) / config.model_name
    if dest.exists() and not config.overwrite:
        raise ClapEdgeError(f"{dest} already exists (pass --force / overwrite=True to replace it)")
    with atomic_directory(dest, overwrite=config.overwrite) as tmp:
        (tmp / "config.pbtxt").write_text(text, encoding="utf-8")
        (tmp / LABELS_FILE).write_text("".join(f"{c}\n" for c in bundle.class_names), encoding="utf-8")
        (tmp / PREPROCESS_FILE).write_text(json.dumps(_preprocess_doc(bundle), indent=2) + "\n", encoding="utf-8")
        (tmp / "1").mkdir()
        shutil.copyfile(model_file, tmp / "1" / TRITON_BACKENDS[config.backend][2])
        if engine is not None and isinstance(engine.get("sidecar"), str):  # what GPU / TensorRT the plan needs
            shutil.copyfile(bundle.file(engine["sidecar"]), tmp / ENGINE_SIDECAR)
    return dest


def model_config_text(manifest: Manifest, config: TritonConfig, max_batch_size: int | None = None) -> str:
    """``config.pbtxt`` (protobuf text format of Triton's ModelConfig) for a bundle manifest."""
    key, value, filename, kind = TRITON_BACKENDS[config.backend]
    kind = config.instance_kind or kind
    max_batch = config.max_batch_size if max_batch_size is None else max_batch_size
    lines = [f'name: "{config.model_name}"', f'{key}: "{value}"', f"max_batch_size: {max_batch}"]
    if config.backend == "openvino":
        lines.append(f'default_model_filename: "{filename}"')  # the OpenVINO backend reads ONNX when named
    lines.append("input [")
    lines.append(",\n".join(_tensor(t, "input") for t in manifest.inputs))
    lines.append("]")
    lines.append("output [")
    lines.append(",\n".join(_tensor(t, "output", label=t.name == "logits") for t in manifest.outputs))
    lines.append("]")
    lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {config.max_queue_delay_us}\n}}")
    lines.append(f"instance_group [\n  {{\n    count: {config.instances}\n    kind: {kind}\n  }}\n]")
    return "\n".join(lines) + "\n"


def _tensor(t: TensorSpec, role: str, label: bool = False) -> str:
    name, shape, dtype = t.name, list(t.shape), t.dtype
    if not isinstance(name, str) or len(shape) < 2:
        raise BundleError(f"manifest {role} {t!r} needs a name and a shape [N, ...]")
    dims = shape[1:]  # Triton's dims leave out the batch axis when max_batch_size > 0
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise BundleError(f"manifest {role} {name!r} has non-fixed dims {dims}; Triton needs them fixed")
    if dtype not in _TYPES:
        raise BundleError(f"manifest {role} {name!r} has dtype {dtype!r}, which has no Triton type here")
    body = [f'name: "{name}"', f"data_type: {_TYPES[dtype]}", f"dims: [ {', '.join(map(str, dims))} ]"]
    if label:
        body.append(f'label_filename: "{LABELS_FILE}"')
    return "  {\n" + "\n".join(f"    {b}" for b in body) + "\n  }"


def _model_source(bundle: Bundle, config: TritonConfig) -> tuple[Path, dict[str, Any] | None]:
    if config.backend != "tensorrt":
        return bundle.variant_file(config.precision), None
    engines = tensorrt_engines(bundle.manifest)
    if not engines:
        raise BundleError(f"{bundle.root}: no TensorRT engine in this bundle; build one on the target GPU first "
                          "(clap-edge build-engine BUNDLE --engine tensorrt), or export with --backend onnxruntime")
    listing = "; ".join(_describe(e) for e in engines)
    if config.engine is not None:
        chosen = [e for e in engines if config.engine in (e["file"], Path(e["file"]).name)]
        if not chosen:
            raise BundleError(f"{bundle.root}: no TensorRT engine {config.engine!r} (it has: {listing})")
    elif len(engines) > 1:
        raise ClapEdgeError(f"{bundle.root} has {len(engines)} TensorRT engines ({listing}); "
                            "pick the one built for the Triton server's GPU with --engine")
    else:
        chosen = engines
    engine = chosen[0]
    return bundle.file(engine["file"]), engine


def tensorrt_engines(manifest: Manifest) -> list[dict[str, Any]]:
    """The TensorRT engines a manifest lists, as ``{"file", "max_batch", ...}`` (none when it has no section);
    an entry's batch profile is its ``batch`` [min, opt, max] (or ``profile`` {max})."""
    found = []
    for entry in manifest.engines or ():
        if entry.engine.lower() != "tensorrt" and not entry.file.endswith((".plan", ".engine")):
            continue
        flat = to_json(entry)
        found.append({**flat, "max_batch": _profile_max(flat)})
    return found


def _describe(entry: dict[str, Any]) -> str:
    about = ", ".join(str(entry[k]) for k in ("gpu", "precision") if entry.get(k))
    return f"{entry['file']} ({about})" if about else entry["file"]


def _profile_max(entry: dict[str, Any]) -> int | None:
    batch = entry.get("batch") or entry.get("batch_profile") or entry.get("profile")
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[-1], int):
        return batch[-1]
    if isinstance(batch, dict) and isinstance(batch.get("max"), int):
        return batch["max"]
    return None


def _preprocess_doc(bundle: Bundle) -> dict[str, Any]:
    """What a client must do before sending a tensor: the manifest's preprocess block, spelled out."""
    return {
        "input": bundle.manifest.inputs[0].name,
        "shape": ["N", *bundle.input_shape],
        "dtype": "float32",
        "preprocess": to_json(bundle.preprocess),
        "steps": "decode to RGB; resize (resize_mode, interpolation) and center-crop to size [H, W]; "
                 "scale to [0, 1]; subtract mean and divide by std per channel; lay out as [3, H, W] "
                 "(clap_edge.runtime.Classifier.preprocess does exactly this)",
    }
