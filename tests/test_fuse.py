"""FusedClassifier: alpha folding, class embeddings as prompt ensembles, no-head == plain CLIP zero-shot."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clap_edge.core.errors import PromptError
from clap_edge.fuse import build_fused, class_embeddings, fold_head, format_template
from clap_edge.head import CLAPHead, HeadConfig

CLASSES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(3)
    h = CLAPHead(HeadConfig(in_dim=64, latent_dim=32, alpha=0.25))
    torch.nn.init.normal_(h.projection.weight, std=0.3)
    return h


@pytest.fixture(scope="module")
def images():
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def test_folded_alpha_equals_unfolded_head(tiny, head, images):
    fused = build_fused(tiny, CLASSES, head, alpha=0.4)
    # folded: P's weight scaled by alpha, no runtime scale left
    assert torch.allclose(fused.head.projection.weight, 0.4 * head.projection.weight)
    assert fused.head.alpha == 1.0 and head.alpha == 0.25  # the caller's head is not modified
    with torch.no_grad():
        logits, emb = fused(images)
        expected_emb = F.normalize(head(tiny.model.encode_image(images), alpha=0.4), dim=-1)
    torch.testing.assert_close(emb, expected_emb, atol=1e-6, rtol=1e-5)
    # the head changes the embedding, so the comparison above is not vacuous
    plain = F.normalize(tiny.model.encode_image(images), dim=-1)
    assert (emb - plain).abs().max() > 1e-3
    expected_logits = tiny.model.logit_scale.exp() * expected_emb @ fused.classes
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=1e-5)


def test_default_alpha_is_the_heads(tiny, head, images):
    fused = build_fused(tiny, CLASSES, head)
    assert fused.alpha == 0.25
    with torch.no_grad():
        _, emb = fused(images)
        expected = F.normalize(head(tiny.model.encode_image(images)), dim=-1)
    torch.testing.assert_close(emb, expected, atol=1e-6, rtol=1e-5)


def test_class_embeddings_pass_through_the_head_per_template(tiny, head):
    templates = ["a photo of a {c}.", "a sketch of a {c}."]
    got = class_embeddings(tiny.model, tiny.tokenizer, CLASSES, templates, head, alpha=0.5)
    with torch.no_grad():
        rows = []
        for c in CLASSES:
            z = tiny.model.encode_text(tiny.tokenizer([t.replace("{c}", c) for t in templates]))
            z = F.normalize(head(z, alpha=0.5), dim=-1).mean(0)
            rows.append(F.normalize(z, dim=-1))
    torch.testing.assert_close(got, torch.stack(rows), atol=1e-6, rtol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(CLASSES)), atol=1e-5)


def test_no_head_equals_open_clip_zero_shot(tiny, images):
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    templates = ["a photo of a {}.", "art of a {}."]
    fused = build_fused(tiny, CLASSES, head=None, templates=templates)
    weights = build_zero_shot_classifier(tiny.model, tiny.tokenizer, CLASSES, templates, device="cpu")
    with torch.no_grad():
        logits, _ = fused(images)
        expected = tiny.model.logit_scale.exp() * tiny.model.encode_image(images, normalize=True) @ weights
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert fused.head is None and fused.alpha == 0.0


def test_alpha_zero_head_is_plain_clip(tiny, head, images):
    with_head = build_fused(tiny, CLASSES, head, alpha=0.0)
    plain = build_fused(tiny, CLASSES, None)
    assert with_head.head is None
    with torch.no_grad():
        torch.testing.assert_close(with_head(images)[0], plain(images)[0])


def test_fused_shapes(tiny, head, images):
    assert fold_head(None) is None
    fused = build_fused(tiny, CLASSES, head)
    assert (fused.embed_dim, fused.num_classes) == (64, 3)
    with torch.no_grad():
        logits, emb = fused(images)
    assert logits.shape == (4, 3) and emb.shape == (4, 64)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4))


def test_format_template():
    assert format_template("a photo of a {c}.", "dog") == "a photo of a dog."
    assert format_template("a {} here", "dog") == "a dog here"
    with pytest.raises(PromptError, match="placeholder"):
        format_template("a photo", "dog")


def test_class_embeddings_refuse_empty(tiny):
    with pytest.raises(PromptError):
        class_embeddings(tiny.model, tiny.tokenizer, [], ["{c}"])
    with pytest.raises(PromptError):
        class_embeddings(tiny.model, tiny.tokenizer, ["cat"], [])


def test_graph_has_only_the_image_tower(tiny):
    fused = build_fused(tiny, CLASSES)
    names = [n for n, _ in fused.named_parameters()] + [n for n, _ in fused.named_buffers()]
    assert not any("token_embedding" in n or n.startswith("transformer.") for n in names)
    assert any(n.startswith("image_encoder.") for n in names)
