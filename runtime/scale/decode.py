"""Image bytes (an HTTP body, a Ray Data ``bytes`` column) -> preprocessed [3, H, W], as ``classify`` does it.

The bytes go through the very decoder ``clap-edge classify`` uses on files
(:meth:`Classifier.preprocess` -> ``clap_edge.core.images.load_image``, which reads bytes and file
objects as well as paths): odd images (CMYK, 16-bit, EXIF-rotated, truncated, too large) behave
exactly as they do in ``classify``, with no second decoder to keep in step and no temporary file.
Errors name ``label`` (the request, or the dataset path).
"""

from __future__ import annotations

import numpy as np

from clap_edge.runtime.batching import decode_one, error_message

__all__ = ["decode_bytes", "error_message"]


def decode_bytes(classifier, data: bytes, label: str = "request body") -> np.ndarray:
    """``classifier.preprocess`` on image bytes; raises :class:`ImageError` naming ``label``."""
    return decode_one(classifier, bytes(data), label)
