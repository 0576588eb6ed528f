"""A corpus of manifest edits: (name, edit, verdict) with verdict
'ok' (valid), 'schema' (invalid, and the JSON Schema says so too) or 'semantic' (invalid by a
rule the schema language cannot state: cross-field shapes, NFC duplicates, nesting depth).
Used by test_manifest_schema.py (Python checks vs manifest.schema.json) and the reliability corpus."""

from __future__ import annotations

import copy
from typing import Any, Callable

SHA = "ab" * 32


def base_manifest() -> dict[str, Any]:
    """A valid schema-4 manifest written by hand from the spec (not by the exporter)."""
    return {
        "schema_version": 4,
        "clap_edge_version": "0.2.0",
        "model": {"model_name": "clap-edge-tiny", "pretrained": None,
                  "head": {"alpha": 0.3, "latent_dim": 32, "activation": "silu"}},
        "embed_dim": 64,
        "alpha": 0.3,
        "logit_scale": 100.0,
        "class_names": ["cat", "dog", "bird"],
        "templates": ["a photo of a {c}."],
        "preprocess": {"size": [32, 32], "mode": "RGB", "mean": [0.48, 0.45, 0.40], "std": [0.26, 0.26, 0.27],
                       "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0},
        "inputs": [{"name": "image", "shape": ["N", 3, 32, 32], "dtype": "float32"}],
        "outputs": [{"name": "embedding", "shape": ["N", 64], "dtype": "float32"}],
        "classes": {"bias": False, "provenance": {"method": "zero-shot-text", "templates": 1}},
        "opset": 17,
        "flops_per_image": 1.5e6,
        "files": {"classes.safetensors": {"sha256": SHA, "bytes": 856},
                  "model.onnx": {"sha256": SHA, "bytes": 1000},
                  "model.int8.onnx": {"sha256": SHA, "bytes": 500}},
        "variants": {"fp32": "model.onnx", "int8": "model.int8.onnx"},
        "parity": {"fp32": {"max_abs_logit_diff": 1e-5, "top1_agreement": 1.0, "n_images": 8}},
    }


def _set(path: str, value: Any) -> Callable[[dict], None]:
    keys = path.split("/")

    def edit(m: dict) -> None:
        node = m
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return edit


def _del(path: str) -> Callable[[dict], None]:
    keys = path.split("/")

    def edit(m: dict) -> None:
        node = m
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        del node[keys[-1]]
    return edit


def _deep(depth: int) -> Any:
    node: Any = {"leaf": 1}
    for _ in range(depth):
        node = {"x": node}
    return node


def _add_file(name: str):
    return lambda m: m["files"].__setitem__(name, {"sha256": SHA, "bytes": 1})


EDITS: list[tuple[str, Callable[[dict], None], str]] = [
    ("unchanged", lambda m: None, "ok"),
    ("unknown top-level key kept", _set("notes", {"by": "ci"}), "ok"),
    ("no head (plain CLIP)", _set("model/head", None), "ok"),
    ("drift section", _set("drift", {"int8": {"photo": {"top1": 0.9}, "sketch": {"top1": 0.8}}}), "ok"),
    ("engines section", lambda m: (_add_file("engines/a.plan")(m), _add_file("engines/a.json")(m),
                                   m.__setitem__("engines", [{"file": "engines/a.plan", "sidecar": "engines/a.json",
                                                              "engine": "tensorrt", "precision": "fp16",
                                                              "gpu": "H100", "profiles": [[1, 32]]}])), "ok"),
    ("openvino variant", lambda m: (_add_file("model.int8.xml")(m), _add_file("model.int8.bin")(m),
                                    m["variants"].__setitem__("openvino-int8", "model.int8.xml")), "ok"),
    ("integral float dim", _set("embed_dim", 64.0), "ok"),
    ("symbolic batch dim renamed", _set("inputs/0/shape/0", "batch"), "ok"),
    ("longest resize", _set("preprocess/resize_mode", "longest"), "ok"),
    ("classes with a bias", _set("classes", {"bias": True, "provenance": {"method": "linear-probe"}}), "ok"),
    ("no classes section", _del("classes"), "ok"),
    ("text encoder", lambda m: (_add_file("text.onnx")(m), _add_file("tokenizer/bpe.txt.gz")(m),
                                m.__setitem__("text", {"file": "text.onnx", "context_length": 77,
                                                       "tokenizer": {"kind": "open_clip.SimpleTokenizer",
                                                                     "files": {"bpe": "tokenizer/bpe.txt.gz"}}})), "ok"),
    # --- the JSON Schema catches these too
    ("schema_version 0", _set("schema_version", 0), "schema"),
    ("schema_version -1", _set("schema_version", -1), "schema"),
    ("schema_version 1 (old)", _set("schema_version", 1), "schema"),
    ("schema_version 2 (old: re-export)", _set("schema_version", 2), "schema"),
    ("schema_version 3 (old: re-export)", _set("schema_version", 3), "schema"),
    ("schema_version 5 (newer)", _set("schema_version", 5), "schema"),
    ("schema_version string", _set("schema_version", "4"), "schema"),
    ("schema_version missing", _del("schema_version"), "schema"),
    ("model missing", _del("model"), "schema"),
    ("model_name missing", _del("model/model_name"), "schema"),
    ("model_name empty", _set("model/model_name", ""), "schema"),
    ("head latent_dim negative", _set("model/head/latent_dim", -4), "schema"),
    ("head alpha string", _set("model/head/alpha", "0.3"), "schema"),
    ("embed_dim 0", _set("embed_dim", 0), "schema"),
    ("embed_dim negative", _set("embed_dim", -64), "schema"),
    ("embed_dim string", _set("embed_dim", "64"), "schema"),
    ("embed_dim bool", _set("embed_dim", True), "schema"),
    ("embed_dim huge", _set("embed_dim", 10**9), "schema"),
    ("class_names string", _set("class_names", "cat"), "schema"),
    ("class_names empty", _set("class_names", []), "schema"),
    ("class name empty string", _set("class_names/1", ""), "schema"),
    ("class name number", _set("class_names/1", 7), "schema"),
    ("class names exact duplicate", _set("class_names/1", "cat"), "schema"),
    ("class name too long", _set("class_names/1", "x" * 5000), "schema"),
    ("alpha string", _set("alpha", "high"), "schema"),
    ("logit_scale zero", _set("logit_scale", 0), "schema"),
    ("logit_scale negative", _set("logit_scale", -1.0), "schema"),
    ("logit_scale missing", _del("logit_scale"), "schema"),
    ("logit_scale null", _set("logit_scale", None), "schema"),
    ("classes bias a string", _set("classes/bias", "yes"), "schema"),
    ("classes unknown key", _set("classes/matrix", [1, 2]), "schema"),
    ("text without tokenizer", lambda m: (_add_file("text.onnx")(m), m.__setitem__(
        "text", {"file": "text.onnx", "context_length": 77})), "schema"),
    ("templates not a list", _set("templates", "a photo of a {c}."), "schema"),
    ("preprocess missing", _del("preprocess"), "schema"),
    ("preprocess not an object", _set("preprocess", [224, 224]), "schema"),
    ("size one number", _set("preprocess/size", [32]), "schema"),
    ("size zero", _set("preprocess/size", [0, 0]), "schema"),
    ("size negative", _set("preprocess/size", [-32, 32]), "schema"),
    ("size huge", _set("preprocess/size", [10**6, 10**6]), "schema"),
    ("mode CMYK", _set("preprocess/mode", "CMYK"), "schema"),
    ("mean two values", _set("preprocess/mean", [0.5, 0.5]), "schema"),
    ("mean string", _set("preprocess/mean/0", "0.5"), "schema"),
    ("std zero", _set("preprocess/std/1", 0.0), "schema"),
    ("std negative", _set("preprocess/std/2", -0.2), "schema"),
    ("std null", _set("preprocess/std/0", None), "schema"),
    ("interpolation unknown", _set("preprocess/interpolation", "lanczos9"), "schema"),
    ("resize_mode unknown", _set("preprocess/resize_mode", "stretch"), "schema"),
    ("fill_color 300", _set("preprocess/fill_color", 300), "schema"),
    ("preprocess extra key", _set("preprocess/gamma", 2.2), "schema"),
    ("fill_color missing", _del("preprocess/fill_color"), "schema"),
    ("inputs empty", _set("inputs", []), "schema"),
    ("input renamed", _set("inputs/0/name", "pixels"), "schema"),
    ("input dim zero", _set("inputs/0/shape/2", 0), "schema"),
    ("input dtype unknown", _set("inputs/0/dtype", "float128"), "schema"),
    ("output without shape", _del("outputs/0/shape"), "schema"),
    ("no embedding output", _set("outputs/0/name", "scores"), "schema"),
    ("a logits output (schema 3 model)", lambda m: m["outputs"].append({"name": "logits", "shape": ["N", 3]}),
     "schema"),
    ("files a list", _set("files", ["model.onnx"]), "schema"),
    ("files entry empty", _set("files/model.onnx", {}), "schema"),
    ("sha256 short", _set("files/model.onnx/sha256", "abc"), "schema"),
    ("sha256 upper case", _set("files/model.onnx/sha256", "AB" * 32), "schema"),
    ("bytes negative", _set("files/model.onnx/bytes", -1), "schema"),
    ("file outside (..)", _add_file("../evil.onnx"), "schema"),
    ("file absolute", _add_file("/etc/passwd"), "schema"),
    ("file in ./", _add_file("./model.onnx"), "schema"),
    ("file backslash", _add_file("..\\evil"), "schema"),
    ("manifest lists itself", _add_file("manifest.json"), "schema"),
    ("classes file not listed", _del("files/classes.safetensors"), "schema"),
    ("variants not an object", _set("variants", ["model.onnx"]), "schema"),
    ("parity not objects", _set("parity", {"fp32": 0.99}), "schema"),
    ("engines not a list", _set("engines", {"file": "x"}), "schema"),
    ("engine without precision", lambda m: m.__setitem__("engines", [{"file": "model.onnx", "engine": "trt"}]),
     "schema"),
    ("opset zero", _set("opset", 0), "schema"),
    ("flops negative", _set("flops_per_image", -5), "schema"),
    ("manifest not an object", lambda m: (m.clear(), m.__setitem__("schema_version", [3])), "schema"),
    # --- only the Python checks catch these (cross-field or beyond the schema language)
    ("embedding width != embed_dim", _set("outputs/0/shape/1", 32), "semantic"),
    ("text file unlisted", _set("text", {"file": "text.onnx", "context_length": 77, "tokenizer": {}}), "semantic"),
    ("input size != preprocess size", _set("inputs/0/shape/3", 999), "semantic"),
    ("input not 4-D", _set("inputs/0/shape", ["N", 3, 32]), "semantic"),
    ("embedding 3-D", _set("outputs/0/shape", ["N", 64, 1]), "semantic"),
    ("variant names unlisted file", _set("variants/fp16", "model.fp16.onnx"), "semantic"),
    ("engine file unlisted", lambda m: m.__setitem__("engines", [{"file": "x.plan", "engine": "tensorrt",
                                                                   "precision": "fp16"}]), "semantic"),
    ("class names equal after NFC", lambda m: m.__setitem__("class_names", ["caf\u00e9", "cafe\u0301", "dog"]),
     "schema"),  # the second is not NFC (names must pass the NFC quick check: textrules.py)
    ("nesting 40 deep", _set("notes", _deep(40)), "semantic"),
]


def edited(edit: Callable[[dict], None]) -> dict[str, Any]:
    m = copy.deepcopy(base_manifest())
    edit(m)
    return m
