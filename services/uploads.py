"""What the server admits as an image upload, and in what form it hands it on.

Every served model that takes IMAGE bytes starts with the `image_gate` step (both flavours),
which calls `admit()`:

1. limits: the request size cap and the pixel cap, both named in the error;
2. the format, from the header (Pillow, which reads headers without decoding pixels);
3. structural checks that need no decoding: a JPEG's marker structure (truncated scans, markers
   that cannot appear inside entropy-coded data, restart markers out of order, each with its
   byte offset), a PNG's chunk walk with CRCs; the rarer DALI formats are decoded once by Pillow;
4. formats DALI cannot decode (GIF, AVIF, HEIC/HEIF) are decoded here (first frame, EXIF
   orientation applied) and handed on as a lossless PPM, which DALI reads.

DALI then decodes (it applies EXIF orientation itself: measured for JPEG, PNG, WebP and TIFF).
In the portable flavour the DALI step also refuses any image its decoder only partly understood
(services/decode_log.py); Triton's dali backend (native) gives no such hook, so there the
structural checks above are the whole of strict decoding.

Kept free of torch and DALI: the gate runs in a python-backend stub of its own.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Optional

import numpy as np

# A 12k x 12k photo is 432 MB decoded; anything larger is refused before decoding.
MAX_PIXELS = 144_000_000
MAX_REQUEST_MB = 64


class ImageRejected(ValueError):
    """Encoded bytes that are not an image we will decode; the message names the problem."""


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = MAX_REQUEST_MB << 20
    max_pixels: int = MAX_PIXELS


@dataclass(frozen=True)
class UploadFormat:
    """One accepted format: Pillow's name for it, its file suffixes and who decodes it."""

    name: str
    pillow: tuple[str, ...]
    suffixes: tuple[str, ...]
    decoder: str  # "dali": handed on as sent; "pillow": converted here to PPM for DALI
    checks: str  # what the gate verifies before DALI decodes, for `equiprobe formats`


FORMATS = (
    UploadFormat("JPEG", ("JPEG", "MPO"), (".jpg", ".jpeg", ".jpe", ".jfif"), "dali",
                 "marker structure, entropy-coded data, restart order, end of image"),
    UploadFormat("PNG", ("PNG",), (".png",), "dali", "chunk lengths and CRCs, end chunk"),
    UploadFormat("BMP", ("BMP", "DIB"), (".bmp",), "dali", "decoded once (Pillow)"),
    UploadFormat("WebP", ("WEBP",), (".webp",), "dali", "decoded once (Pillow)"),
    UploadFormat("TIFF", ("TIFF",), (".tif", ".tiff"), "dali", "decoded once (Pillow)"),
    UploadFormat("JPEG 2000", ("JPEG2000",), (".jp2", ".j2k", ".jpf", ".jpx"), "dali", "decoded once (Pillow)"),
    UploadFormat("PNM", ("PPM",), (".ppm", ".pgm", ".pbm", ".pnm"), "dali", "decoded once (Pillow)"),
    UploadFormat("GIF", ("GIF",), (".gif",), "pillow", "trailer; first frame decoded (Pillow)"),
    UploadFormat("AVIF", ("AVIF",), (".avif",), "pillow", "decoded (Pillow)"),
    UploadFormat("HEIC/HEIF", ("HEIF",), (".heic", ".heif", ".hif"), "pillow", "decoded (Pillow, pillow-heif)"),
)
IMAGE_SUFFIXES = tuple(s for f in FORMATS for s in f.suffixes)
_BY_PILLOW = {p: f for f in FORMATS for p in f.pillow}
ACCEPTED = ", ".join(f.name for f in FORMATS)
# File signatures, to tell a cut-short header from a file of another kind.
SIGNATURES = (("JPEG", b"\xff\xd8\xff"), ("PNG", b"\x89PNG"), ("BMP", b"BM"), ("GIF", b"GIF8"), ("WebP", b"RIFF"),
              ("TIFF", b"II*\x00"), ("TIFF", b"MM\x00*"), ("JPEG 2000", b"\x00\x00\x00\x0cjP"))


@dataclass(frozen=True)
class Admitted:
    data: bytes  # what DALI decodes: the upload itself, or a PPM made from it
    format: str
    width: int
    height: int
    converted: bool


@lru_cache(maxsize=1)
def _register_plugins() -> None:
    import pillow_heif  # HEIC/HEIF; Pillow 13 reads AVIF itself

    pillow_heif.register_heif_opener()


def _open(data: bytes):
    from PIL import Image

    _register_plugins()
    # Pillow's own decompression-bomb guard is replaced by our pixel cap, which reports the
    # size plainly; headers only, no pixels are decoded here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _unreadable(data: bytes) -> ImageRejected:
    for name, signature in SIGNATURES:
        if data.startswith(signature):
            return ImageRejected(f"IMAGE ({len(data)} bytes) starts like a {name} file but its header is "
                                 "cut short or corrupt (truncated file?)")
    head = " ".join(f"{b:02x}" for b in data[:8])
    return ImageRejected(f"IMAGE ({len(data)} bytes, starting {head}) is not an image file of an accepted "
                         f"format ({ACCEPTED})")


def read_header(data: bytes, limits: Limits = Limits()) -> tuple[UploadFormat, int, int]:
    """(format, width, height) from the header alone; raises ImageRejected naming the problem."""
    from PIL import UnidentifiedImageError

    if len(data) == 0:
        raise ImageRejected("IMAGE is empty (0 bytes); send the encoded image file")
    if len(data) > limits.max_request_bytes:
        cap = limits.max_request_bytes
        raise ImageRejected(f"IMAGE is {len(data):,} bytes ({len(data) / 2**20:.1f} MB), over the request size cap "
                            f"of {cap:,} bytes ({cap / 2**20:g} MB)")
    try:
        with _open(data) as image:
            fmt, (width, height) = image.format, image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error):
        raise _unreadable(data) from None
    if fmt not in _BY_PILLOW:
        raise ImageRejected(f"IMAGE is a {fmt} file; accepted formats are {ACCEPTED}")
    if width * height > limits.max_pixels:
        raise ImageRejected(f"IMAGE is {width}x{height} pixels, over the pixel cap of {limits.max_pixels:,} pixels")
    return _BY_PILLOW[fmt], width, height


def admit(data: bytes, limits: Limits = Limits()) -> Admitted:
    """Check an upload and return what DALI should decode; raises ImageRejected."""
    fmt, width, height = read_header(data, limits)
    try:
        if fmt.name in _STRUCTURE:
            _STRUCTURE[fmt.name](data, fmt)
        if fmt.decoder == "pillow":
            return Admitted(_to_ppm(data, fmt), fmt.name, width, height, converted=True)
        if fmt.name not in _STRUCTURE:
            _decodes_with_pillow(data, fmt)
    except ImageRejected as exc:  # name the input, as every other refusal does
        raise ImageRejected(f"IMAGE: {exc}") from None
    return Admitted(data, fmt.name, width, height, converted=False)


# -- structural checks ---------------------------------------------------------------------------

# Markers that may follow an entropy-coded segment: EOI, tables, another scan (progressive), DNL,
# DRI, APPn and COM. Anything else (after FF, other than stuffing 00 and RSTn) is corrupt data.
_AFTER_SCAN = {0xD9, 0xC4, 0xCC, 0xDA, 0xDB, 0xDC, 0xDD, *range(0xE0, 0xF0), 0xFE}


def check_jpeg(data: bytes, fmt: Optional[UploadFormat] = None) -> None:
    """Walk a JPEG's markers and its entropy-coded data without decoding it."""
    buf = np.frombuffer(data, np.uint8)
    n, pos = len(data), 2
    while True:
        if pos + 2 > n:
            raise ImageRejected(f"JPEG is truncated: it ends at byte {n} before the end-of-image marker")
        if buf[pos] != 0xFF:
            raise ImageRejected(f"JPEG is corrupt at byte {pos}: a marker was expected (0x{buf[pos]:02x} found)")
        marker = int(buf[pos + 1])
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # stand-alone markers
            pos += 2
            continue
        length = int(buf[pos + 2]) << 8 | int(buf[pos + 3]) if pos + 4 <= n else 0
        end = pos + 2 + length
        if length < 2 or end > n:
            raise ImageRejected(f"JPEG is truncated: the segment 0xFF{marker:02X} at byte {pos} runs past the end "
                                f"of the file ({n} bytes)")
        pos = end if marker != 0xDA else _entropy_coded_end(buf, end)


def _entropy_coded_end(buf: np.ndarray, start: int) -> int:
    """Offset of the marker that ends the scan starting at `start`; raises on corrupt data."""
    ff = np.flatnonzero(buf[start:-1] == 0xFF) + start
    following = buf[ff + 1]
    markers = (following != 0x00) & (following != 0xFF)  # 00 is byte stuffing, FF a fill byte
    ff, following = ff[markers], following[markers].astype(int)
    restarts = (following >= 0xD0) & (following <= 0xD7)
    ends = np.flatnonzero(~restarts)
    first_end = int(ends[0]) if ends.size else len(ff)
    due = np.arange(first_end) % 8  # RST0..RST7 in turn
    wrong = np.flatnonzero(following[:first_end] - 0xD0 != due)
    if wrong.size:
        i = int(wrong[0])
        raise ImageRejected(f"JPEG entropy-coded data is corrupt at byte {ff[i]}: restart marker "
                            f"RST{following[i] - 0xD0} where RST{due[i]} was due")
    if not ends.size:
        raise ImageRejected(f"JPEG is truncated: the scan starting at byte {start} runs to the end of the file "
                            f"({len(buf)} bytes) with no end-of-image marker")
    offset, value = int(ff[first_end]), int(following[first_end])
    if value not in _AFTER_SCAN:
        raise ImageRejected(f"JPEG entropy-coded data is corrupt at byte {offset}: marker 0xFF{value:02X} cannot "
                            "appear inside a scan")
    return offset


def check_png(data: bytes, fmt: Optional[UploadFormat] = None) -> None:
    """Walk a PNG's chunks: every length inside the file, every CRC right, ending with IEND."""
    n, pos = len(data), 8
    while pos + 12 <= n:
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        name = kind.decode("latin-1")
        if end > n:
            raise ImageRejected(f"PNG is truncated: chunk {name} at byte {pos} runs past the end of the file "
                                f"({n} bytes)")
        (crc,) = struct.unpack(">I", data[end - 4:end])
        if zlib.crc32(data[pos + 4:end - 4]) != crc:
            raise ImageRejected(f"PNG chunk {name} at byte {pos} is corrupt (CRC mismatch)")
        if kind == b"IEND":
            return
        pos = end
    raise ImageRejected(f"PNG is truncated: it ends at byte {n} without an IEND chunk")


def check_gif(data: bytes, fmt: Optional[UploadFormat] = None) -> None:
    """Only the first frame is used, but a GIF cut short anywhere is a truncated upload."""
    if data[-1:] != b"\x3b":
        raise ImageRejected(f"GIF is truncated: it ends at byte {len(data)} without the GIF trailer")


def _decodes_with_pillow(data: bytes, fmt: UploadFormat) -> None:
    """Formats without a cheap structural check are decoded once; Pillow fails on any truncation."""
    try:
        with _open(data) as image:
            image.load()
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... per plugin
        raise ImageRejected(f"{fmt.name} could not be decoded ({len(data)} bytes): {exc}") from None


_STRUCTURE: dict[str, Callable[[bytes, UploadFormat], None]] = {"JPEG": check_jpeg, "PNG": check_png,
                                                                "GIF": check_gif}


def _to_ppm(data: bytes, fmt: UploadFormat) -> bytes:
    """Decode a format DALI cannot read (first frame, EXIF orientation applied) to an RGB PPM."""
    from PIL import ImageOps

    try:
        with _open(data) as image:
            image.seek(0)
            upright = ImageOps.exif_transpose(image.convert("RGBA") if image.mode in ("P", "PA") else image)
            rgb = upright.convert("RGB")
            rgb.load()
    except Exception as exc:
        raise ImageRejected(f"{fmt.name} could not be decoded ({len(data)} bytes): {exc}") from None
    header = f"P6\n{rgb.width} {rgb.height}\n255\n".encode()
    return header + rgb.tobytes()
