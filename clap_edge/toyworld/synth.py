"""The toy stand-in for the authors' ``gen_images.py``: one image per template prompt, from the prompt's own words.

The authors synthesise Im.Aug's training images with Stable Diffusion from the template
prompts (``data/synthesis_images/<class>/<prompt>/<prompt>_1.png``). Here each toy template
prompt's words are the renderer's factors: the class is the shape, the colour, size and
background words are those factors, and the image type is the rendering (the art style has no
factor of its own in this world: "a realistic sketch" renders as a sketch). Position, rotation
and texture are drawn from a seeded stream, as a generator's own randomness would be.
"""

from __future__ import annotations

import random

import numpy as np

from clap_edge.core.errors import ClapEdgeError
from clap_edge.prompts import Prompt, template_records
from clap_edge.toyworld.render import render
from clap_edge.toyworld.world import (BACKGROUNDS, CLASSES, COLORS, RENDER_IMAGE_TYPE, SIZES, Factors,
                                      toy_prompt_vocab)

def prompt_factors(prompts: list[Prompt], seed: int = 0) -> Factors:
    """The factors of one image per prompt (every style word must be a toy vocabulary word)."""
    rng = np.random.default_rng(seed)
    n = len(prompts)

    def index(words: tuple[str, ...], word: str | None, slot: str) -> int:
        if word not in words:
            raise ClapEdgeError(f"toy template image: {slot} {word!r} is not a toy world word ({', '.join(words)})")
        return words.index(word)

    types = tuple(RENDER_IMAGE_TYPE.values())  # in RENDERS order: the index is the rendering
    return Factors(
        label=np.array([index(CLASSES, p.class_name, "class") for p in prompts], dtype=np.int64),
        color=np.array([index(COLORS, p.color, "colour") for p in prompts], dtype=np.int64),
        size=np.array([index(SIZES, p.size, "size") for p in prompts], dtype=np.int64),
        background=np.array([index(BACKGROUNDS, p.background, "background") for p in prompts], dtype=np.int64),
        render=np.array([index(types, p.image_type, "image type") for p in prompts], dtype=np.int64),
        offset=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        angle=rng.uniform(-0.25, 0.25, n).astype(np.float32),
        texture_seed=rng.integers(0, 2**31 - 1, n),
    )


def template_images(class_names: list[str] | tuple[str, ...] = CLASSES, seed: int = 0,
                    per_class: int | None = None) -> tuple[list[Prompt], np.ndarray]:
    """Every toy template prompt of ``class_names`` (``toy_prompt_vocab()``: 720 a class) and its image,
    uint8 [N, 32, 32, 3]; ``per_class``: a seeded sample of that many prompts per class instead."""
    vocab = toy_prompt_vocab()
    rng = random.Random(seed)
    prompts = []
    for name in class_names:
        records = template_records(name, vocab)
        prompts += records if per_class is None else rng.sample(records, min(per_class, len(records)))
    return prompts, render(prompt_factors(prompts, seed))


__all__ = ["prompt_factors", "template_images"]
