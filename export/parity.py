"""Parity: compare a candidate model's logits with a reference's on the same batch (Polygraphy's comparator).

The numbers (max |dlogit|, top-1 agreement) go into the manifest, so every bundle
says how far its ONNX models are from the torch model they came from.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np

from clap_edge.core.errors import BundleError
from clap_edge.export.bundle.classes import ClassMatrix
from clap_edge.export.bundle.names import INPUT_IMAGE, OUTPUT_EMBEDDING


@dataclass
class ParityReport:
    max_abs_logit_diff: float
    top1_agreement: float  # fraction of images whose argmax class is the same
    n_images: int

    def within(self, tolerance: float) -> bool:
        return self.max_abs_logit_diff <= tolerance and self.top1_agreement == 1.0

    def as_manifest(self, suffix: str = "", **extra) -> dict:
        """Manifest entry; ``suffix`` ("_vs_fp32") says what the numbers are relative to."""
        d = asdict(self)
        out = {f"max_abs_logit_diff{suffix}": d["max_abs_logit_diff"],
               f"top1_agreement{suffix}": d["top1_agreement"], "n_images": d["n_images"]}
        out.update(extra)
        return out


def compare_logits(reference: np.ndarray, candidate: np.ndarray) -> ParityReport:
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape:
        raise BundleError(f"parity: logits shapes differ: {list(reference.shape)} vs {list(candidate.shape)}")
    if not np.isfinite(candidate).all():
        return ParityReport(float("inf"), 0.0, int(reference.shape[0]))
    diff = float(np.abs(reference - candidate).max()) if reference.size else 0.0
    agree = float((reference.argmax(-1) == candidate.argmax(-1)).mean()) if reference.size else 1.0
    return ParityReport(diff, agree, int(reference.shape[0]))


def run_onnx(path: str | os.PathLike, batch: np.ndarray, classes: ClassMatrix,
             threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits, embedding) of an ONNX image model on ONNX Runtime's CPU provider; the logits are ``classes``
    applied to its embedding output, as every runtime does (schema 4)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    embedding = np.asarray(session.run([OUTPUT_EMBEDDING], {INPUT_IMAGE: np.ascontiguousarray(batch, np.float32)})[0],
                           np.float32)
    return classes.logits(embedding), embedding

