"""Image decoding: every odd-but-valid kind becomes correct RGB; every broken kind is an ImageError naming the path."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clap_edge.core.errors import ImageError
from clap_edge.core.images import list_images, load_image, to_rgb

sys.path.insert(0, str(Path(__file__).parent / "conformance"))
from image_cases import claim_size, exif_tiff  # noqa: E402  (the conformance cases' own image builders)

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _photo(w=64, h=48, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


# ---- broken files --------------------------------------------------------------------


def test_truncated_jpeg_is_an_error_naming_the_path(tmp_path):
    good = tmp_path / "good.jpg"
    _photo(256, 256).save(good, quality=95)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageError, match="truncated.jpg") as e:
        load_image(bad)
    assert "truncated" in str(e.value).split("truncated.jpg", 1)[1]


def test_zero_byte_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg.*empty file"):
        load_image(path)


def test_text_file_named_jpg_is_an_error(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match=r"notes\.jpg.*not an image"):
        load_image(path)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ImageError, match=r"nope\.png: no such file"):
        load_image(tmp_path / "nope.png")


def test_decompression_bomb_header_is_refused_without_decoding(tmp_path):
    # a PNG that declares 100000 x 100000 pixels but holds almost no data
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    with pytest.raises(ImageError, match=r"bomb\.png.*too large"):
        load_image(path)


def test_pixel_limit_is_enforced(tmp_path):
    path = tmp_path / "big.png"
    _photo(200, 100).save(path)
    with pytest.raises(ImageError, match=r"big\.png.*200x100"):
        load_image(path, max_pixels=10_000)
    assert load_image(path, max_pixels=20_000).size == (200, 100)


# ---- odd but valid files -------------------------------------------------------------


def test_very_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path):
    path = tmp_path / "large.jpg"
    Image.new("RGB", (6000, 4000), (200, 120, 40)).save(path, quality=80)
    # over the pixel budget at full size; the DCT draft reduces it before anything is allocated
    with pytest.raises(ImageError, match="too large"):
        load_image(path, max_pixels=4_000_000)
    img = load_image(path, draft_size=(448, 448), max_pixels=4_000_000)  # the size below proves the draft
    assert img.mode == "RGB"
    assert img.size == (750, 500)  # scale 1/8: the smallest DCT scale that still covers 448 x 448
    assert np.abs(np.asarray(img, dtype=int)[250, 375] - (200, 120, 40)).max() <= 3


def test_cmyk_jpeg_becomes_correct_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (32, 32), RED).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    img = load_image(path)
    assert img.mode == "RGB"
    assert np.abs(np.asarray(img, dtype=int) - RED).max() <= 8


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 16).astype(np.uint16).reshape(16, 64)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    arr = np.asarray(load_image(path), dtype=int)
    assert arr.shape == (16, 64, 3)
    expected = np.round(ramp.astype(float) / 257)
    assert np.abs(arr[..., 0] - expected).max() <= 1
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    assert 100 < arr[8, 32, 0] < 156  # the middle of the ramp is mid-grey, not clipped to white


def test_rgba_png_is_composited_on_white(tmp_path):
    rgba = np.zeros((10, 20, 4), dtype=np.uint8)
    rgba[:, :10] = (255, 0, 0, 255)  # opaque red
    rgba[:, 10:] = (0, 0, 0, 0)  # fully transparent (black underneath)
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    arr = np.asarray(load_image(path))
    assert (arr[:, :10] == RED).all()
    assert (arr[:, 10:] == 255).all()


def test_palette_png_keeps_its_colours(tmp_path):
    src = Image.new("RGB", (20, 10), RED)
    src.paste(BLUE, (10, 0, 20, 10))
    path = tmp_path / "palette.png"
    src.convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(path)
    assert Image.open(path).mode == "P"
    arr = np.asarray(load_image(path))
    assert (arr[:, :10] == RED).all() and (arr[:, 10:] == BLUE).all()


def test_palette_with_transparency_is_composited(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.paste(1, (0, 0, 4, 8))
    path = tmp_path / "ptrans.png"
    img.save(path, transparency=0)
    arr = np.asarray(load_image(path))
    assert (arr[:, :4] == (0, 255, 0)).all() and (arr[:, 4:] == 255).all()


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.arange(0, 250, 10, dtype=np.uint8).reshape(5, 5)
    path = tmp_path / "gray.png"
    Image.fromarray(gray, "L").save(path)
    arr = np.asarray(load_image(path))
    assert arr.shape == (5, 5, 3)
    assert all((arr[..., c] == gray).all() for c in range(3))


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (40, 20), RED)
    stored.paste(BLUE, (20, 0, 40, 20))  # left red, right blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif, quality=95)
    img = load_image(path)
    assert img.size == (20, 40)  # portrait once rotated
    arr = np.asarray(img, dtype=int)
    assert np.abs(arr[5, 10] - RED).max() < 30  # the stored left edge is now on top
    assert np.abs(arr[35, 10] - BLUE).max() < 30


def test_exif_rotation_with_draft_keeps_orientation(tmp_path):
    stored = Image.new("RGB", (1600, 800), RED)
    stored.paste(BLUE, (800, 0, 1600, 800))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated-large.jpg"
    stored.save(path, exif=exif, quality=90)
    img = load_image(path, draft_size=(300, 300))
    assert img.size == (400, 800)  # 1/2 scale (800 / 4 = 200 would no longer cover 300), then rotated
    arr = np.asarray(img, dtype=int)
    assert np.abs(arr[100, 200] - RED).max() < 30 and np.abs(arr[700, 200] - BLUE).max() < 30


def test_one_pixel_image(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 20, 30)).save(path)
    img = load_image(path)
    assert img.size == (1, 1) and img.getpixel((0, 0)) == (10, 20, 30)


def test_to_rgb_of_a_32bit_int_image_scales_16bit_samples():
    arr = np.array([[0, 32896, 65535]], dtype=np.int32)
    out = np.asarray(to_rgb(Image.fromarray(arr, "I")))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_list_images_walks_folders_sorted_and_skips_other_files(tmp_path):
    (tmp_path / "b").mkdir()
    for name in ["b/2.png", "b/1.JPG", "a.jpeg", "notes.txt", "b/readme.md"]:
        (tmp_path / name).write_bytes(b"x")
    explicit = tmp_path / "notes.txt"  # named directly: kept, whatever its extension
    found = list_images([tmp_path, explicit])
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == ["a.jpeg", "b/1.JPG", "b/2.png", "notes.txt"]


# ---- bounds and special files (the same verdicts as runtime/cpp/src/decode.cpp) ---------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_header_claiming_60000_squared_is_refused_with_the_pixel_count(tmp_path, fmt):
    import io

    buf = io.BytesIO()
    _photo(16, 16).save(buf, fmt)
    path = tmp_path / f"huge.{fmt.lower()}"
    path.write_bytes(claim_size(buf.getvalue(), 60000, 60000))
    with pytest.raises(ImageError, match=r"huge\.\w+: image is too large to decode \(3600000000 pixels, limit \d+\)"):
        load_image(path, draft_size=(128, 128))  # the draft reduction does not get it past the header check


def test_file_over_the_size_limit_is_refused_before_reading(tmp_path):
    from clap_edge.core.images import MAX_FILE_BYTES

    path = tmp_path / "sparse.png"
    with open(path, "wb") as f:  # sparse: no disk used; reading it would take 300 MB
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ImageError, match=rf"sparse\.png: file is too large to decode \({MAX_FILE_BYTES + 1} bytes"):
        load_image(path)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "dangling", "loop", "folder"])
def test_special_paths_are_refused_without_blocking(tmp_path, kind):
    import os

    path = tmp_path / "x.png"
    expected = {"fifo": r"not a regular file \(named pipe \(FIFO\)\); not opened",
                "dev_zero": r"not a regular file \(character device\); not opened",
                "dangling": "broken symbolic link", "loop": "symbolic link loop", "folder": "is a directory"}[kind]
    if kind == "fifo":
        os.mkfifo(path)  # a plain open() would block forever on it
    elif kind == "dev_zero":
        os.symlink("/dev/zero", path)  # a plain read would never end
    elif kind == "dangling":
        os.symlink(tmp_path / "nowhere.png", path)
    elif kind == "loop":
        os.symlink(path, path)
    else:
        path.mkdir()
    with pytest.raises(ImageError, match=rf"x\.png: {expected}"):
        load_image(path)




# Each orientation as the transpose that displays it (EXIF 2.3, as ImageOps.exif_transpose applies them).
_DISPLAY = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
            7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


@pytest.mark.parametrize("byte_order", ["II", "MM"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_in_both_byte_orders(tmp_path, byte_order, orientation):
    stored = _photo(7, 4, seed=orientation)  # lossless PNG: the pixels must land exactly
    path = tmp_path / "o.png"
    stored.save(path, exif=exif_tiff(orientation, byte_order, long=orientation == 8))
    expected = stored if _DISPLAY[orientation] is None else stored.transpose(_DISPLAY[orientation])
    got = load_image(path)
    assert got.size == expected.size
    assert np.array_equal(np.asarray(got), np.asarray(expected))
