"""Names fixed by the bundle contract: file names, tensor names, the schema version. Defined once, here."""

from __future__ import annotations

import hashlib
import os

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
CLASSES_FILE = "classes.safetensors"
CLASSES_TENSOR = "class_embeddings"

# Model variants a bundle may hold, by name -> file (the manifest's "variants" maps the ones present).
VARIANT_FILES = {
    "fp32": "model.onnx",
    "int8": "model.int8.onnx",
    "qdq": "model.qdq.onnx",
    "fp16": "model.fp16.onnx",
    "openvino-int8": "model.int8.xml",  # OpenVINO IR (NNCF int8); its weights are model.int8.bin
    "torch": "model.pt2",
}
REQUIRED_KEYS = ("schema_version", "model", "class_names", "embed_dim", "preprocess", "inputs", "outputs", "files")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
