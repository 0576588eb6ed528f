"""The model's own matrix products as a ceiling: what the library does on this model's GEMMs alone.

A large square GEMM (:mod:`clap_edge.apps.ceiling`) is a poor yardstick for a model whose weights do not
fit in cache: ViT-B-32 streams ~350 MB of weights per call, the ceiling's 9 MB stay cached. On a shared
or time-sliced machine the two slow down very differently (measured on the 2-core dev VM: four CPU
burners made the model 5-6x dearer per CPU-second and the cached GEMM 1.0-1.4x), so a fraction of that
ceiling moves with the load. This ceiling is built from the bundle's own model instead: every MatMul /
Gemm / Conv with a constant weight, with the model's weights, fed the activations the model itself
produces at the bench's batch size, and nothing else (no attention products, LayerNorm, GELU,
reshapes). Its weight footprint and shapes are the model's, so it feels the same cache and memory
pressure; the fraction ``model / its GEMMs alone`` (images per CPU-second, sampled in the same rounds)
says how much of the time the rest of the graph and the runtime add. Each sample is one call, as each
model row's timed call is one call per round: a second call back to back would find part of the
weights still in cache, which the model's call (after the other backends ran) never does.

Keys: ``onnxruntime:fp32``, ``onnxruntime:int8`` (the same products through ``quantize_int8``, the dynamic
variant's quantiser), ``openvino:fp32`` and ``openvino:bf16``. Static int8 forms need a calibrated copy of
each product and are not covered (their rows keep the square-GEMM ceiling only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from clap_edge.apps.ceiling import error_line, openvino_runner, ort_runner

WEIGHTED_OPS = ("MatMul", "Gemm", "Conv")
MODEL_GEMM_KEYS = ("onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32", "openvino:bf16")

__all__ = ["WEIGHTED_OPS", "MODEL_GEMM_KEYS", "ModelGemms", "build_model_gemms", "model_gemm_runs",
           "product_flops"]


@dataclass
class ModelGemms:
    path: Path  # the products-only ONNX model (static shapes, the model's weights)
    feeds: dict[str, np.ndarray]  # the activations the model gives each product, at this batch
    flops: float  # 2*M*K*N summed over the products (per call, i.e. per batch)
    products: int
    batch: int


def build_model_gemms(model_path: str | Path, input_shape: tuple[int, ...], batch: int, dst: Path) -> ModelGemms:
    """Write the products-only copy of ``model_path`` at ``batch`` to ``dst`` (with its weights beside it).

    ``input_shape``: the model input without the batch, (3, H, W)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(model_path))
    weights = {i.name: i for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in WEIGHTED_OPS and len(n.input) > 1 and n.input[1] in weights]
    if not nodes:
        raise ValueError(f"{model_path}: no MatMul/Gemm/Conv with a constant weight to build a ceiling from")
    feeds = _activations(model, sorted({n.input[0] for n in nodes}), input_shape, batch)
    graph_nodes, sums, used = [], [], set()
    for i, n in enumerate(nodes):  # each product feeds a ReduceSum: one cheap pass over its output
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        graph_nodes.append(helper.make_node(n.op_type, list(n.input), [f"p{i}"], name=f"product{i}", **attrs))
        graph_nodes.append(helper.make_node("ReduceSum", [f"p{i}"], [f"s{i}"], keepdims=0, name=f"sum{i}"))
        sums.append(f"s{i}")
        used.update(x for x in n.input[1:] if x)
    graph_nodes.append(helper.make_node("Sum", sums, ["total"], name="total"))
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(a.shape)) for name, a in feeds.items()]
    graph = helper.make_graph(graph_nodes, "model_gemms", inputs,
                              [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
                              [weights[w] for w in sorted(used) if w in weights])
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(out, str(dst), save_as_external_data=True, location=dst.name + ".data")
    flops = sum(product_flops(n, feeds[n.input[0]].shape, weights[n.input[1]].dims) for n in nodes)
    return ModelGemms(dst, feeds, flops, len(nodes), batch)


def product_flops(node: Any, a_shape: tuple[int, ...], w_dims: Any) -> float:
    """2 x multiply-adds of one product: MatMul/Gemm ``[..., M, K] @ [K, N]``; Conv from its output size."""
    w = [int(d) for d in w_dims]
    if node.op_type == "Conv":  # weight [Cout, Cin/g, kh, kw]; output pixels from the input size and strides
        attrs = {a.name: a for a in node.attribute}
        strides = list(attrs["strides"].ints) if "strides" in attrs else [1] * (len(w) - 2)
        pads = list(attrs["pads"].ints) if "pads" in attrs else [0] * 2 * (len(w) - 2)
        spatial = [(a_shape[2 + i] + pads[i] + pads[i + len(strides)] - w[2 + i]) // strides[i] + 1
                   for i in range(len(strides))]
        return 2.0 * a_shape[0] * w[0] * float(np.prod(spatial)) * float(np.prod(w[1:]))
    rows = float(np.prod(a_shape[:-1]))
    k = a_shape[-1]
    n = w[0] if node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute) else w[-1]
    return 2.0 * rows * k * n


def _activations(model: Any, names: list[str], input_shape: tuple[int, ...], batch: int) -> dict[str, np.ndarray]:
    """The model's own intermediate tensors ``names`` for one fixed random batch (ONNX Runtime, unoptimised,
    so every name survives)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for name in names:
        if name not in outputs:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: x})))
    return {name: np.ascontiguousarray(values[name]) for name in names}


def model_gemm_runs(gemms: ModelGemms, keys: list[str], threads: int | None, tmp: Path
                    ) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """key -> a warmed-up callable running the products once; plus key -> error for those that failed."""
    runs, errors = {}, {}
    for key in keys:
        if key not in MODEL_GEMM_KEYS:
            continue
        try:
            run = _build(key, gemms, threads, tmp)
            run()  # warm-up: weight packing, JIT
            runs[key] = run
        except Exception as e:  # context only: the row keeps its square-GEMM ceiling
            errors[key] = error_line(e)
    return runs, errors


def _build(key: str, gemms: ModelGemms, threads: int | None, tmp: Path) -> Callable[[], Any]:
    library, precision = key.split(":")
    if library == "onnxruntime":
        path = gemms.path
        if precision == "int8":
            from clap_edge.export.builders.variants import quantize_int8

            path = quantize_int8(gemms.path, tmp / f"model_gemms_b{gemms.batch}.int8.onnx")
        return ort_runner(path, gemms.feeds, threads)
    return openvino_runner(gemms.path, gemms.feeds, threads, precision)
