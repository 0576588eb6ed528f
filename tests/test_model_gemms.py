"""The model-GEMM ceiling (issue 21): the products-only copy of a model, checked against a hand computation."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from clap_edge.apps.model_gemms import build_model_gemms, model_gemm_runs

BATCH = 3


def _tiny_vit(path):
    """Conv patchify (4x4, stride 4) -> tokens -> MatMul -> Relu -> MatMul -> Gemm(transB) with bias."""
    rng = np.random.default_rng(1)
    w = {"conv_w": rng.standard_normal((4, 3, 4, 4)), "w1": rng.standard_normal((4, 6)),
         "w2": rng.standard_normal((6, 4)), "w3": rng.standard_normal((5, 4)), "b3": rng.standard_normal(5)}
    w = {k: v.astype(np.float32) for k, v in w.items()}
    shapes = {"tok": np.array([0, 4, 4], np.int64), "flat": np.array([-1, 4], np.int64)}
    nodes = [helper.make_node("Conv", ["image", "conv_w"], ["c"], strides=[4, 4], kernel_shape=[4, 4]),
             helper.make_node("Reshape", ["c", "tok"], ["c3"]),  # [N, 4 channels, 4 patches]
             helper.make_node("Transpose", ["c3"], ["t"], perm=[0, 2, 1]),  # [N, 4 patches, 4 channels]
             helper.make_node("MatMul", ["t", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["o"]),
             helper.make_node("Reshape", ["o", "flat"], ["o2"]),
             helper.make_node("Gemm", ["o2", "w3", "b3"], ["y"], transB=1)]
    inits = [numpy_helper.from_array(v, k) for k, v in {**w, **shapes}.items()]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                            ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return w


def test_products_only_model_matches_a_hand_computation(tmp_path):
    w = _tiny_vit(tmp_path / "model.onnx")
    gemms = build_model_gemms(tmp_path / "model.onnx", (3, 8, 8), BATCH, tmp_path / "gemms.onnx")
    # the model's own input for the capture: builder's fixed seed
    x = np.random.default_rng(0).standard_normal((BATCH, 3, 8, 8)).astype(np.float32)
    patches = x.reshape(BATCH, 3, 2, 4, 2, 4).transpose(0, 2, 4, 1, 3, 5).reshape(BATCH, 4, 48)  # [N, patch, 3*4*4]
    conv = patches @ w["conv_w"].reshape(4, 48).T  # [N, patch, channel]
    h = conv @ w["w1"]
    o = np.maximum(h, 0) @ w["w2"]
    y = o.reshape(-1, 4) @ w["w3"].T + w["b3"]
    assert gemms.products == 4
    assert gemms.flops == 2 * BATCH * 4 * (4 * 48 + 4 * 6 + 6 * 4 + 4 * 5)
    # products only: the Relu and the reshapes are gone, each product reads the model's own activation
    ops = [n.op_type for n in onnx.load(str(gemms.path)).graph.node]
    assert ops.count("Relu") == 0 and ops.count("Transpose") == 0 and ops.count("Reshape") == 0
    np.testing.assert_allclose(gemms.feeds["t"], conv, rtol=1e-4, atol=1e-4)
    total = ort.InferenceSession(str(gemms.path), providers=["CPUExecutionProvider"]).run(None, gemms.feeds)[0]
    assert float(total) == pytest.approx(float(conv.sum() + h.sum() + o.sum() + y.sum()), rel=1e-4, abs=1e-3)


def test_runs_exist_for_the_libraries_it_covers_and_skip_the_rest(tmp_path):
    _tiny_vit(tmp_path / "model.onnx")
    gemms = build_model_gemms(tmp_path / "model.onnx", (3, 8, 8), 2, tmp_path / "gemms.onnx")
    runs, errors = model_gemm_runs(gemms, ["onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32",
                                           "onnxruntime:int8-static", "torch:fp32"], 1, tmp_path)
    assert sorted(runs) == ["onnxruntime:fp32", "onnxruntime:int8", "openvino:fp32"] and not errors
    # OpenVINO runs the same products: the same total as ONNX Runtime
    ov_total = float(next(iter(runs["openvino:fp32"]().values())))
    ort_total = float(runs["onnxruntime:fp32"]()[0])
    assert ov_total == pytest.approx(ort_total, rel=1e-4, abs=1e-3)


def test_a_model_without_weighted_products_is_a_clear_error(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match="m.onnx: no MatMul/Gemm/Conv with a constant weight"):
        build_model_gemms(tmp_path / "m.onnx", (3, 8, 8), 1, tmp_path / "g.onnx")
