"""Image bytes (an HTTP body, a Ray Data ``bytes`` column) -> preprocessed [3, H, W], as ``classify`` does it.

The bytes go through the very decoder ``clap-edge classify`` uses on files
(:meth:`Classifier.preprocess` -> ``clap_edge.core.images.load_image``), by way of a short-lived
file in memory-backed ``/dev/shm`` where there is one: odd images (CMYK, 16-bit, EXIF-rotated,
truncated, too large) behave exactly as they do in ``classify``, with no second decoder to keep
in step. Errors name ``label`` (the request, or the dataset path) instead of the temp file.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from clap_edge.core.errors import ImageError

_SHM = "/dev/shm"
TMP_DIR = _SHM if os.path.isdir(_SHM) and os.access(_SHM, os.W_OK) else None

__all__ = ["decode_bytes", "error_message"]


def decode_bytes(classifier, data: bytes, label: str = "request body") -> np.ndarray:
    """``classifier.preprocess`` on image bytes; raises :class:`ImageError` naming ``label``."""
    if not data:
        raise ImageError(f"{label}: cannot decode image: empty body (0 bytes)")
    fd, tmp = tempfile.mkstemp(prefix="clap-edge-img-", dir=TMP_DIR)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            return classifier.preprocess(tmp)
        except ImageError as e:
            raise ImageError(str(e).replace(tmp, label)) from None
        except Exception as e:  # an unexpected decoder failure is still this image's problem only
            raise ImageError(f"{label}: cannot decode image: {type(e).__name__}: {e}") from None
    finally:
        os.unlink(tmp)


def error_message(error: BaseException, label: str) -> str:
    """The error without the leading ``label: `` (the record names the path in its own field)."""
    message = str(error)
    return message[len(label) + 2:] if message.startswith(f"{label}: ") else message
