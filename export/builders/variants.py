"""Reduced-precision variants of model.onnx: dynamic int8, static int8 (QDQ), OpenVINO int8, fp16.

int8 (dynamic): ONNX Runtime's dynamic quantisation of MatMul/Gemm weights (per-channel QInt8);
activations are quantised on the fly, so no calibration data is needed; the final logits
product stays fp32. Conv (the patch embedding, run once) and the attention/LayerNorm maths stay fp32.
qdq (static int8): ONNX Runtime's static quantiser in QDQ form (QuantizeLinear/DequantizeLinear
pairs around the weight GEMMs; per-channel int8 weights, uint8 activations with ranges calibrated
on real images). ONNX Runtime CPU fuses the pairs into integer kernels; TensorRT reads the same
QDQ graph for its int8 engines. Only GEMMs with a constant weight are quantised: the attention
products (activation x activation), LayerNorm, Softmax and the final logits product stay float.
openvino-int8: NNCF post-training quantisation (transformer preset) of the OpenVINO model read from
model.onnx, saved as OpenVINO IR (model.int8.xml + .bin). Quantised: the MatMuls with a constant weight
(QKV / out projections, MLP) and the Conv patch embedding; kept float (NNCF ignored scope): the logits
product and the activation x activation MatMuls (attention Q.K^T and P.V; NNCF's transformer preset
would quantise them), LayerNorm, Softmax, GELU.
Accuracy control (the export's default where it has calibration images, :mod:`int8_control`): of the GEMMs above,
those whose quantisation costs the most agreement with fp32 on validation images stay float as well; each int8
variant's manifest parity entry lists them (``accuracy_control.float_nodes``). The OpenVINO form then runs NNCF's
``quantize_with_accuracy_control`` without SmoothQuant (its restorer cannot revert a smoothed layer).

Which CPU runs the int8 kernels decides both speed and accuracy (:func:`clap_edge.core.machine.int8_path`).
Without VNNI/AMX (``avx2``), x86 integer GEMMs multiply u8 x s8 pairs with ``vpmaddubsw``, whose 16-bit
sum saturates; the documented remedies are applied there: ONNX Runtime's ``reduce_range`` (7-bit
weights) for the dynamic and QDQ forms, and NNCF's overflow fix (7-bit weight range, all layers) for the
OpenVINO form. The CPU's path, flags and the remedies used are recorded with each variant
(:func:`int8_record`), with the variant's CPU time against fp32 measured at export.
fp16: weights and most ops in fp16, but LayerNorm, Softmax and the reductions that
normalise embeddings stay fp32 (they overflow or lose the small differences between
logits), and the model's input/outputs stay float32 so callers see one interface.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from clap_edge.export.bundle.names import OUTPUT_LOGITS

log = logging.getLogger(__name__)

INT8_OP_TYPES = ("MatMul", "Gemm")
INT8_VARIANTS = ("int8", "qdq", "openvino-int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION_METHOD = "minmax"  # measured best worst-domain agreement: bench/results/int8_calibration.json
CALIBRATION_BATCH = 8
OPENVINO_INT8_XML, OPENVINO_INT8_BIN = "model.int8.xml", "model.int8.bin"
FP16_KEEP_FP32 = ("LayerNormalization", "Softmax", "ReduceL2", "ReduceSum", "ReduceMean", "Pow", "Sqrt", "Div", "Erf")


def saturating_path(path: str | None = None) -> bool:
    """Whether this CPU's int8 path sums u8 x s8 pairs in 16 bits (x86 without VNNI / AMX)."""
    from clap_edge.core.machine import int8_path

    return (path or int8_path()) == "avx2"


def remedies(path: str | None = None) -> list[str]:
    """The documented int8 remedies applied for this CPU's int8 path (see the module docstring)."""
    return ["reduce_range (ORT)", "overflow_fix=enable (NNCF)"] if saturating_path(path) else []


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, per_channel: bool = True,
                  reduce_range: bool | None = None, float_nodes: list[str] | tuple[str, ...] = ()) -> Path:
    """Write a dynamically quantised (QInt8 weights) copy of ``src`` to ``dst``.

    ``reduce_range`` None: on where this CPU's int8 path saturates (:func:`saturating_path`).
    ``float_nodes``: GEMMs kept in float as well (the accuracy control's choice, see int8_control)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # ORT logs a generic "consider pre-processing" advice on the root logger for every model;
    # our graph is already shape-inferred and checked at export, so the advice is noise here.
    advice = _DropMessages("pre-processing before quantization")
    logging.getLogger().addFilter(advice)
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=list(INT8_OP_TYPES),
            per_channel=per_channel,
            weight_type=QuantType.QInt8,
            # ORT rewrites a Gemm as "<name>_MatMul" + "<name>_Add" before quantising it: exclude it by that name too
            nodes_to_exclude=output_matmuls(src) + [m for n in float_nodes for m in (n, f"{n}_MatMul")],
            reduce_range=saturating_path() if reduce_range is None else reduce_range,
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


def quantize_qdq(src: str | os.PathLike, dst: str | os.PathLike, images: np.ndarray,
                 method: str = DEFAULT_CALIBRATION_METHOD, batch: int = CALIBRATION_BATCH,
                 reduce_range: bool | None = None, float_nodes: list[str] | tuple[str, ...] = (),
                 cache_dir: str | os.PathLike | None = None) -> Path:
    """Write a statically quantised QDQ copy of ``src`` to ``dst``, calibrated on ``images``.

    ``images``: preprocessed float32 [n, 3, H, W] (the runtime's own preprocessing, so the
    calibrated ranges are those the deployed model sees). ``method``: minmax, entropy or percentile.
    ``float_nodes``: weight GEMMs kept in float as well (int8_control). ``cache_dir``: where the calibrated
    ranges are kept between calls (the accuracy control reruns the quantiser; calibration runs once).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"unknown calibration method {method!r}; expected one of {', '.join(methods)}")
    quantised = [n for n in weight_gemms(src) if n not in float_nodes]
    if not quantised:  # every GEMM kept float: ORT reads an empty nodes_to_quantize as "all nodes"
        shutil.copyfile(src, dst)
        return Path(dst)
    advice = _DropMessages("pre-processing before quantization")
    logging.getLogger().addFilter(advice)
    tmp = tempfile.TemporaryDirectory(prefix="clap-edge-calib-")
    try:
        cache = Path(cache_dir or tmp.name) / f"ranges-{method}.json"
        if method == "entropy" and not cache.is_file():
            cache = _entropy_ranges(src, images, cache, batch)
        quantize_static(
            str(src),
            str(dst),
            _CalibrationReader(images, _input_name(src), batch),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(INT8_OP_TYPES),
            per_channel=True,
            activation_type=QuantType.QUInt8,  # u8 x s8: the x86 integer GEMM kernels' native pairing
            weight_type=QuantType.QInt8,
            # Only the GEMMs with a constant weight: the attention products (two activations) stay float,
            # as in the dynamic variant. (MatMulConstBOnly alone does not keep them out of QDQ mode.)
            nodes_to_quantize=quantised,
            nodes_to_exclude=output_matmuls(src) + list(float_nodes),
            calibrate_method=methods[method],
            reduce_range=saturating_path() if reduce_range is None else reduce_range,
            # Outputs stay float: the bias Add and residual that follow are float anyway, and a second
            # per-tensor rounding of the GEMM output costs accuracy for no speed (ORT then fuses
            # DQ -> MatMul into MatMulIntegerToFloat).
            extra_options={"MatMulConstBOnly": True, "WeightSymmetric": True,
                           "OpTypesToExcludeOutputQuantization": list(INT8_OP_TYPES)},
            **({"calibration_cache_path": str(cache)} if cache else {}),
        )
    finally:
        logging.getLogger().removeFilter(advice)
        tmp.cleanup()
    return Path(dst)


def _entropy_ranges(src: str | os.PathLike, images: np.ndarray, cache: Path, batch: int) -> Path | None:
    """Entropy (KL) ranges from a 2048-bin histogram, as a calibration cache for quantize_static.

    quantize_static builds its entropy calibrator with 128 histogram bins and 128 quantised bins,
    which leaves the KL search a single candidate: the min-max range (measured: identical scales).
    So the histogram is collected here with 2048 bins (the TensorRT convention) and handed over as
    a cache. Older ONNX Runtime without calibration caches: None (its own, min-max-like, entropy)."""
    try:
        from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    except ImportError:
        log.warning("this onnxruntime has no calibration cache: entropy calibration falls back to its 128-bin form")
        return None
    calibrator = create_calibrator(Path(src), list(INT8_OP_TYPES),
                                   augmented_model_path=str(cache.with_suffix(".augmented.onnx")),
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options={"num_bins": 2048, "num_quantized_bins": 128})
    calibrator.collect_data(_CalibrationReader(images, _input_name(src), batch))
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def weight_gemms(src: str | os.PathLike) -> list[str]:
    """The MatMul/Gemm nodes whose second input is a weight (an initialiser), not an activation."""
    import onnx

    graph = onnx.load(str(src), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    weights |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type in INT8_OP_TYPES and len(n.input) > 1 and n.input[1] in weights]


class _CalibrationReader:
    """onnxruntime.quantization.CalibrationDataReader over a preprocessed array, in small batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = CALIBRATION_BATCH):
        self.images, self.input_name, self.batch = np.asarray(images, dtype=np.float32), input_name, batch
        self._it: Iterator | None = None
        self.rewind()

    def get_next(self) -> dict | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter([{self.input_name: np.ascontiguousarray(self.images[i:i + self.batch])}
                         for i in range(0, len(self.images), self.batch)])

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch)

    def __iter__(self):  # some ORT versions iterate the reader
        self.rewind()
        return iter(self._it)


def _input_name(src: str | os.PathLike) -> str:
    import onnx

    graph = onnx.load(str(src), load_external_data=False).graph
    initialisers = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initialisers)


def quantize_openvino_int8(src: str | os.PathLike, dst_xml: str | os.PathLike, images: np.ndarray,
                           preset: str = "mixed", validation=None, classes=None) -> tuple[list[Path], dict]:
    """NNCF post-training int8 of the OpenVINO model read from ``src``; writes IR ``dst_xml`` + ``.bin``.

    The transformer model type keeps LayerNorm/Softmax/GELU maths in float (NNCF's transformer
    ignored patterns) and uses SmoothQuant; the logits product (embedding @ classes.T) is kept
    in float as in the other int8 variants. With ``validation`` (:class:`int8_control.Validation`) and
    ``classes``: NNCF's ``quantize_with_accuracy_control`` keeps the layers that cost the most in float until
    top-1 agreement with fp32 on the validation images reaches ``1 - validation.max_drop``.
    Returns ([xml, bin], accuracy-control record for the manifest: {} without validation).
    """
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(src))
    batches = [np.ascontiguousarray(images[i:i + CALIBRATION_BATCH], dtype=np.float32)
               for i in range(0, len(images), CALIBRATION_BATCH)]
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    # Without VNNI the u8 x s8 pairs saturate in 16 bits: NNCF's fix (7-bit weights) on every layer, not
    # only the first (its default)
    overflow = OverflowFix.ENABLE if saturating_path() else OverflowFix.FIRST_LAYER
    common = dict(preset=nncf.QuantizationPreset(preset), model_type=nncf.ModelType.TRANSFORMER,
                  subset_size=len(batches),
                  ignored_scope=nncf.IgnoredScope(names=_openvino_output_matmuls(model)
                                                  + _openvino_activation_matmuls(model), validate=False))
    params = AdvancedQuantizationParameters(overflow_fix=overflow)
    record: dict = {}
    if validation is None:
        quantised = nncf.quantize(model, nncf.Dataset(batches), advanced_parameters=params, **common)
    else:
        from clap_edge.export.builders.int8_control import nncf_accuracy_control

        quantised, record = nncf_accuracy_control(model, nncf.Dataset(batches), validation, classes, params, common,
                                                  common["ignored_scope"].names)
    dst_xml = Path(dst_xml)
    ov.save_model(quantised, str(dst_xml), compress_to_fp16=False)
    return [dst_xml, dst_xml.with_suffix(".bin")], record


def _openvino_output_matmuls(model) -> list[str]:
    """Names of the MatMul ops that feed the ``logits`` output directly (after at most one Multiply)."""
    names = []
    for output in model.outputs:
        if OUTPUT_LOGITS not in output.get_names():
            continue
        node = output.get_node()
        for _ in range(3):  # Result <- [Multiply / Convert] <- MatMul
            node = node.input_value(0).get_node()
            if node.get_type_name() == "MatMul":
                names.append(node.get_friendly_name())
                break
    return names


def _openvino_activation_matmuls(model) -> list[str]:
    """MatMuls of two activations (attention Q.K^T and P.V): kept float as in the ONNX int8 forms (no weight
    to pre-quantise, and their rounding lands straight on the attention scores)."""
    def constant(value) -> bool:
        node = value.get_node()
        while node.get_type_name() in ("Convert", "Reshape", "Transpose", "Unsqueeze") and node.inputs():
            node = node.input_value(0).get_node()
        return node.get_type_name() == "Constant"

    return [op.get_friendly_name() for op in model.get_ops()
            if op.get_type_name() == "MatMul" and not constant(op.input_value(1)) and not constant(op.input_value(0))]


def int8_record(fp32: str | os.PathLike, variant: str | os.PathLike, batch: np.ndarray, classes,
                calls: int = 5, min_cpu_s: float = 0.2) -> dict[str, object]:
    """What the runtime's ``auto`` needs to trust an int8 variant on a CPU: the CPU (model, flags, int8
    path), the remedies applied, and the variant's CPU time per call against fp32 at batch 1 on this
    CPU, one thread, calls alternated, mean CPU time (``speed_vs_fp32`` > 1: the variant is faster)."""
    import time

    from clap_edge.core.machine import cpu_info, int8_path
    from clap_edge.export.builders.drift import onnx_predictor, openvino_predictor, predictor_for

    x = np.ascontiguousarray(batch[:1], dtype=np.float32)
    # fp32 in the variant's own library (OpenVINO reads model.onnx itself): the choice auto makes is per library
    same_library = openvino_predictor if Path(variant).suffix == ".xml" else onnx_predictor
    runs = {"fp32": same_library(fp32, classes, threads=1), "variant": predictor_for(variant, classes, threads=1)}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for k, run in runs.items():
        run(x)  # warm-up: weight packing, allocation
    # alternated calls until each side has >= min_cpu_s of CPU (small models: many calls, so noise averages out)
    while min(len(c) for c in cpu.values()) < calls or min(sum(c) for c in cpu.values()) < min_cpu_s:
        for k, run in runs.items():
            start = time.process_time()
            run(x)
            cpu[k].append(time.process_time() - start)
        if len(cpu["fp32"]) >= 500:
            break
    fp32_ms, ms = (float(np.mean(cpu[k])) * 1e3 for k in ("fp32", "variant"))
    model, flags = cpu_info()
    isa = [f for f in flags if f.startswith(("avx", "amx", "fma", "asimd")) or f in ("f16c", "neon")]
    return {"cpu_model": model, "cpu_flags": isa, "int8_path": int8_path(), "remedies": remedies(),
            "cpu_ms_fp32": round(fp32_ms, 3), "cpu_ms": round(ms, 3), "speed_vs_fp32": round(fp32_ms / ms, 3)}


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return self.prefix not in str(record.msg)


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
