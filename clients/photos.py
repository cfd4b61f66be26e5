"""Built-in photos for clients: the package photographs, and encoding them to file bytes."""

from __future__ import annotations

import io

import numpy as np

from equiprobe.services.photos import package_photos

__all__ = ["package_photos", "encode"]


def encode(image: np.ndarray, fmt: str = "JPEG", quality: int = 90) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    options = {"quality": quality} if fmt == "JPEG" else {}
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()
