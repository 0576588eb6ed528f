"""Decoding image files into RGB PIL images, safely, with numpy + PIL only.

Every odd-but-valid file a camera or a web scrape produces becomes a plain 8-bit RGB
image with its EXIF orientation applied: CMYK JPEGs, 16-bit PNGs (scaled, not clipped),
RGBA / LA / palette-with-transparency (composited onto white, as a viewer shows them),
grayscale and 1-bit. Broken files (truncated, empty, not an image, too large) raise
:class:`~clap_edge.core.errors.ImageError` naming the path, so a batch can report them and go on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clap_edge.core.errors import ImageError

# Extensions `clap-edge classify` picks up when it walks a folder (lower case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

# Pixel budget after JPEG draft reduction. PIL itself refuses files over 2x its own limit at open.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as image viewers do

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS", "load_image", "to_rgb", "is_image_file", "list_images"]


def load_image(
    path: str | os.PathLike,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode ``path`` into an RGB image with its EXIF orientation applied.

    ``draft_size`` (w, h): let the JPEG decoder downscale by 2/4/8 in the DCT while the result
    still covers this size. It makes large photos cheap to decode (time and memory) and is what
    the classifier passes (twice the model input), so the final resize still sees 2x the pixels.
    ``max_pixels``: refuse images larger than this after the draft reduction (no memory blow-up).
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", _oriented_draft_size(img, draft_size))
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageError(f"{path}: image is too large to decode ({img.width}x{img.height} pixels, "
                                 f"limit {max_pixels})")
            img.load()  # decode now, inside the try, so truncation is reported here
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ImageError:
        raise
    except FileNotFoundError as e:
        raise ImageError(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise ImageError(f"{path}: is a directory, not an image") from e
    except UnidentifiedImageError as e:
        kind = "empty file (0 bytes)" if _is_empty(path) else "not an image file PIL can read"
        raise ImageError(f"{path}: cannot decode image: {kind}") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: image is too large to decode ({e})") from e
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as e:
        # PIL reports a truncated or corrupt stream as OSError ("image file is truncated", ...)
        raise ImageError(f"{path}: cannot decode image: {e}") from e


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, scaling high bit depths and compositing transparency."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_high_depth_to_uint8(img), mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL's conversions are correct for these
    return img.convert("RGB")


def _high_depth_to_uint8(img: Image.Image) -> np.ndarray:
    """16-bit / 32-bit integer or float grayscale -> uint8, scaling the range instead of clipping it."""
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0  # float images are usually in [0, 1]
        return np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8)
    arr = np.asarray(img).astype(np.int64)
    # 'I;16*' modes are 16-bit by definition; 'I' (32-bit) usually holds 16-bit samples too (e.g. PNG, TIFF)
    if img.mode.startswith("I;16") or (arr.size and arr.max() > 255):
        return ((np.clip(arr, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _oriented_draft_size(img: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """The draft size in the stored (pre-EXIF-rotation) frame: a 90-degree rotation swaps w and h."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is not our problem here; exif_transpose copes
        orientation = 1
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(paths: list[str | os.PathLike]) -> list[Path]:
    """Files named directly, plus the image files under each folder (walked recursively, sorted)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f)))
        else:
            found.append(p)
    return found
