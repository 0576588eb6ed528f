"""A torch-free port of open_clip's ``SimpleTokenizer`` (CLIP's BPE): the same ids, numpy out.

Covered: ``open_clip.tokenizer.SimpleTokenizer`` as ``open_clip.get_tokenizer`` builds it for CLIP-style models
(every model whose text config names no ``hf_tokenizer_name`` and no reduction mask: the OpenAI CLIP models,
ViT-*/RN* configs, this project's clap-edge-tiny / clap-edge-toy), with its ``clean`` modes (lower, whitespace,
canonicalize), extra special tokens and any context length; the BPE vocabulary is open_clip's own file
(``bpe_simple_vocab_16e6.txt.gz``), shipped in the bundle. Not covered (refused with one line by
:func:`spec_from_open_clip`): ``HFTokenizer`` (SigLIP, MT5, XLM-R, ...), ``SigLipTokenizer`` and the
reduction-mask tokenizers (random / shuffle / syntax masks used in training).

The algorithm is CLIP's (MIT, Copyright (c) 2021 OpenAI), as open_clip copies it: ftfy + double html unescape,
the clean function, a regex split, byte-level BPE; ``[sot] + ids + [eot]`` truncated to the context length
with the last id set to eot, zero-padded.
"""

from __future__ import annotations

import gzip
import html
import os
import string
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np

from clap_edge.core.errors import ClapEdgeError

__all__ = ["SimpleTokenizer", "TokenizerSpec", "spec_from_open_clip", "BPE_FILE", "KIND"]

KIND = "open_clip.SimpleTokenizer"
BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLEAN_MODES = ("lower", "whitespace", "canonicalize")
_SPECIALS = ["<start_of_text>", "<end_of_text>"]


class TokenizerError(ClapEdgeError):
    """This tokenizer is not one the torch-free port reproduces, or its files are wrong."""


@dataclass(frozen=True)
class TokenizerSpec:
    """What the manifest's ``text.tokenizer`` records: enough to rebuild the tokenizer without open_clip."""

    context_length: int
    clean: str = "lower"
    additional_special_tokens: tuple[str, ...] = ()
    kind: str = KIND
    files: dict[str, str] = field(default_factory=dict)  # role ("bpe") -> bundle file

    def to_json(self) -> dict:
        return {"kind": self.kind, "clean": self.clean, "context_length": self.context_length,
                "additional_special_tokens": list(self.additional_special_tokens), "files": dict(self.files)}

    @classmethod
    def from_json(cls, data: dict, context_length: int) -> "TokenizerSpec":
        kind = data.get("kind")
        if kind != KIND:
            raise TokenizerError(f"tokenizer kind {kind!r} is not supported (this clap-edge reproduces {KIND} only)")
        clean = data.get("clean", "lower")
        if clean not in CLEAN_MODES:
            raise TokenizerError(f"tokenizer clean mode {clean!r} is not one of {', '.join(CLEAN_MODES)}")
        extra = data.get("additional_special_tokens") or []
        if not isinstance(extra, list) or not all(isinstance(t, str) and t for t in extra):
            raise TokenizerError("tokenizer additional_special_tokens must be a list of non-empty strings")
        return cls(context_length, clean, tuple(extra), kind, dict(data.get("files") or {}))


def spec_from_open_clip(tokenizer, files: dict[str, str] | None = None) -> TokenizerSpec:
    """The spec of an open_clip tokenizer this port reproduces; one line naming what is not covered otherwise."""
    name = type(tokenizer).__name__
    if name != "SimpleTokenizer":
        raise TokenizerError(f"the model's tokenizer is open_clip's {name}; the torch-free tokenizer covers "
                             "SimpleTokenizer (CLIP BPE) only, so --text-encoder cannot be exported for this model")
    if getattr(tokenizer, "reduction_fn", None) is not None:
        raise TokenizerError("the model's SimpleTokenizer uses a reduction mask (training-time token dropping); "
                             "the torch-free tokenizer covers plain truncation only")
    clean = {"_clean_lower": "lower", "_clean_whitespace": "whitespace", "_clean_canonicalize": "canonicalize"}.get(
        getattr(tokenizer.clean_fn, "__name__", ""))
    if clean is None:
        raise TokenizerError(f"the model's tokenizer cleans text with {tokenizer.clean_fn!r}, which is not covered")
    extra = tuple(tokenizer.decoder[i] for i in tokenizer.all_special_ids[len(_SPECIALS):])
    return TokenizerSpec(int(tokenizer.context_length), clean, extra, KIND, dict(files or {}))


@lru_cache()
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _basic_clean(text: str) -> str:
    import ftfy

    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def _whitespace_clean(text: str) -> str:
    return " ".join(text.split()).strip()


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _clean(text: str, mode: str) -> str:
    text = _basic_clean(text)
    if mode == "canonicalize":  # big_vision's canonicalize_text, as open_clip's _clean_canonicalize
        return " ".join(text.replace("_", " ").translate(_PUNCTUATION).lower().split()).strip()
    text = _whitespace_clean(text)
    return text.lower() if mode == "lower" else text


class SimpleTokenizer:
    """open_clip's SimpleTokenizer without torch: ``tok(texts) -> int64 [N, context_length]``."""

    def __init__(self, bpe_path: str | os.PathLike, context_length: int = 77, clean: str = "lower",
                 additional_special_tokens: Sequence[str] = ()):
        import regex

        if clean not in CLEAN_MODES:
            raise TokenizerError(f"clean mode {clean!r} is not one of {', '.join(CLEAN_MODES)}")
        try:
            merges_text = gzip.open(bpe_path).read().decode("utf-8").split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise TokenizerError(f"{bpe_path}: not a gzipped BPE merges file ({e})") from None
        merges = [tuple(m.split()) for m in merges_text[1:49152 - 256 - 2 + 1]]
        if len(merges) < 1 or any(len(m) != 2 for m in merges):
            raise TokenizerError(f"{bpe_path}: not a BPE merges file (lines must be two symbols)")
        self.byte_encoder = _bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        specials = _SPECIALS + list(additional_special_tokens)
        vocab.extend(specials)
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {t: t for t in specials}
        self.pat = regex.compile("|".join(specials) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                                 regex.IGNORECASE)
        self.sot_token_id, self.eot_token_id = self.encoder[specials[0]], self.encoder[specials[1]]
        self.vocab_size = len(self.encoder)
        self.context_length = int(context_length)
        self.clean = clean

    @classmethod
    def from_spec(cls, spec: TokenizerSpec, bpe_path: str | os.PathLike) -> "SimpleTokenizer":
        return cls(bpe_path, spec.context_length, spec.clean, spec.additional_special_tokens)

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            word = _merge(word, *bigram)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in self.pat.findall(_clean(text, self.clean)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        n = int(context_length or self.context_length)
        out = np.zeros((len(texts), n), dtype=np.int64)
        for i, text in enumerate(texts):
            ids = [self.sot_token_id] + self.encode(text) + [self.eot_token_id]
            if len(ids) > n:  # truncate, keeping an eot last (as open_clip)
                ids = ids[:n]
                ids[-1] = self.eot_token_id
            out[i, :len(ids)] = ids
        return out


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word, word[1:]))


def _merge(word: tuple[str, ...], first: str, second: str) -> tuple[str, ...]:
    new: list[str] = []
    i = 0
    while i < len(word):
        try:
            j = word.index(first, i)
        except ValueError:
            new.extend(word[i:])
            break
        new.extend(word[i:j])
        i = j
        if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
            new.append(first + second)
            i += 2
        else:
            new.append(word[i])
            i += 1
    return tuple(new)
