"""FLOPs of one forward pass, counted once at export time for the manifest."""

from __future__ import annotations

import torch


def flops_per_image(model: torch.nn.Module, image_shape: tuple[int, int, int]) -> int:
    """FLOPs (multiply-add = 2) of ``model`` on a batch of one image, from torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *image_shape))
    return int(counter.get_total_flops())
