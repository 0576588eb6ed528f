"""Decoding image files into RGB PIL images, safely, with numpy + PIL only.

Every odd-but-valid file a camera or a web scrape produces becomes a plain 8-bit RGB
image with its EXIF orientation applied: CMYK JPEGs, 16-bit PNGs (scaled, not clipped),
RGBA / LA / palette-with-transparency (composited onto white, as a viewer shows them),
grayscale and 1-bit. Broken files (truncated, empty, not an image, too large) raise
:class:`~clap_edge.core.errors.ImageError` naming the path, so a batch can report them and go on.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clap_edge.core.errors import ImageError
from clap_edge.core.io import file_kind, open_no_wait

# Our own pixel and memory limits (below) report a too-large image as an ImageError naming it;
# PIL's warning for the same case would only reach stderr raw.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Extensions `clap-edge classify` picks up when it walks a folder (lower case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

# Pixel budget after JPEG draft reduction. PIL itself refuses files over 2x its own limit at open.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

# Memory budget of one decode: the decoded raster plus the conversions to 8-bit RGB (estimated
# from the header, before decoding). A 16-bit image within the pixel limit stays within it.
DEFAULT_MAX_DECODE_BYTES = 1 << 30
# Bytes per pixel at the peak of decode + to_rgb, by the mode PIL decodes into.
_PEAK_BYTES_PER_PIXEL = {"1": 4, "L": 4, "P": 11, "RGB": 3, "RGBA": 11, "LA": 9, "PA": 11, "CMYK": 7, "YCbCr": 6,
                         "LAB": 6, "HSV": 6, "I;16": 6, "I;16B": 6, "I;16L": 6, "I;16N": 6, "I": 8, "F": 8}
STRIPE_PIXELS = 1 << 20  # high-depth images are converted this many pixels at a time
# Files larger than this are refused from their size alone, before a byte is read (the C++ runtime's
# decode.cpp has the same limit): no photo or scan within the pixel limit needs more.
MAX_FILE_BYTES = 1 << 28

BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as image viewers do

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_DECODE_BYTES", "MAX_FILE_BYTES", "load_image",
           "source_label", "to_rgb", "is_image_file", "list_images", "scan_images", "ScanResult", "Skipped"]


def load_image(
    path: str | os.PathLike | bytes | BinaryIO,
    draft_size: tuple[int, int] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = DEFAULT_MAX_DECODE_BYTES,
    label: str | None = None,
) -> Image.Image:
    """Decode ``path`` into an RGB image with its EXIF orientation applied.

    ``path`` may also be the image's bytes or an open binary file object (an HTTP body, a Ray Data
    column): the same checks run on it, with no temporary file, and errors name ``label``.

    ``draft_size`` (w, h): let the JPEG decoder downscale by 2/4/8 in the DCT while the result
    still covers this size. It makes large photos cheap to decode (time and memory) and is what
    the classifier passes (twice the model input), so the final resize still sees 2x the pixels.
    ``max_pixels`` / ``max_bytes``: refuse images larger than this after the draft reduction, in
    pixels or in the memory decoding and converting them would take (estimated from the header).
    Only regular files are opened (a FIFO or a device is an error, never a hang).
    """
    path, opener = _source(path, label)
    try:
        with opener() as f, Image.open(f) as img:
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", _oriented_draft_size(img, draft_size))
            _check_size(path, img, max_pixels, max_bytes)
            img.load()  # decode now, inside the try, so truncation is reported here
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ImageError:
        raise
    except FileNotFoundError as e:
        kind = "broken symbolic link" if path.is_symlink() else "no such file"
        raise ImageError(f"{path}: {kind}") from e
    except IsADirectoryError as e:
        raise ImageError(f"{path}: is a directory, not an image") from e
    except PermissionError as e:
        raise ImageError(f"{path}: permission denied") from e
    except UnidentifiedImageError as e:
        kind = "empty file (0 bytes)" if _is_empty(path) else "not an image file the runtime can read"
        raise ImageError(f"{path}: cannot decode image: {kind}") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: image is too large to decode ({_bomb_detail(e)})") from e
    except MemoryError as e:
        raise ImageError(f"{path}: out of memory decoding it") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        if isinstance(e, OSError) and e.errno == errno.ELOOP:
            raise ImageError(f"{path}: symbolic link loop") from e
        # PIL reports a truncated or corrupt stream as OSError ("image file is truncated", ...)
        raise ImageError(f"{path}: cannot decode image: {e}") from e


def _open_regular(path: Path):
    """Open for reading without blocking (a FIFO would hang a plain open), only if a regular file of a sane size."""
    fd, st = open_no_wait(path)
    problem = None
    if stat.S_ISDIR(st.st_mode):
        os.close(fd)
        raise IsADirectoryError(path)
    if not stat.S_ISREG(st.st_mode):
        problem = f"not a regular file ({file_kind(st.st_mode)}); not opened"
    elif st.st_size == 0:
        problem = "cannot decode image: empty file (0 bytes)"
    elif st.st_size > MAX_FILE_BYTES:
        problem = f"file is too large to decode ({st.st_size} bytes, limit {MAX_FILE_BYTES})"
    if problem:
        os.close(fd)
        raise ImageError(f"{path}: {problem}")
    return os.fdopen(fd, "rb")


def _bomb_detail(error: Exception) -> str:
    """'N pixels, limit L' from PIL's decompression-bomb message (the header's size, refused before decoding)."""
    import re

    numbers = re.findall(r"\d+", str(error))
    return f"{numbers[0]} pixels, limit {numbers[1]}" if len(numbers) >= 2 else str(error)


def _check_size(path: Path, img: Image.Image, max_pixels: int | None, max_bytes: int | None) -> None:
    pixels = img.width * img.height
    if max_pixels is not None and pixels > max_pixels:
        raise ImageError(f"{path}: image is too large to decode ({img.width}x{img.height} pixels, "
                         f"limit {max_pixels})")
    need = pixels * _PEAK_BYTES_PER_PIXEL.get(img.mode, 8)
    if max_bytes is not None and need > max_bytes:
        raise ImageError(f"{path}: image would take about {need / 2**20:,.0f} MiB to decode "
                         f"({img.width}x{img.height} {img.mode}; limit {max_bytes / 2**20:,.0f} MiB)")


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
    """16-bit / 32-bit integer or float grayscale -> uint8, scaling the range instead of clipping it.

    Worked in horizontal stripes, so the extra memory is a few MB whatever the image size
    (a whole-image int64 copy of a large 16-bit PNG took gigabytes)."""
    w, h = img.size
    rows = max(1, STRIPE_PIXELS // max(1, w))
    stripes = [(y, min(h, y + rows)) for y in range(0, h, rows)]

    def stripe(y0: int, y1: int) -> np.ndarray:
        return np.asarray(img.crop((0, y0, w, y1)))

    out = np.empty((h, w), dtype=np.uint8)
    if img.mode == "F":
        peak = max((float(np.nanmax(a)) for a in (stripe(*s) for s in stripes) if a.size and not np.isnan(a).all()),
                   default=0.0)
        scale = np.float32(255.0 if peak <= 1.0 else 1.0)  # float images are usually in [0, 1]
        for y0, y1 in stripes:
            a = np.nan_to_num(stripe(y0, y1).astype(np.float32, copy=False)) * scale
            out[y0:y1] = np.clip(a, 0, 255).round()
        return out
    # 'I;16*' modes are 16-bit by definition; 'I' (32-bit) usually holds 16-bit samples too (e.g. PNG, TIFF)
    sixteen = img.mode.startswith("I;16") or any(stripe(*s).max(initial=0) > 255 for s in stripes)
    for y0, y1 in stripes:
        a = stripe(y0, y1)
        if sixteen:  # round(v * 255 / 65535) in uint32 (65535 * 255 + 32767 < 2**32)
            v = np.clip(a, 0, 65535).astype(np.uint32)
            out[y0:y1] = (v * 255 + 32767) // 65535
        else:
            out[y0:y1] = np.clip(a, 0, 255)
    return out


def _oriented_draft_size(img: Image.Image, size: tuple[int, int]) -> tuple[int, int]:
    """The draft size in the stored (pre-EXIF-rotation) frame: a 90-degree rotation swaps w and h."""
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is not our problem here; exif_transpose copes
        orientation = 1
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else size


class _Named(str):
    """The label of in-memory image data, standing where load_image's messages name a path."""

    def is_symlink(self) -> bool:
        return False

    def stat(self):
        raise FileNotFoundError(self)  # no file behind it: _is_empty says no


def source_label(source, label: str | None = None) -> str:
    """What errors about ``source`` name: ``label`` when given, else the path, or a stand-in for image
    bytes or a file object (its ``name`` when it has one)."""
    if label:
        return label
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "image bytes"
    return str(getattr(source, "name", None) or "image file object")


def _source(source, label: str | None):
    """(what errors name, a callable opening it as a binary file): a path opens as a regular file only."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = _Named(source_label(source, label))
        if not len(source):
            raise ImageError(f"{name}: cannot decode image: empty (0 bytes)")
        if len(source) > MAX_FILE_BYTES:  # the same bound as a file's size
            raise ImageError(f"{name}: file is too large to decode ({len(source)} bytes, limit {MAX_FILE_BYTES})")
        return name, lambda: io.BytesIO(source)
    if hasattr(source, "read"):
        name = _Named(source_label(source, label))
        return name, lambda: contextlib.nullcontext(source)  # the caller's to close
    path = Path(source)
    return path, lambda: _open_regular(path)


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


@dataclass
class Skipped:
    """A path that was found but will not be classified, and why."""

    path: Path
    reason: str


@dataclass
class ScanResult:
    files: list[Path] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # reported as errors (broken link, loop, FIFO, ...)
    other_files: list[Path] = field(default_factory=list)  # regular files in folders without an image extension


def list_images(paths: list[str | os.PathLike]) -> list[Path]:
    """Files named directly, plus the image files under each folder (walked recursively, sorted)."""
    return scan_images(paths).files


def scan_images(paths: list[str | os.PathLike]) -> ScanResult:
    """Walk ``paths`` like :func:`list_images` and account for every entry that is not classified.

    Folders are walked recursively, symbolic links to folders followed (a link back to a folder
    being walked is a loop, and a folder reached twice is walked once). Broken links, loops,
    FIFOs / sockets / devices and unreadable folders go to ``skipped`` with the reason; none is
    ever opened. A path named directly is kept if it is a regular file, whatever its extension."""
    result = ScanResult()
    for p in map(Path, paths):
        kind, reason = _classify_entry(p)
        if kind == "dir":
            found: list[Path] = []
            # Real folders first, linked ones after: a folder reached both ways is listed by its real path.
            links: list[tuple[Path, list[tuple[int, int]]]] = []
            seen: dict[tuple[int, int], Path] = {}
            _walk(p, found, result, [], seen, links)
            while links:
                link, ancestors = links.pop(0)
                _walk(link, found, result, ancestors, seen, links)
            result.files.extend(sorted(found))
        elif kind == "file":
            result.files.append(p)
        else:
            result.skipped.append(Skipped(p, reason))
    return result


def _classify_entry(path: Path) -> tuple[str, str]:
    """('dir' | 'file' | 'skip', reason) for a path, following symlinks, without opening it."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "skip", "broken symbolic link" if os.path.islink(path) else "no such file or directory"
    except PermissionError:
        return "skip", "permission denied"
    except OSError as e:
        return "skip", "symbolic link loop" if e.errno == errno.ELOOP else f"cannot stat it ({e.strerror})"
    if stat.S_ISDIR(st.st_mode):
        return "dir", ""
    if stat.S_ISREG(st.st_mode):
        return "file", ""
    return "skip", f"not a regular file ({file_kind(st.st_mode)})"


def _walk(folder: Path, found: list[Path], result: ScanResult, ancestors: list[tuple[int, int]],
          seen: dict[tuple[int, int], Path], links: list[tuple[Path, list[tuple[int, int]]]]) -> None:
    try:
        st = os.stat(folder)
        key = (st.st_dev, st.st_ino)
    except OSError as e:
        result.skipped.append(Skipped(folder, f"cannot stat it ({e.strerror})"))
        return
    if key in ancestors:
        result.skipped.append(Skipped(folder, f"symbolic link loop (back to {seen[key]})"))
        return
    if key in seen:
        result.skipped.append(Skipped(folder, f"same folder as {seen[key]}, already walked"))
        return
    seen[key] = folder
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except PermissionError:
        result.skipped.append(Skipped(folder, "permission denied (cannot list the folder)"))
        return
    except OSError as e:
        result.skipped.append(Skipped(folder, f"cannot list the folder ({e.strerror})"))
        return
    for entry in entries:
        path = folder / entry.name
        kind, reason = _classify_entry(path)
        if kind == "dir" and entry.is_symlink():
            links.append((path, ancestors + [key]))
        elif kind == "dir":
            _walk(path, found, result, ancestors + [key], seen, links)
        elif kind == "file":
            (found if is_image_file(path) else result.other_files).append(path)
        else:
            result.skipped.append(Skipped(path, reason))
