"""Drift of quantised variants: top-1 per domain of fp32 and of each variant, and their agreement.

Scored at export on a labelled split (``--eval DIR``) and stored in the manifest's ``drift``
section, so ``inspect``, the demo report and ``auto`` all read the same numbers:

    "drift": {"int8": {"split": "test", "n_images": 2400, "agreement": 0.996, "min_domain_agreement": 0.99,
                       "top1": 0.81, "fp32_top1": 0.812,
                       "domains": {"id": {"n_images": 480, "fp32_top1": 0.9, "top1": 0.9, "agreement": 1.0}, ...}}}

Each variant runs in the library its runtime backend uses: the ONNX variants in ONNX Runtime
(CPU), the OpenVINO IR in OpenVINO's CPU plugin with fp32 for the parts NNCF left in float, .pte in
ExecuTorch's runtime (XNNPACK), .tflite in ai-edge-litert's interpreter.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from clap_edge.export.builders.calibration import EvalSet
from clap_edge.export.bundle.classes import ClassMatrix
from clap_edge.export.bundle.names import OUTPUT_EMBEDDING

BATCH = 32
Predict = Callable[[np.ndarray], np.ndarray]  # preprocessed batch -> logits

__all__ = ["score_drift", "onnx_predictor", "openvino_predictor", "predictor_for"]


def score_drift(eval_set: EvalSet, fp32: Predict, variants: dict[str, Predict]) -> dict[str, dict]:
    """The manifest ``drift`` section: per variant, per domain top-1 (fp32 and variant) and agreement."""
    fp32_pred = {d: _top1(fp32, x) for d, x in eval_set.images.items()}
    drift = {}
    for name, predict in variants.items():
        domains, agree_n, right_n, ref_right_n, total = {}, 0, 0, 0, 0
        for domain, x in eval_set.images.items():
            labels, ref, pred = eval_set.labels[domain], fp32_pred[domain], _top1(predict, x)
            n = len(labels)
            domains[domain] = {"n_images": n, "fp32_top1": _r(np.mean(ref == labels)),
                               "top1": _r(np.mean(pred == labels)), "agreement": _r(np.mean(pred == ref))}
            agree_n += int((pred == ref).sum())
            right_n += int((pred == labels).sum())
            ref_right_n += int((ref == labels).sum())
            total += n
        drift[name] = {"split": eval_set.split, "n_images": total, "agreement": _r(agree_n / total),
                       "min_domain_agreement": min(d["agreement"] for d in domains.values()),
                       "top1": _r(right_n / total), "fp32_top1": _r(ref_right_n / total), "domains": domains}
    return drift


def _top1(predict: Predict, images: np.ndarray) -> np.ndarray:
    return np.concatenate([np.argmax(predict(images[i:i + BATCH]), axis=1) for i in range(0, len(images), BATCH)])


def _r(x: float) -> float:
    return round(float(x), 6)


def onnx_predictor(path: str | os.PathLike, classes: ClassMatrix, threads: int | None = None) -> Predict:
    """Logits (``classes`` applied to the embedding) from an ONNX model in ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: classes.logits(session.run([OUTPUT_EMBEDDING],
                                                    {name: np.ascontiguousarray(batch, dtype=np.float32)})[0])


def openvino_predictor(path: str | os.PathLike, classes: ClassMatrix, threads: int | None = None) -> Predict:
    """Logits from an OpenVINO IR on the CPU plugin; float parts in fp32 (as the runtime's int8 precision)."""
    import openvino as ov

    config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": int(threads)} if threads else {})}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    index = next(i for i, out in enumerate(compiled.outputs) if OUTPUT_EMBEDDING in out.get_names())
    return lambda batch: classes.logits(
        np.array(list(request.infer({0: np.ascontiguousarray(batch, np.float32)}).values())[index]))


def predictor_for(path: str | os.PathLike, classes: ClassMatrix, threads: int | None = None) -> Predict:
    suffix = Path(path).suffix
    if suffix in (".pte", ".tflite"):  # phone/board variants: ExecuTorch's / LiteRT's own runtime
        from clap_edge.export.builders.mobile import executorch_predictor, litert_predictor

        return (executorch_predictor if suffix == ".pte" else litert_predictor)(path, classes, threads)
    return (openvino_predictor if suffix == ".xml" else onnx_predictor)(path, classes, threads)
