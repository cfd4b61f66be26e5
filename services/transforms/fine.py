"""The fine-grained catalog: Identity plus 30 transformations, 31 classes.

Ranges are strong enough that a trained person can name the transformation from the image
(no plain flips, no barely visible shifts). Ids are stable: a new or changed transformation
gets a new id and a new catalog version, so stores can tell which columns are still valid.
"""

from __future__ import annotations

import numpy as np
from nvidia.dali import fn, math, types

from . import assets, ops
from .assets import CANVAS
from .spec import Param, Transform

F = types.FLOAT
VERSION = "fine-1"


def _p(name, low, high, integer=False):
    return Param(name, low, high, integer)


SEED = _p("seed", 0, 2 ** 24, integer=True)  # for the coordinate-hash noise


# -- DALI implementations -----------------------------------------------------------------------
# Each takes (image: HWC uint8 node on the canvas, p: this transform's parameter vector, aux).

def identity(img, p, aux):
    return img


def hue_shift(img, p, aux):
    return fn.hue(img, hue=p[0])


def saturate(img, p, aux):
    return fn.saturation(img, saturation=p[0])


def grayscale(img, p, aux):
    g = ops.gray(img)
    return ops.blend(img, fn.cat(g, g, g, axis=2), p[0])


def tint(img, p, aux):
    colour = fn.reshape(p[0:3], shape=[1, 1, 3])
    return ops.to_u8(fn.cast(img, dtype=F) * (1.0 - p[3]) + colour * p[3])


def sharpen(img, p, aux):
    lap = fn.laplacian(img, window_size=3, dtype=F)
    return ops.to_u8(fn.cast(img, dtype=F) - lap * p[0])


def invert(img, p, aux):
    return img ^ types.Constant(255, dtype=types.UINT8)


def solarize(img, p, aux):
    above = fn.cast(img >= p[0], dtype=types.UINT8)
    return img ^ (above * types.Constant(255, dtype=types.UINT8))


def posterize(img, p, aux):
    return img & fn.cast(256.0 - 2.0 ** (8.0 - p[0]), dtype=types.UINT8)


def brightness(img, p, aux):
    return fn.brightness(img, brightness=p[0])


def contrast(img, p, aux):
    return fn.contrast(img, contrast=p[0], contrast_center=128.0)


def vignette(img, p, aux):
    falloff = 1.0 - p[0] * math.pow(ops.radial_distance(CANVAS), p[1])
    return ops.to_u8(fn.cast(img, dtype=F) * falloff)


def gaussian_blur(img, p, aux):
    return fn.gaussian_blur(img, sigma=p[0])


def motion_blur(img, p, aux):
    return fn.filter(img, aux["MOTION_KERNEL"], border="clamp")


def defocus_blur(img, p, aux):
    return fn.filter(img, aux["DISK_KERNEL"], border="clamp")


def gaussian_noise(img, p, aux):
    return ops.to_u8(fn.cast(img, dtype=F) + ops.gaussian_field(p[0], CANVAS) * p[1])


def salt_and_pepper(img, p, aux):
    u = ops.uniform_field(p[0], CANVAS, 1)
    salt, pepper = u < p[1] * 0.5, u >= 1.0 - p[1] * 0.5
    return fn.cast(img * ((salt | pepper) == 0) + salt * 255, dtype=types.UINT8)


def shot_noise(img, p, aux):
    # Poisson(x * photons / 255) * 255 / photons, approximated by signal-dependent gaussian noise.
    x = fn.cast(img, dtype=F)
    return ops.to_u8(x + ops.gaussian_field(p[0], CANVAS) * math.sqrt(x * (255.0 / p[1])))


def pixelate(img, p, aux):
    cells = fn.stack(p[0], p[0])
    small = fn.resize(img, size=cells, interp_type=types.INTERP_NN)
    return fn.resize(small, size=[CANVAS, CANVAS], interp_type=types.INTERP_NN)


def jpeg(img, p, aux):
    return fn.jpeg_compression_distortion(img, quality=fn.cast(p[0], dtype=types.INT32))


def crop_zoom(img, p, aux):
    side = p[0] * CANVAS
    y, x = p[1] * (CANVAS - side), p[2] * (CANVAS - side)
    return fn.resize(img, size=[CANVAS, CANVAS], roi_start=fn.stack(y, x), roi_end=fn.stack(y + side, x + side),
                     roi_relative=False)


def rotate(img, p, aux):
    return fn.rotate(img, angle=p[0] * (2.0 * p[1] - 1.0), keep_size=True, fill_value=0)


def perspective(img, p, aux):
    return fn.experimental.warp_perspective(img, matrix=aux["PERSPECTIVE"], size=[CANVAS, CANVAS],
                                            fill_value=[0.0])


def wave(img, p, aux):
    # fn.water's wave settings are fixed per pipeline; warping a rescaled canvas varies the
    # effective amplitude and wavelength per image.
    scaled = fn.resize(img, size=fn.stack(p[0], p[0]))
    waved = fn.water(scaled, ampl_x=7.0, ampl_y=7.0, freq_x=0.09, freq_y=0.09)
    return fn.resize(waved, size=[CANVAS, CANVAS])


def sphere(img, p, aux):
    scaled = fn.resize(img, size=fn.stack(p[0], p[0]))
    return fn.resize(fn.sphere(scaled), size=[CANVAS, CANVAS])


def text_overlay(img, p, aux):
    return ops.place_overlay(img, aux["TEXT"], p[4], p[5], p[6], CANVAS)


def icon_overlay(img, p, aux):
    return ops.place_overlay(img, aux["ICON"], p[3], p[4], p[5], CANVAS)


def border(img, p, aux):
    b = p[0]
    zero, far, full = b * 0.0, CANVAS - b, b * 0.0 + CANVAS
    return fn.erase(img, anchor=fn.stack(zero, zero, far, zero, zero, zero, zero, far),
                    shape=fn.stack(b, full, b, full, full, b, full, b), axis_names="HW", fill_value=p[1:4])


def grid_mask(img, p, aux):
    return fn.grid_mask(img, tile=fn.cast(p[0], dtype=types.INT32), ratio=p[1], angle=p[2])


def reference_style(img, p, aux):
    """Reference-based stylization (not a neural network): the reference's colour statistics,
    its texture detail, then a posterized, edge-darkened finish."""
    reference = aux["STYLE_REF"]
    coloured = ops.colour_statistics_transfer(img, reference, p[1])
    detailed = coloured + ops.high_pass(ops.gray(reference), 2.0) * p[2]
    toned = ops.to_u8(detailed)
    levels = fn.cast(256.0 - 2.0 ** (8.0 - p[3]), dtype=types.UINT8)
    edges = math.abs(fn.laplacian(ops.gray(toned), window_size=3, dtype=F))
    return ops.to_u8(fn.cast(toned & levels, dtype=F) - edges * p[4])


# -- host-rendered inputs, drawn from the same parameters -----------------------------------------

def _motion(p):
    return assets.motion_kernel(p[0], p[1])


def _disk(p):
    return assets.disk_kernel(p[0])


def _text(fonts):
    def render(p):
        return assets.render_text(assets.WORDS[int(p[0])], fonts[int(p[1])], int(p[2]), assets.colour(p[3]))
    return render


def _icon(icons):
    def render(p):
        return assets.render_icon(icons[int(p[0])], int(p[1]), assets.colour(p[2]))
    return render


def _style(references):
    def render(p):
        return assets.style_reference(references[int(p[0])])
    return render


def _perspective(p):
    """Homography that moves the four canvas corners by the drawn offsets (fractions of the side)."""
    s = CANVAS - 1
    src = np.array([[0, 0], [s, 0], [s, s], [0, s]], np.float64)
    dst = src + np.asarray(p[:8], np.float64).reshape(4, 2) * CANVAS
    rows = []
    for (x, y), (u, v) in zip(dst, src):  # maps output pixels back to the source (inverse map)
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y, u])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y, v])
    a = np.array(rows)
    h = np.linalg.solve(a[:, :8], a[:, 8])
    return np.append(h, 1.0).reshape(3, 3).astype(np.float32)


def _corner_params():
    return tuple(_p(f"{corner}_{axis}", -0.18, 0.18) for corner in ("tl", "tr", "br", "bl") for axis in "xy")


# -- the catalog ---------------------------------------------------------------------------------

def text_params(n_fonts: int):
    return (_p("word", 0, len(assets.WORDS), True), _p("font", 0, n_fonts, True), _p("size", 28, 48, True),
            _p("hue", 0, 1), _p("y", 0, 170), _p("x", 0, 110), _p("opacity", 0.85, 1.0))


def icon_params(n_icons: int):
    return (_p("icon", 0, n_icons, True), _p("size", 56, 104, True), _p("hue", 0, 1),
            _p("y", 0, 150), _p("x", 0, 150), _p("opacity", 0.85, 1.0))


def style_params(n_refs: int):
    return (_p("reference", 0, n_refs, True), _p("colour_strength", 0.75, 1.0), _p("detail", 0.6, 1.2),
            _p("posterize_bits", 3, 5, True), _p("edges", 0.3, 0.8))


T = Transform
TRANSFORMS: tuple[Transform, ...] = (
    T(0, "identity", "identity", (), identity),
    T(1, "hue_shift", "filtering", (_p("degrees", 70, 290),), hue_shift),
    T(2, "saturate", "filtering", (_p("saturation", 2.2, 3.5),), saturate),
    T(3, "grayscale", "filtering", (_p("strength", 0.9, 1.0),), grayscale),
    T(4, "tint", "filtering", (_p("r", 0, 255), _p("g", 0, 255), _p("b", 0, 255), _p("strength", 0.35, 0.5)), tint),
    T(5, "sharpen", "filtering", (_p("amount", 2.0, 3.5),), sharpen),
    T(6, "invert", "colour quantizing", (), invert),
    T(7, "solarize", "colour quantizing", (_p("threshold", 96, 176),), solarize),
    T(8, "posterize", "colour quantizing", (_p("bits", 1, 3, True),), posterize),
    T(9, "brighten", "tone", (_p("brightness", 1.5, 2.0),), brightness),
    T(10, "darken", "tone", (_p("brightness", 0.3, 0.55),), brightness),
    T(11, "contrast", "tone", (_p("contrast", 2.0, 3.0),), contrast),
    T(12, "vignette", "tone", (_p("strength", 0.75, 0.95), _p("power", 1.2, 2.2)), vignette),
    T(13, "gaussian_blur", "blur", (_p("sigma", 2.0, 4.0),), gaussian_blur),
    T(14, "motion_blur", "blur", (_p("length", 17, 31), _p("angle", 0, 180)), motion_blur,
      aux=(("MOTION_KERNEL", _motion),)),
    T(15, "defocus_blur", "blur", (_p("radius", 3.0, 6.0),), defocus_blur, aux=(("DISK_KERNEL", _disk),)),
    T(16, "gaussian_noise", "noise", (SEED, _p("sigma", 18, 36)), gaussian_noise, family="noise"),
    T(17, "salt_and_pepper", "noise", (SEED, _p("probability", 0.04, 0.1)), salt_and_pepper, family="noise"),
    T(18, "shot_noise", "noise", (SEED, _p("photons", 3, 10)), shot_noise, family="noise"),
    T(19, "pixelate", "resolution", (_p("cells", 14, 32, True),), pixelate),
    T(20, "jpeg", "resolution", (_p("quality", 2, 9, True),), jpeg),
    T(21, "crop_zoom", "geometry", (_p("side", 0.35, 0.55), _p("y", 0, 1), _p("x", 0, 1)), crop_zoom),
    T(22, "rotate", "geometry", (_p("degrees", 25, 65), _p("clockwise", 0, 2, True)), rotate),
    T(23, "perspective", "geometry", _corner_params(), perspective, aux=(("PERSPECTIVE", _perspective),)),
    T(24, "wave", "geometry", (_p("scale", 170, 290, True),), wave),
    T(25, "sphere", "geometry", (_p("scale", 190, 260, True),), sphere),
    T(26, "text_overlay", "occlusion", text_params(len(assets.SEEN_FONTS)), text_overlay,
      aux=(("TEXT", _text(assets.SEEN_FONTS)),)),
    T(27, "icon_overlay", "occlusion", icon_params(len(assets.SEEN_ICONS)), icon_overlay,
      aux=(("ICON", _icon(assets.SEEN_ICONS)),)),
    T(28, "border", "occlusion", (_p("width", 12, 28), _p("r", 0, 255), _p("g", 0, 255), _p("b", 0, 255)), border),
    T(29, "grid_mask", "occlusion", (_p("tile", 28, 64, True), _p("ratio", 0.4, 0.6), _p("angle", 0, 1.5)), grid_mask),
    T(30, "reference_style", "style", style_params(len(assets.SEEN_STYLES)), reference_style,
      aux=(("STYLE_REF", _style(assets.SEEN_STYLES)),), family="style"),
)
