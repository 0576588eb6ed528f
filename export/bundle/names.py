"""Names fixed by the bundle contract: file names, tensor names, the schema version. Defined once, here.

The C++ runtime and the Triton exporter read the same names from ``manifest.schema.json``
(its ``x-clap-edge-names`` block); a test keeps the two in step.
"""

from __future__ import annotations

import hashlib
import os

# Version 3 (from 2): the manifest is read into one typed, frozen Manifest by the same rules in Python,
# C++ and manifest.schema.json (names without control characters, NFC-unique; file names as plain relative
# paths; numbers in range); engine sidecars (sidecar.schema.json) record the engine file's own sha256
# beside its source model's. Older bundles are refused, not read: a version-2 manifest may hold names
# or paths version 3 refuses, and its sidecars lack the engine digest that engine selection checks, so
# reading one would run unchecked engines. The one line says: "schema_version 2 is older than this
# clap-edge reads (>= 3); re-export the bundle with clap-edge >= 0.2 (`clap-edge export`)".
# Version 2 (from 1): manifest.sha256 beside the manifest; every field typed and range-checked;
# inputs/outputs named by INPUT_IMAGE / OUTPUT_*; optional `drift`, `engines` and a `bundle.sig` signature.
SCHEMA_VERSION = 3
MIN_SCHEMA_VERSION = 3  # the oldest version this code opens
REEXPORT_HINT = "re-export the bundle with clap-edge >= 0.2 (`clap-edge export`)"

MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"  # "<sha256 hex>  manifest.json\n" (sha256sum -c format)
SIGNATURE_FILE = "bundle.sig"  # OpenSSF model-signing (sigstore bundle JSON) over every other file
SCHEMA_FILE = "manifest.schema.json"  # shipped in this package

CLASSES_FILE = "classes.safetensors"
CLASSES_TENSOR = "class_embeddings"
HEAD_FILE = "head.safetensors"
CALIBRATION_FILE = "calibration.npy"

# Tensor names of the exported model.
INPUT_IMAGE = "image"
OUTPUT_LOGITS = "logits"
OUTPUT_EMBEDDING = "embedding"

# Files the bundle itself manages: never listed in the manifest's `files`.
META_FILES = (MANIFEST, MANIFEST_DIGEST, SIGNATURE_FILE)

# Model variants a bundle may hold, by name -> file (the manifest's "variants" maps the ones present).
# `variants` is free-form in the schema: other variants (e.g. an OpenVINO IR) need no schema change.
VARIANT_FILES = {
    "fp32": "model.onnx",
    "int8": "model.int8.onnx",
    "qdq": "model.qdq.onnx",
    "fp16": "model.fp16.onnx",
    "openvino-int8": "model.int8.xml",  # OpenVINO IR (NNCF int8); its weights are model.int8.bin
    "torch": "model.pt2",
    # phones and small boards (clap-edge export --executorch / --litert): ExecuTorch programs with the XNNPACK
    # delegate and LiteRT (TFLite) flatbuffers. Readers that do not run them (the C++ runtime) ignore them.
    "executorch-fp32": "model.pte",
    "executorch-int8": "model.int8.pte",
    "litert-fp32": "model.tflite",
    "litert-int8": "model.int8.tflite",
}
REQUIRED_KEYS = ("schema_version", "model", "class_names", "embed_dim", "preprocess", "inputs", "outputs", "files")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
