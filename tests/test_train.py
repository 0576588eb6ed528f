"""The trainer: NT-Xent, the noise-context encoder, the schedule, early stop, the cache, training, the CLI."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from click.testing import CliRunner

from clap_edge.core.errors import ModelLoadError, PromptError
from clap_edge.head import CLAPHead
from clap_edge.prompts import PromptVocab, template_records
from clap_edge.text_encoder import NoiseConfig, NoiseTextEncoder, draw_noise
from clap_edge.train import EarlyStopper, Schedule, TrainConfig, cache_file, nt_xent, train_head

SMALL_VOCAB = PromptVocab(image_types=("painting", "sketch", "photo"), sizes=("large", "small"),
                          art_styles=("realistic",), colors=("red", "blue", "green"))
CLASSES = ["dog", "elephant", "house"]


def small_config(**overrides) -> TrainConfig:
    settings = dict(steps=240, window=60, lr=1e-3, vocab=SMALL_VOCAB, progress=False, seed=0)
    settings.update(overrides)
    return TrainConfig(**settings)


# ---- NT-Xent -------------------------------------------------------------------------


def direct_nt_xent(a: torch.Tensor, b: torch.Tensor, tau: float) -> float:
    """SimCLR's loss written out term by term, as in the paper's definition."""
    z = [v / v.norm() for v in torch.cat([a, b])]
    n = a.shape[0]
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[positive]) / tau) / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("tau", [0.5, 1.0, 0.07])
def test_nt_xent_matches_direct_computation(tau):
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    assert float(nt_xent(a, b, tau)) == pytest.approx(direct_nt_xent(a, b, tau), rel=1e-5)


def test_nt_xent_is_low_for_aligned_pairs():
    a = torch.eye(4) * 3
    assert float(nt_xent(a, a, 0.1)) < 0.01 < float(nt_xent(a, a.roll(1, 0), 0.1))


# ---- noise-context encoder -------------------------------------------------------------


def test_noise_encoder_without_noise_equals_encode_text(tiny):
    encoder = NoiseTextEncoder(tiny.model)
    tokens = tiny.tokenizer(["a dog", "a realistic painting of a large red elephant", "x", "an owl on a blue car"])
    with torch.no_grad():
        reference = tiny.model.encode_text(tokens)
    torch.testing.assert_close(encoder.encode(tokens), reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoder.encode(tokens, cut=False), reference, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(encoder.encode_batched(tokens, batch_size=3), reference, atol=1e-5, rtol=1e-5)


def test_cutting_after_eot_is_exact_with_noise(tiny):
    encoder = NoiseTextEncoder(tiny.model)
    texts = ["a dog", "a realistic painting of a large red elephant", "a cat"]
    tokens = tiny.tokenizer(texts)
    config = NoiseConfig(n_ctx=4, std=0.5)
    noise, where = draw_noise(texts, config, encoder.width, seed=0)
    positions = encoder.insert_positions(tokens, ["front", "middle", "end"])
    eot = encoder.eot_index(tokens)
    assert positions.tolist() == [[1, 1], [1, int(eot[1])], [int(eot[2])] * 2]
    short, full = encoder.encode(tokens, noise, positions), encoder.encode(tokens, noise, positions, cut=False)
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)
    plain = encoder.encode(tokens)
    assert not torch.allclose(short, plain, atol=1e-3)  # the noise reaches the pooled output


def test_noise_is_inserted_not_added(tiny):
    """Inserting zero vectors is not a no-op (positions shift), but inserting them at EOT of a
    row shifts EOT by n_ctx: verify the encoder pools the shifted end-of-text token by
    comparing with a hand-built embedding sequence."""
    model, encoder = tiny.model, NoiseTextEncoder(tiny.model)
    tokens = tiny.tokenizer(["a red dog"])
    noise = torch.randn(1, 2, encoder.width) * 0.3
    pos = torch.tensor([2])
    eot = int(encoder.eot_index(tokens))
    with torch.no_grad():
        emb = model.token_embedding(tokens[:, : eot + 1])
        x = torch.cat([emb[:, :2], noise, emb[:, 2:]], dim=1)
        x = x + model.positional_embedding[: x.shape[1]]
        x = model.transformer(x, attn_mask=model.attn_mask[: x.shape[1], : x.shape[1]])
        expected = model.ln_final(x)[:, eot + 2] @ model.text_projection
    torch.testing.assert_close(encoder.encode(tokens, noise, pos), expected, atol=1e-5, rtol=1e-5)


def test_middle_noise_goes_half_after_sot_and_half_before_eot(tiny):
    """The authors' "middle": [SOT, n0, n1, a, red, dog, n2, n3, EOT], by hand on a known tokenisation."""
    model, encoder = tiny.model, NoiseTextEncoder(tiny.model)
    tokens = tiny.tokenizer(["a red dog"])
    sot, eot_id = tokens[0, 0].item(), tokens[0, 4].item()
    words = tokens[0, 1:4].tolist()
    assert tokens[0, 5:].eq(0).all() and eot_id == tokens[0].max().item()  # SOT, 3 word tokens, EOT, padding
    assert encoder.insert_positions(tokens, ["middle"]).tolist() == [[1, 4]]
    noise = torch.randn(1, 4, encoder.width) * 0.3
    with torch.no_grad():
        emb = model.token_embedding(torch.tensor([[sot, *words, eot_id]]))
        x = torch.cat([emb[:, :1], noise[:, :2], emb[:, 1:4], noise[:, 2:], emb[:, 4:]], dim=1)  # 9 positions
        x = x + model.positional_embedding[:9]
        x = model.transformer(x, attn_mask=model.attn_mask[:9, :9])
        expected = model.ln_final(x)[:, 8] @ model.text_projection
    positions = encoder.insert_positions(tokens, ["middle"])
    torch.testing.assert_close(encoder.encode(tokens, noise, positions), expected, atol=1e-5, rtol=1e-5)
    # odd n_ctx: n_ctx // 2 = 1 vector after SOT, 2 before EOT (as the authors split it)
    from clap_edge.text_encoder import _insert

    seq = torch.arange(6, dtype=torch.float32).view(1, 6, 1)  # stand-ins: 0=SOT, 1..3 words, 4=EOT, 5 pad
    out = _insert(seq, torch.full((1, 3, 1), -1.0), torch.tensor([[1, 4]]))
    assert out.flatten().tolist() == [0, -1, 1, 2, 3, -1, -1, 4, 5]


def test_shared_noise_keys_share_one_draw_and_position():
    config = NoiseConfig(n_ctx=4, std=0.02)
    noise, where = draw_noise(["shared3:a dog", "shared3:a cat", "shared4:a dog"], config, 16, seed=0,
                              draw_keys=["shared3", "shared3", "shared4"])
    assert torch.equal(noise[0], noise[1]) and where[0] == where[1]
    assert not torch.equal(noise[0], noise[2])


def test_noise_draws_are_keyed_and_seeded():
    config = NoiseConfig(n_ctx=4, std=0.02)
    a, where_a = draw_noise(["k1", "k2"], config, 16, seed=0)
    b, where_b = draw_noise(["k2"], config, 16, seed=0)
    assert torch.equal(a[1], b[0]) and where_a[1] == where_b[0]
    c, _ = draw_noise(["k2"], config, 16, seed=1)
    assert not torch.equal(b, c)
    big, _ = draw_noise([f"k{i}" for i in range(200)], config, 64, seed=0)
    assert abs(float(big.std()) - 0.02) < 0.002 and abs(float(big.mean())) < 0.002


def test_tower_without_plain_clip_attributes_is_refused():
    with pytest.raises(ModelLoadError, match="text tower"):
        NoiseTextEncoder(torch.nn.Linear(2, 2))


def test_last_token_pooling_is_refused(tiny, monkeypatch):
    monkeypatch.setattr(tiny.model, "text_pool_type", "last")
    with pytest.raises(ModelLoadError, match="pool"):
        NoiseTextEncoder(tiny.model)


# ---- schedule and early stop -----------------------------------------------------------


def test_schedule_alternates_classes_and_is_seeded():
    records = {c: template_records(c, SMALL_VOCAB) for c in CLASSES}
    config = small_config(batch_size=8, noise_pool=4)
    schedule = Schedule(records, config)
    stream = [item for _ in range(51) for item in schedule.batch()]  # 408 items: 136 per class
    classes = [p.class_name for p, _, _ in stream]
    assert all(a != b for a, b in zip(classes, classes[1:]))
    assert [classes.count(c) for c in CLASSES] == [136, 136, 136]
    again = Schedule(records, config)
    assert stream == [item for _ in range(51) for item in again.batch()]
    other = Schedule(records, small_config(batch_size=8, seed=1))
    assert stream != [item for _ in range(51) for item in other.batch()]
    assert all(v.class_name == p.class_name for p, v, _ in stream)
    assert {k for _, _, k in stream} == set(range(config.noise_pool))


def test_schedule_visits_every_prompt_of_a_class():
    records = {c: template_records(c, SMALL_VOCAB) for c in CLASSES}
    schedule = Schedule(records, small_config(batch_size=6))
    seen = [p for _ in range(9) for p, _, _ in schedule.batch()]  # 54 items = 18 prompts per class
    assert len(set(seen)) == 54
    assert set(seen) == {p for ps in records.values() for p in ps}


def test_shuffle_batching_is_the_authors_loader():
    """2 classes x 3 prompts, batch 2: one epoch = 3 batches holding every (class, prompt) once."""
    vocab = PromptVocab(image_types=("painting", "sketch", "photo"), sizes=("large",), art_styles=("realistic",),
                        colors=("red",))
    records = {c: template_records(c, vocab) for c in ("dog", "cat")}
    schedule = Schedule(records, small_config(vocab=vocab, batch_size=2, batching="shuffle"))
    epoch = [p for _ in range(3) for p, _, _ in schedule.batch()]
    assert sorted(p.text() for p in epoch) == sorted(p.text() for ps in records.values() for p in ps)
    assert sorted(p.class_name for p in epoch) == ["cat"] * 3 + ["dog"] * 3
    # over many epochs some batch holds one class twice (never in balanced batching)
    many = Schedule(records, small_config(vocab=vocab, batch_size=2, batching="shuffle"))
    assert any(len({p.class_name for p, _, _ in many.batch()}) == 1 for _ in range(30))
    balanced = Schedule(records, small_config(vocab=vocab, batch_size=2))
    assert all(len({p.class_name for p, _, _ in balanced.batch()}) == 2 for _ in range(30))


def test_batch_pool_noise_sharing_gives_one_pool_slot_per_batch():
    records = {c: template_records(c, SMALL_VOCAB) for c in CLASSES}
    schedule = Schedule(records, small_config(batch_size=8, noise_pool=64, noise_sharing="batch-pool"))
    batches = [schedule.batch() for _ in range(20)]
    assert all(len({k for _, _, k in b}) == 1 for b in batches)
    assert len({b[0][2] for b in batches}) > 1 and all(b[0][2] < 64 for b in batches)
    from clap_edge.train import _keys

    _, views, _ = _keys(batches[0], small_config(noise_sharing="batch-pool"))
    assert all(v.startswith(f"shared{batches[0][0][2]}:") for v in views)


def test_bad_option_values_are_refused():
    for name in ("batching", "noise_sharing", "keep"):
        with pytest.raises(ValueError, match=name):
            small_config(**{name: "nope"})


def test_early_stopper_patience_and_delta():
    stopper = EarlyStopper(TrainConfig(window=2, patience=2, min_delta=0.1))
    assert not stopper.update([1.0, 1.0])
    assert not stopper.update([0.8, 0.8])  # improved by 0.2
    assert not stopper.update([0.75, 0.75])  # < delta: 1 bad window
    assert stopper.update([0.76, 0.74])  # 2 bad windows: stop
    assert stopper.means == pytest.approx([1.0, 0.8, 0.75, 0.75])
    improved = []
    stopper = EarlyStopper(TrainConfig(window=1, patience=9, min_delta=0.1))
    for loss in (1.0, 0.8, 0.75, 0.6, 0.65):
        stopper.update([loss])
        improved.append(stopper.improved)
    assert improved == [True, True, False, True, False]  # 0.75 beats 0.8 by < delta: not a new best
    assert not EarlyStopper(TrainConfig(window=4)).update([1.0])  # partial windows are not judged


# ---- training -------------------------------------------------------------------------


def test_training_tiny_lowers_the_loss_and_moves_the_head(tiny):
    head, result = train_head(tiny, CLASSES, small_config(noise_pool=4))
    assert result.steps_run == 240 and len(result.window_means) == 4
    assert result.window_means[-1] < result.window_means[0] - 0.1
    assert head.distance_from_identity() > 0.1
    assert head.config.class_names == CLASSES and head.config.model_name == "clap-edge-tiny"
    assert head.config.training["steps_run"] == 240
    assert head.config.training["final_loss"] == pytest.approx(result.window_means[-1])
    # 54 prompts + 3 class names, then only the noisy views drawn: at most one per item (240 x 8), at most
    # 4 noise draws of the 2^3 views of each prompt; repeats come from the cache.
    assert 54 + 3 < result.encoded_texts <= 54 + 3 + min(240 * 8, 54 * 8 * 4)
    z = torch.randn(2, 64)
    with torch.no_grad():
        assert not torch.allclose(head(z, alpha=1.0), z, atol=1e-3)


def test_keep_best_returns_the_weights_of_the_best_window(tiny, tmp_path):
    """keep="best" equals a run stopped at the end of the last window that beat the best by > min_delta."""
    config = small_config(steps=180, window=30, lr=3e-3, min_delta=0.05, early_stop=False, cache_dir=str(tmp_path))
    final, result = train_head(tiny, CLASSES, config)
    best_head, _ = train_head(tiny, CLASSES, small_config(steps=180, window=30, lr=3e-3, min_delta=0.05,
                                                           early_stop=False, keep="best", cache_dir=str(tmp_path)))
    best, kept = float("inf"), None  # by hand from the window means
    for i, mean in enumerate(result.window_means):
        if mean < best - 0.05:
            best, kept = mean, (i + 1) * 30
    assert best_head.config.training["kept_step"] == kept and best_head.config.training["keep"] == "best"
    assert final.config.training["kept_step"] == 180
    stopped, _ = train_head(tiny, CLASSES, small_config(steps=kept, window=30, lr=3e-3, min_delta=0.05,
                                                        early_stop=False, cache_dir=str(tmp_path)))
    for key, value in best_head.state_dict().items():
        torch.testing.assert_close(value, stopped.state_dict()[key])
    if kept < 180:
        assert not torch.equal(best_head.projection.weight, final.projection.weight)


def test_training_is_deterministic_for_a_seed_and_the_disk_cache_skips_encoding(tiny, tmp_path):
    config = small_config(steps=60, cache_dir=str(tmp_path))
    head_a, first = train_head(tiny, CLASSES, config)
    assert first.encoded_texts > 0 and cache_file(tmp_path, tiny, config).is_file()
    head_b, second = train_head(tiny, CLASSES, config)
    assert second.encoded_texts == 0
    assert second.losses == pytest.approx(first.losses, abs=1e-6)
    torch.testing.assert_close(head_b.projection.weight, head_a.projection.weight)
    other = small_config(steps=60, cache_dir=str(tmp_path), noise_ctx=2)
    assert cache_file(tmp_path, tiny, other) != cache_file(tmp_path, tiny, config)


def test_a_corrupt_cache_file_is_ignored_and_rewritten(tiny, tmp_path, caplog):
    config = small_config(steps=5, cache_dir=str(tmp_path))
    path = cache_file(tmp_path, tiny, config)
    path.write_bytes(b"garbage")
    _, result = train_head(tiny, CLASSES, config)
    assert result.encoded_texts > 0 and "ignoring unreadable embedding cache" in caplog.text
    _, again = train_head(tiny, CLASSES, config)
    assert again.encoded_texts == 0


def test_early_stop_ends_a_flat_run(tiny):
    # lr 0: no window can improve on the first by min_delta, so patience 2 stops after window 3.
    _, result = train_head(tiny, CLASSES, small_config(steps=600, window=20, patience=2, lr=0.0, min_delta=1.0))
    assert result.stopped_early and result.steps_run == 60
    _, full = train_head(tiny, CLASSES, small_config(steps=100, window=20, patience=2, lr=0.0, early_stop=False))
    assert not full.stopped_early and full.steps_run == 100


def test_bad_class_lists(tiny):
    with pytest.raises(PromptError, match="no class names"):
        train_head(tiny, [], small_config())
    with pytest.raises(PromptError, match="class name 'hippo.*does not fit"):
        train_head(tiny, ["hippopotamus " * 8], small_config())
    with pytest.warns(UserWarning, match="duplicate class 'dog'"):
        head, _ = train_head(tiny, ["dog", "house", "dog"], small_config(steps=5))
    assert head.config.class_names == ["dog", "house"]
    with pytest.warns(UserWarning, match="one class"):
        train_head(tiny, ["dog"], small_config(steps=2))


# ---- CLI --------------------------------------------------------------------------------


def test_cli_train_writes_a_loadable_head(tmp_path):
    from clap_edge.apps.cli import main

    vocab = tmp_path / "vocab.toml"
    vocab.write_text('image_types = ["photo", "sketch"]\nsizes = ["big"]\nart_styles = ["plain"]\ncolors = ["red"]\n')
    out = tmp_path / "head.safetensors"
    args = ["train", "--model", "clap-edge-tiny", "--classes", "dog,cat", "--out", str(out), "--steps", "20",
            "--latent-dim", "32", "--noise-pool", "2", "--vocab", str(vocab), "--seed", "1", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["steps_run"] == 20 and summary["classes"] == ["dog", "cat"]
    head = CLAPHead.load(out)
    assert head.config.latent_dim == 32 and head.config.class_names == ["dog", "cat"]
    assert head.config.training["noise_pool"] == 2 and head.config.training["seed"] == 1
    assert head.config.training["batching"] == "balanced" and head.config.training["keep"] == "final"
    authors = args[:-1] + ["--batching", "shuffle", "--noise-sharing", "batch", "--keep", "best",
                           "--no-reorder-article", "--steps", "30", "--json"]
    result = CliRunner().invoke(main, authors)
    assert result.exit_code == 0, result.output
    training = CLAPHead.load(out).config.training  # every option is in the head's safetensors metadata
    assert (training["batching"], training["noise_sharing"], training["keep"]) == ("shuffle", "batch", "best")
    assert training["augment"]["reorder_article"] is False and training["noise_middle"] == "split_around_words"


def test_cli_train_bad_input_is_one_line_and_exit_2(tmp_path):
    from clap_edge.apps.cli import main

    out = tmp_path / "head.safetensors"
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--model", "ViT-B-33", "--classes", "dog", "--out", str(out)])
    assert result.exit_code == 2 and "Did you mean" in result.output and "ViT-B-32" in result.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = runner.invoke(main, ["train", "--model", "clap-edge-tiny", "--classes", " , ", "--out", str(out)])
    assert result.exit_code == 2 and "no class names" in result.output
    result = runner.invoke(main, ["train", "--model", "clap-edge-tiny", "--classes", "dog", "--out", str(out),
                                  "--batch-size", "1"])
    assert result.exit_code == 2 and "--batch-size" in result.output
    assert not out.exists()


def test_cli_train_help_ends_with_an_example():
    from clap_edge.apps.cli import main

    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.output and "clap-edge train --model clap-edge-tiny" in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_matches_the_cpu_loop_closely(tiny):
    _, cpu = train_head(tiny, CLASSES, small_config(steps=30))
    head, cuda = train_head(tiny, CLASSES, small_config(steps=30, device="cuda"))
    tiny.model.to("cpu")
    assert head.projection.weight.device.type == "cpu"
    assert cuda.losses == pytest.approx(cpu.losses, rel=1e-3, abs=1e-3)
