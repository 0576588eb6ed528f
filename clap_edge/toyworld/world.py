"""The toy world's factors, named domains and captions.

Content is the shape class; style is colour, size, background and rendering. In the
training distribution (``id``) colour and background are correlated with the class
(each equals the class's own colour / background with probability 0.5), so a model
can partly lean on style: exactly the shortcut CLAP is meant to remove. The shifted
domains break one or more of those correlations:

| domain | colour | background | rendering |
| --- | --- | --- | --- |
| ``id`` | class colour w.p. 0.5, else uniform | class background w.p. 0.5, else uniform | mostly photo / cartoon (``ID_RENDER_PROBS``) |
| ``color_shift`` | uniform over the *other* colours | as ``id`` | as ``id`` |
| ``background_shift`` | as ``id`` | uniform over the *other* backgrounds | as ``id`` |
| ``render_shift`` | as ``id`` | as ``id`` | uniform over sketch, painting, mosaic |
| ``both`` | as ``color_shift`` | as ``background_shift`` | as ``render_shift`` |
| ``style_swap`` | the usual colour of another class | that same class's usual background | as ``id`` |
| ``style_swap_render`` | as ``style_swap`` | as ``style_swap`` | as ``render_shift`` |

The two ``style_swap`` domains isolate style: no image shows its class's usual colour or
background, and both point to one other class (whose usual colour and background both
differ from the class's own), so a model that reads style is pulled to a wrong answer,
while the rendering stays in distribution (``style_swap``) or is shifted as well.

Captions use the CLAP template words (CLAP.md) plus a background slot, built with
:class:`clap_edge.prompts.Prompt`, so they live in the same vocabulary as the CLAP head's
training prompts (``clap_edge/vocab/toy.toml``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from clap_edge.core.errors import ClapEdgeError
from clap_edge.prompts import Prompt, PromptVocab

# Sorted, so that a class's index here is its index in ``load_class_names(<dataset folder>)`` (sorted folders).
CLASSES = ("arrow", "circle", "cross", "heart", "moon", "square", "star", "triangle")
COLORS = ("red", "blue", "green", "yellow", "purple", "orange")
COLOR_RGB = np.array(
    [[0.86, 0.12, 0.12], [0.15, 0.30, 0.90], [0.12, 0.68, 0.20],
     [0.95, 0.85, 0.10], [0.55, 0.15, 0.70], [0.98, 0.55, 0.08]], dtype=np.float32)
SIZES = ("small", "normal sized", "large")
SIZE_SCALE = np.array([0.50, 0.68, 0.86], dtype=np.float32)  # shape radius as a fraction of the half-canvas
BACKGROUNDS = ("white", "gray", "black", "striped")
RENDERS = ("photo", "cartoon", "sketch", "painting", "mosaic")
SHIFTED_RENDERS = ("sketch", "painting", "mosaic")
# How each rendering is named in captions: CLAP.md's image types and art styles.
RENDER_IMAGE_TYPE = {"photo": "photograph", "cartoon": "cartoon", "sketch": "sketch",
                     "painting": "painting", "mosaic": "mosaic art"}
RENDER_ART_STYLE = {"photo": "realistic", "painting": "impressionistic"}
# id rendering mix: photo and cartoon dominate; the shifted renderings are rare (so their words are known).
ID_RENDER_PROBS = (0.45, 0.45, 0.1 / 3, 0.1 / 3, 0.1 / 3)

# New domains go at the end: a domain's index seeds its images (split_seed), so the others keep theirs.
DOMAINS = ("id", "color_shift", "background_shift", "render_shift", "both", "style_swap", "style_swap_render")
STYLE_SWAP_DOMAINS = ("style_swap", "style_swap_render")


def in_world_order(by_domain: dict) -> dict:
    """``by_domain`` with the toy world's domains in DOMAINS order (id first), other names after, sorted:
    the demo and ``clap-edge eval`` list domains, and colour their plot lines, the same way."""
    rank = {d: i for i, d in enumerate(DOMAINS)}
    return dict(sorted(by_domain.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))

SPLITS = ("train", "val", "test")
P_CORRELATED = 0.5
P_STYLE_WORD = 0.7
P_REORDER = 0.25


def class_color(class_index: np.ndarray | int) -> np.ndarray | int:
    """Index of the colour correlated with a class in ``id``."""
    return np.asarray(class_index) % len(COLORS)


def class_background(class_index: np.ndarray | int) -> np.ndarray | int:
    """Index of the background correlated with a class in ``id``."""
    return (np.asarray(class_index) * 3 + 1) % len(BACKGROUNDS)


@dataclass(frozen=True)
class DomainSpec:
    """How one domain draws its style factors."""

    name: str
    # "correlated" (p=P_CORRELATED), "anti" (never the class's own) or "swap" (colour and background
    # both those of one other class, see swap_partners; "swap" is set on both or neither)
    color: str = "correlated"
    background: str = "correlated"
    renders: tuple[float, ...] = ID_RENDER_PROBS  # probabilities over RENDERS

    def __post_init__(self) -> None:
        if (self.color == "swap") != (self.background == "swap"):
            raise ClapEdgeError(f"domain {self.name!r}: 'swap' must set colour and background together")

    @property
    def allowed_renders(self) -> tuple[str, ...]:
        return tuple(r for r, p in zip(RENDERS, self.renders) if p > 0)


_UNIFORM_SHIFTED = tuple(1 / 3 if r in SHIFTED_RENDERS else 0.0 for r in RENDERS)
DOMAIN_SPECS = {
    "id": DomainSpec("id"),
    "color_shift": DomainSpec("color_shift", color="anti"),
    "background_shift": DomainSpec("background_shift", background="anti"),
    "render_shift": DomainSpec("render_shift", renders=_UNIFORM_SHIFTED),
    "both": DomainSpec("both", color="anti", background="anti", renders=_UNIFORM_SHIFTED),
    "style_swap": DomainSpec("style_swap", color="swap", background="swap"),
    "style_swap_render": DomainSpec("style_swap_render", color="swap", background="swap", renders=_UNIFORM_SHIFTED),
}


def swap_partners(class_index: int) -> tuple[int, ...]:
    """Classes whose usual colour and usual background both differ from ``class_index``'s."""
    own_color, own_background = class_color(class_index), class_background(class_index)
    return tuple(k for k in range(len(CLASSES))
                 if class_color(k) != own_color and class_background(k) != own_background)


def domain_spec(name: str) -> DomainSpec:
    try:
        return DOMAIN_SPECS[name]
    except KeyError:
        raise ClapEdgeError(f"unknown toy domain {name!r}; known: {', '.join(DOMAINS)}") from None


@dataclass
class Factors:
    """Per-image factors of a sample of N images (all arrays of length N)."""

    label: np.ndarray  # class index
    color: np.ndarray
    size: np.ndarray
    background: np.ndarray
    render: np.ndarray
    # Continuous nuisances: centre offset (-1..1 of the free margin), rotation (radians), seed for textures.
    offset: np.ndarray = field(repr=False)
    angle: np.ndarray = field(repr=False)
    texture_seed: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.label)


def split_seed(seed: int, domain: str, split: str) -> np.random.SeedSequence:
    """A distinct random stream per (seed, domain, split): splits never share a stream."""
    if split not in SPLITS:
        raise ClapEdgeError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return np.random.SeedSequence([seed, DOMAINS.index(domain_spec(domain).name), SPLITS.index(split)])


def sample_factors(n: int, domain: str = "id", rng: np.random.Generator | None = None,
                   labels: np.ndarray | None = None) -> Factors:
    """Draw the factors of ``n`` images of ``domain`` (balanced classes unless ``labels`` given)."""
    spec = domain_spec(domain)
    rng = rng or np.random.default_rng(0)
    if labels is None:
        labels = rng.permutation(np.arange(n) % len(CLASSES))
    labels = np.asarray(labels, dtype=np.int64)
    if spec.color == "swap":  # one other class per image lends both its colour and its background
        partner = np.array([rng.choice(swap_partners(int(c))) for c in labels], dtype=np.int64)
        color, background = class_color(partner), class_background(partner)
    else:
        color = _draw_style(rng, labels, class_color(labels), len(COLORS), spec.color)
        background = _draw_style(rng, labels, class_background(labels), len(BACKGROUNDS), spec.background)
    render = rng.choice(len(RENDERS), size=n, p=np.asarray(spec.renders) / sum(spec.renders))
    return Factors(
        label=labels, color=color, size=rng.integers(0, len(SIZES), n), background=background, render=render,
        offset=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        angle=rng.uniform(-0.25, 0.25, n).astype(np.float32),
        texture_seed=rng.integers(0, 2**31 - 1, n),
    )


def _draw_style(rng: np.random.Generator, labels: np.ndarray, own: np.ndarray, k: int, mode: str) -> np.ndarray:
    n = len(labels)
    if mode == "correlated":
        return np.where(rng.random(n) < P_CORRELATED, own, rng.integers(0, k, n))
    if mode == "anti":  # uniform over the k-1 values other than the class's own
        return (own + rng.integers(1, k, n)) % k
    raise ClapEdgeError(f"unknown style mode {mode!r}")


def caption_record(factors: Factors, i: int, rng: random.Random, p_word: float = P_STYLE_WORD,
                   p_reorder: float = P_REORDER) -> Prompt:
    """A caption of image ``i`` as a CLAP prompt record; each style word kept with probability ``p_word``."""
    render = RENDERS[factors.render[i]]

    def keep(word: str | None) -> str | None:
        return word if word is not None and rng.random() < p_word else None

    return Prompt(
        class_name=CLASSES[factors.label[i]],
        image_type=keep(RENDER_IMAGE_TYPE[render]),
        size=keep(SIZES[factors.size[i]]),
        art_style=keep(RENDER_ART_STYLE.get(render)),
        color=keep(COLORS[factors.color[i]]),
        background=keep(BACKGROUNDS[factors.background[i]]),
        reordered=rng.random() < p_reorder,
        style_article=False,  # the wording the shipped toy CLIP was pretrained on: keeps it reproducible
    )


def captions(factors: Factors, seed: int = 0, p_word: float = P_STYLE_WORD) -> list[str]:
    """One sampled caption per image, deterministic for ``seed``."""
    rng = random.Random(seed)
    return [caption_record(factors, i, rng, p_word).text() for i in range(len(factors))]


def toy_prompt_vocab() -> PromptVocab:
    """The CLAP prompt vocabulary of the toy world (same words as ``clap_edge/vocab/toy.toml``)."""
    return PromptVocab(
        image_types=tuple(RENDER_IMAGE_TYPE[r] for r in RENDERS),
        sizes=SIZES,
        art_styles=tuple(dict.fromkeys(RENDER_ART_STYLE.values())),
        colors=COLORS,
        backgrounds=BACKGROUNDS,
    )
