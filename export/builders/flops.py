"""FLOPs of one forward pass, counted once at export time for the manifest."""

from __future__ import annotations

import torch


def flops_per_image(model: torch.nn.Module, image_shape: tuple[int, int, int]) -> int:
    """FLOPs (multiply-add = 2) of ``model`` on a batch of one image, from torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # nn.MultiheadAttention's inference fast path is one fused op the counter has no formula for
    # (it would miss a third of a ViT's FLOPs); the slow path runs the same maths as countable ops.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(1, *image_shape))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return int(counter.get_total_flops())
