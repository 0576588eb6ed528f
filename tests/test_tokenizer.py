"""The torch-free tokenizer (clap_edge.core.tokenizer) against open_clip's own, id for id.

A seeded 800-string slice of tests/tokenizer_corpus.py runs here (a few seconds); the full 10,000-string
check is bench/tokenizer_parity.py (its JSON: bench/results/tokenizer_parity.json).
"""

from __future__ import annotations

import numpy as np
import pytest

from clap_edge.core.tokenizer import SimpleTokenizer, TokenizerError, spec_from_open_clip
from tokenizer_corpus import corpus

open_clip = pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def bpe():
    from open_clip.tokenizer import default_bpe

    return default_bpe()


@pytest.mark.parametrize("model_name", ["clap-edge-tiny", "ViT-B-32"])
def test_ids_identical_to_open_clip(model_name, bpe):
    import clap_edge.models  # noqa: F401  (registers the clap-edge model configs with open_clip)

    reference = open_clip.get_tokenizer(model_name)
    spec = spec_from_open_clip(reference)
    assert spec.context_length == reference.context_length  # 32 for the tiny model: truncation is exercised
    mine = SimpleTokenizer.from_spec(spec, bpe)
    texts = corpus(800, seed=1 if model_name == "ViT-B-32" else 2)
    want, got = reference(texts).numpy(), mine(texts)
    bad = [t for t, a, b in zip(texts, want, got) if not np.array_equal(a, b)]
    assert not bad, f"{len(bad)} strings differ, e.g. {bad[:3]!r}"
    assert got.dtype == np.int64 and got.shape == (len(texts), spec.context_length)
    long = [i for i, t in enumerate(texts) if len(reference.encode(t)) + 2 > spec.context_length]
    assert long and all(got[i, -1] == mine.eot_token_id for i in long)  # truncated with eot last


@pytest.mark.parametrize("clean", ["whitespace", "canonicalize"])
def test_other_clean_modes(clean, bpe):
    from open_clip.tokenizer import SimpleTokenizer as Reference

    reference = Reference(bpe, context_length=16, clean=clean, additional_special_tokens=["<pad>"])
    spec = spec_from_open_clip(reference)
    assert spec.clean == clean and spec.additional_special_tokens == ("<pad>",)
    texts = corpus(150, seed=3) + ["Hello_World, <pad> it's ME!"]
    np.testing.assert_array_equal(SimpleTokenizer.from_spec(spec, bpe)(texts), reference(texts).numpy())


def test_uncovered_tokenizers_are_refused_with_one_line(bpe, tmp_path):
    from open_clip.tokenizer import SimpleTokenizer as Reference

    class HFTokenizer:  # stands for open_clip's HFTokenizer (SigLIP, XLM-R, ...): only its type name matters
        pass

    with pytest.raises(TokenizerError, match="HFTokenizer; the torch-free tokenizer covers SimpleTokenizer"):
        spec_from_open_clip(HFTokenizer())
    with pytest.raises(TokenizerError, match="reduction mask"):
        spec_from_open_clip(Reference(bpe, reduction_mask="random"))
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(TokenizerError, match="bad.gz: not a gzipped BPE merges file"):
        SimpleTokenizer(tmp_path / "bad.gz")
