"""torch -> ONNX (and torch.export) for the fused classifier, with a dynamic batch axis.

We trace once with ``torch.export`` and hand the same ExportedProgram to the dynamo
ONNX exporter: the TorchScript exporter cannot lower the fused attention op that
open_clip ViTs use in eval mode, and one trace keeps model.pt2 and model.onnx the
same graph. The result is checked with ``onnx.checker`` and shape inference.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clap_edge.core.errors import BundleError, first_line
from clap_edge.export.bundle.names import INPUT_IMAGE, OUTPUT_EMBEDDING

log = logging.getLogger(__name__)

INPUT_NAME = INPUT_IMAGE
OUTPUT_NAMES = (OUTPUT_EMBEDDING,)  # schema 4: the image model ends at the embedding
MIN_DYNAMO_OPSET = 18  # the dynamo exporter's lowest native opset; lower ones are version-converted
MAX_BATCH = 4096


@dataclass
class OnnxExportResult:
    path: Path
    opset: int
    program: "torch.export.ExportedProgram"


def export_program(model: torch.nn.Module, example: torch.Tensor) -> "torch.export.ExportedProgram":
    """torch.export the model with a dynamic batch dimension (model.pt2's contents)."""
    batch = torch.export.Dim("N", min=1, max=MAX_BATCH)
    with torch.no_grad():
        return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},), strict=False)


def export_onnx(
    model: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike, opset: int = 17
) -> OnnxExportResult:
    """Write ``model`` as ONNX to ``path`` (input ``image``, output ``embedding``, dynamic N)."""
    import onnx

    path = Path(path)
    program = export_program(model, example)
    with _quiet():
        onnx_program = torch.onnx.export(
            program,
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            opset_version=max(opset, MIN_DYNAMO_OPSET),
            dynamo=True,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    proto = onnx_program.model_proto
    proto = _convert_opset(proto, opset)
    _name_batch_axis(proto)
    onnx.save_model(proto, str(path))
    check_onnx(path)
    return OnnxExportResult(path, onnx_opset(proto), program)


def check_onnx(path: str | os.PathLike) -> None:
    """onnx.checker and strict shape inference; raise BundleError naming the file if either fails."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # onnx raises ValidationError / InferenceError
        raise BundleError(f"{path}: ONNX model fails onnx.checker: {e}") from e


def onnx_opset(proto) -> int:
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _convert_opset(proto, opset: int):
    """Bring the model down to ``opset`` when asked for one below the exporter's; keep it if that fails."""
    import onnx.version_converter

    current = onnx_opset(proto)
    if opset >= current:
        return proto
    try:
        converted = onnx.version_converter.convert_version(proto, opset)
        onnx.checker.check_model(converted)
        return converted
    except Exception as e:  # the converter asserts on some adapters (e.g. ReduceL2 axes as input)
        log.warning("could not convert the ONNX model to opset %d (%s); keeping opset %d",
                    opset, first_line(e)[:120], current)
        return proto


def _name_batch_axis(proto) -> None:
    """The exporter names the dynamic axis after the torch symbol; the contract calls it 'N'."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "N"


@contextlib.contextmanager
def _quiet():
    """The dynamo exporter prints progress lines and warnings; keep the CLI output clean."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def run_torch(model: torch.nn.Module, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits, embedding) of the fused torch model: the reference the exported models are compared with."""
    with torch.no_grad():
        logits, embedding = model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
    return logits.float().numpy(), embedding.float().numpy()
