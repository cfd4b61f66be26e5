"""Reference preprocessing in Pillow and numpy, one image at a time.

It is the yardstick for the DALI pipeline (tests compare the two) and the naive baseline of
the benchmarks. Both resize with antialiased linear/cubic filters, but the kernels differ in
detail, so outputs agree closely, not bit for bit (see tests/test_preprocess.py).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from .encoders import Preprocess

_FILTERS = {"linear": Image.BILINEAR, "cubic": Image.BICUBIC}


def decode_rgb(data: bytes) -> Image.Image:
    """RGB, upright: EXIF orientation applied, as DALI's decoder does."""
    from PIL import ImageOps

    from .uploads import admit

    with Image.open(io.BytesIO(admit(data).data)) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def canvas(data: bytes) -> np.ndarray:
    """Decode and place on the 224x224 canvas as the DALI pipeline does (shorter side, centre)."""
    from .pipelines import CANVAS_SIZE

    image = decode_rgb(data)
    w, h = image.size
    scale = CANVAS_SIZE / min(w, h)
    image = image.resize((max(CANVAS_SIZE, round(w * scale)), max(CANVAS_SIZE, round(h * scale))), Image.BILINEAR)
    w, h = image.size
    left, top = int((w - CANVAS_SIZE) / 2 + 0.5), int((h - CANVAS_SIZE) / 2 + 0.5)
    return np.asarray(image.crop((left, top, left + CANVAS_SIZE, top + CANVAS_SIZE)))


def reference_preprocess(data: bytes, pre: "Preprocess") -> np.ndarray:
    """The one preprocessing path (see services/pipelines.py): canvas, then the encoder's resize."""
    image = Image.fromarray(canvas(data))
    if pre.resize_mode == "square":
        size = (pre.resize, pre.resize)
    else:
        w, h = image.size
        scale = pre.resize / min(w, h)
        size = (max(pre.resize, round(w * scale)), max(pre.resize, round(h * scale)))
    image = image.resize(size, _FILTERS[pre.interpolation])
    w, h = image.size
    # Centre crop anchored as DALI does it: half the slack, rounded half up (not to even).
    left, top = int(np.floor((w - pre.size) / 2 + 0.5)), int(np.floor((h - pre.size) / 2 + 0.5))
    pixels = np.asarray(image.crop((left, top, left + pre.size, top + pre.size)), dtype=np.float32)
    if pre.channel_order == "BGR":
        pixels = pixels[..., ::-1]
    normalized = (pixels - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32)
    return np.ascontiguousarray(normalized.transpose(2, 0, 1) if pre.layout == "CHW" else normalized)
