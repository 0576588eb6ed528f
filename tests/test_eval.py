"""Evaluation: metrics, dataset folders, alpha chosen on validation only, eval CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from clap_edge.apps.cli import main
from clap_edge.core.datasets import find_splits, scan_domains
from clap_edge.core.errors import ClapEdgeError
from clap_edge.core.metrics import paired_bootstrap, paired_difference_ci, select_alpha, top1_correct

CLASSES = ["cat", "dog", "bird", "fish"]


def _write_split(root, domains=("photo", "sketch"), per_class=3, seed=0):
    rng = np.random.default_rng(seed)
    for domain in domains:
        for name in CLASSES:
            folder = root / domain / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    _write_split(root / "val", seed=1)
    _write_split(root / "test", seed=2)
    (root / "test" / "photo" / "cat" / "broken.png").write_bytes(b"not a png")
    return root


# ---- metrics ----------------------------------------------------------------------


def test_top1_and_paired_bootstrap():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]])
    assert top1_correct(logits, np.array([0, 1, 1])).tolist() == [True, True, False]
    rng = np.random.default_rng(0)
    a, b = rng.random(400) < 0.8, rng.random(400) < 0.6
    res = paired_bootstrap({"a": a, "b": b}, n_boot=500, seed=3)
    for name, arr in (("a", a), ("b", b)):
        assert res[name].top1 == pytest.approx(arr.mean() * 100)
        assert res[name].ci95[0] < res[name].top1 < res[name].ci95[1]
    assert res == paired_bootstrap({"a": a, "b": b}, n_boot=500, seed=3)  # seeded
    wide = paired_bootstrap({"a": a[:40]}, n_boot=500)["a"]
    assert wide.ci95[1] - wide.ci95[0] > res["a"].ci95[1] - res["a"].ci95[0]
    diff, (lo, hi) = paired_difference_ci(a, b, n_boot=500)
    assert lo < diff < hi and lo > 0  # a is clearly better than b
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap({"a": a, "b": b[:10]})


def test_select_alpha_picks_best_and_prefers_smallest_on_ties():
    labels = np.array([0, 1])
    good, bad = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 1.0], [1.0, 0.0]])
    table = {0.0: bad, 0.1: good, 0.2: good}
    alpha, scores = select_alpha(list(table), table.__getitem__, labels)
    assert alpha == 0.1 and scores == {0.0: 0.0, 0.1: 100.0, 0.2: 100.0}


# ---- datasets ---------------------------------------------------------------------


def test_scan_domains_layouts(tmp_path):
    nested = _write_split(tmp_path / "nested", per_class=1)
    names, domains = scan_domains(nested)
    assert sorted(names) == sorted(CLASSES) and list(domains) == ["photo", "sketch"]
    assert len(domains["photo"]) == 4 and sorted(domains["photo"].labels) == [0, 1, 2, 3]
    flat = tmp_path / "flat"
    (flat / "tennis_ball").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(flat / "tennis_ball" / "a.png")
    names, domains = scan_domains(flat)
    assert names == ["tennis ball"] and list(domains) == ["flat"]
    with pytest.raises(ClapEdgeError, match="'tennis ball' is not among the model's classes"):
        scan_domains(flat, ["cat"])
    assert find_splits(nested) == {"test": nested}


# ---- evaluation -------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_like_head():
    from clap_edge.head import CLAPHead, HeadConfig

    torch.manual_seed(2)
    head = CLAPHead(HeadConfig(in_dim=64, latent_dim=16, model_name="clap-edge-tiny", class_names=CLASSES))
    torch.nn.init.normal_(head.projection.weight, std=0.5)
    return head


def _by_hand_top1(head, feats, text, alpha):
    """Per-image correctness from the head's formula in numpy: z + alpha * P(L(SiLU(z))), normalise, argmax."""
    w1, b1 = head.linear.weight.detach().numpy(), head.linear.bias.detach().numpy()
    w2 = head.projection.weight.detach().numpy()

    def f(z):
        z = z.numpy().astype(np.float64)
        out = z + alpha * ((z / (1 + np.exp(-z))) @ w1.T + b1) @ w2.T
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return (f(feats.features) @ f(text).T).argmax(1) == feats.labels


def test_alpha_is_chosen_from_validation_only(tiny, trained_like_head, dataset):
    import clap_edge.zeroshot as ev

    test = {d: ev.encode_images(tiny, imgs) for d, imgs in scan_domains(dataset / "test", CLASSES)[1].items()}
    val = {d: ev.encode_images(tiny, imgs) for d, imgs in scan_domains(dataset / "val", CLASSES)[1].items()}
    text = ev.encode_class_prompts(tiny, CLASSES, "C")[0]
    alphas = (0.0, 0.5, 1.0)
    by_hand = {a: {d: _by_hand_top1(trained_like_head, f, text, a) for d, f in val.items()} for a in alphas}
    expected = {
        "pooled": {a: np.concatenate(list(v.values())).mean() * 100 for a, v in by_hand.items()},
        "worst": {a: min(x.mean() for x in v.values()) * 100 for a, v in by_hand.items()},
        "sketch": {a: v["sketch"].mean() * 100 for a, v in by_hand.items()},
    }
    for objective, values in expected.items():
        config = ev.EvalConfig(alphas=alphas, n_boot=50, alpha_objective=objective)
        res = ev.evaluate(tiny, CLASSES, {"clap": trained_like_head}, test, val, config)
        assert res.val_scores["clap/C"] == pytest.approx(values)
        best = max(values.values())
        assert res.alphas["clap/C"] == min(a for a, v in values.items() if v == best)
        # scrambling the test labels changes the test scores but never the chosen alpha
        scrambled = {d: ev.Features(d, f.features, (f.labels + 1) % len(CLASSES)) for d, f in test.items()}
        assert ev.evaluate(tiny, CLASSES, {"clap": trained_like_head}, scrambled, val, config).alphas == res.alphas
    with pytest.raises(ClapEdgeError, match="alpha objective 'nowhere'"):
        ev.evaluate(tiny, CLASSES, {"clap": trained_like_head}, test, val,
                    ev.EvalConfig(alphas=alphas, n_boot=20, alpha_objective="nowhere"))


def test_alpha_grid_cells_match_the_heads_formula(tiny, trained_like_head, dataset):
    import clap_edge.zeroshot as ev

    test = {d: ev.encode_images(tiny, imgs) for d, imgs in scan_domains(dataset / "test", CLASSES)[1].items()}
    text = ev.encode_class_prompts(tiny, CLASSES, "PC")[0]
    res = ev.evaluate(tiny, CLASSES, {"clap": trained_like_head}, test, None,
                      ev.EvalConfig(prompt_formats=("PC",), alpha=0.5, alphas=(0.2, 1.0), n_boot=50))
    grid = res.as_dict()["alpha_grid"]["clap/PC"]
    assert set(grid) == set(test) and all(set(cells) == {"0.0", "0.2", "1.0", "0.5"} for cells in grid.values())
    for d, f in test.items():
        for a in (0.0, 0.2, 0.5, 1.0):
            cell = grid[d][str(a)]
            top1 = _by_hand_top1(trained_like_head, f, text, a).mean() * 100
            clip = _by_hand_top1(trained_like_head, f, text, 0.0).mean() * 100
            assert cell["top1"] == pytest.approx(top1, abs=0.01) and cell["n"] == len(f.labels)
            assert cell["minus_clip"]["points"] == pytest.approx(top1 - clip, abs=0.01)
        assert res.domains[d]["clap/PC"].top1 == pytest.approx(grid[d]["0.5"]["top1"], abs=0.01)


def test_given_alpha_needs_no_validation(tiny, trained_like_head, dataset):
    import clap_edge.zeroshot as ev

    test = {d: ev.encode_images(tiny, imgs) for d, imgs in scan_domains(dataset / "test", CLASSES)[1].items()}
    res = ev.evaluate(tiny, CLASSES, {"clap": trained_like_head}, test, None, ev.EvalConfig(alpha=0.0, n_boot=20))
    # alpha 0 is plain CLIP: identical per-domain scores
    for cells in res.domains.values():
        assert cells["clap/C"].top1 == cells["clip/C"].top1
    with pytest.raises(ClapEdgeError, match="validation split"):
        ev.evaluate(tiny, CLASSES, {"clap": trained_like_head}, test, None, ev.EvalConfig(n_boot=20))


def test_nc_prompts_differ_from_c_but_are_seeded(tiny):
    import clap_edge.zeroshot as ev

    c = ev.encode_class_prompts(tiny, CLASSES, "C")[0]
    nc1 = ev.encode_class_prompts(tiny, CLASSES, "NC")[0]
    nc2 = ev.encode_class_prompts(tiny, CLASSES, "NC")[0]
    assert torch.equal(nc1, nc2) and not torch.allclose(c, nc1)


def test_nc_shares_one_noise_draw_after_sot_as_the_authors_evaluate(tiny):
    """Every class prompt gets the same 4 noise vectors right after SOT: [SOT, n0..n3, words, EOT]."""
    import clap_edge.zeroshot as ev
    from clap_edge.text_encoder import NoiseConfig, NoiseTextEncoder, draw_noise

    nc = ev.encode_class_prompts(tiny, CLASSES, "NC")[0]
    model = tiny.model
    shared, _ = draw_noise(["eval-NC"], NoiseConfig(n_ctx=4, std=0.02), NoiseTextEncoder(model).width, seed=0)
    for i, name in enumerate(CLASSES):
        tokens = tiny.tokenizer([name])
        eot = int(tokens.argmax())
        with torch.no_grad():
            emb = model.token_embedding(tokens[:, : eot + 1])
            x = torch.cat([emb[:, :1], shared, emb[:, 1:]], dim=1)
            n = x.shape[1]
            x = model.transformer(x + model.positional_embedding[:n], attn_mask=model.attn_mask[:n, :n])
            expected = model.ln_final(x)[:, eot + 4] @ model.text_projection
        torch.testing.assert_close(nc[i:i + 1], expected, atol=1e-5, rtol=1e-5)


def test_style_prompts_are_seeded_and_style_laden():
    from clap_edge.prompts import PromptVocab
    from clap_edge.zeroshot import style_prompts

    vocab = PromptVocab(image_types=("photograph", "sketch"), sizes=("small", "large"), art_styles=("realistic",),
                        colors=("red", "orange"), backgrounds=("gray", "white"))
    a = style_prompts(CLASSES, vocab, draws=4, seed=0)
    assert a == style_prompts(CLASSES, vocab, draws=4, seed=0)
    assert a != style_prompts(CLASSES, vocab, draws=4, seed=1)
    assert len(a) == 4 and all(len(draw) == len(CLASSES) for draw in a)
    assert style_prompts(CLASSES, vocab, draws=2, seed=0) == a[:2]  # a draw depends on (seed, draw, class) only
    pattern = re.compile(r"a realistic (photograph|sketch) of an? (small|large) (red|orange) (\w+) "
                         r"on an? (gray|white) background")
    for draw in a:
        for name, text in zip(CLASSES, draw):
            m = pattern.fullmatch(text)
            assert m and m.group(4) == name, text
    assert len({t for draw in a for t in draw}) > len(CLASSES)  # draws differ


def test_style_family_scores_each_draw_as_its_own_classifier(tiny, dataset):
    import clap_edge.zeroshot as ev

    feats = ev.encode_images(tiny, scan_domains(dataset / "test", CLASSES)[1]["sketch"])
    config = ev.EvalConfig(prompt_formats=("S",), style_draws=3, n_boot=20)
    draws = ev.encode_class_prompts(tiny, CLASSES, "S", config)
    assert len(draws) == 3
    per_draw = [ev.top1_correct(ev.zero_shot_logits(feats.features, t), feats.labels) for t in draws]
    np.testing.assert_allclose(ev.image_scores(feats, draws), np.mean(per_draw, axis=0))


def test_eval_cli_writes_table_json_and_plot(tiny_bundle, tiny_head_path, dataset, tmp_path):
    out = tmp_path / "eval"
    res = CliRunner().invoke(main, ["eval", str(dataset), "--head", str(tiny_head_path), "--bundle",
                                    f"clap={tiny_bundle}", "--variants", "fp32,int8,openvino", "--prompts", "C,PC",
                                    "--alphas", "0,0.3,1", "--alpha-objective", "worst",
                                    "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "eval.json").read_text())
    assert set(data["model"]["domains"]) == {"photo", "sketch"}
    assert {"clip/C", "clap/C", "clip/PC", "clap/PC"} <= set(data["model"]["domains"]["photo"])
    assert set(data["bundles"]["domains"]["photo"]) == {"clap-fp32", "clap-int8", "clap-openvino"}
    cell = data["bundles"]["domains"]["sketch"]["clap-int8"]
    assert 0 <= cell["top1"] <= 100 and cell["ci95"][0] <= cell["top1"] <= cell["ci95"][1]
    assert set(data["bundles"]["int8_agreement_vs_fp32"]["clap"]) == {"photo", "sketch"}
    assert data["bundles"]["failed_images"] == [str(dataset / "test" / "photo" / "cat" / "broken.png")]
    md = (out / "eval.md").read_text()
    assert md.count("| sketch |") == 4  # model table, bundle table, alpha grids of clap/C and clap/PC
    assert "### clap/PC: top-1 per alpha" in md and "worst validation objective" in md
    grid = data["model"]["alpha_grid"]
    assert set(grid) == {"clap/C", "clap/PC"}
    assert all(set(cells) == {"0.0", "0.3", "1.0"} for cells in grid["clap/C"].values())
    assert data["model"]["alpha_objective"] == "worst" and data["model"]["alphas"]["clap/C"] in (0.0, 0.3, 1.0)
    for png in ("eval-model.png", "eval-alpha.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert CliRunner().invoke(main, ["eval", str(dataset)]).exit_code == 2  # nothing to evaluate
