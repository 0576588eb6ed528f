"""Make the CTest fixtures: odd images, a clap-edge-tiny bundle, and the Python runtime's answers for them.

Usage: python tests/cpp/make_fixtures.py OUT_DIR

Writes OUT_DIR/images/*.{jpg,png} (RGB, large JPEGs that the runtime decodes at a reduced DCT scale, all
EXIF orientations, grey, CMYK, 16-bit, alpha, palette with transparency, 1- and 4-bit), OUT_DIR/broken/
(truncated, empty, not an image), OUT_DIR/bundle (random-init clap-edge-tiny export) and OUT_DIR/tampered
(the bundle with model.onnx modified), and the references the C++ tests compare with, all from the Python
runtime (clap_edge/core/preprocess.py + Pillow, ONNX Runtime):
  ref/pre_<image>.npy     Classifier.preprocess(path): float32 [3, H, W]
  ref/geom_<cfg>_<image>.npy  resize_and_crop(load_image(path), cfg): uint8 [h, w, 3], for the configs in GEOMETRIES
  ref/logits.npy, ref/embedding.npy  ONNX Runtime outputs for the stacked pre_ tensors (ref/order.txt)
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# name -> PreprocessConfig kwargs; the C++ test builds the same configs (tests/cpp/test_preprocess.cpp).
GEOMETRIES = {
    "sq224": dict(size=(224, 224)),
    "rect96x128": dict(size=(96, 128)),
    "longest100x80": dict(size=(100, 80), resize_mode="longest", fill_color=7),
    "squash50x70": dict(size=(50, 70), resize_mode="squash"),
    "bilinear80": dict(size=(80, 80), interpolation="bilinear"),
    "nearest72": dict(size=(72, 72), interpolation="nearest"),
    "longest_bilinear64x90": dict(size=(64, 90), resize_mode="longest", interpolation="bilinear", fill_color=200),
    "squash_nearest33x47": dict(size=(33, 47), resize_mode="squash", interpolation="nearest"),
    "squash_tall40x16": dict(size=(40, 16), resize_mode="squash"),  # width shrinks little, height a lot
}


def scene(w: int, h: int, seed: int) -> np.ndarray:
    """A photo-like uint8 RGB image: smooth gradients, a few discs, mild noise (exercises the filter)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([x / max(w - 1, 1) * 255, y / max(h - 1, 1) * 255,
                    127 + 100 * np.sin(x / 7.0 + y / 11.0)], -1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(3, max(4, min(w, h) / 3))
        img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def exif_tiff(orientation: int, byte_order: str = "II", long_type: bool = False) -> bytes:
    """A minimal TIFF-structured EXIF block by hand in either byte order ("II" little-endian, "MM" big-endian;
    Pillow writes only "II"), the orientation as a SHORT (type 3) or a LONG (type 4)."""
    e = "<" if byte_order == "II" else ">"
    value = struct.pack(e + "I", orientation) if long_type else struct.pack(e + "HH", orientation, 0)
    return (byte_order.encode() + struct.pack(e + "HI", 42, 8) + struct.pack(e + "H", 1)
            + struct.pack(e + "HHI", 0x0112, 4 if long_type else 3, 1) + value + struct.pack(e + "I", 0))


def png_16bit(path: Path, arr: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit RGB / RGBA): arr uint16 [h, w, c]."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[row].astype(">u2").tobytes() for row in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def make_images(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene(333, 251, 1)).save(out / "rgb_333x251.jpg", quality=90)
    Image.fromarray(scene(251, 333, 2)).save(out / "portrait_251x333.jpg", quality=85, subsampling=0)
    # DCT scaling as PIL's draft for the 64x64 bundle (draft size 128): min(w // 128, h // 128) -> 2, 4, 8
    Image.fromarray(scene(301, 263, 21)).save(out / "draft2_301x263.jpg", quality=90)
    Image.fromarray(scene(1201, 917, 3)).save(out / "draft4_1201x917.jpg", quality=90)
    Image.fromarray(scene(2301, 1100, 4)).save(out / "draft8_2301x1100.jpg", quality=90)
    Image.fromarray(scene(900, 701, 5)).save(out / "draft4_exif6_900x701.jpg", quality=90, exif=exif_with_orientation(6))
    for o in range(2, 9):
        Image.fromarray(scene(61, 47, 10 + o)).save(out / f"exif{o}_61x47.jpg", quality=95, exif=exif_with_orientation(o))
    Image.fromarray(scene(53, 41, 20)).save(out / "exif6_53x41.png", exif=exif_with_orientation(6))  # eXIf chunk
    for o in range(1, 9):  # big-endian EXIF ("MM"), in JPEG APP1 and in a PNG eXIf chunk; a LONG-typed tag
        Image.fromarray(scene(59, 43, 30 + o)).save(out / f"exifmm{o}_59x43.jpg", quality=95,
                                                     exif=b"Exif\x00\x00" + exif_tiff(o, "MM"))
        Image.fromarray(scene(43, 59, 40 + o)).save(out / f"exifmm{o}_43x59.png", exif=exif_tiff(o, "MM"))
    Image.fromarray(scene(47, 37, 49)).save(out / "exifll8_47x37.png", exif=exif_tiff(8, "II", long_type=True))
    # Geometries users send: extreme aspect ratios (1:30, 30:1), one-pixel lines, primes, tiny (upscaled)
    for w, h in ((9, 271), (271, 9), (1, 97), (97, 1), (127, 131), (7, 5), (2, 3), (31, 929)):
        Image.fromarray(scene(w, h, w * 31 + h)).save(out / f"geom_{w}x{h}.png")
    Image.fromarray(scene(29, 877, 50)).save(out / "tall_29x877.jpg", quality=90)
    Image.fromarray(scene(211, 157, 6)).convert("L").save(out / "grey_211x157.jpg", quality=90)
    Image.fromarray(scene(173, 129, 7)).convert("CMYK").save(out / "cmyk_173x129.jpg", quality=90)
    Image.fromarray(scene(97, 131, 8)).save(out / "rgb_97x131.png")
    Image.fromarray(scene(40, 30, 9)).save(out / "upscale_40x30.png")
    Image.fromarray(scene(64, 64, 10)).save(out / "exact_64x64.png")
    rgba = np.dstack([scene(150, 101, 11), np.linspace(0, 255, 150 * 101).reshape(101, 150).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(out / "rgba_150x101.png")
    la = np.dstack([scene(77, 91, 12)[..., 0], (scene(77, 91, 13)[..., 1])])
    Image.fromarray(la, "LA").save(out / "la_77x91.png")
    pal = Image.fromarray(scene(89, 71, 14)).quantize(colors=16)
    pal.save(out / "palette_89x71.png")
    pal.save(out / "palette_trns_89x71.png", transparency=3)
    Image.fromarray(scene(83, 59, 15)).convert("1").save(out / "bilevel_83x59.png")
    Image.fromarray(scene(67, 73, 16)).convert("L").save(out / "grey4_67x73.png", bits=4)
    g16 = (scene(123, 77, 17)[..., 0].astype(np.uint16) * 257 + np.arange(77 * 123).reshape(77, 123) % 251)
    Image.fromarray(g16.astype(np.uint16)).save(out / "grey16_123x77.png")
    png_16bit(out / "rgb16_101x67.png", scene(101, 67, 18).astype(np.uint16) * 257 + 93, color_type=2)
    rgba16 = np.dstack([scene(71, 53, 19), np.linspace(0, 255, 71 * 53).reshape(53, 71).astype(np.uint8)])
    png_16bit(out / "rgba16_71x53.png", rgba16.astype(np.uint16) * 257 + 31, color_type=6)


def make_broken(images: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    jpg = (images / "rgb_333x251.jpg").read_bytes()
    (out / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (out / "empty.jpg").write_bytes(b"")
    (out / "not_an_image.png").write_text("hello, I am text\n")
    png = (images / "rgb_97x131.png").read_bytes()
    (out / "truncated.png").write_bytes(png[: len(png) // 2])
    # headers that claim 60000x60000 (3.6 G pixels): refused before a pixel is allocated, in both runtimes
    (out / "huge_header.jpg").write_bytes(claim_size(jpg, 60000, 60000))
    (out / "huge_header.png").write_bytes(claim_size(png, 60000, 60000))
    os.mkfifo(out / "fifo.png")  # would block a plain open forever
    os.symlink("/dev/zero", out / "zero.jpg")  # would be read forever
    os.symlink("nowhere.png", out / "dangling.png")
    with open(out / "sparse_too_big.png", "wb") as f:  # PNG magic, 300 MB (sparse): refused from its size
        f.write(png[:8])
        f.truncate(300 << 20)


def claim_size(data: bytes, w: int, h: int) -> bytes:
    """A JPEG (SOF0) or PNG (IHDR, CRC recomputed) whose header claims w x h; the pixel data is unchanged."""
    d = bytearray(data)
    if d[:2] == b"\xff\xd8":
        i = d.index(b"\xff\xc0")
        d[i + 5:i + 9] = struct.pack(">HH", h, w)
        return bytes(d)
    d[16:24] = struct.pack(">II", w, h)
    d[29:33] = struct.pack(">I", zlib.crc32(bytes(d[12:29])) & 0xFFFFFFFF)
    return bytes(d)


def make_bundle(out: Path) -> Path:
    import torch

    from clap_edge.export.builders.exporter import ExportConfig, export_bundle

    torch.manual_seed(0)
    return Path(export_bundle(ExportConfig(out=out, model_name="clap-edge-tiny",
                                           classes=["cat", "dog", "car", "tree", "boat"], torch_program=False)))


def main(out: Path) -> None:
    from clap_edge.core.images import load_image
    from clap_edge.runtime.classifier import Classifier
    from clap_edge.core.preprocess import PreprocessConfig, resize_and_crop

    images, ref = out / "images", out / "ref"
    if out.exists():
        shutil.rmtree(out)
    make_images(images)
    make_broken(images, out / "broken")
    bundle = make_bundle(out / "bundle")
    tampered = out / "tampered"
    shutil.copytree(bundle, tampered)
    model = bytearray((tampered / "model.onnx").read_bytes())
    model[-10] ^= 0xFF
    (tampered / "model.onnx").write_bytes(bytes(model))
    ref.mkdir()
    names = sorted(p.name for p in images.iterdir())
    with Classifier.open(bundle, backend="onnxruntime") as clf:
        batch = []
        for name in names:
            x = clf.preprocess(images / name)
            np.save(ref / f"pre_{name}.npy", x)
            batch.append(x)
        out_ = clf.runner.infer(np.stack(batch))
        np.save(ref / "logits.npy", out_.logits.astype(np.float32))
        np.save(ref / "embedding.npy", out_.embedding.astype(np.float32))
    (ref / "order.txt").write_text("\n".join(names) + "\n")
    for cfg_name, kwargs in GEOMETRIES.items():
        cfg = PreprocessConfig(**kwargs)
        for name in names:
            np.save(ref / f"geom_{cfg_name}_{name}.npy", np.asarray(resize_and_crop(load_image(images / name), cfg)))
    (out / "done").write_text(json.dumps({"images": len(names)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
