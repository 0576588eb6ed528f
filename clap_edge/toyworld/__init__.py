"""The toy world: a procedural image world where content (shape) and style (colour, size,
background, rendering) are separate, known factors, with captions in the CLAP vocabulary.

Public API (numpy only; ``clap_edge.toyworld.pretrain`` needs torch and is imported on demand):

- vocabularies and domains: ``CLASSES``, ``COLORS``, ``SIZES``, ``BACKGROUNDS``, ``RENDERS``, ``DOMAINS``,
  ``STYLE_SWAP_DOMAINS``, ``swap_partners(class)``, ``DOMAIN_SPECS`` / ``domain_spec(name)``, ``toy_prompt_vocab()`` (= ``clap_edge/vocab/toy.toml``)
- sampling and rendering: ``sample_factors(n, domain, rng)``, ``render(factors)`` -> uint8 [N, 32, 32, 3],
  ``captions(factors, seed)``, ``split_seed(seed, domain, split)``
- datasets: ``generate(domain, split, per_class, seed)`` (in memory), ``write_dataset(root, ...)`` (PNGs in
  ``ROOT/<split>/<domain>/<class>/*.png``), ``split_root(root, split)``, ``read_info(root)``
- the shipped toy CLIP: ``load_model("clap-edge-toy", "toyworld")`` (``clap_edge.models``); pretraining and
  zero-shot helpers in ``clap_edge.toyworld.pretrain`` (``pretrain``, ``evaluate_domains``, ``zero_shot_top1``).
"""

from clap_edge.toyworld.dataset import DATASET_SPLITS, DatasetInfo, generate, read_info, split_root, write_dataset
from clap_edge.toyworld.render import IMAGE_SIZE, render
from clap_edge.toyworld.world import (BACKGROUNDS, CLASSES, COLORS, DOMAIN_SPECS, DOMAINS, RENDERS, SIZES, SPLITS,
                                      STYLE_SWAP_DOMAINS, DomainSpec, Factors, captions, domain_spec, sample_factors,
                                      split_seed, swap_partners, toy_prompt_vocab)

__all__ = [
    "BACKGROUNDS", "CLASSES", "COLORS", "DATASET_SPLITS", "DOMAINS", "DOMAIN_SPECS", "IMAGE_SIZE", "RENDERS", "SIZES",
    "SPLITS", "STYLE_SWAP_DOMAINS", "DatasetInfo", "DomainSpec", "Factors", "captions", "domain_spec", "generate",
    "read_info", "render", "sample_factors", "split_root", "split_seed", "swap_partners", "toy_prompt_vocab",
    "write_dataset",
]
