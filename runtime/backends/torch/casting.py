"""Cast a ``torch.export`` program's module to fp16 / bf16 with LayerNorm kept in fp32.

Why a graph pass rather than ``module.half()``: the exported graph has the export-time dtypes baked
in (``aten.to.dtype(float32)`` from open_clip's LayerNorm cast-back, ``_assert_tensor_metadata``
checks of float32 inputs), so a plain cast either fails those asserts or silently flips activations
back to fp32 halfway. And LayerNorm in fp16 is CLIP's best-known reduced-precision failure
(the variance of wide residual streams overflows / loses precision), so each ``aten.layer_norm``
runs on an fp32 copy of its input with fp32 weight and bias, and its output is cast back.
"""

from __future__ import annotations

from typing import Any

DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}

__all__ = ["DTYPE_NAMES", "cast_program_module", "torch_dtype"]


def torch_dtype(precision: str) -> Any:
    import torch

    return getattr(torch, DTYPE_NAMES[precision])


def cast_program_module(module: Any, precision: str) -> Any:
    """``module`` (``ExportedProgram.module()``, a GraphModule) computing in ``precision``, LayerNorm in fp32.

    Modifies and returns ``module``. Inputs are cast to the compute dtype inside the graph, so callers
    may keep feeding float32; outputs come out in the compute dtype."""
    import torch

    if precision == "fp32":
        return module
    dtype = torch_dtype(precision)
    aten = torch.ops.aten
    graph = module.graph
    keep_fp32: set[str] = set()
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is aten._assert_tensor_metadata.default:
            graph.erase_node(node)  # asserts the export-time dtype of a tensor we are about to change
        elif node.op == "call_function" and node.target is aten.to.dtype and node.args[1] == torch.float32:
            node.args = (node.args[0], dtype, *node.args[2:])
        elif node.op == "call_function" and node.target is aten.layer_norm.default:
            _layer_norm_in_fp32(graph, node, dtype, keep_fp32)
    for node in graph.nodes:  # the image input: accept float32 from callers, compute in dtype
        if node.op == "placeholder":
            with graph.inserting_after(node):
                cast = graph.call_function(aten.to.dtype, (node, dtype))
            node.replace_all_uses_with(cast, delete_user_cb=lambda user: user is not cast)
    graph.lint()
    module.recompile()
    module.to(dtype)
    for name in keep_fp32:
        owner, _, attr = name.rpartition(".")
        holder = module.get_submodule(owner) if owner else module
        value = getattr(holder, attr)
        if isinstance(value, torch.nn.Parameter):
            value.data = value.data.float()
        else:
            setattr(holder, attr, value.float())
    return module


def _layer_norm_in_fp32(graph: Any, node: Any, dtype: Any, keep_fp32: set[str]) -> None:
    import torch

    aten = torch.ops.aten
    x = node.args[0]
    with graph.inserting_before(node):
        x32 = graph.call_function(aten.to.dtype, (x, torch.float32))
    node.args = (x32, *node.args[1:])
    for arg in node.args[2:4]:  # weight, bias: parameters read by get_attr
        if getattr(arg, "op", None) == "get_attr":
            keep_fp32.add(arg.target)
    with graph.inserting_after(node):
        back = graph.call_function(aten.to.dtype, (node, dtype))
    node.replace_all_uses_with(back, delete_user_cb=lambda user: user is not back)
