"""White-box attacks through the fused model: FGSM against a hand computation, PGD's ball and seed, the eval table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

pytest.importorskip("art")

from clap_edge.apps.cli import main  # noqa: E402
from clap_edge.attacks import (CWLoss, PixelSpaceModel, attack_images, authors_attack, parse_attacks,  # noqa: E402
                               predict)
from clap_edge.core.errors import ClapEdgeError  # noqa: E402
from clap_edge.fuse import FusedClassifier  # noqa: E402

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on the shared 2-core CI box two threads made PGD's small passes many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class _LinearClip(nn.Module):
    """The smallest thing FusedClassifier accepts: encode_image is one linear map of the flattened image."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.lin = nn.Linear(in_dim, dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_image(self, x):
        return self.lin(x.flatten(1))


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    clip = _LinearClip(3 * 2 * 2, 5)
    classes = torch.randn(4, 5)
    return clip, classes, PixelSpaceModel(FusedClassifier(clip, classes), MEAN, STD)


def _fgsm_by_hand(clip, classes, x, y, eps, cosine=True):
    """FGSM from the analytic gradient of cross-entropy(softmax(cos(normalise(W((x - m) / s) + b), classes))), numpy."""
    w, b = clip.lin.weight.detach().double().numpy(), clip.lin.bias.detach().double().numpy()
    c = classes.double().numpy()
    c = c / np.linalg.norm(c, axis=1, keepdims=True)
    mean, std = np.asarray(MEAN)[None, :, None, None], np.asarray(STD)[None, :, None, None]
    scale = 1.0 if cosine else 10.0
    xn = ((x - mean) / std).reshape(len(x), -1)
    z = xn @ w.T + b
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    u = z / norm
    logits = scale * u @ c.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d_logits = (p - np.eye(c.shape[0])[y]) / len(x)  # mean cross-entropy
    d_u = scale * d_logits @ c
    d_z = (d_u - u * (d_u * u).sum(1, keepdims=True)) / norm  # through z / |z|
    d_x = (d_z @ w).reshape(x.shape) / std
    return np.clip(x + eps * np.sign(d_x), 0.0, 1.0)


@pytest.mark.parametrize("cosine", [True, False])
def test_fgsm_matches_the_hand_computed_gradient_sign(linear, cosine):
    clip, classes, model = linear
    model = PixelSpaceModel(model.fused, MEAN, STD, cosine=cosine)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (6, 3, 2, 2)).astype(np.float32)
    x[0, 0, 0, 0], x[1, 1, 1, 1] = 0.01, 0.995  # near the edges: the [0, 1] clip must show
    y = rng.integers(0, 4, 6)
    adv = attack_images(model, x, y, authors_attack("fgsm", eps=0.05), nb_classes=4)
    expected = _fgsm_by_hand(clip, classes, x.astype(np.float64), y, 0.05, cosine)
    np.testing.assert_allclose(adv, expected, atol=1e-6)
    assert np.abs(adv - x).max() == pytest.approx(0.05, abs=1e-6) and adv.min() >= 0 and adv.max() <= 1


def test_pgd_stays_in_the_ball_is_seeded_and_beats_fgsm(linear):
    _, _, model = linear
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (16, 3, 2, 2)).astype(np.float32)
    y = predict(model, x)  # all correct to start with
    spec = authors_attack("pgd20", eps=0.1)
    assert (spec.steps, spec.step_size, spec.random_start) == (20, pytest.approx(0.01), True)
    a, b = (attack_images(model, x, y, spec, 4, seed=s) for s in (3, 3))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, attack_images(model, x, y, spec, 4, seed=4))  # random start
    assert np.abs(a - x).max() <= 0.1 + 1e-6 and a.min() >= 0 and a.max() <= 1
    fgsm = attack_images(model, x, y, authors_attack("fgsm", eps=0.1), 4)
    assert (predict(model, a) == y).mean() <= (predict(model, fgsm) == y).mean() < 1


def test_cw_loss_is_the_authors_formula():
    out = torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.3, -0.2]])
    y = torch.tensor([0, 2])
    # -clamp(real - max other + 50, 0): (0.9 - 0.5 + 50) and (-0.2 - 0.3 + 50)
    assert CWLoss()(out, y).item() == pytest.approx(-(50.4 + 49.5))
    assert CWLoss()(out, nn.functional.one_hot(y, 3)).item() == pytest.approx(-(50.4 + 49.5))


def test_attack_names_and_eps_are_checked():
    assert [a.name for a in parse_attacks("FGSM, pgd20,cw20")] == ["fgsm", "pgd20", "cw20"]
    assert parse_attacks("cw20")[0].eps == 0.031 and parse_attacks("cw20")[0].loss == "cw"
    with pytest.raises(ClapEdgeError, match="unknown attack 'pgd7'"):
        parse_attacks("pgd7")
    with pytest.raises(ClapEdgeError, match="--eps"):
        parse_attacks("fgsm", eps=2.0)


@pytest.fixture(scope="module")
def toy_split(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("attack-data")
    rng = np.random.default_rng(0)
    for split in ("val", "test"):
        for domain in ("photo", "sketch"):
            for name in ("cat", "dog", "bird", "fish"):
                (root / split / domain / name).mkdir(parents=True)
                for i in range(3):
                    img = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
                    Image.fromarray(img).save(root / split / domain / name / f"{i}.png")
    return root


def test_eval_attack_table_on_the_tiny_model(tiny_head_path, toy_split, tmp_path):
    out = tmp_path / "eval"
    res = CliRunner().invoke(main, ["eval", str(toy_split), "--head", str(tiny_head_path), "--prompts", "PC",
                                    "--alphas", "0,0.3", "--attack", "fgsm,pgd20", "--attack-per-class", "1",
                                    "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "eval.json").read_text())["attacks"]
    assert data["prompt"] == "PC" and data["alphas"]["clap"] == json.loads(res.output)["model"]["alphas"]["clap/PC"]
    assert [a["name"] for a in data["attacks"]] == ["fgsm", "pgd20"] and data["scores"] == "cosine"
    keys = {f"{m} {a}" for m in ("clip", "clap") for a in ("clean", "fgsm", "pgd20")}
    for domain in ("photo", "sketch"):
        cells = data["domains"][domain]
        assert set(cells) == keys
        for cell in cells.values():
            assert cell["n"] == 4 and 0 <= cell["ci95"][0] <= cell["top1"] <= cell["ci95"][1] <= 100
        for attack in ("clean", "fgsm", "pgd20"):
            d = data["clap_minus_clip"]["clap"][attack][domain]
            assert d["points"] == pytest.approx(cells[f"clap {attack}"]["top1"] - cells[f"clip {attack}"]["top1"],
                                                abs=0.02)
            assert d["ci95"][0] <= d["points"] <= d["ci95"][1]
        assert cells["clip pgd20"]["top1"] <= cells["clip clean"]["top1"]  # true labels: it only removes hits
    md = (out / "eval.md").read_text()
    assert "### attacks" in md and "clap minus CLIP" in md and (out / "eval-attacks.png").exists()
    bad = CliRunner().invoke(main, ["eval", str(toy_split), "--head", str(tiny_head_path), "--attack", "pgd7"])
    assert bad.exit_code == 2 and "unknown attack 'pgd7'" in bad.output
