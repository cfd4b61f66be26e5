"""Host-side inputs for transformations: blur kernels, text glyphs, icons, style references.

All come from files that installed packages ship (matplotlib's DejaVu/STIX/Computer Modern
fonts and toolbar icons, scikit-image and scikit-learn photographs) and are rendered from the
transform's drawn parameters, so they are as deterministic as the parameters themselves.
The pipeline receives them as DALI external inputs; DALI does the blending.

`build-repo` copies those files into each CATALOG_inputs model (`write_bundle`; style references
already on the canvas), and the model reads them from there (`use_bundle`): the server needs
neither matplotlib nor scikit-image nor scikit-learn, and a server with other versions of them
still sees the very files the repository was built with.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Every transformation works on the 224x224 canvas. Named CANVAS here (the size, not the tensor of
# services/contract.py): the transformations' source is part of their fingerprints, which must not change.
from ..pipelines import CANVAS_SIZE as CANVAS  # noqa: F401


def _mpl_data() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path())


_bundle: list[Path] = []  # set by use_bundle: the directory write_bundle wrote


def use_bundle(directory: Path) -> None:
    """Read fonts, icons and style references from a bundle instead of the packages."""
    _bundle[:] = [Path(directory)]
    for cached in (_font, _icon, style_reference):
        cached.cache_clear()


# Fonts and icons: the first group is used in training, the second is held out for the
# generalization test set.
SEEN_FONTS = ("DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf")
HELD_OUT_FONTS = ("STIXGeneralItalic.ttf", "cmr10.ttf", "DejaVuSans-BoldOblique.ttf")
SEEN_ICONS = ("home", "back", "forward", "filesave", "zoom_to_rect", "move")
HELD_OUT_ICONS = ("hand", "help", "subplots", "matplotlib", "qt4_editor_options")
WORDS = ("SALE", "FAKE", "breaking news", "LOL", "2026", "#1", "click here", "WOW", "meme", "OK",
         "limited offer", "cat", "hello", "50% OFF", "STOP", "viral")

# Style references: photographs and textures that scikit-image / scikit-learn ship.
SEEN_STYLES = ("brick", "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "coins")
HELD_OUT_STYLES = ("retina", "china", "flower", "moon", "rocket", "colorwheel", "camera")


# -- blur kernels -----------------------------------------------------------------------------

def motion_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A normalized line of `length` pixels at `angle_deg`, odd-sized, float32."""
    size = int(length) | 1
    kernel = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    t = np.deg2rad(angle_deg)
    for s in np.linspace(-c, c, 4 * size):
        kernel[int(round(c + s * np.sin(t))), int(round(c + s * np.cos(t)))] = 1.0
    return kernel / kernel.sum()


def disk_kernel(radius: float) -> np.ndarray:
    r = int(np.ceil(radius))
    y, x = np.mgrid[-r:r + 1, -r:r + 1]
    kernel = (x ** 2 + y ** 2 <= radius ** 2 + 0.5).astype(np.float32)
    return kernel / kernel.sum()


# -- glyphs -----------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_font_file(name)), size)


def _font_file(name: str) -> Path:
    return _bundle[0] / "fonts" / name if _bundle else _mpl_data() / "fonts" / "ttf" / name


def render_text(text: str, font: str, size: int, rgb: tuple[int, int, int]) -> np.ndarray:
    """RGBA uint8 bitmap of `text`, tightly cropped, with a dark outline for legibility."""
    f = _font(font, size)
    left, top, right, bottom = f.getbbox(text, stroke_width=2)
    image = Image.new("RGBA", (right - left + 4, bottom - top + 4), (0, 0, 0, 0))
    ImageDraw.Draw(image).text((2 - left, 2 - top), text, font=f, fill=(*rgb, 255),
                               stroke_width=2, stroke_fill=(0, 0, 0, 255))
    return np.asarray(image)


@lru_cache(maxsize=None)
def _icon(name: str) -> Image.Image:
    return Image.open(_icon_file(name)).convert("RGBA")


def _icon_file(name: str) -> Path:
    if _bundle:
        return _bundle[0] / "icons" / f"{name}.png"
    images = _mpl_data() / "images"
    large = images / f"{name}_large.png"  # not every icon has a large version
    return large if large.exists() else images / f"{name}.png"


def render_icon(name: str, size: int, rgb: tuple[int, int, int]) -> np.ndarray:
    """The icon's shape, recoloured to `rgb`, scaled to `size` pixels (RGBA uint8)."""
    icon = np.asarray(_icon(name).resize((size, size), Image.BILINEAR)).copy()
    coloured = icon[..., 3:4].astype(np.float32) / 255.0
    icon[..., :3] = (np.array(rgb, np.float32) * (0.4 + 0.6 * coloured)).astype(np.uint8)
    return icon


def colour(hue: float) -> tuple[int, int, int]:
    """A saturated colour from a hue in [0, 1)."""
    import colorsys

    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue % 1.0, 0.9, 1.0))  # type: ignore[return-value]


# -- style references -------------------------------------------------------------------------

@lru_cache(maxsize=None)
def style_reference(name: str) -> np.ndarray:
    """The reference photograph as a CANVAS x CANVAS RGB uint8 array (centre square, resized)."""
    if _bundle:
        return np.asarray(Image.open(_bundle[0] / "styles" / f"{name}.png").convert("RGB"))
    from ..photos import package_photos

    photo = package_photos()[name]
    h, w = photo.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = Image.fromarray(photo[top:top + side, left:left + side])
    return np.asarray(square.resize((CANVAS, CANVAS), Image.BILINEAR))


def write_bundle(directory: Path) -> Path:
    """Copy every font, icon and (canvas-sized, lossless) style reference the catalogs use."""
    import shutil

    directory = Path(directory)
    for sub in ("fonts", "icons", "styles"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    for name in SEEN_FONTS + HELD_OUT_FONTS:
        shutil.copy2(_font_file(name), directory / "fonts" / name)
    for name in SEEN_ICONS + HELD_OUT_ICONS:
        shutil.copy2(_icon_file(name), directory / "icons" / f"{name}.png")
    for name in SEEN_STYLES + HELD_OUT_STYLES:
        Image.fromarray(style_reference(name)).save(directory / "styles" / f"{name}.png")
    return directory
