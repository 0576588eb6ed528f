"""A vectorised numpy renderer for the toy world: factors in, uint8 RGB images out.

Every image is a pure function of its :class:`~clap_edge.toyworld.world.Factors` row
(textures come from an integer hash of the row's ``texture_seed``), so the same factors
always give the same pixels, whatever the batch they are rendered in. Shapes are drawn
as implicit functions on a 2x supersampled grid, then box-downsampled (anti-aliasing).
"""

from __future__ import annotations

import numpy as np

from clap_edge.toyworld.world import CLASSES, COLOR_RGB, RENDERS, SIZE_SCALE, Factors

IMAGE_SIZE = 32
SUPERSAMPLE = 2
CHUNK = 512  # images rendered at once: bounds peak memory to ~100 MB
BACKGROUND_GRAY = np.array([0.94, 0.55, 0.10, 0.0], dtype=np.float32)  # white, gray, black, (striped)


def render(factors: Factors, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render every image of ``factors`` as an [N, size, size, 3] uint8 array."""
    out = np.empty((len(factors), size, size, 3), dtype=np.uint8)
    for start in range(0, len(factors), CHUNK):
        sl = slice(start, start + CHUNK)
        out[sl] = _render_chunk(_take(factors, sl), size)
    return out


def _take(f: Factors, sl: slice) -> Factors:
    return Factors(**{k: v[sl] for k, v in vars(f).items()})


def _render_chunk(f: Factors, size: int) -> np.ndarray:
    hi = size * SUPERSAMPLE
    n = len(f)
    coords = (np.arange(hi, dtype=np.float32) + 0.5) / hi * 2 - 1  # pixel centres in [-1, 1]
    y, x = np.meshgrid(coords, coords, indexing="ij")
    radius = SIZE_SCALE[f.size][:, None, None]
    centre = f.offset[:, :, None, None] * (1 - radius[:, None]) * 0.85
    dx, dy = x[None] - centre[:, 0], y[None] - centre[:, 1]
    cos, sin = np.cos(f.angle)[:, None, None], np.sin(f.angle)[:, None, None]
    u, v = (cos * dx + sin * dy) / radius, (-sin * dx + cos * dy) / radius

    mask = np.zeros((n, hi, hi), dtype=bool)
    for c, name in enumerate(CLASSES):
        idx = np.flatnonzero(f.label == c)
        if len(idx):
            mask[idx] = SHAPES[name](u[idx], v[idx])

    # Texture noise per output pixel (not per subsample: cheaper, and finer detail is averaged away).
    noise = _hash_noise(f.texture_seed, (size, size, 3)).repeat(SUPERSAMPLE, 1).repeat(SUPERSAMPLE, 2)
    background = _backgrounds(f.background, x, y)
    color = COLOR_RGB[f.color][:, None, None, :]
    img = np.empty((n, hi, hi, 3), dtype=np.float32)
    for r, name in enumerate(RENDERS):
        idx = np.flatnonzero(f.render == r)
        if len(idx):
            img[idx] = RENDERERS[name](mask[idx], color[idx], background[idx], noise[idx], u[idx], v[idx], x, y)
    img = _downsample(img, SUPERSAMPLE)
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def _downsample(img: np.ndarray, k: int) -> np.ndarray:
    """Box-average k x k blocks (strided sums: faster than a reshaped mean)."""
    acc = sum(img[:, i::k, j::k] for i in range(k) for j in range(k))
    return acc / (k * k)


# ---- shapes: implicit functions of rotated, radius-normalised coordinates (u, v), v pointing down ----

def _circle(u, v):
    return u * u + v * v <= 0.9


def _square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) <= 0.75


def _triangle(u, v):  # apex up; three half-planes
    return (v <= 0.65) & (v >= -0.95 + 1.85 * np.abs(u))


def _star(u, v):  # five points: radius bound is a triangle wave in the angle
    r = np.hypot(u, v)
    t = (np.arctan2(u, -v) / (2 * np.pi) * 5) % 1.0
    return r <= 0.42 + 0.58 * np.abs(1 - 2 * t)


def _cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.28) & (av <= 0.9)) | ((av <= 0.28) & (au <= 0.9))


def _heart(u, v):
    a, b = u * 1.25, -(v * 1.25) + 0.25
    return (a * a + b * b - 1) ** 3 - a * a * b ** 3 <= 0


def _moon(u, v):
    return (u * u + v * v <= 0.85) & ((u - 0.45) ** 2 + (v + 0.15) ** 2 > 0.5)


def _arrow(u, v):  # pointing right
    shaft = (np.abs(v) <= 0.22) & (u >= -0.9) & (u <= 0.15)
    head = (u >= 0.05) & (u <= 0.9) & (np.abs(v) <= (0.9 - u) * 0.95)
    return shaft | head


SHAPES = {"circle": _circle, "square": _square, "triangle": _triangle, "star": _star,
          "cross": _cross, "heart": _heart, "moon": _moon, "arrow": _arrow}
assert set(SHAPES) == set(CLASSES)


# ---- textures and backgrounds -------------------------------------------------------

def _hash_noise(seeds: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform [0, 1) noise of ``shape`` per seed, from an integer hash (pure, chunk-independent)."""
    count = int(np.prod(shape))
    h = (seeds.astype(np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15)
         + np.arange(count, dtype=np.uint64)[None] * np.uint64(0xBF58476D1CE4E5B9))
    h ^= h >> np.uint64(31)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(29)
    return ((h >> np.uint64(40)).astype(np.float32) / float(1 << 24)).reshape(len(seeds), *shape)


def _backgrounds(kind: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    stripes = np.where(np.sin((x + y) * 9.0) > 0, 0.92, 0.60).astype(np.float32)
    gray = np.where(kind[:, None, None] == 3, stripes[None], BACKGROUND_GRAY[kind][:, None, None])
    return np.repeat(gray[..., None], 3, axis=-1)


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    m = mask.copy()
    for _ in range(steps):
        p = np.pad(m, ((0, 0), (1, 1), (1, 1)), constant_values=False)
        m = m & p[:, :-2, 1:-1] & p[:, 2:, 1:-1] & p[:, 1:-1, :-2] & p[:, 1:-1, 2:]
    return m


def _coarse(noise: np.ndarray, factor: int) -> np.ndarray:
    """Blocky low-frequency noise: the top-left value of each factor x factor block, repeated."""
    small = noise[:, ::factor, ::factor]
    return small.repeat(factor, axis=1).repeat(factor, axis=2)


def _blend(mask: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    m = mask[..., None] if mask.dtype == bool else mask[..., None].astype(np.float32)
    return np.where(m, fg, bg) if mask.dtype == bool else m * fg + (1 - m) * bg


# ---- renderings: (mask, colour, background, noise, u, v, x, y) -> float image ------------

def _photo(mask, color, bg, noise, u, v, x, y):
    shade = np.clip(1.05 - 0.25 * (u + v), 0.6, 1.3)[..., None]  # light from the top left
    fg = np.clip(color * shade, 0, 1)
    return _blend(mask, fg, bg) + (noise - 0.5) * 0.08


def _cartoon(mask, color, bg, noise, u, v, x, y):
    outline = mask & ~_erode(mask, 2)
    img = _blend(mask, np.broadcast_to(color, bg.shape), bg)
    return _blend(outline, np.full_like(bg, 0.05), img)


def _sketch(mask, color, bg, noise, u, v, x, y):
    paper = 0.45 + 0.5 * bg  # faded background, like paper
    outline = mask & ~_erode(mask, 2)
    hatch = mask & (np.sin((x - y) * 40.0)[None] > 0.3) & (noise[..., 0] > 0.25)
    ink = np.clip(color * 0.75, 0, 1)
    img = _blend(hatch, 0.5 * ink + 0.5 * paper, paper)
    return _blend(outline & (noise[..., 1] > 0.15), np.broadcast_to(ink, bg.shape), img)


def _painting(mask, color, bg, noise, u, v, x, y):
    strokes = _coarse(noise, 4) - 0.5
    fg = np.clip(color + 0.35 * strokes, 0, 1)
    back = np.clip(bg + 0.25 * strokes[..., ::-1], 0, 1)
    soft = _box_blur(mask.astype(np.float32), 2)
    return _blend(soft, fg, back)


def _mosaic(mask, color, bg, noise, u, v, x, y):
    tile = 4  # 2 px at 32x32
    img = _blend(mask, np.broadcast_to(color, bg.shape), bg) + (_coarse(noise, tile) - 0.5) * 0.2
    h = img.shape[1]
    img = _downsample(img, tile).repeat(tile, axis=1).repeat(tile, axis=2)
    grout = (np.arange(h) % tile == 0)
    return np.where((grout[:, None] | grout[None, :])[None, ..., None], 0.35, img)


def _box_blur(m: np.ndarray, r: int) -> np.ndarray:
    k = 2 * r + 1
    p = np.pad(m, ((0, 0), (r, r), (r, r)), mode="edge")
    c = p.cumsum(1).cumsum(2)
    c = np.pad(c, ((0, 0), (1, 0), (1, 0)))
    h, w = m.shape[1:]
    return (c[:, k:k + h, k:k + w] - c[:, :h, k:k + w] - c[:, k:k + h, :w] + c[:, :h, :w]) / (k * k)


RENDERERS = {"photo": _photo, "cartoon": _cartoon, "sketch": _sketch, "painting": _painting, "mosaic": _mosaic}
assert tuple(RENDERERS) == RENDERS
