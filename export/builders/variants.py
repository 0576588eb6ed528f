"""Reduced-precision variants of model.onnx: dynamic int8 (CPU) and fp16 (GPU).

int8: ONNX Runtime's dynamic quantisation of MatMul/Gemm weights (per-channel QInt8);
activations are quantised on the fly, so no calibration data is needed; the final logits
product stays fp32. Conv (the
patch embedding, run once) and the attention/LayerNorm maths stay fp32.
fp16: weights and most ops in fp16, but LayerNorm, Softmax and the reductions that
normalise embeddings stay fp32 (they overflow or lose the small differences between
logits), and the model's input/outputs stay float32 so callers see one interface.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

INT8_OP_TYPES = ("MatMul", "Gemm")
FP16_KEEP_FP32 = ("LayerNormalization", "Softmax", "ReduceL2", "ReduceSum", "ReduceMean", "Pow", "Sqrt", "Div", "Erf")


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, per_channel: bool = True) -> Path:
    """Write a dynamically quantised (QInt8 weights) copy of ``src`` to ``dst``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # ORT logs a generic "consider pre-processing" advice on the root logger for every model;
    # our graph is already shape-inferred and checked at export, so the advice is noise here.
    advice = _DropMessages("Please consider to run pre-processing before quantization")
    logging.getLogger().addFilter(advice)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=list(INT8_OP_TYPES),
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=output_matmuls(src),
        )
    finally:
        logging.getLogger().removeFilter(advice)
    return Path(dst)


def output_matmuls(src: str | os.PathLike) -> list[str]:
    """The MatMul/Gemm nodes that produce a graph output: the logits (embedding @ classes.T).

    They are kept fp32: quantising the class matrix puts its rounding error straight onto the
    cosine logits, where near-ties between classes flip, and a [d x C] product costs nothing next
    to the encoder. (On the toy world the agreement with fp32 moved by only a few images in 480
    per domain, up on some domains and down on others.)
    """
    import onnx

    graph = onnx.load(str(src), load_external_data=False).graph
    outputs = {o.name for o in graph.output}
    return [n.name for n in graph.node if n.op_type in INT8_OP_TYPES and outputs.intersection(n.output)]


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def convert_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Write an fp16 copy of ``src`` to ``dst`` (float32 input/outputs, LayerNorm/Softmax kept fp32)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    fp16 = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP16_KEEP_FP32),
        disable_shape_infer=False,
    )
    # The converter appends its input/output casts at the end of the node list; the checker wants order.
    from onnxruntime.transformers.onnx_model import OnnxModel

    wrapped = OnnxModel(fp16)
    wrapped.topological_sort()
    onnx.save_model(wrapped.model, str(dst))
    return Path(dst)
