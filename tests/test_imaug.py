"""Im.Aug (the authors' network_psi): toy template images, the authors' augmentations, training, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from clap_edge.head import CLAPHead
from clap_edge.imaug import ImAugConfig, ImageSet, RandomMask, augment_transform, train_imaug_head
from clap_edge.prompts import Prompt
from clap_edge.toyworld import render
from clap_edge.toyworld.world import BACKGROUNDS, CLASSES, COLORS, RENDERS, SIZES


@pytest.fixture(scope="module")
def toy():
    from clap_edge.models import load_model

    return load_model("clap-edge-toy", "toyworld")


def test_a_template_prompt_renders_its_own_factors():
    from clap_edge.toyworld.synth import prompt_factors, template_images

    prompt = Prompt("circle", "sketch", "small", "realistic", "red", "gray")
    f = prompt_factors([prompt], seed=3)
    assert (CLASSES[f.label[0]], COLORS[f.color[0]], SIZES[f.size[0]], BACKGROUNDS[f.background[0]],
            RENDERS[f.render[0]]) == ("circle", "red", "small", "gray", "sketch")
    prompts, images = template_images(["circle", "star"], seed=3, per_class=5)
    assert len(prompts) == 10 and images.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(images, render(prompt_factors(prompts, seed=3)))
    with pytest.raises(Exception, match="colour 'teal'"):
        prompt_factors([Prompt("circle", "sketch", "small", "realistic", "teal", "gray")])


def test_random_mask_is_the_authors_block_mask():
    white = Image.new("RGB", (16, 16), (255, 255, 255))
    assert RandomMask(p=0.0, ratio=1.0, k1=4, k2=5)(white) is white  # the authors' p = 0: never
    torch.manual_seed(0)
    counts = []
    for _ in range(40):
        out = np.asarray(RandomMask(p=1.0, ratio=0.25, k1=4, k2=5)(white))  # a 4x4 grid of 4x4-pixel blocks
        blocks = out.reshape(4, 4, 4, 4, 3).transpose(0, 2, 1, 3, 4).reshape(16, -1)
        assert all(set(b.tolist()) in ({0}, {255}) for b in blocks)  # whole blocks, black or untouched
        counts.append(int((blocks[:, 0] == 0).sum()))
    assert max(counts) <= int(0.25 * 16) and min(counts) == 0 and len(set(counts)) > 2


def test_augmentation_without_randomness_is_the_eval_view(toy):
    """Crop scale 1, no jitter, no mask: the authors' augmented view reduces to resize + crop + normalise."""
    from clap_edge.core.preprocess import PreprocessCfg, Preprocessor
    from clap_edge.toyworld.synth import prompt_factors

    cfg = toy.preprocess_cfg
    image = Image.fromarray(render(prompt_factors([Prompt("star", "painting", "large", "impressionistic", "blue",
                                                          "striped")]))[0])
    plain = Preprocessor(PreprocessCfg.from_open_clip(cfg))(image)
    still = augment_transform(ImAugConfig(crop_scale=(1.0, 1.0), brightness=0.0, hue=0.0), (32, 32), cfg.mean,
                              cfg.std)
    np.testing.assert_allclose(still(image).numpy(), plain, atol=1e-5)
    moved = augment_transform(ImAugConfig(), (32, 32), cfg.mean, cfg.std)(image).numpy()
    assert moved.shape == plain.shape and np.abs(moved - plain).mean() > 0.05


def test_imaug_trains_a_psi_head_that_the_official_loader_reads_back(toy, tmp_path):
    data = ImageSet.from_toy(["circle", "square", "star"], seed=0, per_class=40)
    config = ImAugConfig(steps=60, window=20, lr=1e-3, progress=False, encode_batch_size=128)
    head, result = train_imaug_head(toy, data, config)
    assert result.steps_run == 60 and result.window_means[-1] < result.window_means[0]
    assert head.distance_from_identity() > 0.05
    training = head.config.training
    assert (training["method"], training["tau"], training["mask"], training["crop_scale"]) == \
        ("imaug", 0.5, (0.0, 0.25, 8, 16), (0.64, 1.0))
    assert training["batching"] == "shuffle" and training["keep"] == "best" and training["images_count"] == 120
    official = head.save_official(tmp_path / "psi.pth", network="psi")
    psi = CLAPHead.from_official_checkpoint(official, network="psi", alpha=0.056)
    beta = CLAPHead.from_official_checkpoint(official, network="beta")  # the untouched one: the identity
    reloaded = CLAPHead.load(head.save(tmp_path / "psi.safetensors"))
    z = torch.randn(5, head.config.in_dim)
    with torch.no_grad():
        for alpha in (1.0, 0.056):
            torch.testing.assert_close(psi(z, alpha=alpha), head(z, alpha=alpha), rtol=0, atol=0)
            torch.testing.assert_close(reloaded(z, alpha=alpha), head(z, alpha=alpha), rtol=0, atol=0)
        torch.testing.assert_close(beta(z), z)
    assert reloaded.config.training["method"] == "imaug"


def test_cli_imaug_on_an_image_folder_and_options_of_the_other_method(tmp_path):
    from clap_edge.apps.cli import main
    from clap_edge.toyworld.synth import template_images

    prompts, images = template_images(["heart", "moon"], seed=1, per_class=6)
    for prompt, image in zip(prompts, images):  # the authors' layout: <class>/<prompt>/<prompt>_1.png
        folder = tmp_path / "synth" / prompt.class_name / prompt.text()
        folder.mkdir(parents=True)
        Image.fromarray(image).save(folder / f"{prompt.text()}_1.png")
    out = tmp_path / "psi.safetensors"
    args = ["train", "--method", "imaug", "--model", "clap-edge-toy", "--pretrained", "toyworld", "--images",
            str(tmp_path / "synth"), "--steps", "6", "--mask", "0.5,0.25,8,16", "--out", str(out),
            "--official-out", str(tmp_path / "psi.pth"), "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["method"] == "imaug" and summary["classes"] == ["heart", "moon"] and summary["steps_run"] == 6
    head = CLAPHead.load(out)
    assert head.config.training["mask"] == [0.5, 0.25, 8, 16] and head.config.training["images_count"] == 12
    CLAPHead.from_official_checkpoint(tmp_path / "psi.pth", network="psi")
    runner = CliRunner()
    bad = runner.invoke(main, args[:-1] + ["--noise-pool", "3"])
    assert bad.exit_code == 2 and "--noise-pool does not apply to --method imaug" in bad.output
    bad = runner.invoke(main, ["train", "--model", "clap-edge-tiny", "--classes", "a,b", "--out", str(out),
                               "--images", "toy"])
    assert bad.exit_code == 2 and "--images does not apply to --method clap" in bad.output
    bad = runner.invoke(main, args[:3] + ["--model", "clap-edge-toy", "--images", str(tmp_path / "nope"),
                                          "--out", str(out)])
    assert bad.exit_code == 2 and "not a folder" in bad.output
