"""The export step that adds the ExecuTorch / LiteRT variants to a bundle, with their parity vs fp32 ONNX.

Called by :func:`~clap_edge.export.builders.exporter.export_bundle` with the fused model and the program the
ONNX export traced; per-domain drift is scored afterwards with the other variants (``--eval``), each file in
its own runtime (``drift.predictor_for``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from clap_edge.core.errors import ClapEdgeError

PRECISIONS = ("fp32", "int8")
# --target profile -> the variants worth building for it (docs/mobile.md has the table and the reasons)
TARGETS: dict[str, dict[str, Any]] = {
    "x86": {"int8": True, "int8_static": True, "openvino_int8": True, "executorch": (), "litert": ()},
    # litert int8 is left out: litert-torch 0.10.0 fails on the quantised patch-embedding conv (docs/mobile.md)
    "arm-phone": {"int8": False, "int8_static": False, "openvino_int8": False, "executorch": ("fp32", "int8"),
                  "litert": ("fp32",)},
    "jetson": {"int8": False, "int8_static": True, "openvino_int8": False, "fp16": True, "executorch": (),
               "litert": ()},
}

__all__ = ["PRECISIONS", "TARGETS", "build_mobile_variants", "target_settings"]


def target_settings(target: str) -> dict[str, Any]:
    """ExportConfig fields for a ``--target`` profile."""
    if target not in TARGETS:
        raise ClapEdgeError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
    return dict(TARGETS[target])


def build_mobile_variants(cfg, fused, program, calib: np.ndarray, fp32_logits: np.ndarray, tmp: Path,
                          say: Callable[[str], None], parity: dict[str, Any],
                          quant_images: np.ndarray | None, classes) -> dict[str, Path]:
    """model.pte / model.int8.pte / model.tflite / model.int8.tflite as ``cfg.executorch`` / ``cfg.litert`` ask;
    each one's agreement with fp32 ONNX on the parity batch goes into ``parity`` under its variant name. The
    variants hold the image model (image -> embedding, as model.onnx); ``classes`` (the bundle's ClassMatrix)
    gives the logits that parity compares."""
    import torch

    from clap_edge.export.builders import mobile
    from clap_edge.export.builders.drift import predictor_for
    from clap_edge.export.parity import compare_logits

    for kind, precisions in (("executorch", cfg.executorch), ("litert", cfg.litert)):
        unknown = sorted(set(precisions) - set(PRECISIONS))
        if unknown:
            raise ClapEdgeError(f"--{kind}: unknown precision {unknown[0]!r}; expected fp32 or int8")
    made: dict[str, Path] = {}
    example = torch.from_numpy(np.ascontiguousarray(calib[:2] if len(calib) >= 2 else np.repeat(calib, 2, 0)))
    program_path = None
    for kind, precision in [("executorch", p) for p in cfg.executorch] + [("litert", p) for p in cfg.litert]:
        name, key = mobile.FILES[(kind, precision)], f"{kind}-{precision}"
        say(f"building {key} variant")
        images = quant_images if precision == "int8" else calib
        if kind == "executorch":
            path = mobile.build_executorch(fused.image_model(), example, tmp / name, precision, images)
        else:
            if program_path is None:  # the traced program, for the converter's own environment
                program_path = tmp / "litert-source.pt2"
                torch.export.save(program, str(program_path))
            path = mobile.build_litert(program_path, tmp / name, images, precision, cfg.litert_python)
        report = compare_logits(fp32_logits, predictor_for(path, classes)(calib))
        parity[key] = report.as_manifest("_vs_fp32", **({"calibration_images": int(len(images))}
                                                       if precision == "int8" else {}))
        made[name] = path
    return made
