"""The same transformations in Pillow, numpy and scipy, one image at a time.

The baseline the DALI pipeline is benchmarked against (`equiprobe bench transforms`), fed the
very same parameters and host-rendered inputs. Pixel-wise transformations agree with DALI to
a level or two; filters, warps and noise agree in kind, not bit for bit (different kernels,
interpolation and random generators).
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from scipy import ndimage

from ..reference import canvas
from .assets import CANVAS
from .detect import SEPIA
from ..contract import PARAMS
from .catalog import Catalog


def _u8(x) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _pil(fn: Callable[[Image.Image, np.ndarray], Image.Image]):
    return lambda a, p, aux: np.asarray(fn(Image.fromarray(a), p))


def _per_channel(a: np.ndarray, op) -> np.ndarray:
    return np.stack([op(a[..., c].astype(np.float32)) for c in range(3)], axis=-1)


def _gray(a):
    return np.asarray(Image.fromarray(a).convert("L"), np.float32)[..., None]


def _normal(seed, shape):
    return np.random.default_rng(int(seed)).standard_normal(shape, dtype=np.float32)


def hue_shift(a, p, aux):
    hsv = np.asarray(Image.fromarray(a).convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + int(p[0] / 360 * 256)) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def vignette(a, p, aux):
    c = (CANVAS - 1) / 2
    y, x = np.mgrid[:CANVAS, :CANVAS]
    r = np.hypot(y - c, x - c) / (c * np.sqrt(2))
    return _u8(a * (1 - p[0] * r ** p[1])[..., None])


def overlay(index_y, index_x, index_opacity, name):
    def apply(a, p, aux):
        rgba = aux[name].astype(np.float32)
        canvas = np.zeros((CANVAS, CANVAS, 4), np.float32)
        y, x = int(round(p[index_y])), int(round(p[index_x]))  # DALI casts to integers by rounding
        h, w = min(rgba.shape[0], CANVAS - y), min(rgba.shape[1], CANVAS - x)
        canvas[y:y + h, x:x + w] = rgba[:h, :w]
        alpha = canvas[..., 3:4] / 255 * p[index_opacity]
        return _u8(a * (1 - alpha) + canvas[..., :3] * alpha)
    return apply


def crop_zoom(a, p, aux):
    side = p[0] * CANVAS
    y, x = p[1] * (CANVAS - side), p[2] * (CANVAS - side)
    return np.asarray(Image.fromarray(a).resize((CANVAS, CANVAS), Image.BILINEAR, box=(x, y, x + side, y + side)))


def perspective(a, p, aux):
    m = aux["PERSPECTIVE"].astype(np.float64).ravel()  # output -> source, as DALI's inverse map
    return np.asarray(Image.fromarray(a).transform((CANVAS, CANVAS), Image.PERSPECTIVE, tuple(m[:8] / m[8]),
                                                   Image.BILINEAR))


def _warp(a, dy, dx):
    y, x = np.mgrid[:a.shape[0], :a.shape[1]].astype(np.float32)
    return np.stack([ndimage.map_coordinates(a[..., c], [y + dy, x + dx], order=1, cval=0) for c in range(3)], -1)


def wave(a, p, aux):
    s = int(p[0])
    scaled = np.asarray(Image.fromarray(a).resize((s, s), Image.BILINEAR))
    y, x = np.mgrid[:s, :s].astype(np.float32)
    waved = _warp(scaled, 7 * np.sin(0.09 * x), 7 * np.cos(0.09 * y))
    return np.asarray(Image.fromarray(waved).resize((CANVAS, CANVAS), Image.BILINEAR))


def sphere(a, p, aux):
    s = int(p[0])
    scaled = np.asarray(Image.fromarray(a).resize((s, s), Image.BILINEAR))
    c = s / 2
    y, x = np.mgrid[:s, :s].astype(np.float32)
    r = np.hypot(y - c, x - c) / c
    factor = np.where(r < 1, r, 1.0)
    waved = _warp(scaled, (y - c) * factor - (y - c), (x - c) * factor - (x - c))
    return np.asarray(Image.fromarray(waved).resize((CANVAS, CANVAS), Image.BILINEAR))


def border(a, p, aux):
    out, b = a.copy(), int(round(p[0]))
    for region in (np.s_[:b], np.s_[CANVAS - b:], np.s_[:, :b], np.s_[:, CANVAS - b:]):
        out[region] = np.array(p[1:4]).astype(np.uint8)
    return out


def grid_mask(a, p, aux):
    tile, ratio, angle = int(p[0]), p[1], p[2]
    y, x = np.mgrid[:CANVAS, :CANVAS].astype(np.float32)
    u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    black = ((u % tile) < tile * ratio) & ((v % tile) < tile * ratio)
    return np.where(black[..., None], 0, a).astype(np.uint8)


def style(a, p, aux):
    x, r = a.astype(np.float32), aux["STYLE_REF"].astype(np.float32)
    moved = (x - x.mean((0, 1))) / np.maximum(x.std((0, 1)), 1) * r.std((0, 1)) + r.mean((0, 1))
    g = _gray(aux["STYLE_REF"])
    toned = _u8(x * (1 - p[1]) + moved * p[1] + (g - ndimage.gaussian_filter(g, (2, 2, 0))) * p[2])
    toned = toned & np.uint8(256 - 2 ** (8 - int(p[3])))
    edges = np.abs(ndimage.laplace(_gray(toned)[..., 0]))[..., None]
    return _u8(toned - edges * p[4])


def jpeg(a, p, aux):
    buffer = io.BytesIO()
    Image.fromarray(a).save(buffer, "JPEG", quality=int(p[0]))
    return np.asarray(Image.open(buffer).convert("RGB"))


# The detection catalog's new kinds (services/transforms/detect.py).

def gamma(a, p, aux):
    g = 2.0 ** (p[0] * (2 * p[1] - 1))
    return _u8((a / 255.0) ** g * 255.0)


def sepia(a, p, aux):
    matrix = (1 - p[0]) * np.eye(3) + p[0] * np.array(SEPIA)
    return _u8(a.astype(np.float32) @ matrix.T)


def _look(gains):
    def apply(a, p, aux):
        return _u8(a * np.array([1 + g * p[0] for g in gains]) * (1 - p[1] / 255) + p[1])
    return apply


def unsharp_mask(a, p, aux):
    """a + amount * (a - gaussian(a, sigma)); DALI's blur mirrors the border without repeating the edge."""
    blurred = _per_channel(a, lambda c: ndimage.gaussian_filter(c, p[0], mode="mirror", truncate=3.0))
    return _u8(a + (a - blurred) * p[1])


def resample(a, p, aux):
    small = Image.fromarray(a).resize((int(p[0]),) * 2, Image.BILINEAR)
    return np.asarray(small.resize((CANVAS, CANVAS), Image.BICUBIC))


def rotate_crop(a, p, aux):
    t = np.deg2rad(p[0] * (2 * p[1] - 1))
    z = np.cos(t) + abs(np.sin(t))
    x, y, c = np.cos(t) / z, np.sin(t) / z, CANVAS / 2
    matrix = (x, -y, c - (x - y) * c, y, x, c - (x + y) * c)  # output -> source, as DALI's inverse map
    return np.asarray(Image.fromarray(a).transform((CANVAS, CANVAS), Image.AFFINE, matrix, Image.BILINEAR))


def patches(a, p, aux):
    out = a.copy()
    for y, x, h, w, *rgb in (p[0:7], p[7:14]):
        out[int(y):int(y) + int(h), int(x):int(x) + int(w)] = np.array(rgb, np.uint8)
    return out


def chain(first, second, split):
    """The first edit with p[:split], then the second with p[split:], as detect.py's chains."""
    return lambda a, p, aux: second(first(a, p[:split], aux), p[split:], aux)


IMPLEMENTATIONS: dict[str, Callable] = {
    "identity": lambda a, p, aux: a,
    "hue_shift": hue_shift,
    "saturate": _pil(lambda im, p: ImageEnhance.Color(im).enhance(p[0])),
    "grayscale": lambda a, p, aux: _u8(a * (1 - p[0]) + _gray(a) * p[0]),
    "tint": lambda a, p, aux: _u8(a * (1 - p[3]) + np.array(p[:3]) * p[3]),
    "sharpen": lambda a, p, aux: _u8(a - _per_channel(a, ndimage.laplace) * p[0]),
    "invert": lambda a, p, aux: 255 - a,
    "solarize": _pil(lambda im, p: ImageOps.solarize(im, int(np.ceil(p[0])))),
    "posterize": _pil(lambda im, p: ImageOps.posterize(im, int(p[0]))),
    "brighten": lambda a, p, aux: _u8(a * p[0]),
    "darken": lambda a, p, aux: _u8(a * p[0]),
    "contrast": lambda a, p, aux: _u8((a.astype(np.float32) - 128) * p[0] + 128),
    "vignette": vignette,
    "gaussian_blur": _pil(lambda im, p: im.filter(ImageFilter.GaussianBlur(p[0]))),
    "motion_blur": lambda a, p, aux: _u8(_per_channel(a, lambda c: ndimage.convolve(c, aux["MOTION_KERNEL"], mode="nearest"))),
    "defocus_blur": lambda a, p, aux: _u8(_per_channel(a, lambda c: ndimage.convolve(c, aux["DISK_KERNEL"], mode="nearest"))),
    "gaussian_noise": lambda a, p, aux: _u8(a + _normal(p[0], a.shape) * p[1]),
    "salt_and_pepper": lambda a, p, aux: np.where(
        (u := np.random.default_rng(int(p[0])).random(a.shape[:2])[..., None]) < p[1] / 2, 255,
        np.where(u >= 1 - p[1] / 2, 0, a)).astype(np.uint8),
    "shot_noise": lambda a, p, aux: _u8(a + _normal(p[0], a.shape) * np.sqrt(a * 255.0 / p[1])),
    "speckle_noise": lambda a, p, aux: _u8(a + a * _normal(p[0], a.shape) * p[1]),
    "pixelate": _pil(lambda im, p: im.resize((int(p[0]),) * 2, Image.NEAREST).resize((CANVAS, CANVAS), Image.NEAREST)),
    "downscale": _pil(lambda im, p: im.resize((int(p[0]),) * 2, Image.BILINEAR).resize((CANVAS, CANVAS), Image.BILINEAR)),
    "jpeg": jpeg,
    "crop_zoom": crop_zoom,
    "rotate": _pil(lambda im, p: im.rotate(p[0] * (2 * p[1] - 1), Image.BILINEAR)),
    "perspective": perspective,
    "wave": wave,
    "sphere": sphere,
    "text_overlay": overlay(4, 5, 6, "TEXT"),
    "icon_overlay": overlay(3, 4, 5, "ICON"),
    "border": border,
    "grid_mask": grid_mask,
    "reference_style": style,
}
IMPLEMENTATIONS.update({
    "desaturate": IMPLEMENTATIONS["saturate"],
    "low_contrast": IMPLEMENTATIONS["contrast"],
    "jpeg_recompress": jpeg,
    "crop_zoom_mild": crop_zoom,
    "watermark": IMPLEMENTATIONS["text_overlay"],
    "logo": IMPLEMENTATIONS["icon_overlay"],
    "gamma": gamma,
    "sepia": sepia,
    "warm_filter": _look((1.0, 0.25, -1.0)),
    "cool_filter": _look((-1.0, 0.1, 1.0)),
    "resample": resample,
    "rotate_crop": rotate_crop,
    "patches": patches,
    "warm_then_jpeg": chain(_look((1.0, 0.25, -1.0)), jpeg, 2),
    "resample_then_sharpen": chain(resample, IMPLEMENTATIONS["sharpen"], 1),
    "gamma_then_crop": chain(gamma, crop_zoom, 2),
    "unsharp_mask": unsharp_mask,
})


def implementation(name: str) -> Callable:
    if name.startswith("style_"):
        return style
    return IMPLEMENTATIONS[name.replace("_unseen_fonts", "").replace("_unseen_icons", "")]


def expand_reference(catalog: Catalog, data: bytes, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """All versions of one image, uint8 [K, 224, 224, 3], from the same host inputs as DALI's."""
    base = canvas(data)
    versions = []
    for k, t in enumerate(catalog.transforms):
        aux = {local: inputs[name] for name, local, j in catalog.aux_inputs if j == k}
        params = [float(v) for v in inputs[PARAMS][k]]  # Pillow wants Python numbers
        versions.append(implementation(t.name)(base, params, aux))
    return np.stack(versions)
