"""The everyday-edits card: how the served detector does on the edits a user or an app actually
makes, made by code no training path uses, on photographs no training saw.

- **Held-out implementation.** Every edit is written with scikit-image, scipy and numpy here; no
  catalog row, no training path and no reference implementation (Pillow, DALI) makes them. Pillow
  only encodes the uploads, as a user's phone or browser would.
- **Held-out kinds.** No edit's name is a training catalog row's (tested against every catalog).
  Each edit says which training rows do the same operation (`same_as`, by name, in any catalog,
  made with DALI at their own strengths), and the card looks them up in the catalogs of the day:
  an edit none of them implements is "novel" and the card reports the novel edits' mean apart.
  Against fine and general (the study's), most edits are novel; the rest are much milder than
  their row (JPEG quality 15-40 vs `jpeg` 2-9, rotations of 3-12 degrees vs 25-65, ...). The
  detection catalog (`detect`) trains on everyday kinds on purpose (gamma, sepia, warm and cool
  looks, unsharp masking, JPEG recompression, rotate-and-crop, watermarks, logos, patches), so for
  a detector trained on it those edits test a new implementation and new sources, not a new kind;
  median and total-variation smoothing, chroma noise, dithering, chromatic aberration, adaptive
  equalization, channel swaps, swirl and barrel distortion stay novel.
- **Held-out sources.** The store's test sources (trainer.reference_card.test_images), one
  224x224 canvas each (services.reference.canvas, what DALI makes of an upload): the edits act on
  the canvas, as every training version does.
- **Uploads.** Originals and edited versions alike are uploaded as Pillow JPEGs at a quality drawn
  from the training uploads' range (services.transforms.spec.UPLOAD_QUALITY, 60-95), independently
  per version as training draws them, so an original looks to the detector like the originals it
  was calibrated on. A "JPEG at quality 25" edit is therefore compressed twice, the second time
  at 60-95: a recompressed photo, which is what a re-shared photo is.

Every parameter is drawn from (seed, edit name, image key): the card is reproducible.
Results are plain JSON values.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from .match_metrics import auc

from equiprobe.services.contract import DetectorNames

GROUPS = ("artifact", "plausible")
SUMMARIES = (*GROUPS, "novel", "all")  # "novel": the edits no catalog row does
BLIND_AUC = 0.65  # an edit scoring below this is one the detector cannot see


@dataclass(frozen=True)
class Edit:
    name: str
    group: str  # "artifact" (blur, noise, compression, resampling, overlays, patches, quantization) or "plausible"
    kind: str  # blur, sharpening, noise, compression, resampling, quantization, overlay, patch, tone, colour, geometry
    description: str  # one line, with the everyday strength
    apply: Callable[[np.ndarray, np.random.Generator], np.ndarray]  # RGB uint8 [H, W, 3], rng -> same shape
    library: str  # what implements it
    same_as: tuple[str, ...] = ()  # training rows (any catalog) doing the same operation, at their strengths

    def __call__(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = self.apply(np.asarray(rgb, dtype=np.uint8), rng)
        assert out.shape == rgb.shape and out.dtype == np.uint8, (self.name, out.shape, out.dtype)
        return out


def _float(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) / 255.0


def _u8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8."""
    return np.clip(np.rint(np.asarray(x) * 255.0), 0, 255).astype(np.uint8)


def _side(rng: np.random.Generator, low: float, high: float) -> float:
    """A magnitude in [low, high] with a random sign."""
    return float(rng.uniform(low, high)) * (1 if rng.random() < 0.5 else -1)


# -- artifacts -------------------------------------------------------------------------------------

def median_filter(a, rng):
    from skimage.filters import median
    from skimage.morphology import disk

    footprint = disk(int(rng.integers(1, 3)))
    return np.stack([median(a[..., c], footprint) for c in range(3)], -1)


def tv_smoothing(a, rng):
    from skimage.restoration import denoise_tv_chambolle

    return _u8(denoise_tv_chambolle(_float(a), weight=rng.uniform(0.04, 0.1), channel_axis=2))


def unsharp_halo(a, rng):
    from skimage.filters import unsharp_mask

    # channel_axis=2, not -1: scikit-image 0.26 slices the first axis for -1 here (rows 0-2 only).
    return _u8(unsharp_mask(_float(a), radius=rng.uniform(1.0, 2.5), amount=rng.uniform(0.8, 1.6), channel_axis=2))


def chroma_noise(a, rng):
    """Low-light phone noise: blotchy colour noise in Cb and Cr, luma untouched."""
    from scipy.ndimage import gaussian_filter
    from skimage.color import rgb2ycbcr, ycbcr2rgb

    ycc = rgb2ycbcr(a)
    sigma = rng.uniform(3.0, 6.0)
    for c in (1, 2):
        blotches = gaussian_filter(rng.normal(size=a.shape[:2]), 1.0)
        ycc[..., c] += sigma * blotches / blotches.std()
    return _u8(ycbcr2rgb(ycc))


def impulse_noise(a, rng):
    """Random-valued impulses (hot and dead pixels of any colour), 1-3% of the pixels."""
    out = a.copy()
    hit = rng.random(a.shape[:2]) < rng.uniform(0.01, 0.03)
    out[hit] = rng.integers(0, 256, size=(int(hit.sum()), 3), dtype=np.uint8)
    return out


_LUMA_Q = np.array([[16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
                    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
                    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
                    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], float)
_CHROMA_Q = np.full((8, 8), 99.0)
_CHROMA_Q[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def _quant_table(base: np.ndarray, quality: int) -> np.ndarray:
    """The IJG scaling of the standard tables (JPEG Annex K) to a quality."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return np.clip(np.floor((base * scale + 50) / 100), 1, 255)


def _dct_quantize(plane: np.ndarray, table: np.ndarray) -> np.ndarray:
    from scipy.fft import dctn, idctn

    h, w = plane.shape
    ph, pw = -h % 8, -w % 8
    x = np.pad(plane - 128.0, ((0, ph), (0, pw)), mode="edge")
    blocks = x.reshape(x.shape[0] // 8, 8, x.shape[1] // 8, 8).transpose(0, 2, 1, 3)
    coefficients = dctn(blocks, axes=(2, 3), norm="ortho")  # = JPEG's FDCT on 8x8 blocks
    blocks = idctn(np.round(coefficients / table) * table, axes=(2, 3), norm="ortho")
    return blocks.transpose(0, 2, 1, 3).reshape(x.shape)[:h, :w] + 128.0


def dct_requantize(a, rng):
    """JPEG's lossy step written out (JFIF YCbCr, 4:2:0 chroma, 8x8 DCT, IJG tables at quality
    15-40) in numpy/scipy: no libjpeg involved; the entropy coding JPEG adds is lossless."""
    quality = int(rng.integers(15, 41))
    x = a.astype(np.float64)
    y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    cb = 128 - 0.168736 * x[..., 0] - 0.331264 * x[..., 1] + 0.5 * x[..., 2]
    cr = 128 + 0.5 * x[..., 0] - 0.418688 * x[..., 1] - 0.081312 * x[..., 2]
    h, w = y.shape
    y = _dct_quantize(y, _quant_table(_LUMA_Q, quality))
    chroma = []
    for plane in (cb, cr):
        p = np.pad(plane, ((0, h % 2), (0, w % 2)), mode="edge")
        small = p.reshape(p.shape[0] // 2, 2, p.shape[1] // 2, 2).mean(axis=(1, 3))
        small = _dct_quantize(small, _quant_table(_CHROMA_Q, quality))
        chroma.append(np.repeat(np.repeat(small, 2, 0), 2, 1)[:h, :w])
    cb, cr = chroma
    rgb = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                    y + 1.772 * (cb - 128)], -1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def resample_chain(a, rng):
    """A thumbnail blown back up: down to 0.4-0.6x (antialiased, bicubic), up again bilinear."""
    from skimage.transform import rescale, resize

    small = rescale(_float(a), rng.uniform(0.4, 0.6), order=3, anti_aliasing=True, channel_axis=2)
    return _u8(resize(small, a.shape, order=1, anti_aliasing=False))


def chromatic_aberration(a, rng):
    """Lateral colour fringing of a cheap lens: red scaled up, blue down by 0.6-1.5% about the centre."""
    from scipy.ndimage import affine_transform

    s = rng.uniform(0.006, 0.015)
    centre = (np.array(a.shape[:2]) - 1) / 2
    out = a.copy()
    for c, scale in ((0, 1 + s), (2, 1 - s)):  # output o samples input centre + (o - centre) / scale
        matrix = np.eye(2) / scale
        out[..., c] = np.clip(np.rint(affine_transform(a[..., c].astype(float), matrix, centre - matrix @ centre,
                                                       order=1, mode="nearest")), 0, 255).astype(np.uint8)
    return out


_BAYER = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]], float)


def web_palette_dither(a, rng):
    """A GIF-style export: 6 or 7 levels per channel (216 or 343 colours), 4x4 ordered dither."""
    steps = int(rng.integers(6, 8)) - 1
    h, w = a.shape[:2]
    threshold = ((_BAYER + 0.5) / 16)[np.arange(h)[:, None] % 4, np.arange(w)[None, :] % 4][..., None]
    return _u8(np.clip(np.floor(_float(a) * steps + threshold), 0, steps) / steps)


# Stroke glyphs on a 0.6 x 1 box (x right, y down), drawn with skimage.draw: no font files.
_GLYPHS = {
    "A": [[(0, 1), (0.3, 0), (0.6, 1)], [(0.12, 0.6), (0.48, 0.6)]],
    "C": [[(0.6, 0.15), (0.45, 0), (0.15, 0), (0, 0.2), (0, 0.8), (0.15, 1), (0.45, 1), (0.6, 0.85)]],
    "E": [[(0.6, 0), (0, 0), (0, 1), (0.6, 1)], [(0, 0.5), (0.45, 0.5)]],
    "H": [[(0, 0), (0, 1)], [(0.6, 0), (0.6, 1)], [(0, 0.5), (0.6, 0.5)]],
    "K": [[(0, 0), (0, 1)], [(0.6, 0), (0, 0.6)], [(0.2, 0.45), (0.6, 1)]],
    "L": [[(0, 0), (0, 1), (0.6, 1)]],
    "M": [[(0, 1), (0, 0), (0.3, 0.5), (0.6, 0), (0.6, 1)]],
    "O": [[(0.15, 0), (0.45, 0), (0.6, 0.2), (0.6, 0.8), (0.45, 1), (0.15, 1), (0, 0.8), (0, 0.2), (0.15, 0)]],
    "P": [[(0, 1), (0, 0), (0.45, 0), (0.6, 0.15), (0.6, 0.35), (0.45, 0.5), (0, 0.5)]],
    "S": [[(0.6, 0.1), (0.45, 0), (0.15, 0), (0, 0.15), (0, 0.35), (0.15, 0.5), (0.45, 0.5), (0.6, 0.65),
           (0.6, 0.85), (0.45, 1), (0.15, 1), (0, 0.9)]],
    "T": [[(0, 0), (0.6, 0)], [(0.3, 0), (0.3, 1)]],
}
_WORDS = ("SAMPLE", "PHOTO", "STOCK", "HELLO", "COAST", "MAPLE")


def _text_mask(shape, word: str, top: float, left: float, height: float, stroke: int) -> np.ndarray:
    from scipy.ndimage import maximum_filter
    from skimage.draw import line_aa
    from skimage.morphology import disk

    mask = np.zeros(shape, float)
    for i, letter in enumerate(word):
        x0 = left + i * 0.9 * height
        for stroke_line in _GLYPHS[letter]:
            for (xa, ya), (xb, yb) in zip(stroke_line, stroke_line[1:]):
                rr, cc, val = line_aa(int(round(top + ya * height)), int(round(x0 + xa * height)),
                                      int(round(top + yb * height)), int(round(x0 + xb * height)))
                keep = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
                np.maximum.at(mask, (rr[keep], cc[keep]), val[keep])
    return maximum_filter(mask, footprint=disk(stroke)) if stroke else mask


def _blend(a: np.ndarray, mask: np.ndarray, colour, opacity: float) -> np.ndarray:
    alpha = (np.clip(mask, 0, 1) * opacity)[..., None]
    return _u8(_float(a) * (1 - alpha) + np.asarray(colour, float)[None, None] * alpha)


def watermark_text(a, rng):
    """A semi-transparent word (opacity 0.3-0.5, 14-24 px high) in white or black, anywhere."""
    word = _WORDS[int(rng.integers(len(_WORDS)))]
    height = rng.uniform(14, 24)
    width = len(word) * 0.9 * height
    h, w = a.shape[:2]
    top, left = rng.uniform(4, max(5, h - height - 4)), rng.uniform(4, max(5, w - width - 4))
    mask = _text_mask(a.shape[:2], word, top, left, height, int(rng.integers(1, 3)))
    return _blend(a, mask, (1.0, 1.0, 1.0) if rng.random() < 0.75 else (0.0, 0.0, 0.0), rng.uniform(0.3, 0.5))


def logo_badge(a, rng):
    """A round app badge in a corner: a coloured disk, a white ring and a white triangle, opacity 0.4-0.7."""
    from skimage.color import hsv2rgb
    from skimage.draw import disk, polygon

    h, w = a.shape[:2]
    radius = rng.uniform(12, 22)
    margin = rng.uniform(radius + 4, radius + 24, size=2)
    cy = margin[0] if rng.random() < 0.5 else h - margin[0]
    cx = margin[1] if rng.random() < 0.5 else w - margin[1]
    fill, ring, mark = (np.zeros((h, w)) for _ in range(3))
    fill[disk((cy, cx), radius, shape=(h, w))] = 1
    ring[disk((cy, cx), radius, shape=(h, w))] = 1
    ring[disk((cy, cx), radius * 0.82, shape=(h, w))] = 0
    angle = rng.uniform(0, 2 * np.pi) + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3])
    mark[polygon(cy + 0.5 * radius * np.sin(angle), cx + 0.5 * radius * np.cos(angle), shape=(h, w))] = 1
    colour = hsv2rgb(np.array([[[rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.5, 0.9)]]]))[0, 0]
    opacity = rng.uniform(0.4, 0.7)
    out = _blend(a, fill, colour, opacity)
    return _blend(out, np.maximum(ring, mark), (1.0, 1.0, 1.0), opacity)


def colour_patches(a, rng):
    """1-3 opaque solid rectangles or ellipses (stickers, redactions), 16-36 px, saturated colours."""
    from skimage.color import hsv2rgb
    from skimage.draw import ellipse, rectangle

    out = a.copy()
    h, w = a.shape[:2]
    for _ in range(int(rng.integers(1, 4))):
        ph, pw = rng.uniform(16, 36, size=2)
        y, x = rng.uniform(0, h - ph), rng.uniform(0, w - pw)
        if rng.random() < 0.5:
            rr, cc = rectangle((int(y), int(x)), extent=(int(ph), int(pw)), shape=(h, w))
        else:
            rr, cc = ellipse(y + ph / 2, x + pw / 2, ph / 2, pw / 2, shape=(h, w))
        colour = hsv2rgb(np.array([[[rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0)]]]))[0, 0]
        out[rr, cc] = _u8(colour)
    return out


# -- plausible global edits ------------------------------------------------------------------------

def gamma_curve(a, rng):
    from skimage.exposure import adjust_gamma

    g = rng.uniform(0.7, 0.85) if rng.random() < 0.5 else rng.uniform(1.2, 1.4)
    return adjust_gamma(a, g)


def clahe_enhance(a, rng):
    """A phone's "auto enhance": contrast-limited adaptive equalization, blended in at 50-100%."""
    from skimage.exposure import equalize_adapthist

    enhanced = equalize_adapthist(a, clip_limit=rng.uniform(0.006, 0.015))
    weight = rng.uniform(0.5, 1.0)
    return _u8((1 - weight) * _float(a) + weight * enhanced)


_SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])


def sepia_tone(a, rng):
    s = rng.uniform(0.6, 1.0)
    x = _float(a)
    return _u8((1 - s) * x + s * (x @ _SEPIA.T))


def white_balance(a, rng):
    """A warm or cool white-balance shift: red and blue scaled 1 +- 0.06-0.14 in opposite directions."""
    d = _side(rng, 0.06, 0.14)
    return _u8(_float(a) * np.array([1 + d, 1 + d / 4, 1 - d]))


def saturation_boost(a, rng):
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(a)
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(1.3, 1.7), 0, 1)
    return _u8(hsv2rgb(hsv))


_SWAPS = ((2, 1, 0), (1, 0, 2), (0, 2, 1))  # transpositions: a BGR mix-up, not a hue rotation


def channel_swap(a, rng):
    return np.ascontiguousarray(a[..., list(_SWAPS[int(rng.integers(len(_SWAPS)))])])


def small_rotation(a, rng):
    """A straightened horizon: 3-12 degrees either way, cropped to the largest upright square, resized."""
    from skimage.transform import resize, rotate

    angle = _side(rng, 3.0, 12.0)
    h, w = a.shape[:2]
    turned = rotate(_float(a), angle, order=1, mode="edge")
    t = np.deg2rad(abs(angle))
    side = min(h, w) / (np.cos(t) + np.sin(t))
    top, left = int(np.ceil((h - side) / 2)), int(np.ceil((w - side) / 2))
    crop = turned[top:h - top, left:w - left]
    return _u8(resize(crop, a.shape, order=1, anti_aliasing=False))


def reframe_crop(a, rng):
    """A reframing: 70-90% of the side kept, anywhere, enlarged back (bicubic)."""
    from skimage.transform import resize

    h, w = a.shape[:2]
    f = rng.uniform(0.7, 0.9)
    ch, cw = int(round(h * f)), int(round(w * f))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return _u8(resize(_float(a[y:y + ch, x:x + cw]), a.shape, order=3, anti_aliasing=False))


def swirl(a, rng):
    """A liquify-style twist: strength 0.8-1.5 radians at the centre, radius 70-120 px."""
    from skimage.transform import swirl as sk_swirl

    h, w = a.shape[:2]
    centre = (w / 2 + rng.uniform(-30, 30), h / 2 + rng.uniform(-30, 30))
    return _u8(sk_swirl(_float(a), centre, strength=rng.uniform(0.8, 1.5), radius=rng.uniform(70, 120),
                        order=1, mode="reflect"))


def barrel_distortion(a, rng):
    """A wide-angle lens's bulge: radius scaled by (1 + k r^2) / (1 + k), k 0.06-0.15, corners fixed."""
    from skimage.transform import warp

    h, w = a.shape[:2]
    k = rng.uniform(0.06, 0.15)
    centre, half_diagonal = np.array([(w - 1) / 2, (h - 1) / 2]), np.hypot(w - 1, h - 1) / 2

    def source(xy):  # output (x, y) -> where it samples the input (not named "inverse": scikit-image 0.26
        d = xy - centre  # takes a function of that name for a homography's bound method)
        r2 = (d ** 2).sum(1, keepdims=True) / half_diagonal ** 2
        return centre + d * (1 + k * r2) / (1 + k)

    return _u8(warp(_float(a), source, order=1, mode="edge"))


SK, NP, SP = "scikit-image", "numpy", "scipy"
EDITS: tuple[Edit, ...] = (
    Edit("median_filter", "artifact", "blur", "median filter, disk radius 1-2 (noise reduction)", median_filter, SK),
    Edit("tv_smoothing", "artifact", "blur", "total-variation smoothing, weight 0.04-0.1 (a beauty filter)",
         tv_smoothing, SK),
    Edit("unsharp_halo", "artifact", "sharpening", "unsharp mask, radius 1-2.5, amount 0.8-1.6 (over-sharpened)",
         unsharp_halo, SK, ("sharpen", "unsharp_mask")),
    Edit("chroma_noise", "artifact", "noise", "blotchy Cb/Cr noise, sigma 3-6 (low-light phone photo)",
         chroma_noise, f"{SK} + {SP}"),
    Edit("impulse_noise", "artifact", "noise", "1-3% of pixels random colours (hot and dead pixels)",
         impulse_noise, NP, ("salt_and_pepper",)),
    Edit("dct_requantize", "artifact", "compression", "JPEG's lossy step at quality 15-40, 4:2:0 (a re-shared photo)",
         dct_requantize, f"{NP} + {SP}", ("jpeg", "jpeg_recompress")),
    Edit("resample_chain", "artifact", "resampling", "down to 0.4-0.6x bicubic, back up bilinear (a thumbnail)",
         resample_chain, SK, ("downscale", "resample")),
    Edit("web_palette_dither", "artifact", "quantization", "6-7 levels per channel, 4x4 ordered dither (a GIF)",
         web_palette_dither, NP),
    Edit("chromatic_aberration", "artifact", "fringing", "red and blue planes scaled +-0.6-1.5% (a cheap lens)",
         chromatic_aberration, SP),
    Edit("watermark_text", "artifact", "overlay", "a stroke-drawn word, 14-24 px, opacity 0.3-0.5",
         watermark_text, SK, ("text_overlay", "watermark")),
    Edit("logo_badge", "artifact", "overlay", "a round badge, radius 12-22 px, in a corner, opacity 0.4-0.7",
         logo_badge, SK, ("icon_overlay", "logo")),
    Edit("colour_patches", "artifact", "patch", "1-3 opaque rectangles or ellipses, 16-36 px (stickers)",
         colour_patches, SK, ("patches",)),
    Edit("gamma_curve", "plausible", "tone", "gamma 0.7-0.85 or 1.2-1.4", gamma_curve, SK, ("gamma",)),
    Edit("clahe_enhance", "plausible", "tone", "adaptive equalization, clip 0.006-0.015, 50-100% (auto enhance)",
         clahe_enhance, SK),
    Edit("sepia_tone", "plausible", "colour", "sepia matrix at 60-100% (a filter preset)", sepia_tone, NP,
         ("sepia",)),
    Edit("white_balance", "plausible", "colour", "warm or cool shift, red/blue x 1 +- 0.06-0.14", white_balance, NP,
         ("warm_filter", "cool_filter")),
    Edit("saturation_boost", "plausible", "colour", "HSV saturation x 1.3-1.7 (vivid)", saturation_boost, SK,
         ("saturate",)),
    Edit("channel_swap", "plausible", "colour", "two colour channels swapped (a BGR mix-up)", channel_swap, NP),
    Edit("small_rotation", "plausible", "geometry", "3-12 degrees either way, cropped upright and resized",
         small_rotation, SK, ("rotate", "rotate_crop")),
    Edit("reframe_crop", "plausible", "geometry", "70-90% of the side kept, enlarged back (bicubic)",
         reframe_crop, SK, ("crop_zoom", "crop_zoom_mild")),
    Edit("swirl", "plausible", "geometry", "twist of 0.8-1.5 rad at the centre, radius 70-120 px", swirl, SK),
    Edit("barrel_distortion", "plausible", "geometry", "radial bulge k 0.06-0.15, corners kept (a wide-angle lens)",
         barrel_distortion, SK),
)
EDIT_NAMES = tuple(e.name for e in EDITS)
assert len(set(EDIT_NAMES)) == len(EDITS) and all(e.group in GROUPS for e in EDITS)


def get_edit(name: str) -> Edit:
    for e in EDITS:
        if e.name == name:
            return e
    raise ValueError(f"unknown everyday edit {name!r}; known: {', '.join(EDIT_NAMES)}")


def trained_rows(edit: Edit) -> list[str]:
    """"CATALOG.row" for every row of today's catalogs that does this edit's operation."""
    from equiprobe.services.transforms import CATALOGS

    return [f"{c}.{t.name}" for c, catalog in CATALOGS.items() for t in catalog.transforms if t.name in edit.same_as]


def _stream(*parts) -> np.random.Generator:
    words = [int.from_bytes(hashlib.blake2b(str(p).encode(), digest_size=8).digest(), "little") for p in parts]
    return np.random.default_rng(np.random.SeedSequence(words))


def edit_rng(name: str, key: str, seed: int = 0) -> np.random.Generator:
    """The parameter draws of one edit of one image: a pure function of (seed, edit, image key)."""
    return _stream("everyday", int(seed), zlib.crc32(name.encode()), key)


def upload_quality(name: str, key: str, seed: int = 0) -> int:
    """The JPEG quality one upload (an edit, or "original") is encoded at: the training uploads' range."""
    from equiprobe.services.transforms.spec import UPLOAD_QUALITY

    return int(_stream("upload", int(seed), name, key).integers(UPLOAD_QUALITY[0], UPLOAD_QUALITY[1] + 1))


def apply_edit(edit: Edit, rgb: np.ndarray, key: str, seed: int = 0) -> np.ndarray:
    return edit(rgb, edit_rng(edit.name, key, seed))


# -- the card ---------------------------------------------------------------------------------------

def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarize(original_scores, edited_scores: dict[str, list[float]], threshold: float,
              top_names: Optional[dict[str, list[str]]] = None) -> dict:
    """The card from scores: per edit the AUC of its versions' scores against the originals'
    (ties count half), the share flagged at the threshold (TPR), the mean score, the detector's
    most common top transformation and the catalog rows doing the same operation; the originals'
    FPR; means per group, over the novel edits (no catalog row does them) and overall."""
    originals = np.asarray(original_scores, float)
    edits = {}
    for name, scores in edited_scores.items():
        e, s = get_edit(name), np.asarray(scores, float)
        trained = trained_rows(e)
        row = {"group": e.group, "kind": e.kind, "library": e.library, "description": e.description,
               "trained_rows": trained, "novel": not trained, "n": int(s.size), "auc": auc(s, originals),
               "tpr": float(np.mean(s >= threshold)) if s.size else None,
               "mean_score": float(s.mean()) if s.size else None}
        if top_names and top_names.get(name):
            top, count = Counter(top_names[name]).most_common(1)[0]
            row["top_transformation"] = {"name": top, "share": count / len(top_names[name])}
        edits[name] = row
    groups = {}
    for group in SUMMARIES:
        rows = [r for r in edits.values() if group == "all" or r["group"] == group or (group == "novel" and r["novel"])]
        groups[group] = {"edits": len(rows), "auc": _mean(r["auc"] for r in rows),
                         "tpr": _mean(r["tpr"] for r in rows)}
    return {"threshold": float(threshold), "originals": {
                "n": int(originals.size), "fpr": float(np.mean(originals >= threshold)) if originals.size else None,
                "mean_score": float(originals.mean()) if originals.size else None},
            "edits": edits, "groups": groups}


def store_canvases(store, rows) -> Iterator[tuple[str, str, np.ndarray]]:
    """(store key, content key, 224x224 canvas) of a store's images `rows`, read from its dataset
    one at a time, as the caller asks."""
    from equiprobe.clients.datasets import open_dataset
    from equiprobe.services.reference import canvas
    from equiprobe.services.transforms import image_key

    dataset = open_dataset(store.manifest["dataset"])
    index, keys = np.asarray(store.array("index")), np.asarray(store.array("keys"))
    for row in rows:
        data = dataset.record(int(index[row])).load()
        yield str(keys[row]), image_key(data), canvas(data)


def test_canvases(store_path: Path, images: int) -> list[tuple[str, np.ndarray]]:
    """(content key, 224x224 canvas) of the store's test sources, one crop each first."""
    from equiprobe.clients.store import Store

    from .reference_card import test_images

    store = Store.open(store_path)
    return [(content, rgb) for _, content, rgb in store_canvases(store, test_images(store, images))]


test_canvases.__test__ = False  # not a pytest test


def image_uploads(key: str, rgb: np.ndarray, seed: int = 0, edits: Sequence[Edit] = EDITS) -> list[tuple[str, bytes]]:
    """(edit name or "original", JPEG upload) of one image (content key, canvas): its original,
    then each of `edits`."""
    from equiprobe.clients.photos import encode

    return [("original", encode(rgb, quality=upload_quality("original", key, seed)))] + [
        (e.name, encode(apply_edit(e, rgb, key, seed), quality=upload_quality(e.name, key, seed))) for e in edits]


def rotating_edits(position: int, count: int) -> tuple[Edit, ...]:
    """`count` of EDITS for the image at `position`, the next `count` for the next image: over
    len(EDITS) / count images every edit is made once, each about equally often."""
    return tuple(EDITS[(position * count + j) % len(EDITS)] for j in range(min(count, len(EDITS))))


def served_while_made(call: Callable, canvases: Iterable[tuple[str, np.ndarray]], total: int, seed: int = 0,
                      workers: int = 4, description: str = "everyday edits", progress: bool = True,
                      edits_of: Callable[[int], Sequence[Edit]] = lambda position: EDITS) -> list[tuple]:
    """call(upload) for each image's original and edits (`image_uploads`; `edits_of(position)`,
    every edit by default), `workers` requests at a time; [(position of the image, edit name or
    "original", answer)] in order. The next image's
    edits are made while the server answers the images before: making them costs about as much
    CPU as serving them (the demo's served match card: 142 -> 96 s; no faster in a second process)."""
    from rich.progress import track

    with ThreadPoolExecutor(workers) as pool:
        sent = [(i, name, pool.submit(call, data))
                for i, (key, rgb) in enumerate(track(canvases, total=total, description=description,
                                                     disable=not progress))
                for name, data in image_uploads(key, rgb, seed, edits_of(i))]
        return [(i, name, future.result()) for i, name, future in sent]


def everyday_card(url, encoder: str, store_path: Path, images: int = 40, workers: int = 4, seed: int = 0,
                  progress: bool = True) -> dict:
    """The card of the served NAME_detector on everyday edits of the store's test sources."""
    import scipy
    import skimage

    from equiprobe.clients.scoring import Scorer

    canvases = test_canvases(Path(store_path), images)
    if not canvases:
        raise ValueError(f"{store_path}: no test sources for the everyday-edits card")
    scorer = Scorer(url, encoder, top=1)
    scorer.check()
    try:
        answers = served_while_made(scorer.score, canvases, len(canvases), seed, workers,
                                    "everyday edits (scikit-image)", progress)
        threshold = scorer.threshold
    finally:
        scorer.close()
    originals = [s.manipulation_score for _, name, s in answers if name == "original"]
    edited = {e.name: [s.manipulation_score for _, n, s in answers if n == e.name] for e in EDITS}
    top = {e.name: [s.transformations[0][0] for _, n, s in answers if n == e.name and s.transformations]
           for e in EDITS}
    return {"detector": DetectorNames(encoder).detector, "images": len(canvases), "uploads": len(answers), "seed": int(seed),
            "libraries": {"scikit-image": skimage.__version__, "scipy": scipy.__version__, "numpy": np.__version__},
            "upload_quality": _upload_range(), **summarize(originals, edited, threshold, top)}


def _upload_range() -> list[int]:
    from equiprobe.services.transforms.spec import UPLOAD_QUALITY

    return [int(q) for q in UPLOAD_QUALITY]


# -- output -----------------------------------------------------------------------------------------

def _f(v: Optional[float], digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_everyday(card: dict) -> list[str]:
    """Console lines: one per edit, then the group means and the originals' FPR."""
    lines = [f"Everyday-edits card ({card.get('detector', 'detector')}, {card.get('images', '?')} held-out images, "
             f"scikit-image/scipy/numpy edits never trained on; threshold {card['threshold']:.3f}):",
             f"  {'edit':<21} {'group':<10} {'AUC':>6} {'TPR':>6}  same operation in training"]
    for name, e in card["edits"].items():
        lines.append(f"  {name:<21} {e['group']:<10} {_f(e['auc']):>6} {_f(e['tpr']):>6}  "
                     f"{', '.join(e['trained_rows']) or '- (novel)'}")
    g = card["groups"]
    lines.append("  means: " + ", ".join(f"{k} AUC {_f(g[k]['auc'])} TPR {_f(g[k]['tpr'])}" for k in SUMMARIES)
                 + f"; originals' FPR {_f(card['originals']['fpr'])}")
    return lines


def cannot_see(card: dict) -> str:
    """Plain words: which edits the detector cannot see (AUC below BLIND_AUC), and why."""
    blind = {g: [n for n, e in card["edits"].items() if e["group"] == g and e["auc"] is not None
                 and e["auc"] < BLIND_AUC] for g in GROUPS}
    plausible = _f(card["groups"]["plausible"]["auc"], 2)
    why = ("it sees an upload without its original, and a darkened photo looks like a dark photo, a warmed one "
           "like one shot at sunset, a slightly turned or cropped one like one framed that way.")
    if blind["plausible"]:
        text = (f"The detector cannot see {', '.join(blind['plausible'])} (AUC below {BLIND_AUC}; plausible global "
                f"edits, tone, colour and small geometry, average {plausible}, 0.5 being chance): " + why)
    else:
        text = (f"Every plausible global edit here scores AUC {BLIND_AUC} or more (mean {plausible}), though in "
                f"general a detector cannot know them: " + why)
    if blind["artifact"]:
        text += (f" It also misses {', '.join(blind['artifact'])}: artifacts the upload itself carries, so "
                 "these are the detector's to learn.")
    return text


def everyday_markdown(cards: dict[str, dict]) -> list[str]:
    """The report's section for the everyday-edits cards, by detector (empty without cards)."""
    if not cards:
        return []
    lines = ["## Everyday-edits card (made with scikit-image, never trained on)", "",
             "Edits a user or an app makes, at everyday strengths, written with scikit-image, scipy and numpy "
             "(no training path uses them) on the store's test sources, uploaded as JPEGs at the training uploads' "
             "qualities and scored by the served detector. AUC: edited versions against the originals (0.5 = "
             "chance); TPR: share flagged at the deployed threshold. Same operation in training: the catalog rows "
             "(DALI-made, at their own strengths) doing it; novel: none does.", ""]
    for name, card in cards.items():
        o, g = card["originals"], card["groups"]
        lines += [f"{name}: {card['images']} images, {card['uploads']} uploads, threshold {card['threshold']:.3f}, "
                  f"originals' FPR {_f(o['fpr'])}.", "",
                  "| edit | group | kind | strength | library | same operation in training | AUC | TPR | top named |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for edit, e in card["edits"].items():
            top = e.get("top_transformation")
            named = f"{top['name']} ({top['share']:.2f})" if top else "-"
            lines.append(f"| {edit} | {e['group']} | {e['kind']} | {e['description']} | {e['library']} | "
                         f"{', '.join(e['trained_rows']) or 'novel'} | {_f(e['auc'])} | {_f(e['tpr'])} | {named} |")
        lines += ["", "| group | edits | mean AUC | mean TPR |", "|---|---|---|---|"]
        lines += [f"| {k} | {g[k]['edits']} | {_f(g[k]['auc'])} | {_f(g[k]['tpr'])} |" for k in SUMMARIES]
        lines += ["", cannot_see(card), ""]
    return lines


def plot_everyday(card: dict, out_png: Path) -> Path:
    """Bars of AUC per edit, coloured by group, with the chance line at 0.5."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = list(card["edits"])
    colours = {"artifact": "tab:red", "plausible": "tab:blue"}
    fig, ax = plt.subplots(figsize=(max(8, 0.5 * len(names) + 5), 4.5))
    edits = [card["edits"][n] for n in names]
    ax.bar(range(len(names)), [e["auc"] or 0 for e in edits], color=[colours[e["group"]] for e in edits],
           hatch=["" if e.get("novel") else "//" for e in edits], edgecolor="white")
    ax.axhline(0.5, color="k", linestyle="--", linewidth=1)
    handles = [Patch(color=c, label=f"{g} (mean AUC {_f(card['groups'][g]['auc'], 2)})") for g, c in colours.items()]
    handles += [Patch(facecolor="grey", hatch="//", edgecolor="white", label="a training row does the same operation"),
                plt.Line2D([], [], color="k", linestyle="--", label="chance")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUC, edited vs originals")
    ax.set_title(f"Everyday edits (scikit-image, never trained on): {card.get('detector', '')}")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
