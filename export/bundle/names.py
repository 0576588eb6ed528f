"""Names fixed by the bundle contract: file names, tensor names, the schema version. Defined once, here.

The C++ runtime and the Triton exporter read the same names from ``manifest.schema.json``
(its ``x-clap-edge-names`` block); a test keeps the two in step.
"""

from __future__ import annotations

import hashlib
import os

# Version 4 (from 3): classes are data. The exported image model ends at the CLAP-projected, L2-normalised
# embedding (its one output, OUTPUT_EMBEDDING); classes.safetensors holds the class matrix W [C, d]
# (CLASSES_TENSOR) and, when the manifest's `classes.bias` is true, a bias b [C] (CLASSES_BIAS); every runtime
# computes logits = logit_scale * embedding @ W.T + b (logit_scale is required). Changing the classes rewrites
# one small file and the manifest, never a model, a variant or an engine. Version-3 bundles are refused with
# the re-export line: their graphs end at baked-in logits, so a runtime would need a second code path
# (and a second conformance story) for a format no device needs once re-exported.
# Version 3 (from 2): the manifest is read into one typed, frozen Manifest by the same rules in Python,
# C++ and manifest.schema.json (names without control characters, NFC-unique; file names as plain relative
# paths; numbers in range); engine sidecars (sidecar.schema.json) record the engine file's own sha256
# beside its source model's. Older bundles are refused, not read: a version-2 manifest may hold names
# or paths version 3 refuses, and its sidecars lack the engine digest that engine selection checks, so
# reading one would run unchecked engines. The one line says: "schema_version 2 is older than this
# clap-edge reads (>= 3); re-export the bundle with clap-edge >= 0.2 (`clap-edge export`)".
# Version 2 (from 1): manifest.sha256 beside the manifest; every field typed and range-checked;
# inputs/outputs named by INPUT_IMAGE / OUTPUT_*; optional `drift`, `engines` and a `bundle.sig` signature.
SCHEMA_VERSION = 4
MIN_SCHEMA_VERSION = 4  # the oldest version this code opens
REEXPORT_HINT = "re-export the bundle with clap-edge >= 0.2 (`clap-edge export`)"

MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"  # "<sha256 hex>  manifest.json\n" (sha256sum -c format)
SIGNATURE_FILE = "bundle.sig"  # OpenSSF model-signing (sigstore bundle JSON) over every other file
SCHEMA_FILE = "manifest.schema.json"  # shipped in this package

CLASSES_FILE = "classes.safetensors"
CLASSES_TENSOR = "class_embeddings"  # W [C, d] float32
CLASSES_BIAS = "class_bias"  # b [C] float32, present when the manifest's classes.bias is true
TEXT_FILE = "text.onnx"  # optional text encoder: token ids [N, context_length] int64 -> class embedding [N, d]
TEXT_INT8_FILE = "text.int8.onnx"
TOKENIZER_DIR = "tokenizer"  # the tokenizer's files (bpe vocab, tokenizer.json config)
HEAD_FILE = "head.safetensors"
CALIBRATION_FILE = "calibration.npy"

# Tensor names of the exported model.
INPUT_IMAGE = "image"
OUTPUT_LOGITS = "logits"  # computed by the runtime from the class matrix (and by Triton's baked graph)
OUTPUT_EMBEDDING = "embedding"  # the image model's one output
INPUT_TOKENS = "tokens"  # text.onnx input [N, context_length] int64
OUTPUT_TEXT_EMBEDDING = "text_embedding"  # text.onnx output [N, d]

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
