"""Open a bundle's LiteRT model (.tflite) in ai-edge-litert's interpreter (CPU kernels, XNNPACK delegate).

``ai-edge-litert`` is the runtime only: numpy in and out, no torch, no jax. The model takes one image
(batch 1, as litert-torch converted it); the runner feeds a batch image by image.
"""

from __future__ import annotations

from typing import Any

from clap_edge.core.errors import BundleError
from clap_edge.export.bundle import Bundle

__all__ = ["load_signature", "output_order"]


def load_signature(bundle: Bundle, variant: str, threads: int | None = None) -> tuple[Any, str, str]:
    """(signature runner, input name, output name) of the ``variant`` .tflite (image -> embedding)."""
    from ai_edge_litert.interpreter import Interpreter

    path = bundle.variant_file(variant)  # sha256-checked
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=int(threads) if threads else None)
        signatures = interpreter.get_signature_list()
        key = next(iter(signatures))
        runner = interpreter.get_signature_runner(key)
    except (ValueError, RuntimeError, StopIteration) as e:
        raise BundleError(f"{bundle.root}: LiteRT cannot load {path.name}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e
    inputs, outputs = signatures[key]["inputs"], output_order(signatures[key]["outputs"])
    if len(inputs) != 1 or len(outputs) != 1:
        raise BundleError(f"{bundle.root}: {path.name} takes {len(inputs)} inputs and gives {len(outputs)} outputs; "
                          "expected one image input and the embedding")
    return runner, inputs[0], outputs[0]


def output_order(names: list[str]) -> list[str]:
    """litert-torch names outputs output_0, output_1, ... in the model's return order."""
    def index(name: str) -> int:
        tail = name.rsplit("_", 1)[-1]
        return int(tail) if tail.isdigit() else 1 << 30
    return sorted(names, key=index)
