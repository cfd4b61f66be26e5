"""The detection catalog: what the detector trains on, strengths from mild to strong.

The fine catalog is the study's: its ranges are all strong (JPEG quality 2-9, blur sigma 2-4,
saturation 2.2-3.5), so a person can name each transformation, and a detector trained on it
misses the edits people make every day. This catalog keeps every fine kind, drawn from mild to
strong (the fine DALI functions with wider ranges, as general.py's `like()` reuses them), and
adds everyday edits: gamma, filter presets (sepia, warm and cool looks), desaturation, unsharp
masking (sharpening with a radius), JPEG recompression at qualities 10-50, resampling (down, then
up), small rotations cropped to the canvas, mild crop-zooms, semi-transparent text watermarks,
logos, coloured patches, and chains of two edits (a row whose function composes two). Where an
everyday edit is a fine kind at milder strengths (JPEG, crop-zoom, icons, contrast), it is a row of
its own, so the accuracy per row says how the detector does at each strength.

Every row is its own class (one head over the rows, as the fine task); each row's category is
one of the general catalog's ten, so the detector's category outputs keep working. Family
"everyday" marks the everyday edits. Ids 300+ keep them apart from the fine (0+), general (100+)
and groups (200+) catalogs'.
"""

from __future__ import annotations

from nvidia.dali import fn, math, types

from . import assets, fine, general, ops
from .assets import CANVAS
from .fine import SEED, _p
from .spec import Transform

F = types.FLOAT
VERSION = "detect-2"
EVERYDAY = "everyday"

# What a watermark says: photo sites', agencies' and owners' marks, not the fine catalog's words.
WATERMARKS = ("© 2024", "SAMPLE", "PREVIEW", "stock photo", "@photographer", "DRAFT", "photo.example.com",
              "COPYRIGHT", "© Studio", "PROOF")
SEPIA = ((0.393, 0.769, 0.189), (0.349, 0.686, 0.168), (0.272, 0.534, 0.131))


# -- DALI implementations of the new kinds ----------------------------------------------------------
# Each takes (image: HWC uint8 node on the canvas, p: this transform's parameter vector, aux).

def gamma(img, p, aux):
    """255 * (x / 255) ** g, g = 2 ** (+-amount): darker (g > 1) or brighter (g < 1) mid-tones."""
    g = math.pow(2.0, p[0] * (2.0 * p[1] - 1.0))
    return ops.to_u8(math.pow(fn.cast(img, dtype=F) * (1.0 / 255.0), g) * 255.0)


def sepia(img, p, aux):
    """The classic sepia matrix, blended with the identity by `strength`."""
    s, keep = p[0], 1.0 - p[0]
    (a, b, c), (d, e, f), (g, h, i) = SEPIA
    matrix = fn.reshape(fn.stack(keep + s * a, s * b, s * c, s * d, keep + s * e, s * f, s * g, s * h, keep + s * i),
                        shape=[3, 3])
    return fn.coord_transform(img, M=matrix, dtype=types.UINT8)


def warm_filter(img, p, aux):
    """A warm look: red up, blue down, blacks lifted by `fade` (a photo app's preset)."""
    gains = fn.reshape(fn.stack(1.0 + p[0], 1.0 + p[0] * 0.25, 1.0 - p[0]), shape=[1, 1, 3])
    return ops.to_u8(fn.cast(img, dtype=F) * gains * (1.0 - p[1] / 255.0) + p[1])


def cool_filter(img, p, aux):
    """A cool look: red down, blue up, blacks lifted by `fade`."""
    gains = fn.reshape(fn.stack(1.0 - p[0], 1.0 + p[0] * 0.1, 1.0 + p[0]), shape=[1, 1, 3])
    return ops.to_u8(fn.cast(img, dtype=F) * gains * (1.0 - p[1] / 255.0) + p[1])


def unsharp_mask(img, p, aux):
    """Everyday sharpening is an unsharp mask with a radius; the laplacian `sharpen` row is only the finest scale."""
    x = fn.cast(img, dtype=F)
    return ops.to_u8(x + (x - fn.gaussian_blur(x, sigma=p[0])) * p[1])


def resample(img, p, aux):
    """Resolution loss as a resizing chain leaves it: shrink (antialiased), enlarge with a cubic filter."""
    small = fn.resize(img, size=fn.stack(p[0], p[0]), interp_type=types.INTERP_LINEAR, antialias=True)
    return fn.resize(small, size=[CANVAS, CANVAS], interp_type=types.INTERP_CUBIC)


def rotate_crop(img, p, aux):
    """A small rotation ("straighten"), zoomed so that no corner is left empty: one affine warp
    from each output pixel back to the source (rotation about the centre, scaled by
    1 / (cos + |sin|), the largest upright square inside the rotated canvas)."""
    t = p[0] * (2.0 * p[1] - 1.0) * (3.14159265358979 / 180.0)
    c, s = math.cos(t), math.sin(t)
    z = c + math.abs(s)
    a, b = c / z, s / z
    centre = CANVAS / 2.0
    matrix = fn.reshape(fn.stack(a, -b, centre - (a - b) * centre, b, a, centre - (a + b) * centre), shape=[2, 3])
    return fn.warp_affine(img, matrix=matrix, size=[CANVAS, CANVAS], fill_value=0)


def patches(img, p, aux):
    """Two opaque coloured rectangles: (y, x, h, w, r, g, b) each."""
    first = fn.erase(img, anchor=fn.stack(p[0], p[1]), shape=fn.stack(p[2], p[3]), axis_names="HW",
                     fill_value=p[4:7])
    return fn.erase(first, anchor=fn.stack(p[7], p[8]), shape=fn.stack(p[9], p[10]), axis_names="HW",
                    fill_value=p[11:14])


# Chains of two edits: the first edit's parameters, then the second's.

def warm_then_jpeg(img, p, aux):
    return fine.jpeg(warm_filter(img, p[0:2], aux), p[2:3], aux)


def resample_then_sharpen(img, p, aux):
    return fine.sharpen(resample(img, p[0:1], aux), p[1:2], aux)


def gamma_then_crop(img, p, aux):
    return fine.crop_zoom(gamma(img, p[0:2], aux), p[2:5], aux)


# -- host-rendered inputs -----------------------------------------------------------------------

def _watermark(words, fonts):
    """The text in white (three in four) or dark grey; its opacity is applied on the canvas."""
    def render(p):
        shade = 255 if p[3] < 0.75 else 48
        return assets.render_text(words[int(p[0])], fonts[int(p[1])], int(p[2]), (shade, shade, shade))
    return render


# -- the catalog ----------------------------------------------------------------------------------

def _patch_params():
    return tuple(_p(f"{name}{k}", low, high, True) for k in (1, 2)
                 for name, low, high in (("y", 0, 169), ("x", 0, 169), ("h", 12, 57), ("w", 12, 57),
                                         ("r", 0, 256), ("g", 0, 256), ("b", 0, 256)))


def _gamma_params():
    return (_p("log2_gamma", 0.3, 1.25), _p("darker", 0, 2, True))


def _crop_params(low, high):
    return (_p("side", low, high), _p("y", 0, 1), _p("x", 0, 1))


def _build() -> tuple[Transform, ...]:
    """Every row with its id written here, never derived from its position."""
    f = {t.name: t for t in fine.TRANSFORMS}
    rows: list[Transform] = []

    def like(tid, name, params=None, new_name=None, aux=None, family=None):
        """A fine kind: its DALI function (and host inputs) with this catalog's ranges."""
        t = f[name]
        rows.append(Transform(tid, new_name or name, t.category, t.params if params is None else params, t.apply,
                              aux=t.aux if aux is None else aux, family=family or t.family))

    def new(tid, name, category, params, apply, aux=()):
        rows.append(Transform(tid, name, category, params, apply, aux=aux, family=EVERYDAY))

    like(300, "identity")
    # filtering
    like(301, "hue_shift", (_p("degrees", 15, 345),))
    like(302, "saturate", (_p("saturation", 1.3, 3.5),))
    like(303, "saturate", (_p("saturation", 0.15, 0.75),), "desaturate", family=EVERYDAY)
    like(304, "grayscale", (_p("strength", 0.5, 1.0),))
    like(305, "tint", (_p("r", 0, 255), _p("g", 0, 255), _p("b", 0, 255), _p("strength", 0.1, 0.5)))
    new(306, "sepia", "filtering", (_p("strength", 0.5, 1.0),), sepia)
    new(307, "warm_filter", "filtering", (_p("strength", 0.06, 0.25), _p("fade", 0, 24)), warm_filter)
    new(308, "cool_filter", "filtering", (_p("strength", 0.06, 0.25), _p("fade", 0, 24)), cool_filter)
    like(309, "sharpen", (_p("amount", 0.15, 3.5),))  # DALI's laplacian is smoothed: 0.5 is clear
    # colour quantizing
    like(310, "invert")
    like(311, "solarize", (_p("threshold", 96, 192),))
    like(312, "posterize", (_p("bits", 1, 6, True),))
    # tone
    like(313, "brighten", (_p("brightness", 1.15, 2.0),))
    like(314, "darken", (_p("brightness", 0.3, 0.87),))
    like(315, "contrast", (_p("contrast", 1.25, 3.0),))
    like(316, "contrast", (_p("contrast", 0.35, 0.8),), "low_contrast", family=EVERYDAY)
    new(317, "gamma", "tone", _gamma_params(), gamma)
    like(318, "vignette", (_p("strength", 0.3, 0.95), _p("power", 1.2, 2.2)))
    # blur
    like(319, "gaussian_blur", (_p("sigma", 0.6, 4.0),))
    like(320, "motion_blur", (_p("length", 5, 31), _p("angle", 0, 180)))
    like(321, "defocus_blur", (_p("radius", 1.5, 6.0),))
    # noise
    like(322, "gaussian_noise", (SEED, _p("sigma", 4, 36)))
    like(323, "salt_and_pepper", (SEED, _p("probability", 0.005, 0.1)))
    like(324, "shot_noise", (SEED, _p("photons", 3, 200)))
    # resolution
    like(325, "pixelate", (_p("cells", 14, 96, True),))
    like(326, "jpeg", (_p("quality", 2, 10, True),))
    like(327, "jpeg", (_p("quality", 10, 51, True),), "jpeg_recompress", family=EVERYDAY)
    new(328, "resample", "resolution", (_p("side", 56, 169, True),), resample)
    # geometry
    like(329, "crop_zoom", _crop_params(0.35, 0.7))
    like(330, "crop_zoom", _crop_params(0.7, 0.9), "crop_zoom_mild", family=EVERYDAY)
    like(331, "rotate", (_p("degrees", 10, 65), _p("clockwise", 0, 2, True)))
    new(332, "rotate_crop", "geometry", (_p("degrees", 3, 12), _p("direction", 0, 2, True)), rotate_crop)
    like(333, "perspective")  # corners drawn one by one: mild to strong already
    like(334, "wave", (_p("scale", 170, 420, True),))
    like(335, "sphere")
    # occlusion
    like(336, "text_overlay", (_p("word", 0, len(assets.WORDS), True), _p("font", 0, len(assets.SEEN_FONTS), True),
                               _p("size", 16, 48, True), _p("hue", 0, 1), _p("y", 0, 180), _p("x", 0, 130),
                               _p("opacity", 0.6, 1.0)))
    new(337, "watermark", "occlusion",
        (_p("word", 0, len(WATERMARKS), True), _p("font", 0, len(assets.SEEN_FONTS), True), _p("size", 24, 56, True),
         _p("shade", 0, 1), _p("y", 0, 190), _p("x", 0, 120), _p("opacity", 0.2, 0.5)),
        fine.text_overlay, aux=(("TEXT", _watermark(WATERMARKS, assets.SEEN_FONTS)),))
    like(338, "icon_overlay", (_p("icon", 0, len(assets.SEEN_ICONS), True), _p("size", 40, 104, True),
                               _p("hue", 0, 1), _p("y", 0, 150), _p("x", 0, 150), _p("opacity", 0.7, 1.0)))
    like(339, "icon_overlay", (_p("icon", 0, len(assets.SEEN_ICONS), True), _p("size", 24, 57, True),
                               _p("hue", 0, 1), _p("y", 0, 196), _p("x", 0, 196), _p("opacity", 0.35, 0.85)),
         "logo", family=EVERYDAY)
    like(340, "border", (_p("width", 4, 28), _p("r", 0, 255), _p("g", 0, 255), _p("b", 0, 255)))
    like(341, "grid_mask", (_p("tile", 28, 64, True), _p("ratio", 0.2, 0.6), _p("angle", 0, 1.5)))
    new(342, "patches", "occlusion", _patch_params(), patches)
    # style
    like(343, "reference_style", (_p("reference", 0, len(assets.SEEN_STYLES), True), _p("colour_strength", 0.4, 1.0),
                                  _p("detail", 0.2, 1.2), _p("posterize_bits", 3, 7, True), _p("edges", 0.1, 0.8)))
    # chains of two edits (the category of the first)
    new(344, "warm_then_jpeg", "filtering", (_p("strength", 0.06, 0.25), _p("fade", 0, 24), _p("quality", 10, 51, True)),
        warm_then_jpeg)
    new(345, "resample_then_sharpen", "resolution", (_p("side", 56, 169, True), _p("amount", 0.15, 1.0)),
        resample_then_sharpen)
    new(346, "gamma_then_crop", "tone", _gamma_params() + _crop_params(0.7, 0.9), gamma_then_crop)
    # filtering, added in detect-2: sharpening with a radius, as photo editors do it
    new(347, "unsharp_mask", "filtering", (_p("sigma", 0.6, 3.0), _p("amount", 0.4, 2.0)), unsharp_mask)
    _check(rows)
    return tuple(rows)


def _check(rows: list[Transform]) -> None:
    """Every category one of the general catalog's; every fine kind present."""
    unknown = sorted({t.category for t in rows} - set(general.CLASSES))
    if unknown:
        raise ValueError(f"detect catalog: categories {unknown} are not the general catalog's {general.CLASSES}")
    missing = sorted({t.name for t in fine.TRANSFORMS} - {t.name for t in rows})
    if missing:
        raise ValueError(f"detect catalog: fine kinds {missing} have no row")


TRANSFORMS = _build()
