"""Phone and small-board variants of the fused model: ExecuTorch (.pte, XNNPACK delegate) and LiteRT (.tflite).

Both start from the graph the ONNX export traces (``torch.export`` of the image model: image -> the
L2-normalised embedding; the class matrix is data the runtime applies), so every variant is the same computation:

- ``executorch-fp32`` / ``executorch-int8``: ``to_edge_transform_and_lower`` with the ``XnnpackPartitioner``;
  int8 through ExecuTorch's PT2E flow (``XNNPACKQuantizer``, symmetric per-channel int8 weights, static int8
  activations; ``prepare_pt2e`` -> calibrate -> ``convert_pt2e``) on the same images as the ONNX static int8.
  Dynamic batch 1..``ET_MAX_BATCH``: ExecuTorch plans memory for the upper bound, so the bound is small and
  the runtime runs larger batches in chunks.
- ``litert-fp32`` / ``litert-int8``: ``litert_torch.convert`` (the maintained PyTorch-to-LiteRT converter), int8
  through its PT2E quantizer (static, per-channel), calibrated the same way; batch fixed at 1 (the runtime runs
  a batch image by image). litert-torch pins torch < 2.15 and an older pydantic / typing_extensions than the
  ``[sign]`` extra needs, so it usually lives in its own environment: the conversion then runs in that Python
  (``litert_python``, env ``CLAP_EDGE_LITERT_PYTHON``) as ``python -m clap_edge.export.builders.mobile``,
  reading the ``torch.export`` program this export saved.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from clap_edge.core.errors import ClapEdgeError

ET_MAX_BATCH = 8
CALIBRATION_BATCH = 8
LITERT_PYTHON_ENV = "CLAP_EDGE_LITERT_PYTHON"
FILES = {("executorch", "fp32"): "model.pte", ("executorch", "int8"): "model.int8.pte",
         ("litert", "fp32"): "model.tflite", ("litert", "int8"): "model.int8.tflite"}

__all__ = ["ET_MAX_BATCH", "FILES", "build_executorch", "build_litert", "litert_python", "executorch_predictor",
           "litert_predictor"]


# ---- ExecuTorch ---------------------------------------------------------------------------------


def build_executorch(model, example, dst: str | os.PathLike, precision: str = "fp32",
                     calibration: np.ndarray | None = None) -> Path:
    """Lower ``model`` (the fused classifier) to an ExecuTorch program with the XNNPACK delegate at ``dst``."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    dims = ({0: torch.export.Dim("N", min=1, max=ET_MAX_BATCH)},)
    example = example[:ET_MAX_BATCH]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if precision == "int8":
            model = _pt2e_int8(model, example, dims, calibration, _xnnpack_quantizer())
        program = torch.export.export(model, (example,), dynamic_shapes=dims, strict=False)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    Path(dst).write_bytes(lowered.buffer)
    return Path(dst)


def _xnnpack_quantizer():
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))


def _pt2e_int8(model, example, dims, calibration: np.ndarray | None, quantizer):
    """The documented PT2E flow: export -> prepare_pt2e -> run the calibration images -> convert_pt2e."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calibration is None or not len(calibration):
        raise ClapEdgeError("int8 ExecuTorch / LiteRT variants need calibration images (--calibration DIR)")
    graph = torch.export.export(model, (example,), dynamic_shapes=dims, strict=False).module()
    prepared = prepare_pt2e(graph, quantizer)
    step = CALIBRATION_BATCH if dims else 1
    for i in range(0, len(calibration), step):
        prepared(torch.from_numpy(np.ascontiguousarray(calibration[i:i + step], dtype=np.float32)))
    return convert_pt2e(prepared)


def executorch_predictor(path: str | os.PathLike, classes, threads: int | None = None
                         ) -> Callable[[np.ndarray], np.ndarray]:
    """Logits (``classes`` applied to the embedding) from a .pte in ExecuTorch's runtime (XNNPACK), batches split
    at ET_MAX_BATCH. ``threads`` is not applied: XNNPACK's pool is process-wide in the Python runtime."""
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")

    def predict(batch: np.ndarray) -> np.ndarray:
        parts = [method.execute([torch.from_numpy(np.ascontiguousarray(batch[i:i + ET_MAX_BATCH], np.float32))])[0]
                 for i in range(0, len(batch), ET_MAX_BATCH)]
        return classes.logits(np.concatenate([p.numpy() for p in parts]))
    return predict


# ---- LiteRT -------------------------------------------------------------------------------------


def litert_python(explicit: str | None = None) -> str:
    """The Python that has litert_torch: ``explicit``, $CLAP_EDGE_LITERT_PYTHON, or this one if it has it."""
    chosen = explicit or os.environ.get(LITERT_PYTHON_ENV)
    if chosen:
        return chosen
    if importlib.util.find_spec("litert_torch") is not None:
        return sys.executable
    raise ClapEdgeError("LiteRT export needs litert-torch, which pins torch < 2.15 and older pydantic/typing_extensions "
                        f"than clap-edge[sign] needs: install it in its own environment (docs/mobile.md) and pass "
                        f"--litert-python PATH or set {LITERT_PYTHON_ENV}")


def build_litert(program_path: str | os.PathLike, dst: str | os.PathLike, images: np.ndarray,
                 precision: str = "fp32", python: str | None = None) -> Path:
    """Convert the saved ``torch.export`` program (model.pt2 contents) to a .tflite at ``dst``, in ``python``.

    ``images``: preprocessed float32 [n,3,H,W]; the example input (fp32) or the calibration set (int8)."""
    python = litert_python(python)
    images_path = Path(dst).with_suffix(".images.npy")
    np.save(images_path, np.ascontiguousarray(images, dtype=np.float32))
    cmd = [python, "-m", "clap_edge.export.builders.mobile", str(program_path), str(dst), str(images_path),
           "--precision", precision]
    done = subprocess.run(cmd, capture_output=True, text=True)
    images_path.unlink(missing_ok=True)
    if done.returncode != 0 or not Path(dst).is_file():
        tail = [ln for ln in (done.stderr or "").strip().splitlines() if ln.strip()][-1:] or ["no output"]
        raise ClapEdgeError(f"LiteRT conversion ({python}) failed with exit code {done.returncode}: {tail[0][:400]}")
    return Path(dst)


def convert_litert(model, dst: str | os.PathLike, images: np.ndarray, precision: str = "fp32") -> Path:
    """litert_torch.convert of ``model`` at batch 1 (int8: its PT2E quantizer, static per-channel, calibrated
    on ``images``)."""
    import litert_torch
    import torch

    example = torch.from_numpy(np.ascontiguousarray(images[:1], dtype=np.float32))
    kwargs = {}
    if precision == "int8":
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                 is_dynamic=False))
        model = _pt2e_int8(model, example, None, images, quantizer)
        kwargs["quant_config"] = QuantConfig(pt2e_quantizer=quantizer)
    litert_torch.convert(model, (example,), **kwargs).export(str(dst))
    return Path(dst)


def litert_predictor(path: str | os.PathLike, classes, threads: int | None = None
                     ) -> Callable[[np.ndarray], np.ndarray]:
    """Logits (``classes`` applied to the embedding) from a .tflite in ai-edge-litert's interpreter (batch 1: a
    batch runs image by image)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    runner = interpreter.get_signature_runner()
    name = interpreter.get_signature_list()["serving_default"]["inputs"][0]

    def predict(batch: np.ndarray) -> np.ndarray:
        return classes.logits(np.concatenate([_first_output(runner(**{name: np.ascontiguousarray(x[None], np.float32)}))
                                              for x in batch]))
    return predict


def _first_output(outputs: dict) -> np.ndarray:
    return outputs[sorted(outputs, key=_output_index)[0]]


def _output_index(name: str) -> int:
    """litert-torch names outputs output_0, output_1, ... in the model's return order."""
    return int(name.rsplit("_", 1)[-1]) if name.rsplit("_", 1)[-1].isdigit() else 1 << 30


# ---- the LiteRT conversion as a command (run in the LiteRT environment) ----------------------------


def main(argv: list[str] | None = None) -> int:
    """python -m clap_edge.export.builders.mobile PROGRAM.pt2 OUT.tflite IMAGES.npy [--precision int8]"""
    parser = argparse.ArgumentParser(prog="python -m clap_edge.export.builders.mobile",
                                     description="Convert a saved torch.export program to LiteRT (.tflite).")
    parser.add_argument("program", help="a torch.export program (.pt2), e.g. a bundle's model.pt2")
    parser.add_argument("out", help="the .tflite to write")
    parser.add_argument("images", help="preprocessed float32 [n,3,H,W] .npy: example (fp32) / calibration (int8)")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    args = parser.parse_args(argv)
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert_litert(torch.export.load(args.program).module(), args.out, np.load(args.images), args.precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
