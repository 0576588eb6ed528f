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

Schema-4 bundles keep the class matrix as data beside a model that ends at the embedding. Triton has no
such runtime step, so for the ONNX backends the matrix is baked in: the repository's model.onnx is the
bundle's model with ``logits = logit_scale * embedding @ W.T (+ b)`` appended as graph nodes (a checked copy
of the bundle's model, then the bake). A TensorRT plan is a compiled engine and cannot be extended here:
its repository serves the ``embedding`` output only (apply classes.safetensors in the client).

``config.pbtxt`` is generated, never templated: a ``ModelConfig`` message of tritonclient's
``model_config_pb2`` printed by protobuf's ``text_format`` (which escapes), with every name checked by a
strict rule first. Output file names are fixed here, never taken from the manifest; labels.txt refuses a
class name that would break a line. The repository is written atomically (a temp directory renamed into
place); each copied file's sha256 is checked on the copy, and with trusted keys the bundle is verified on a
private snapshot the repository is written from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
import unicodedata
from typing import Any, Sequence

from clap_edge.core.errors import BundleError, ClapEdgeError, OutputError, first_line
from clap_edge.core.io import atomic_directory
from clap_edge.export.bundle import Bundle, ClassMatrix
from clap_edge.export.bundle.manifest import Manifest, TensorSpec, to_json
from clap_edge.export.bundle.names import OUTPUT_EMBEDDING, OUTPUT_LOGITS, sha256_file

__all__ = ["TritonConfig", "export_triton", "model_config", "model_config_text", "labels_text", "TRITON_BACKENDS",
           "bake_classes"]

# backend -> (config key, value, model file name in the version directory, instance kind)
TRITON_BACKENDS = {
    "onnxruntime": ("platform", "onnxruntime_onnx", "model.onnx", "KIND_CPU"),
    "openvino": ("backend", "openvino", "model.onnx", "KIND_CPU"),
    "tensorrt": ("platform", "tensorrt_plan", "model.plan", "KIND_GPU"),
}
_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32"}
LABELS_FILE = "labels.txt"
PREPROCESS_FILE = "preprocess.json"
# Names that go into config.pbtxt and the repository's paths: a strict rule, so no text can break out.
_TENSOR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
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
        if not isinstance(self.model_name, str) or not _MODEL_NAME.fullmatch(self.model_name):
            raise ClapEdgeError(f"model name {self.model_name!r} must be 1-128 letters, digits, '_', '.' or '-', "
                                "not starting with '.' or '-'")


def export_triton(bundle: str | os.PathLike | Bundle, repo: str | os.PathLike, config: TritonConfig | None = None,
                  trusted_keys: Sequence[str | os.PathLike] | None = None) -> Path:
    """Write ``repo/<model_name>/`` for a stock Triton server; returns the model directory.

    ``trusted_keys``: the bundle must be signed by one of them; it is checked on a private copy, and the
    repository is written from that copy, so a bundle swapped after the check is never exported."""
    config = config or TritonConfig()
    if trusted_keys:
        if isinstance(bundle, Bundle):
            raise ClapEdgeError("export_triton(trusted_keys=...) needs the bundle's path (it checks a private copy)")
        from clap_edge.export.bundle.snapshot import open_snapshot

        with open_snapshot(bundle, trusted_keys=trusted_keys) as snapshot:
            return export_triton(snapshot, repo, config)
    if not isinstance(bundle, Bundle):
        with Bundle.open(bundle) as opened:
            return export_triton(opened, repo, config)
    model_name, engine = _model_source(bundle, config)  # the bundle file names; their bytes are checked below
    max_batch = config.max_batch_size
    if engine is not None and engine.get("max_batch") and max_batch > engine["max_batch"]:
        max_batch = int(engine["max_batch"])  # a TensorRT plan cannot run past its optimisation profile
    text = model_config_text(bundle.manifest, config, max_batch)
    labels = labels_text(bundle.class_names, bundle.label)
    dest = Path(repo) / config.model_name
    if dest.exists() and not config.overwrite:
        raise ClapEdgeError(f"{dest} already exists (pass --force / overwrite=True to replace it)")
    try:
        with atomic_directory(dest, overwrite=config.overwrite) as tmp:
            (tmp / "config.pbtxt").write_bytes(text.encode("utf-8"))
            (tmp / LABELS_FILE).write_bytes(labels)
            (tmp / PREPROCESS_FILE).write_text(json.dumps(_preprocess_doc(bundle), indent=2) + "\n", encoding="utf-8")
            (tmp / "1").mkdir()
            # Output file names are fixed here, never taken from the manifest's text.
            model_dest = tmp / "1" / TRITON_BACKENDS[config.backend][2]
            if config.backend == "tensorrt":
                _copy_checked(bundle, model_name, model_dest)
            else:
                checked = tmp / "source.onnx"
                _copy_checked(bundle, model_name, checked)
                bake_classes(checked, model_dest, ClassMatrix.from_bundle(bundle))
                checked.unlink()
            if engine is not None and isinstance(engine.get("sidecar"), str):  # what GPU / TensorRT the plan needs
                _copy_checked(bundle, engine["sidecar"], tmp / ENGINE_SIDECAR)
    except ClapEdgeError:
        raise
    except OSError as e:  # a full disk, a read-only or /proc target: one line; atomic_directory left nothing
        raise OutputError(f"{dest}: cannot write the Triton model repository ({e.strerror or first_line(e)})") \
            from None
    return dest


def _copy_checked(bundle: Bundle, name: str, dest: Path) -> None:
    """Copy a bundle file, then check the copy's sha256: the digest covers the bytes Triton will load."""
    shutil.copyfile(bundle.file(name), dest)
    want = bundle.manifest.sha256(name)
    if sha256_file(dest) != want:
        raise BundleError(f"{bundle.label}: {name!r} changed while it was copied (sha256 no longer "
                          f"{want[:16]}...); nothing was written")


def bake_classes(src: str | os.PathLike, dest: str | os.PathLike, classes: ClassMatrix) -> Path:
    """Write ``src`` (an image model ending at ``embedding``) to ``dest`` with ``logits`` appended:
    ``logit_scale * embedding @ W.T (+ b)`` as constant MatMul / Mul / Add nodes (float32)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    if OUTPUT_EMBEDDING not in {o.name for o in graph.output} or OUTPUT_LOGITS in {o.name for o in graph.output}:
        raise BundleError(f"{src}: expected a model whose output is {OUTPUT_EMBEDDING!r} (schema 4), "
                          f"found {[o.name for o in graph.output]}")
    weights = (np.float32(classes.scale) * classes.weights.astype(np.float32)).T  # scale folded: one op fewer
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weights), "clap_edge_class_matrix"))
    last = "clap_edge_scaled" if classes.bias is not None else OUTPUT_LOGITS
    graph.node.append(helper.make_node("MatMul", [OUTPUT_EMBEDDING, "clap_edge_class_matrix"], [last],
                                       name="clap_edge_classes"))
    if classes.bias is not None:
        graph.initializer.append(numpy_helper.from_array(classes.bias.astype(np.float32), "clap_edge_class_bias"))
        graph.node.append(helper.make_node("Add", [last, "clap_edge_class_bias"], [OUTPUT_LOGITS],
                                           name="clap_edge_class_bias_add"))
    batch = graph.output[0].type.tensor_type.shape.dim[0]
    graph.output.append(helper.make_tensor_value_info(
        OUTPUT_LOGITS, onnx.TensorProto.FLOAT, [batch.dim_param or batch.dim_value or "N", classes.num_classes]))
    onnx.save_model(model, str(dest))
    return Path(dest)


def labels_text(class_names: Sequence[str], label: str = "bundle") -> bytes:
    """``labels.txt``: one class name a line, in logit order. A name that would break a line (newline,
    any control character, a Unicode line/paragraph separator) or is empty would shift every label after
    it, so it is refused here even though the manifest rules refuse it too."""
    for i, name in enumerate(class_names):
        bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs")), None)
        if not name or bad is not None:
            why = "is empty" if not name else f"holds {_char(bad)}"
            raise BundleError(f"{label}: class name {i} ({name!r}) {why}; it cannot be a line of {LABELS_FILE}")
    return "".join(f"{c}\n" for c in class_names).encode("utf-8")


def _char(c: str) -> str:
    return f"the character U+{ord(c):04X} ({unicodedata.name(c, unicodedata.category(c))})"


def model_config(manifest: Manifest, config: TritonConfig, max_batch_size: int | None = None):
    """Triton's ``ModelConfig`` message (tritonclient's model_config_pb2) for a bundle manifest."""
    pb = _model_config_pb2()
    key, value, filename, kind = TRITON_BACKENDS[config.backend]
    cfg = pb.ModelConfig(name=_checked_name(config.model_name, "model name", _MODEL_NAME),
                         max_batch_size=config.max_batch_size if max_batch_size is None else max_batch_size)
    setattr(cfg, key, value)
    if config.backend == "openvino":
        cfg.default_model_filename = filename  # the OpenVINO backend reads ONNX when named; fixed, never the manifest's
    for t in _tensors(manifest, "inputs"):
        cfg.input.append(_tensor(pb.ModelInput, t, "input"))
    outputs = list(_tensors(manifest, "outputs"))
    if config.backend != "tensorrt":  # the class matrix is baked into the ONNX graph (bake_classes)
        outputs.append(TensorSpec(OUTPUT_LOGITS, ["N", len(manifest.class_names)]))
    for t in outputs:
        out = _tensor(pb.ModelOutput, t, "output")
        if out.name == OUTPUT_LOGITS:
            out.label_filename = LABELS_FILE
        cfg.output.append(out)
    cfg.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us
    cfg.instance_group.add(count=config.instances,
                           kind=pb.ModelInstanceGroup.Kind.Value(config.instance_kind or kind))
    return cfg


def model_config_text(manifest: Manifest, config: TritonConfig, max_batch_size: int | None = None) -> str:
    """``config.pbtxt``: the protobuf text format of :func:`model_config`, checked to parse back to it."""
    from google.protobuf import text_format

    cfg = model_config(manifest, config, max_batch_size)
    text = text_format.MessageToString(cfg)
    if text_format.Parse(text, type(cfg)()) != cfg:  # the printer escapes; this proves it for this config
        raise ClapEdgeError("config.pbtxt does not parse back to the intended ModelConfig; nothing was written")
    return text


def _model_config_pb2():
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise ClapEdgeError(f"export-triton needs tritonclient: pip install 'clap-edge[serve]' ({e})") from None
    return model_config_pb2


def _tensors(manifest: Manifest, key: str) -> tuple[TensorSpec, ...]:
    tensors = getattr(manifest, key)
    if not tensors:
        raise BundleError(f"manifest {key!r} must be a non-empty list of tensors")
    return tensors


def _checked_name(name: Any, what: str, rule: re.Pattern) -> str:
    if not isinstance(name, str) or not rule.fullmatch(name):
        raise BundleError(f"{what} {name!r} is not allowed in a Triton config: it must match {rule.pattern}")
    return name


def _tensor(message, t: TensorSpec, role: str):
    name, shape, dtype = t.name, list(t.shape), t.dtype
    name = _checked_name(name, f"manifest {role} name", _TENSOR_NAME)
    if len(shape) < 2:
        raise BundleError(f"manifest {role} {name!r} needs a shape [N, ...]")
    dims = shape[1:]  # Triton's dims leave out the batch axis when max_batch_size > 0
    if not all(type(d) is int and 0 < d < 2**31 for d in dims):
        raise BundleError(f"manifest {role} {name!r} has dims {dims}; Triton needs them fixed and positive")
    if dtype not in _TYPES:
        raise BundleError(f"manifest {role} {name!r} has dtype {dtype!r}, which has no Triton type here")
    pb = _model_config_pb2()
    return message(name=name, data_type=pb.DataType.Value(_TYPES[dtype]), dims=dims)


def _model_source(bundle: Bundle, config: TritonConfig) -> tuple[str, dict[str, Any] | None]:
    """(the bundle file name of the model to copy, the TensorRT engine entry or None)."""
    if config.backend != "tensorrt":
        bundle.variant_file(config.precision)  # one line for a missing variant
        return bundle.variants[config.precision], None
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
    return engine["file"], engine


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
