"""Template prompts and their augmented views (CLAP.md, "Training data" and "Augmented view").

A prompt is built from slots: ``{a|an} {art style} {image type} of {a|an} {size} {colour} {class}``.
We keep prompts as :class:`Prompt` records (the chosen word per slot) so that an
augmented view is a pure function of the record and a seeded RNG, and renders to text
only at the end.
"""

from __future__ import annotations

import itertools
import random
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable

from clap_edge.core.errors import PromptError


@dataclass(frozen=True)
class PromptVocab:
    """The style words combined with every class name (CLAP.md defaults: 8 x 3 x 2 x 10 = 480)."""

    image_types: tuple[str, ...] = (
        "painting", "sketch", "cartoon", "clipart", "photograph", "infograph", "mosaic art", "sculpture",
    )
    sizes: tuple[str, ...] = ("large", "normal sized", "small")
    art_styles: tuple[str, ...] = ("realistic", "impressionistic")
    colors: tuple[str, ...] = (
        "red", "blue", "green", "yellow", "purple", "orange", "black", "white", "brown", "multicolored",
    )
    # Optional extra slot (the toy world adds backgrounds): "... {class} on a {background} background".
    backgrounds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for slot in ("image_types", "sizes", "art_styles", "colors"):
            if not getattr(self, slot):
                raise PromptError(f"prompt vocabulary slot {slot!r} is empty")

    @property
    def prompts_per_class(self) -> int:
        n = len(self.image_types) * len(self.sizes) * len(self.art_styles) * len(self.colors)
        return n * max(1, len(self.backgrounds))

    @classmethod
    def from_file(cls, path: str | Path) -> "PromptVocab":
        """Read a vocabulary from TOML or YAML: keys image_types, sizes, art_styles, colors[, backgrounds]."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text) if path.suffix == ".toml" else _load_yaml(text)
        except (OSError, ValueError) as e:
            raise PromptError(f"{path}: cannot read prompt vocabulary ({e})") from e
        if not isinstance(data, dict):
            raise PromptError(f"{path}: a prompt vocabulary must be a mapping of slot -> list of words")
        known = {"image_types", "sizes", "art_styles", "colors", "backgrounds"}
        unknown = set(data) - known
        if unknown:
            raise PromptError(f"{path}: unknown vocabulary slots {sorted(unknown)}; known: {sorted(known)}")
        bad = sorted(k for k, v in data.items() if not isinstance(v, list))
        if bad:
            raise PromptError(f"{path}: vocabulary slots {bad} must each be a list of words")
        return cls(**{k: tuple(str(w) for w in v) for k, v in data.items()})

    def fingerprint(self) -> str:
        """A stable text form, used to key the embedding cache."""
        return repr((self.image_types, self.sizes, self.art_styles, self.colors, self.backgrounds))


@dataclass(frozen=True)
class Prompt:
    """One template prompt, word by word; ``None`` marks a dropped slot."""

    class_name: str
    image_type: str | None
    size: str | None
    art_style: str | None
    color: str | None
    background: str | None = None
    reordered: bool = False
    # The reordered form keeps the style's article, as the authors' ``__reverse_prompt`` does
    # ("a dog in a realistic painting style"); False gives "a dog in realistic painting style".
    style_article: bool = True

    def text(self) -> str:
        obj = _with_article(" ".join(w for w in (self.size, self.color, self.class_name) if w))
        if self.background:
            obj = f"{obj} on {_with_article(self.background)} background"
        style = " ".join(w for w in (self.art_style, self.image_type) if w)
        if not style:
            return obj
        if self.reordered:
            return f"{obj} in {_with_article(style) if self.style_article else style} style"
        return f"{_with_article(style)} of {obj}"


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities of the augmented view (CLAP.md defaults)."""

    p_drop_size: float = 0.5
    p_drop_color: float = 0.5
    p_drop_art_style: float = 0.0
    p_drop_image_type: float = 0.0
    p_drop_background: float = 0.5
    p_reorder: float = 0.5
    replace: bool = False  # swap the word for another from its list instead of dropping it
    reorder_article: bool = True  # "Y in a X style" (the authors' wording) or "Y in X style"

    def drop_probabilities(self) -> dict[str, float]:
        """Prompt slot -> probability of dropping (or replacing) its word, in the order views draw them."""
        return {"size": self.p_drop_size, "color": self.p_drop_color, "art_style": self.p_drop_art_style,
                "image_type": self.p_drop_image_type, "background": self.p_drop_background}


# Prompt slot -> the PromptVocab field its words come from.
VOCAB_SLOTS = {"size": "sizes", "color": "colors", "art_style": "art_styles", "image_type": "image_types",
               "background": "backgrounds"}


def template_prompts(class_name: str, vocab: PromptVocab | None = None) -> list[str]:
    """Every template prompt for ``class_name`` (480 with the default vocabulary)."""
    return [p.text() for p in template_records(class_name, vocab)]


def template_records(class_name: str, vocab: PromptVocab | None = None) -> list[Prompt]:
    vocab = vocab or PromptVocab()
    backgrounds: Iterable[str | None] = vocab.backgrounds or (None,)
    return [
        Prompt(class_name, image_type, size, art_style, color, background)
        for image_type, size, art_style, color, background in itertools.product(
            vocab.image_types, vocab.sizes, vocab.art_styles, vocab.colors, backgrounds
        )
    ]


def augment(prompt: Prompt, rng: random.Random, config: AugmentConfig | None = None,
            vocab: PromptVocab | None = None) -> Prompt:
    """The augmented view of ``prompt``: style words dropped (or replaced), then maybe reordered."""
    config = config or AugmentConfig()
    vocab = vocab or PromptVocab()
    changes: dict[str, str | None] = {}
    for slot, p in config.drop_probabilities().items():
        current = getattr(prompt, slot)
        words = getattr(vocab, VOCAB_SLOTS[slot])
        if current is None or rng.random() >= p:
            continue
        others = [w for w in words if w != current]
        changes[slot] = rng.choice(others) if config.replace and others else None
    changes["reordered"] = rng.random() < config.p_reorder
    return replace(prompt, **changes, style_article=config.reorder_article)


def augmented_texts(class_name: str, vocab: PromptVocab | None = None, config: AugmentConfig | None = None,
                    seed: int = 0) -> list[str]:
    """One augmented view per template prompt of ``class_name``, deterministic for a seed."""
    rng = random.Random(f"{seed}:{class_name}")
    return [augment(p, rng, config, vocab).text() for p in template_records(class_name, vocab)]


def distinct_views(prompt: Prompt, config: AugmentConfig | None = None,
                   vocab: PromptVocab | None = None) -> list[Prompt]:
    """Every view :func:`augment` can produce for ``prompt`` in drop mode (for pre-encoding).

    With drop mode each slot is either kept or removed, and the order is plain or
    reordered, so a prompt has at most 2^k * 2 views; slots whose probability is 0 stay.
    """
    config = config or AugmentConfig()
    if config.replace:
        raise PromptError("distinct_views enumerates drop mode only; replace mode samples views on the fly")
    probs = config.drop_probabilities()
    choices = []
    for slot, p in probs.items():
        word = getattr(prompt, slot)
        options = [word]
        if word is not None and p > 0:
            options = [None] if p >= 1 else [word, None]
        choices.append(options)
    orders = [False, True] if 0 < config.p_reorder < 1 else [config.p_reorder >= 1]
    views = []
    for words in itertools.product(*choices):
        for reordered in orders:
            views.append(replace(prompt, **dict(zip(probs, words)), reordered=reordered,
                                 style_article=config.reorder_article))
    return views


# ---- class names -----------------------------------------------------------------


def load_class_names(source: str | Path) -> list[str]:
    """Class names from a text file (one per line), a dataset folder, or a comma list.

    Folders may be ``root/class/*.jpg``, ``root/domain/class/*.jpg`` or either under
    ``root/{val,test}/`` (see :mod:`clap_edge.core.datasets`). Duplicates, also those equal only
    after Unicode NFC normalisation, are dropped with a warning naming both spellings; empty input is an error (an empty
    string is not "the current folder").
    """
    if isinstance(source, str) and not source.strip():
        raise PromptError("class list is empty: pass a file, a dataset folder or names like cat,dog")
    path = Path(source)
    if path.is_dir():
        names = _class_names_from_folder(path)
    elif path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise PromptError(f"class list {path}: cannot read it as UTF-8 text ({e})") from e
        names = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    elif isinstance(source, str) and ("," in source or not path.suffix):
        names = [n.strip() for n in source.split(",") if n.strip()]
    else:
        raise PromptError(f"class list {source!r}: no such file or folder")
    return dedupe_class_names(names, source=str(source))


def dedupe_class_names(names: list[str], source: str = "class list") -> list[str]:
    """The names in order, each once: a duplicate (also one equal after Unicode NFC) is dropped with a warning."""
    import warnings

    from clap_edge.core.classnames import describe_duplicate, nfc_key

    seen: dict[str, str] = {}
    for name in names:
        key = nfc_key(name)
        if key in seen:
            warnings.warn(f"{source}: duplicate class {name!r} dropped ({describe_duplicate(seen[key], name)})",
                          stacklevel=3)
        else:
            seen[key] = name
    if not seen:
        raise PromptError(f"{source}: no class names found")
    return list(seen.values())


def check_unique_class_names(names: list[str], source: str = "class names") -> None:
    """PromptError naming both spellings if two names are equal after Unicode NFC normalisation."""
    from clap_edge.core.classnames import describe_duplicate, nfc_duplicate

    dup = nfc_duplicate(names)
    if dup:
        raise PromptError(f"{source}: class {describe_duplicate(*dup)}")


def _class_names_from_folder(root: Path) -> list[str]:
    from clap_edge.core.datasets import find_splits, scan_domains
    from clap_edge.core.errors import ClapEdgeError

    try:
        names, _ = scan_domains(find_splits(root)["test"])
    except ClapEdgeError as e:
        raise PromptError(str(e)) from e
    return names


def _with_article(phrase: str) -> str:
    return f"{'an' if phrase[:1].lower() in 'aeiou' else 'a'} {phrase}"


def _load_yaml(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:  # not a ValueError: turn it into one for from_file's message
        raise ValueError(f"invalid YAML: {e}") from e
