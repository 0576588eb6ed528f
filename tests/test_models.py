"""Model loading: the tiny registered config, unknown names, offline tags, local checkpoints, context checks."""

from __future__ import annotations

import pytest
import torch

from clap_edge.core.errors import ModelLoadError, PromptError
from clap_edge.models import check_model_name, list_models, load_model, tokenize_checked


def test_tiny_model_is_registered_and_loads(tiny):
    assert "clap-edge-tiny" in list_models()
    assert tiny.model_name == "clap-edge-tiny" and tiny.pretrained is None
    assert tiny.embed_dim == 64 and tiny.context_length == 32
    assert tiny.preprocess_cfg.size == (64, 64) or tiny.preprocess_cfg.size == 64
    assert not tiny.model.training
    with torch.no_grad():
        text = tiny.model.encode_text(tiny.tokenizer(["a dog", "a cat"]))
        image = tiny.model.encode_image(torch.zeros(1, 3, 64, 64))
    assert text.shape == (2, 64) and image.shape == (1, 64)


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelLoadError, match=r"unknown model 'ViT-B-33'.*ViT-B-32"):
        check_model_name("ViT-B-33")
    with pytest.raises(ModelLoadError, match="clap-edge-tiny"):
        load_model("clap-edge-tinny")


def test_unknown_pretrained_tag_lists_known_tags():
    with pytest.raises(ModelLoadError, match=r"unknown pretrained tag 'nope'.*openai"):
        load_model("ViT-B-32", pretrained="nope")


def test_known_tag_offline_fails_fast_with_a_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")  # nothing cached
    with pytest.raises(ModelLoadError, match=r"ViT-B-32.*laion2b_s34b_b79k.*--pretrained /path"):
        load_model("ViT-B-32", pretrained="laion2b_s34b_b79k")


def test_missing_local_checkpoint_names_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match="not found.*weights.safetensors"):
        load_model("clap-edge-tiny", pretrained=str(tmp_path / "weights.safetensors"))


def test_local_checkpoint_round_trip(tiny, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(path))
    again = load_model("clap-edge-tiny", pretrained=str(path))
    tokens = tiny.tokenizer(["a red dog"])
    with torch.no_grad():
        torch.testing.assert_close(again.model.encode_text(tokens), tiny.model.encode_text(tokens))


def test_bad_local_checkpoint_is_a_model_load_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"junk")
    with pytest.raises(ModelLoadError, match="junk.pt|clap-edge-tiny"):
        load_model("clap-edge-tiny", pretrained=str(path))


def test_tokenize_checked_refuses_truncation(tiny):
    tokens = tokenize_checked(tiny.tokenizer, ["a dog"], reserve=4)
    assert tokens.shape == (1, 32)
    long_name = " ".join(["hippopotamus"] * 12)
    with pytest.raises(PromptError, match="hippopotamus.*tokens"):
        tokenize_checked(tiny.tokenizer, [long_name])
    fits_only_without_reserve = " ".join(["dog"] * 29)  # 29 + sot + eot = 31 <= 32
    tokenize_checked(tiny.tokenizer, [fits_only_without_reserve])
    with pytest.raises(PromptError, match=r"\+4 reserved"):
        tokenize_checked(tiny.tokenizer, [fits_only_without_reserve], reserve=4)


class NeedsCode:  # a pickle of this needs code to load: weights_only=True must refuse it
    pass


def test_checkpoint_pickle_that_needs_code_is_refused(tmp_path):
    path = tmp_path / "code.pt"
    torch.save({"state_dict": NeedsCode()}, path)
    with pytest.raises(ModelLoadError, match="code.pt|weights"):
        load_model("clap-edge-tiny", pretrained=str(path))
