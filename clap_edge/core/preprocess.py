"""open_clip's eval transform in numpy + PIL, with no torch: the one image preprocessing path (runtime, export, eval).

``open_clip.transform.image_transform_v2(PreprocessCfg, is_train=False)`` is, on a PIL image:
resize (torchvision on PIL calls ``PIL.Image.resize``), center crop (or crop-or-pad),
``convert("RGB")``, ``ToTensor`` (uint8 / 255 in float32) and ``Normalize``. This module
reproduces each step with the same size arithmetic (int truncation for the shortest-edge
``Resize``, Python ``round`` in ``ResizeKeepRatio``, ``int(round(...))`` crop offsets) so the
result matches open_clip's to float32 rounding. The one deliberate difference: images in
other modes are made RGB *before* resizing (:func:`~clap_edge.core.images.to_rgb`), so 16-bit
and transparent images are scaled / composited properly instead of clipped by ``convert``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

from clap_edge.core.errors import ImageError
from clap_edge.core.images import to_rgb

# open_clip's defaults (open_clip.constants), so a manifest may omit mean / std.
OPENAI_DATASET_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_DATASET_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "random": Image.Resampling.BICUBIC,  # open_clip: "random" means bicubic at inference
}
RESIZE_MODES = ("shortest", "longest", "squash")
# The largest image the resize step may make before the crop (the shortest-side resize of a 1xN image is
# 224 x 224N): beyond it the image is refused, in both runtimes (runtime/cpp/src/preprocess.cpp).
MAX_RESIZE_PIXELS = 1 << 24

__all__ = ["PreprocessConfig", "Preprocessor", "resize_and_crop", "resize_target", "MAX_RESIZE_PIXELS",
           "OPENAI_DATASET_MEAN", "OPENAI_DATASET_STD"]


@dataclass(frozen=True)
class PreprocessCfg:
    """The fields of open_clip's ``PreprocessCfg`` (``size`` always as (H, W)): the one preprocess config.

    The bundle's manifest holds one (``Manifest.preprocess``); the runtime, export and eval preprocess by it."""

    size: tuple[int, int] = (224, 224)
    mode: str = "RGB"
    mean: tuple[float, float, float] = OPENAI_DATASET_MEAN
    std: tuple[float, float, float] = OPENAI_DATASET_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    def __post_init__(self):
        size = self.size
        size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
        if len(size) == 1:
            size = (size[0], size[0])
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", _three(self.mean, "mean"))
        object.__setattr__(self, "std", _three(self.std, "std"))
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"preprocess size must be (H, W) of positive ints, got {self.size}")
        if self.mode != "RGB":
            raise ValueError(f"preprocess mode {self.mode!r} is not supported (only 'RGB')")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; expected one of {sorted(_RESAMPLE)}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize_mode {self.resize_mode!r}; expected one of {RESIZE_MODES}")

    @classmethod
    def from_dict(cls, d: "dict[str, Any] | PreprocessCfg") -> "PreprocessCfg":
        """From a ``preprocess`` block (unknown keys ignored, None means default); a config is returned as is."""
        if isinstance(d, PreprocessCfg):
            return d
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and v is not None}
        return cls(**known)

    @classmethod
    def from_open_clip(cls, pcfg: Any) -> "PreprocessCfg":
        """From open_clip's ``PreprocessCfg`` (a model's ``LoadedModel.preprocess_cfg``)."""
        return cls.from_dict({name: getattr(pcfg, name, None) for name in cls.__dataclass_fields__})


PreprocessConfig = PreprocessCfg  # the name this module used before the manifest shared the class
__all__ += ["PreprocessCfg"]


def _three(values: float | Sequence[float], name: str) -> tuple[float, float, float]:
    values = (float(values),) * 3 if isinstance(values, (int, float)) else tuple(float(v) for v in values)
    if len(values) != 3:
        raise ValueError(f"preprocess {name} must have 3 values, got {values}")
    return values  # type: ignore[return-value]


def resize_target(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """(h, w) that open_clip's eval transform resizes a ``width`` x ``height`` image to, before the crop."""
    th, tw = cfg.size
    if cfg.resize_mode == "squash":
        return th, tw
    if cfg.resize_mode == "longest" or th != tw:
        return _keep_ratio_size((width, height), cfg.size, longest=cfg.resize_mode == "longest")
    # torchvision Resize(int): short edge -> size, long edge int()-truncated
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(th * long / short)
    return (new_long, th) if width <= height else (th, new_long)


def check_resize_target(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """:func:`resize_target`, refused (ImageError, no path) when it exceeds MAX_RESIZE_PIXELS and the crop."""
    rh, rw = resize_target(width, height, cfg)
    if rh * rw > max(MAX_RESIZE_PIXELS, cfg.size[0] * cfg.size[1]):
        raise ImageError(f"image is too large to resize: {width}x{height} would be resized to {rw}x{rh} pixels "
                         f"before the crop (limit {MAX_RESIZE_PIXELS})")
    return rh, rw


def resize_and_crop(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """The geometric part of open_clip's eval transform, on a PIL image; returns exactly cfg.size."""
    size = check_resize_target(img.width, img.height, cfg)
    # open_clip's shortest mode with a non-square size builds ResizeKeepRatio without its interpolation: bicubic
    non_square_shortest = cfg.resize_mode == "shortest" and cfg.size[0] != cfg.size[1]
    resample = Image.Resampling.BICUBIC if non_square_shortest else _RESAMPLE[cfg.interpolation]
    img = _resize(img, size, resample)
    if cfg.resize_mode == "squash":
        return img
    # torchvision CenterCrop pads with 0; open_clip's center_crop_or_pad with fill_color
    return _center_crop_or_pad(img, cfg.size, cfg.fill_color if cfg.resize_mode == "longest" else 0)


def _keep_ratio_size(size_wh: tuple[int, int], target: tuple[int, int], longest: bool) -> tuple[int, int]:
    """timm / open_clip ``ResizeKeepRatio.get_params`` without the random parts: (h, w)."""
    w, h = size_wh
    ratio_h, ratio_w = h / target[0], w / target[1]
    ratio = max(ratio_h, ratio_w) if longest else min(ratio_h, ratio_w)
    # open_clip would ask for a 0-pixel side (and fail) on a 1xN image in "longest" mode: keep >= 1 pixel
    return max(1, round(h / ratio)), max(1, round(w / ratio))


def _resize(img: Image.Image, size_hw: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    if (img.height, img.width) == tuple(size_hw):
        return img
    return img.resize((size_hw[1], size_hw[0]), resample)


def _center_crop_or_pad(img: Image.Image, size_hw: tuple[int, int], fill: int) -> Image.Image:
    """open_clip ``center_crop_or_pad`` (torchvision ``center_crop`` is the fill=0 case)."""
    crop_h, crop_w = size_hw
    if crop_w > img.width or crop_h > img.height:
        left = (crop_w - img.width) // 2 if crop_w > img.width else 0
        top = (crop_h - img.height) // 2 if crop_h > img.height else 0
        padded = Image.new(img.mode, (max(crop_w, img.width), max(crop_h, img.height)),
                           (fill,) * len(img.getbands()) if img.mode != "P" else fill)
        padded.paste(img, (left, top))
        img = padded
        if img.size == (crop_w, crop_h):
            return img
    top = int(round((img.height - crop_h) / 2.0))
    left = int(round((img.width - crop_w) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))


class Preprocessor:
    """Image (PIL or uint8 HxWx3 array) -> normalised float32 [3, H, W], as open_clip's eval transform."""

    def __init__(self, cfg: PreprocessConfig):
        self.cfg = cfg
        # ToTensor + Normalize on uint8 input is a per-channel function of 256 values: tabulate it,
        # computed in float32 in the same order as torch ((v / 255 - mean) / std), so it is exact.
        v = np.arange(256, dtype=np.float32) / np.float32(255)
        mean = np.asarray(cfg.mean, dtype=np.float32)[:, None]
        std = np.asarray(cfg.std, dtype=np.float32)[:, None]
        self._lut = ((v[None, :] - mean) / std).astype(np.float32)  # [3, 256]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, *self.cfg.size)

    def __call__(self, image: Image.Image | np.ndarray) -> np.ndarray:
        img = to_pil(image)
        img = resize_and_crop(to_rgb(img), self.cfg)
        return self.normalize(np.asarray(img, dtype=np.uint8))

    def normalize(self, hwc: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> normalised float32 [3, H, W]."""
        chw = hwc.transpose(2, 0, 1)
        out = np.empty(chw.shape, dtype=np.float32)
        for c in range(3):
            np.take(self._lut[c], chw[c], out=out[c])
        return out


def to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """A PIL image from a PIL image or a uint8 array ([H, W], [H, W, 3] or [H, W, 4])."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8 [H, W, 3] (got {image.dtype}); "
                            "pass preprocessed float batches [N, 3, H, W] to predict_batch")
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4)):
            return Image.fromarray(np.ascontiguousarray(image))
        raise ValueError(f"image array must be [H, W], [H, W, 3] or [H, W, 4], got shape {list(image.shape)}")
    raise TypeError(f"cannot preprocess a {type(image).__name__}; expected a PIL image or a uint8 array")
