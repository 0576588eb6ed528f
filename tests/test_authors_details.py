"""The authors' details made exact: noise drawn fresh every step and shared by the batch, and their alpha rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clap_edge.prompts import PromptVocab, template_records
from clap_edge.text_encoder import NoiseTextEncoder, draw_noise
from clap_edge.train import EmbeddingCache, Schedule, TrainConfig, _keys, cache_file, train_head
from clap_edge.zeroshot import AUTHORS_ALPHAS, DEFAULT_ALPHAS, EvalConfig, Features, choose_alpha, evaluate

VOCAB = PromptVocab(image_types=("painting", "sketch", "photo"), sizes=("large", "small"), art_styles=("realistic",),
                    colors=("red", "blue", "green"))
CLASSES = ["dog", "elephant", "house"]


def config(**overrides) -> TrainConfig:
    settings = dict(steps=40, window=20, lr=1e-3, vocab=VOCAB, progress=False, seed=0, noise_sharing="batch")
    settings.update(overrides)
    return TrainConfig(**settings)


# ---- noise: fresh every step, shared by the batch ------------------------------------------------


def test_batch_noise_is_one_draw_per_step_shared_by_every_view(tiny):
    cfg = config(batch_size=6, noise_std=0.5)
    schedule = Schedule({c: template_records(c, VOCAB) for c in CLASSES}, cfg)
    batches = [schedule.batch() for _ in range(3)]
    assert [[slot for _, _, slot in b] for b in batches] == [[0] * 6, [1] * 6, [2] * 6]  # the step index
    encoder = NoiseTextEncoder(tiny.model)
    cache = EmbeddingCache(encoder, tiny.tokenizer, cfg.noise, cfg.seed)
    views = [_keys(b, cfg)[1] for b in batches]
    cache.ensure([k for step in views for k in step])
    for step, keys in enumerate(views):
        # by hand: ONE noise block and ONE position explain every row of the step's batch
        texts = [k.split(":", 1)[1] for k in keys]
        tokens = tiny.tokenizer(texts)
        block, where = draw_noise(["one"], cfg.noise, encoder.width, cfg.seed, draw_keys=[f"step{step}"])
        expected = encoder.encode(tokens, block.expand(len(texts), -1, -1),
                                  encoder.insert_positions(tokens, where * len(texts)))
        torch.testing.assert_close(cache.get(keys), expected, atol=1e-5, rtol=1e-5)
    # fresh: the same view text gets a different noise draw in every step, and positions vary across steps
    text = batches[0][0][1].text()
    again = [f"step{n}:{text}" for n in range(12)]
    cache.ensure(again)
    rows = cache.get(again)
    assert all(not torch.allclose(rows[0], rows[n], atol=1e-4) for n in range(1, 12))
    positions = {draw_noise(["x"], cfg.noise, encoder.width, cfg.seed, [f"step{n}"])[1][0] for n in range(12)}
    assert positions == {"front", "middle", "end"}
    blocks = torch.stack([draw_noise(["x"], cfg.noise, encoder.width, cfg.seed, [f"step{n}"])[0][0]
                          for n in range(12)])
    assert float(blocks.std()) == pytest.approx(0.5, rel=0.05)  # N(0, std^2)


def test_training_with_batch_noise_encodes_each_steps_views_afresh_and_keeps_none(tiny, tmp_path):
    cfg = config(cache_dir=str(tmp_path))
    head, result = train_head(tiny, CLASSES, cfg)
    replay = Schedule({c: template_records(c, VOCAB) for c in CLASSES}, cfg)
    distinct_views = [len({v.text() for _, v, _ in replay.batch()}) for _ in range(cfg.steps)]
    assert result.encoded_texts == 54 + 3 + sum(distinct_views)  # prompts, class names, then every step's views
    saved = torch.load(cache_file(tmp_path, tiny, cfg), weights_only=True)
    assert len(saved["keys"]) == 54 + 3 and not any(k.startswith("step") for k in saved["keys"])
    assert head.config.training["noise_sharing"] == "batch"


# ---- alpha: the authors' grid and rule -----------------------------------------------------------


def test_authors_alpha_rule_on_a_hand_example():
    # domain a has 10 val images, b has 2: pooling and averaging the domains disagree
    val = {"a": {0.1: np.array([1] * 9 + [0]), 1.0: np.array([1] * 6 + [0] * 4)},
           "b": {0.1: np.array([0, 0]), 1.0: np.array([1, 1])}}
    alpha, values = choose_alpha(val, "authors")
    assert values == pytest.approx({0.1: (90 + 0) / 2, 1.0: (60 + 100) / 2})  # mean of per-domain top-1
    assert alpha == 1.0
    assert choose_alpha(val, "pooled")[0] == 0.1  # 9/12 vs 8/12
    tie = {"a": {0.1: np.array([1, 0]), 1.0: np.array([0, 1])}}
    assert choose_alpha(tie, "authors")[0] == 0.1  # np.argmax: the first (smallest) of the grid
    grid = EvalConfig(alpha_objective="authors").alphas
    assert grid == pytest.approx([0.0316228, 0.1, 0.3162278, 1.0, 10.0, 31.622777, 100.0], rel=1e-6)
    assert 10 ** 0.5 not in grid and EvalConfig().alphas == DEFAULT_ALPHAS
    assert EvalConfig(alpha_objective="authors", alphas=(0.2, 0.4)).alphas == (0.2, 0.4)


def test_authors_objective_picks_one_alpha_from_pc_prompts_for_every_family(tiny, tiny_head_path):
    from clap_edge.head import CLAPHead
    from clap_edge.zeroshot import alpha_scores, encode_class_prompts

    head = CLAPHead.load(tiny_head_path)
    names = head.config.class_names
    gen = torch.Generator().manual_seed(0)

    def split(n):
        return {d: Features(d, torch.randn(n, 64, generator=gen), np.arange(n) % len(names)) for d in ("a", "b")}

    val, test = split(12), split(8)
    cfg = EvalConfig(prompt_formats=("C", "CP"), alpha_objective="authors", n_boot=50)
    result = evaluate(tiny, names, {"clap": head}, test, val, cfg)
    texts = encode_class_prompts(tiny, names, "PC", cfg)
    by_hand = {a: np.mean([s[a].mean() for s in d.values()]) * 100
               for d in [alpha_scores(val, texts, head, AUTHORS_ALPHAS)] for a in AUTHORS_ALPHAS}
    best = max(by_hand.values())
    expected = min(a for a, v in by_hand.items() if v == best)
    assert result.alphas == {"clap/C": expected, "clap/CP": expected}
    assert result.val_scores["clap/C"] == pytest.approx(by_hand)
