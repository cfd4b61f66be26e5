"""The 8 transformation categories of Transforms-2D, each a declared `Category` with its parameter
ranges, and `render`: prototypes warped, filtered and composited onto backgrounds, a batch at a time.

A sample is made from one object prototype (premultiplied RGBA) and one background:

  1. geometry: the object's frame -> canvas map is the product, in registry order, of translate,
     rotate, scale, hflip and vflip (so the flips act on the prototype first, the translation
     last) times the base placement (the object's square covers BASE_FRACTION of the canvas side,
     centred); sampled with bilinear `grid_sample` at SUPERSAMPLE x the output size and
     average-pooled down (antialiasing);
  2. appearance, on the object layer only (its pixels and alpha; the background is untouched):
     blur (Gaussian on the premultiplied layer, so edges blur too), sharpen (unsharp mask) and
     colour jitter (brightness, contrast around the object's mean luminance, saturation, hue
     rotation in YIQ), in that order;
  3. composite: object + (1 - alpha) * background, rounded to uint8.

A category a dataset does not allow keeps its identity values, and every operation leaves the rows
at identity values bit-for-bit untouched. Units: translation in canvas sides, angles in degrees
(clockwise on screen), blur and sharpening radii in canvas sides (so a spec means the same at any size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

BASE_FRACTION = 0.6
SUPERSAMPLE = 2
SHARPEN_SIGMA = 1 / 32  # of the canvas side: one pixel at 32 x 32


@dataclass(frozen=True)
class Param:
    name: str
    low: float
    high: float
    identity: float
    binary: bool = False  # drawn 0 or 1 with probability 1/2 (flips)


@dataclass(frozen=True)
class Category:
    name: str
    kind: str  # "geometric": `op` maps values [B, P] to forward 3x3 matrices; "appearance": (layer, values) -> layer
    params: tuple[Param, ...]
    op: Callable
    description: str

    @property
    def identity(self) -> np.ndarray:
        return np.array([p.identity for p in self.params], np.float64)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """float64 [n, P]: uniform in each parameter's range (binary: 0 or 1)."""
        columns = [rng.integers(0, 2, n).astype(np.float64) if p.binary else rng.uniform(p.low, p.high, n)
                   for p in self.params]
        return np.stack(columns, axis=1)


# -- geometric operations: values [B, P] (torch float64) -> forward maps [B, 3, 3] ---------------

def _eye(values):
    import torch

    return torch.eye(3, dtype=torch.float64).repeat(len(values), 1, 1)


def _translate(values):
    m = _eye(values)
    m[:, 0, 2], m[:, 1, 2] = 2 * values[:, 0], 2 * values[:, 1]  # normalized canvas spans 2
    return m


def _rotate(values):
    import torch

    angle = torch.deg2rad(values[:, 0])
    m = _eye(values)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
    return m


def _scale(values):
    m = _eye(values)
    m[:, 0, 0] = m[:, 1, 1] = values[:, 0]
    return m


def _flip(axis: int):
    def op(values):
        m = _eye(values)
        m[:, axis, axis] = 1 - 2 * values[:, 0]
        return m
    return op


# -- appearance operations on the object layer [B, 4, H, W] (premultiplied) ----------------------

def gaussian_blur(layer, sigma_px, radius: int):
    """Separable Gaussian blur, one sigma (pixels) per sample, the kernel cut at `radius` pixels (a
    constant, so that a sample's pixels never depend on the rest of its batch); sigma 0 rows come
    back unchanged."""
    import torch
    import torch.nn.functional as F

    out = layer.clone()
    rows = torch.nonzero(sigma_px > 0).flatten()
    if not len(rows):
        return out
    b, c, h, w = layer[rows].shape
    x = torch.arange(-radius, radius + 1, dtype=layer.dtype)
    kernel = torch.exp(-0.5 * (x[None] / sigma_px[rows, None].to(layer.dtype)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [b * c, k]
    flat = layer[rows].reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0)), kernel[:, None, None, :], groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius)), kernel[:, None, :, None], groups=b * c)
    out[rows] = flat.reshape(b, c, h, w)
    return out


def _radius(sigma: float, size: int) -> int:
    return max(1, int(math.ceil(3 * sigma * size)))


def _blur(layer, values):
    size = layer.shape[-1]
    return gaussian_blur(layer, values[:, 0] * size, _radius(CATEGORIES["blur"].params[0].high, size))


def _sharpen(layer, values):
    """Unsharp mask of the object's colours (straight, not premultiplied, so the transparent
    surroundings do not darken its edge); the alpha, its shape, is kept."""
    import torch

    amount = values[:, 0].to(layer.dtype)
    rows = torch.nonzero(amount > 0).flatten()
    out = layer.clone()
    if len(rows):
        sigma = torch.full((len(rows),), SHARPEN_SIGMA * layer.shape[-1], dtype=torch.float64)
        part = layer[rows]
        blurred = gaussian_blur(part, sigma, _radius(SHARPEN_SIGMA, layer.shape[-1]))
        alpha = part[:, 3:]
        straight = part[:, :3] / alpha.clamp_min(1e-6)
        smooth = blurred[:, :3] / blurred[:, 3:].clamp_min(1e-6)
        sharp = (straight + amount[rows, None, None, None] * (straight - smooth)).clamp(0, 1)
        out[rows] = torch.cat([sharp * alpha, alpha], 1)
    return out


_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _colour(layer, values):
    """brightness, contrast, saturation (factors, 1 = identity) and hue (turns, 0 = identity)."""
    import torch

    identity = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=values.dtype)
    rows = torch.nonzero((values != identity).any(1)).flatten()
    out = layer.clone()
    if not len(rows):
        return out
    v = values[rows].to(layer.dtype)[:, :, None, None]
    part = layer[rows]
    alpha = part[:, 3:]
    rgb = part[:, :3] / alpha.clamp_min(1e-6)
    rgb = rgb * v[:, 0:1]
    gray = (0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3])
    mean = (gray * alpha).sum((2, 3), keepdim=True) / alpha.sum((2, 3), keepdim=True).clamp_min(1e-6)
    rgb = (rgb - mean) * v[:, 1:2] + mean
    gray = (0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3])
    rgb = (rgb - gray) * v[:, 2:3] + gray
    yiq_m = torch.tensor(_YIQ, dtype=layer.dtype)
    yiq = torch.einsum("ij,bjhw->bihw", yiq_m, rgb)
    turn = -2 * math.pi * v[:, 3:4, 0, 0]  # the sign of HSV hue: red -> yellow -> green for hue > 0
    cos, sin = turn.cos()[..., None, None], turn.sin()[..., None, None]
    i, q = yiq[:, 1:2] * cos - yiq[:, 2:3] * sin, yiq[:, 1:2] * sin + yiq[:, 2:3] * cos
    rgb = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(yiq_m), torch.cat([yiq[:, :1], i, q], 1))
    out[rows] = torch.cat([rgb.clamp(0, 1) * alpha, alpha], 1)
    return out


# The registry, in the order the geometric maps compose and the appearance operations apply.
DECLARED = (
    Category("translate", "geometric", (Param("dx", -0.2, 0.2, 0.0), Param("dy", -0.2, 0.2, 0.0)), _translate,
             "shift by dx, dy canvas sides"),
    Category("rotate", "geometric", (Param("angle", -180.0, 180.0, 0.0),), _rotate,
             "rotation about the object's centre, degrees"),
    Category("scale", "geometric", (Param("factor", 0.5, 1.3, 1.0),), _scale,
             "object size factor (1: the object covers 0.6 of the canvas side)"),
    Category("hflip", "geometric", (Param("flip", 0, 1, 0.0, binary=True),), _flip(0),
             "mirror left-right with probability 1/2"),
    Category("vflip", "geometric", (Param("flip", 0, 1, 0.0, binary=True),), _flip(1),
             "mirror top-bottom with probability 1/2"),
    Category("blur", "appearance", (Param("sigma", 0.0, 0.05, 0.0),), _blur,
             "Gaussian blur of the object, sigma in canvas sides (1.6 px at 32)"),
    Category("sharpen", "appearance", (Param("amount", 0.0, 3.0, 0.0),), _sharpen,
             "unsharp mask of the object's colours, radius one pixel at 32 x 32"),
    Category("colour", "appearance",
             (Param("brightness", 0.6, 1.4, 1.0), Param("contrast", 0.6, 1.4, 1.0),
              Param("saturation", 0.3, 1.7, 1.0), Param("hue", -0.25, 0.25, 0.0)), _colour,
             "colour jitter of the object: brightness, contrast, saturation, hue (turns)"),
)
CATEGORIES: dict[str, Category] = {c.name: c for c in DECLARED}
if len(CATEGORIES) != len(DECLARED):
    raise ValueError("a category name is declared twice")

NAMES = tuple(CATEGORIES)


def parse_transforms(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Category names from 'translate,rotate' (or a list); 'all', 'none' or '' too; registry order."""
    words = [w.strip() for w in (text.split(",") if isinstance(text, str) else text) if w.strip()]
    if words == ["all"]:
        return NAMES
    if words in ([], ["none"]):
        return ()
    unknown = [w for w in words if w not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown transformation {unknown[0]!r}; use {', '.join(NAMES)} (comma-separated), "
                         "all or none")
    return tuple(n for n in NAMES if n in words)


def identity_values(n: int) -> dict[str, np.ndarray]:
    return {name: np.tile(c.identity, (n, 1)) for name, c in CATEGORIES.items()}


def _writable(array, dtype) -> np.ndarray:
    """The array as `dtype`, copied only where it is read-only (the cached tables are) or of another type."""
    array = np.asarray(array, dtype)
    return array if array.flags.writeable else array.copy()


def object_layer(prototypes, values: dict[str, np.ndarray], size: int):
    """The transformed object alone: premultiplied RGBA float32 [B, 4, size, size] (torch), from
    premultiplied prototypes float [B, 4, R, R] and every category's values [B, P] (missing
    categories: identity)."""
    import torch
    import torch.nn.functional as F

    protos = torch.from_numpy(_writable(prototypes, np.float32))
    b = len(protos)
    values = {**identity_values(b), **values}
    v = {name: torch.as_tensor(np.asarray(values[name], np.float64).reshape(b, -1)) for name in NAMES}
    forward = _eye(v[NAMES[0]])
    for name, category in CATEGORIES.items():
        if category.kind == "geometric":
            forward = forward @ category.op(v[name])
    forward = forward @ torch.diag(torch.tensor([BASE_FRACTION, BASE_FRACTION, 1.0], dtype=torch.float64))
    theta = torch.linalg.inv(forward)[:, :2].to(torch.float32)  # canvas -> object frame
    big = size * SUPERSAMPLE
    grid = F.affine_grid(theta, [b, 4, big, big], align_corners=False)
    layer = F.grid_sample(protos, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    layer = F.avg_pool2d(layer, SUPERSAMPLE)
    for name, category in CATEGORIES.items():
        if category.kind == "appearance":
            layer = category.op(layer, v[name])
    return layer


def composite(layer, backgrounds) -> np.ndarray:
    """uint8 [B, S, S, 3]: the object layer over uint8 backgrounds [B, S, S, 3]."""
    import torch

    background = torch.from_numpy(_writable(backgrounds, np.uint8)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
    image = layer[:, :3] + (1 - layer[:, 3:]) * background
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def render(prototypes, backgrounds, values: dict[str, np.ndarray], size: int) -> np.ndarray:
    """uint8 [B, size, size, 3]: the transformed objects composited onto the backgrounds."""
    return composite(object_layer(prototypes, values, size), backgrounds)
