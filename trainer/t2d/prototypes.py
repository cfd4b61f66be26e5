"""Object prototypes: colour emoji of Debian's fonts-noto-color-emoji with their alpha masks.

NotoColorEmoji.ttf is a CBDT bitmap font: Pillow renders it only at size 109, with
`embedded_color=True`. Every glyph is rendered once, cropped to its alpha's bounding box, padded
to a square (centred) and kept as premultiplied RGBA float32 in [0, 1]. The order of `OBJECTS` is
the class order everywhere (object i is class i); the manifest names each object's codepoint and
licence (from the package's copyright file).
"""

from __future__ import annotations

import re
import subprocess
import unicodedata
from functools import lru_cache
from pathlib import Path

import numpy as np

PACKAGE = "fonts-noto-color-emoji"
FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
COPYRIGHT = Path("/usr/share/doc") / PACKAGE / "copyright"
GLYPH_SIZE = 109  # the one size of the font's bitmaps
CANVAS = 160  # render canvas: a 136 x 128 glyph cell with margin

# Single-codepoint emoji of distinct, recognizable objects (fruit and food, animals, vehicles,
# things, plants): 85, at least the paper's 61.
CODEPOINTS = (
    0x1F34E, 0x1F34C, 0x1F347, 0x1F349, 0x1F34B, 0x1F352, 0x1F353, 0x1F34D, 0x1F955, 0x1F33D,
    0x1F344, 0x1F966, 0x1F35E, 0x1F9C0, 0x1F355, 0x1F354, 0x1F369, 0x1F36A, 0x1F382, 0x1F366,
    0x1F436, 0x1F431, 0x1F42D, 0x1F438, 0x1F437, 0x1F435, 0x1F414, 0x1F427, 0x1F422, 0x1F40D,
    0x1F419, 0x1F980, 0x1F40C, 0x1F98B, 0x1F41E, 0x1F418, 0x1F992, 0x1F433, 0x1F420, 0x1F989,
    0x1F697, 0x1F68C, 0x1F6B2, 0x1F680, 0x1F681, 0x26F5, 0x1F682, 0x1F69C, 0x1F6F4, 0x1F691,
    0x26BD, 0x1F3C0, 0x1F3B8, 0x1F3BA, 0x1F511, 0x1F528, 0x1F4A1, 0x1F4F7, 0x23F0, 0x1F388,
    0x1F381, 0x1F45F, 0x1F3A9, 0x1F453, 0x1F302, 0x1F514, 0x1F48E, 0x1F9F8, 0x1FA81, 0x1F33B,
    0x1F335, 0x1F332, 0x1F341, 0x1F3E0, 0x26C4, 0x1F525, 0x2B50, 0x1F319, 0x1F9F2, 0x1FA91,
    0x1F9ED, 0x1F941, 0x1F3BB, 0x1FA93, 0x1F3FA,
)
MIN_OBJECTS = 61


class PrototypeError(RuntimeError):
    """The font is missing or a glyph does not render; the message says what to install."""


def object_name(codepoint: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", unicodedata.name(chr(codepoint)).lower()).strip("-")


OBJECTS = tuple(object_name(c) for c in CODEPOINTS)


def check_font() -> Path:
    if not FONT.is_file():
        raise PrototypeError(f"{FONT} is missing: the Transforms-2D objects are colour emoji of Debian's "
                             f"{PACKAGE}; install it: apt-get install -y {PACKAGE} (make setup does this)")
    return FONT


def font_licence() -> str:
    """The License of the copyright file's stanza for the font files (`Files: fonts/*`)."""
    text = COPYRIGHT.read_text(errors="replace") if COPYRIGHT.exists() else ""
    for stanza in re.split(r"\n[ \t]*\n", text):
        files = re.search(r"^Files:(.*)", stanza, re.M)
        licence = re.search(r"^License:[ \t]*(\S.*)", stanza, re.M)
        if files and licence and "fonts/" in files.group(1):
            name = licence.group(1).strip()
            return "OFL-1.1" if name in ("SIL-1.1", "OFL-1.1") else name
    return f"unknown (see {COPYRIGHT})"


def package_version() -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", PACKAGE], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


@lru_cache(maxsize=1)
def _font():
    from PIL import ImageFont

    return ImageFont.truetype(str(check_font()), GLYPH_SIZE)


def render_glyph(codepoint: int) -> np.ndarray:
    """uint8 RGBA [h, w, 4] of one emoji, cropped to its alpha's bounding box."""
    from PIL import Image, ImageDraw

    font = _font()
    image = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    ImageDraw.Draw(image).text((12, 12), chr(codepoint), font=font, embedded_color=True)
    box = image.getchannel("A").getbbox()
    if box is None:
        raise PrototypeError(f"U+{codepoint:04X} ({object_name(codepoint)}) renders empty with {FONT}")
    return np.asarray(image.crop(box))


@lru_cache(maxsize=8)
def prototypes(resolution: int = 64) -> np.ndarray:
    """float32 [N, 4, R, R]: every object's premultiplied RGBA in [0, 1], centred on a square and
    resized (antialiased) to R x R; read-only."""
    import torch
    import torch.nn.functional as F

    out = np.zeros((len(CODEPOINTS), 4, resolution, resolution), np.float32)
    for i, codepoint in enumerate(CODEPOINTS):
        glyph = render_glyph(codepoint).astype(np.float32) / 255.0
        h, w = glyph.shape[:2]
        side = max(h, w)
        square = np.zeros((side, side, 4), np.float32)
        square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = glyph
        square[..., :3] *= square[..., 3:]  # premultiplied: resizing does not bleed black edges
        tensor = torch.from_numpy(square).permute(2, 0, 1)[None]
        out[i] = F.interpolate(tensor, size=(resolution, resolution), mode="bilinear", antialias=True,
                               align_corners=False)[0].clamp(0, 1).numpy()
    out.setflags(write=False)
    return out


def object_indices(objects: int | None = None, object_set: str | None = None) -> list[int]:
    """Which objects (classes, in order): the first N, a named set, or all."""
    if objects is not None and object_set is not None:
        raise ValueError("give --objects N or --object-set NAME, not both")
    if object_set is not None:
        if object_set not in OBJECT_SETS:
            raise ValueError(f"unknown object set {object_set!r}; use {', '.join(OBJECT_SETS)}")
        return list(OBJECT_SETS[object_set])
    if objects is None:
        return list(range(len(CODEPOINTS)))
    if not 2 <= objects <= len(CODEPOINTS):
        raise ValueError(f"--objects must be in 2..{len(CODEPOINTS)} (classes need at least two objects)")
    return list(range(objects))


def _split_sets() -> dict[str, tuple[int, ...]]:
    """O1 / O2 of the transfer experiments: a fixed permutation of the first 61 objects (the paper's
    count), 30 and 31; `all` is every object."""
    order = np.random.default_rng(61).permutation(MIN_OBJECTS)
    return {"all": tuple(range(len(CODEPOINTS))), "paper": tuple(range(MIN_OBJECTS)),
            "o1": tuple(sorted(order[:30].tolist())), "o2": tuple(sorted(order[30:].tolist()))}


OBJECT_SETS = _split_sets()


def manifest(indices: list[int] | None = None) -> list[dict]:
    """One entry per object: class index, name, codepoint, character, source and licence."""
    licence, version = font_licence(), package_version()
    chosen = range(len(CODEPOINTS)) if indices is None else indices
    return [{"class": n, "object": i, "name": OBJECTS[i], "codepoint": f"U+{CODEPOINTS[i]:04X}",
             "character": chr(CODEPOINTS[i]), "source": f"{PACKAGE} {version}: {FONT}", "licence": licence}
            for n, i in enumerate(chosen)]
