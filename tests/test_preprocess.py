"""The numpy + PIL preprocessing against open_clip's own eval transform (the reference)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clap_edge.core.preprocess import PreprocessConfig, Preprocessor, resize_and_crop

open_clip_transform = pytest.importorskip("open_clip.transform")
torch = pytest.importorskip("torch")

# (w, h): landscape, portrait, nearly square, thin strips, tiny, exactly the target
IMAGE_SIZES = [(640, 480), (480, 640), (225, 224), (300, 37), (37, 300), (1, 1), (3, 2), (64, 64), (96, 72)]
TARGETS = [64, (64, 48), (48, 64)]


def _photo(w: int, h: int, seed: int) -> Image.Image:
    """Noise over a smooth gradient: resampling errors show up in both the flat and the busy parts."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 256], axis=-1)
    noisy = base * 0.7 + rng.integers(0, 256, (h, w, 3)) * 0.3
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", TARGETS, ids=str)
def test_matches_open_clip_eval_transform(resize_mode, interpolation, size):
    cfg = open_clip_transform.PreprocessCfg(size=size, resize_mode=resize_mode, interpolation=interpolation,
                                            fill_color=37, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    reference = open_clip_transform.image_transform_v2(cfg, is_train=False)
    ours = Preprocessor(PreprocessConfig(size=size, resize_mode=resize_mode, interpolation=interpolation,
                                         fill_color=37, mean=cfg.mean, std=cfg.std))
    for i, (w, h) in enumerate(IMAGE_SIZES):
        img = _photo(w, h, seed=i)
        expected = reference(img).numpy()
        actual = ours(img)
        assert actual.dtype == np.float32
        assert actual.shape == expected.shape == (3, *ours.cfg.size), (w, h)
        assert np.abs(actual - expected).max() <= 1e-6, (w, h)


def test_default_openai_config_matches_open_clip():
    reference = open_clip_transform.image_transform_v2(open_clip_transform.PreprocessCfg(), is_train=False)
    ours = Preprocessor(PreprocessConfig())
    img = _photo(500, 333, seed=7)
    assert np.abs(ours(img) - reference(img).numpy()).max() <= 1e-6


def test_nearest_matches_torchvision():
    # open_clip itself accepts only bicubic / bilinear; 'nearest' follows the same pipeline with PIL NEAREST
    from torchvision import transforms as T

    reference = T.Compose([T.Resize(64, interpolation=T.InterpolationMode.NEAREST), T.CenterCrop(64), T.ToTensor(),
                           T.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))])
    ours = Preprocessor(PreprocessConfig(size=64, interpolation="nearest", mean=(0.5,) * 3, std=(0.25,) * 3))
    for w, h in [(200, 100), (77, 130)]:
        img = _photo(w, h, seed=w)
        assert np.abs(ours(img) - reference(img).numpy()).max() <= 1e-6


def test_longest_pads_with_fill_color():
    cfg = PreprocessConfig(size=64, resize_mode="longest", fill_color=200)
    out = resize_and_crop(Image.new("RGB", (128, 32), (0, 0, 0)), cfg)
    arr = np.asarray(out)
    assert out.size == (64, 64)
    assert (arr[:24] == 200).all() and (arr[-24:] == 200).all()  # 64x16 content centred, 24 rows pad each side
    assert (arr[24:40] == 0).all()


def test_uint8_array_and_pil_give_the_same_result():
    pre = Preprocessor(PreprocessConfig(size=32))
    img = _photo(50, 40, seed=3)
    assert np.array_equal(pre(img), pre(np.asarray(img)))


def test_non_rgb_input_is_converted_before_resizing():
    pre = Preprocessor(PreprocessConfig(size=16))
    gray = Image.fromarray(np.full((20, 30), 128, dtype=np.uint8), "L")
    rgb = Image.merge("RGB", [gray] * 3)
    assert np.array_equal(pre(gray), pre(rgb))


@pytest.mark.parametrize("bad, match", [
    ({"resize_mode": "stretch"}, "resize_mode"),
    ({"interpolation": "lanczos"}, "interpolation"),
    ({"mean": (0.5, 0.5)}, "mean"),
    ({"size": (0, 10)}, "size"),
    ({"mode": "L"}, "mode"),
])
def test_bad_config_is_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        PreprocessConfig(**bad)


def test_from_manifest_dict_ignores_unknown_keys_and_nulls():
    cfg = PreprocessConfig.from_dict({"size": [48, 32], "resize_mode": "squash", "fill_color": None, "extra": 1})
    assert cfg.size == (48, 32) and cfg.resize_mode == "squash" and cfg.fill_color == 0


def test_rejects_float_arrays():
    with pytest.raises(TypeError, match="uint8"):
        Preprocessor(PreprocessConfig(size=8))(np.zeros((8, 8, 3), dtype=np.float32))


def test_from_open_clip_config_keeps_every_field():
    cfg = open_clip_transform.PreprocessCfg(size=(48, 64), mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6),
                                            interpolation="bilinear", resize_mode="longest", fill_color=9)
    ours = PreprocessConfig.from_open_clip(cfg)
    assert (ours.size, ours.mean, ours.std) == ((48, 64), (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert (ours.interpolation, ours.resize_mode, ours.fill_color) == ("bilinear", "longest", 9)
    reference = open_clip_transform.image_transform_v2(cfg, is_train=False)
    img = _photo(101, 77, seed=3)
    assert np.abs(Preprocessor(ours)(img) - reference(img).numpy()).max() <= 1e-6


# Geometries users send beyond the usual photos: extreme aspect ratios (1:30, 30:1), one-pixel lines, primes,
# images smaller than the model input (upscaled). Bicubic / bilinear against open_clip itself.
@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("size", [64, (48, 80)], ids=str)
def test_extreme_geometries_match_open_clip(resize_mode, size):
    cfg = open_clip_transform.PreprocessCfg(size=size, resize_mode=resize_mode, fill_color=9)
    reference = open_clip_transform.image_transform_v2(cfg, is_train=False)
    ours = Preprocessor(PreprocessConfig(size=size, resize_mode=resize_mode, fill_color=9))
    for i, (w, h) in enumerate([(9, 271), (271, 9), (2, 97), (97, 2), (127, 131), (7, 5), (31, 929), (929, 31)]):
        img = _photo(w, h, seed=i)
        assert np.abs(ours(img) - reference(img).numpy()).max() <= 1e-6, (w, h)


def test_one_pixel_side_keeps_one_pixel_in_longest_mode():
    # open_clip asks PIL for a 0-pixel width here (and fails); both runtimes keep 1 pixel and pad
    out = resize_and_crop(Image.new("RGB", (1, 500), (9, 9, 9)), PreprocessConfig(size=64, resize_mode="longest"))
    arr = np.asarray(out)
    assert out.size == (64, 64) and (arr[:, 31] == 9).all() and (arr[:, 0] == 0).all()  # left pad: (64 - 1) // 2


def test_resize_target_is_bounded():
    from clap_edge.core.errors import ImageError
    from clap_edge.core.preprocess import MAX_RESIZE_PIXELS, resize_target

    cfg = PreprocessConfig(size=64)
    assert resize_target(1, 100_000, cfg) == (6_400_000, 64)  # shortest side -> 64: 64 x 6.4M before the crop
    with pytest.raises(ImageError, match=r"too large to resize: 1x300000 would be resized to 64x19200000"):
        resize_and_crop(Image.new("RGB", (1, 300_000)), cfg)
    assert 64 * 192_000 <= MAX_RESIZE_PIXELS
    assert resize_and_crop(Image.new("RGB", (1, 3_000)), cfg).size == (64, 64)
    # longest and squash never grow past the model input, whatever the source
    assert resize_target(1, 300_000, PreprocessConfig(size=64, resize_mode="longest")) == (64, 1)
