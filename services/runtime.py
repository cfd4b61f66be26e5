"""Light helpers shared by the python-backend models and in-process reference runs.

Kept free of torch so that the python-backend stubs stay small (~80 MB each).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

# Formats DALI's image decoder reads and that we accept.
ACCEPTED_FORMATS = ("JPEG", "PNG", "BMP")
# File signatures of those formats, to tell a cut-short header from a file of another kind.
SIGNATURES = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG", "BMP": b"BM"}
# A 12k x 12k photo is 432 MB decoded; anything larger is refused before decoding.
MAX_PIXELS = 144_000_000


class ImageRejected(ValueError):
    """Encoded bytes that are not an image we will decode; the message names the problem."""


def check_encoded_image(data: np.ndarray) -> None:
    """Reject empty, non-image and giant inputs from the header alone (no pixel decoding)."""
    from PIL import Image, UnidentifiedImageError

    if data.size == 0:
        raise ImageRejected("IMAGE is empty (0 bytes); send the encoded JPEG, PNG or BMP file")
    try:
        # Only the header is read. Pillow's own decompression-bomb guard is replaced by ours
        # below, which reports the size plainly.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(io.BytesIO(data.tobytes())) as image:
                    fmt, (width, height) = image.format, image.size
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        start = data[:8].tobytes()
        for fmt, signature in SIGNATURES.items():
            if start.startswith(signature):
                raise ImageRejected(f"IMAGE ({data.size} bytes) starts like a {fmt} file but its header is cut "
                                    "short or corrupt (truncated file?)") from None
        head = " ".join(f"{b:02x}" for b in data[:8])
        raise ImageRejected(
            f"IMAGE ({data.size} bytes, starting {head}) is not a JPEG, PNG or BMP file") from None
    if fmt not in ACCEPTED_FORMATS:
        raise ImageRejected(f"IMAGE is a {fmt} file; accepted formats are {', '.join(ACCEPTED_FORMATS)}")
    if width * height > MAX_PIXELS:
        raise ImageRejected(
            f"IMAGE is {width}x{height} pixels, over the limit of {MAX_PIXELS:,} pixels")


def decode_error_message(exc: Exception) -> str:
    """DALI's decode errors carry a pipeline traceback; keep the part that names the cause."""
    text = str(exc)
    if "encountered:" in text:
        text = text.split("encountered:", 1)[1]
    text = text.replace("Current pipeline object is no longer valid.", "")
    reason = " ".join(text.split()) or type(exc).__name__
    return f"IMAGE could not be decoded (truncated or corrupt file): {reason}"


def ort_session(path: Path, threads: Optional[int] = None, spinning: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # Idle ONNX Runtime threads spin by default: good for many small batches (NAME_embed), but
    # beside the DALI expansion on the same cores the spinning burns the CPU it needs (measured:
    # bulk-embedding efficiency 0.78 -> 0.97-0.99 with spinning off for the K-version encoder).
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
