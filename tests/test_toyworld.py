"""The toy world: generator determinism, domain definitions, splits, disk layout, shipped toy CLIP."""

from __future__ import annotations

import hashlib
import random
import re

import numpy as np
import pytest

from clap_edge.prompts import PromptVocab, load_class_names
from clap_edge.toyworld import world
from clap_edge.toyworld.dataset import generate, read_info, write_dataset
from clap_edge.toyworld.render import render
from clap_edge.toyworld.world import (BACKGROUNDS, CLASSES, COLORS, DOMAINS, RENDERS, SHIFTED_RENDERS,
                                      class_background, class_color, sample_factors, split_seed)


def _hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(img.tobytes()).hexdigest() for img in images}


def test_same_seed_same_images_different_seed_different():
    a, fa = generate("id", "val", 4, seed=0)
    b, fb = generate("id", "val", 4, seed=0)
    c, _ = generate("id", "val", 4, seed=1)
    assert a.shape == (4 * len(CLASSES), 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(fa.color, fb.color)
    assert not np.array_equal(a, c)
    assert a.std() > 10  # real pictures, not a constant canvas


def test_rendering_is_a_pure_function_of_the_factors():
    factors = sample_factors(40, "both", np.random.default_rng(3))
    whole = render(factors)
    part = render(world.Factors(**{k: v[10:13] for k, v in vars(factors).items()}))
    assert np.array_equal(whole[10:13], part)


def test_batch_render_is_deterministic_and_batch_independent():
    """Rendering is vectorised over the batch: a large batch gives the same pixels as its parts rendered alone
    (no speed assertion here: speed belongs in benchmarks)."""
    factors = sample_factors(2000, "id", np.random.default_rng(0))
    images = render(factors)
    assert images.shape[0] == 2000 and images.dtype == np.uint8
    again = render(sample_factors(2000, "id", np.random.default_rng(0)))
    assert np.array_equal(images, again)
    import dataclasses

    first = dataclasses.replace(factors, **{f.name: getattr(factors, f.name)[:7] for f in dataclasses.fields(factors)})
    assert np.array_equal(render(first), images[:7])


def test_classes_look_different():
    # Same style for every class: the pictures must still differ by class (content is in the pixels).
    n = len(CLASSES)
    f = sample_factors(n, "id", np.random.default_rng(0), labels=np.arange(n))
    f.color[:], f.background[:], f.render[:], f.size[:], f.offset[:], f.angle[:] = 0, 0, 0, 2, 0, 0
    images = render(f).astype(int)
    for i in range(n):
        for j in range(i + 1, n):
            assert np.abs(images[i] - images[j]).mean() > 3, (CLASSES[i], CLASSES[j])


@pytest.mark.parametrize("domain", DOMAINS)
def test_domain_definitions(domain):
    f = sample_factors(6000, domain, np.random.default_rng(split_seed(0, domain, "test")))
    own_color = f.color == class_color(f.label)
    own_bg = f.background == class_background(f.label)
    renders = {RENDERS[r] for r in np.unique(f.render)}
    color_shifted = domain in ("color_shift", "both", "style_swap", "style_swap_render")
    bg_shifted = domain in ("background_shift", "both", "style_swap", "style_swap_render")
    render_shifted = domain in ("render_shift", "both", "style_swap_render")
    # id: the class's own colour/background w.p. 0.5 + 0.5/k; shifted: never.
    assert own_color.mean() == 0 if color_shifted else abs(own_color.mean() - (0.5 + 0.5 / len(COLORS))) < 0.03
    assert own_bg.mean() == 0 if bg_shifted else abs(own_bg.mean() - (0.5 + 0.5 / len(BACKGROUNDS))) < 0.03
    if render_shifted:
        assert renders == set(SHIFTED_RENDERS)
    else:
        assert renders == set(RENDERS)
        assert np.isin(f.render, [RENDERS.index("photo"), RENDERS.index("cartoon")]).mean() > 0.85
    assert len(np.unique(f.color)) == len(COLORS) and len(np.unique(f.background)) == len(BACKGROUNDS)


# The usual (colour, background) of each class, written out from world.py's rules by hand:
# colour = class % 6 over (red, blue, green, yellow, purple, orange); background = (3 * class + 1) % 4 over
# (white, gray, black, striped).
USUAL = {"arrow": ("red", "gray"), "circle": ("blue", "white"), "cross": ("green", "striped"),
         "heart": ("yellow", "black"), "moon": ("purple", "gray"), "square": ("orange", "white"),
         "star": ("red", "striped"), "triangle": ("blue", "black")}


@pytest.mark.parametrize("domain", ["style_swap", "style_swap_render"])
def test_style_swap_domains_never_show_a_class_in_its_usual_colour_or_background(domain):
    from clap_edge.toyworld.dataset import generate
    from clap_edge.toyworld.world import BACKGROUNDS, COLORS, swap_partners

    _, f = generate(domain, "val", 50, seed=3)
    pairs = [(CLASSES[c], COLORS[k], BACKGROUNDS[b]) for c, k, b in zip(f.label, f.color, f.background)]
    for name, color, background in pairs:
        assert color != USUAL[name][0] and background != USUAL[name][1], (name, color, background)
        lender = [other for other, usual in USUAL.items() if usual == (color, background)]
        assert lender, "the style is another class's usual pair"
    # arrow (red, gray) can borrow from circle, cross, heart, square, triangle (not moon: gray; not star: red)
    assert [CLASSES[k] for k in swap_partners(CLASSES.index("arrow"))] == ["circle", "cross", "heart", "square",
                                                                           "triangle"]
    assert len({(c, k, b) for c, k, b in pairs}) > 20  # every class borrows from several others


def test_splits_never_share_images():
    val, _ = generate("id", "val", 30, seed=0)
    test, _ = generate("id", "test", 30, seed=0)
    train = render(sample_factors(240, "id", np.random.default_rng(split_seed(0, "id", "train"))))
    assert _hashes(val).isdisjoint(_hashes(test))
    assert _hashes(train).isdisjoint(_hashes(val) | _hashes(test))
    with pytest.raises(Exception, match="unknown split"):
        split_seed(0, "id", "holdout")
    with pytest.raises(Exception, match="unknown toy domain"):
        sample_factors(4, "sepia")


def test_captions_name_content_and_style_in_the_clap_vocabulary():
    from importlib.resources import files

    f = sample_factors(3000, "id", np.random.default_rng(1))
    texts = world.captions(f, seed=1)
    assert texts == world.captions(f, seed=1)
    assert all(CLASSES[label] in t for label, t in zip(f.label, texts))
    # Each style word is present with probability 0.7.
    has_color = np.mean([COLORS[c] in t for c, t in zip(f.color, texts)])
    has_bg = np.mean([f"{BACKGROUNDS[b]} background" in t for b, t in zip(f.background, texts)])
    assert abs(has_color - 0.7) < 0.04 and abs(has_bg - 0.7) < 0.04
    # The shipped CLAP vocabulary is the toy vocabulary, and each of its words occurs in the captions.
    vocab = PromptVocab.from_file(files("clap_edge") / "vocab" / "toy.toml")
    assert vocab == world.toy_prompt_vocab()
    corpus = " ".join(texts)
    for slot in ("image_types", "sizes", "art_styles", "colors", "backgrounds"):
        for word in getattr(vocab, slot):
            assert re.search(rf"\b{word}\b", corpus), (slot, word)


def test_dataset_layout_on_disk(tmp_path):
    from PIL import Image

    root = tmp_path / "toy"
    info = write_dataset(root, domains=["id", "render_shift"], per_class=2, seed=5)
    for split in ("val", "test"):
        assert load_class_names(info.split_root(split)) == list(CLASSES)
        assert sorted(p.name for p in info.split_root(split).iterdir()) == ["id", "render_shift"]
    assert load_class_names(root / "classes.txt") == list(CLASSES)
    assert read_info(root).per_class == 2
    files = sorted((root / "test" / "render_shift" / "star").glob("*.png"))
    assert len(files) == 2
    images, factors = generate("render_shift", "test", 2, seed=5)
    first_star = images[list(factors.label).index(CLASSES.index("star"))]
    assert np.array_equal(np.asarray(Image.open(files[0]).convert("RGB")), first_star)
    with pytest.raises(Exception, match="already exists"):
        write_dataset(root, domains=["id"], per_class=1)


def test_cli_toy_dataset(tmp_path):
    from click.testing import CliRunner

    from clap_edge.apps.cli import main

    root = tmp_path / "data"
    res = CliRunner().invoke(main, ["toy", "dataset", str(root), "--domains", "color_shift", "--splits", "val",
                                    "--per-class", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert len(list((root / "val" / "color_shift").glob("*/*.png"))) == len(CLASSES)
    bad = CliRunner().invoke(main, ["toy", "dataset", str(tmp_path / "x"), "--domains", "sepia"])
    assert bad.exit_code == 2 and "unknown toy domain" in bad.output
    assert "Example:" in CliRunner().invoke(main, ["toy", "pretrain", "--help"]).output


def test_cli_toy_dataset_stdout_holds_only_the_summary(tmp_path):
    """The progress bar goes to stderr, so stdout can be piped or parsed."""
    from click.testing import CliRunner

    from clap_edge.apps.cli import main

    res = CliRunner().invoke(main, ["toy", "dataset", str(tmp_path / "d"), "--domains", "id", "--splits", "val",
                                    "--per-class", "1"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == [line for line in res.stdout.splitlines() if line.startswith("wrote ")] != []


def test_shipped_toy_clip_loads_offline_and_classifies(monkeypatch):
    import torch

    from clap_edge.models import SHIPPED_WEIGHTS, WEIGHTS_DIR, load_model
    from clap_edge.toyworld.pretrain import domain_sample, zero_shot_top1

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = WEIGHTS_DIR / SHIPPED_WEIGHTS[("clap-edge-toy", "toyworld")]
    assert path.stat().st_size <= 20 * 2**20
    torch.set_num_threads(1)
    loaded = load_model("clap-edge-toy", "toyworld")
    assert loaded.embed_dim == 64 and loaded.preprocess_cfg.size == (32, 32)
    # A fresh sample (seed never used for the shipped figures): well above chance (12.5%).
    images, labels = domain_sample("id", "test", 160, seed=987)
    acc = zero_shot_top1(loaded.model, loaded.tokenizer, images, labels, vars(loaded.preprocess_cfg))
    assert acc > 50.0
    random_model = load_model("clap-edge-toy", None)
    assert zero_shot_top1(random_model.model, random_model.tokenizer, images, labels,
                          vars(random_model.preprocess_cfg)) < acc - 20


def test_short_pretrain_lowers_the_loss(tmp_path):
    from safetensors.torch import load_file

    from clap_edge.toyworld.pretrain import PretrainConfig, pretrain, save_weights

    result = pretrain(PretrainConfig(steps=40, batch_size=32, lr=2e-3, warmup_steps=5, seed=1))
    assert len(result.losses) == 40
    assert np.mean(result.losses[-8:]) < np.mean(result.losses[:8]) - 0.3
    path = save_weights(result.model, tmp_path / "w.safetensors", result.config)
    tensors = load_file(str(path))
    assert all(t.dtype.is_floating_point and t.element_size() == 2 for t in tensors.values())


def test_pretrain_is_reproducible_from_its_seed():
    import torch

    from clap_edge.toyworld.pretrain import PretrainConfig, pretrain

    def weights(seed):
        model = pretrain(PretrainConfig(steps=3, batch_size=16, warmup_steps=1, seed=seed)).model
        return model.state_dict()

    a, b, c = weights(2), weights(2), weights(3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
