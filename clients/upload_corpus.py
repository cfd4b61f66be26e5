"""A corpus of good, unusual and broken uploads, made from the package photographs.

Each case is (name, bytes, expected) with expected "embed" (a valid file of an accepted format:
it must be embedded) or "refuse" (broken: it must get INVALID_ARGUMENT with a clear message).
Used by the acceptance tests (tests/test_uploads.py) and by `equiprobe bench soak`.
Deterministic: the same cases, byte for byte, on every machine.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .photos import package_photos

EMBED, REFUSE = "embed", "refuse"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes
    expected: str  # EMBED or REFUSE


def _save(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _exif(orientation: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _good(photo: str, image) -> list[tuple[str, bytes]]:
    from PIL import Image

    import pillow_heif

    pillow_heif.register_heif_opener()
    rgba = image.convert("RGBA")
    frames = [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return [
        ("baseline.jpg", _save(image, "JPEG", quality=90)),
        ("progressive.jpg", _save(image, "JPEG", quality=85, progressive=True)),
        ("restart-markers.jpg", _save(image, "JPEG", quality=85, restart_marker_blocks=4)),
        ("gray.jpg", _save(image.convert("L"), "JPEG", quality=90)),
        ("cmyk.jpg", _save(image.convert("CMYK"), "JPEG", quality=90)),
        ("orientation6.jpg", _save(image, "JPEG", quality=90, exif=_exif(6))),
        ("rgb.png", _save(image, "PNG")),
        ("rgba.png", _save(rgba, "PNG")),
        ("palette.png", _save(image.convert("P"), "PNG")),
        ("orientation8.png", _save(image, "PNG", exif=_exif(8))),
        ("rgb.bmp", _save(image, "BMP")),
        ("lossy.webp", _save(image, "WEBP", quality=80)),
        ("lossless.webp", _save(image, "WEBP", lossless=True)),
        ("orientation3.webp", _save(image, "WEBP", quality=80, exif=_exif(3))),
        ("rgb.tiff", _save(image, "TIFF")),
        ("lzw.tiff", _save(image, "TIFF", compression="tiff_lzw")),
        ("rgb.jp2", _save(image, "JPEG2000")),
        ("rgb.ppm", _save(image, "PPM")),
        ("gray.pgm", _save(image.convert("L"), "PPM")),
        ("animated.gif", _save(frames[0].convert("P"), "GIF", save_all=True, append_images=[frames[1].convert("P")])),
        ("rgb.avif", _save(image, "AVIF", quality=70)),
        ("rgb.heic", _save(image, "HEIF", quality=70)),
        ("orientation6.heic", _save(image, "HEIF", quality=70, exif=_exif(6))),
        ("tiny.png", _save(image.resize((1, 1)), "PNG")),
        ("tall.jpg", _save(image.resize((40, 1200)), "JPEG", quality=90)),
    ]


def _broken(jpeg: bytes, png: bytes, others: dict[str, bytes], rng: np.random.Generator) -> list[tuple[str, bytes]]:
    def randomized(data: bytes, start: int, fraction: float) -> bytes:
        out = bytearray(data)
        length = int((len(data) - start - 2) * fraction)
        at = int(rng.integers(start, len(data) - 2 - length))
        out[at:at + length] = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        return bytes(out)

    scan = jpeg.find(b"\xff\xda") + 20
    idat = png.find(b"IDAT")
    bad_crc = bytearray(png)
    bad_crc[idat + 50] ^= 0xFF
    # Junk at the end of the scan (no 0xFF, so the marker walk passes it): only the decoder notices.
    junk = rng.integers(0, 255, 100, dtype=np.uint8).tobytes()
    middle = (scan + len(jpeg)) // 2
    cases = [
        ("empty", b""),
        ("html", b"<!doctype html><html><body>not a photo</body></html>"),
        ("pdf", b"%PDF-1.4\n" + bytes(200)),
        ("zip", b"PK\x03\x04" + bytes(200)),
        ("jpeg-header-only", jpeg[:200]),
        ("jpeg-cut-at-half", jpeg[: len(jpeg) // 2]),
        ("jpeg-cut-before-eoi", jpeg[:-2]),
        ("jpeg-30pct-random-scan", randomized(jpeg, scan, 0.3)),
        ("jpeg-60pct-random-scan", randomized(jpeg, scan, 0.6)),
        ("jpeg-zeroed-body", jpeg[:600] + bytes(len(jpeg) - 600)),
        ("jpeg-junk-before-eoi", jpeg[:-2] + junk + jpeg[-2:]),
        ("jpeg-scan-bytes-deleted", jpeg[:middle] + jpeg[middle + 4000:]),
        ("png-cut-at-half", png[: len(png) // 2]),
        ("png-bad-crc", bytes(bad_crc)),
        ("png-no-iend", png[:-12]),
        ("giant-bmp-header", _giant_bmp()),
        ("giant-png-header", _giant_png(png)),
    ]
    for suffix, data in others.items():
        cases.append((f"{suffix}-cut-at-two-thirds", data[: len(data) * 2 // 3]))
    return cases


def _giant_bmp() -> bytes:
    """A real BMP whose header claims 20000 x 20000 pixels (1.2 GB decoded)."""
    from PIL import Image

    data = bytearray(_save(Image.new("RGB", (8, 8)), "BMP"))
    data[18:26] = (20000).to_bytes(4, "little") * 2
    return bytes(data)


def _giant_png(png: bytes) -> bytes:
    """A PNG whose IHDR (with a valid CRC) claims 30000 x 30000 pixels."""
    import struct
    import zlib

    ihdr = b"IHDR" + struct.pack(">II", 30000, 30000) + png[24:29]
    return png[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


@lru_cache(maxsize=1)
def upload_corpus() -> tuple[Upload, ...]:
    """Every good variant of each photo (EMBED) and the broken files (REFUSE)."""
    from PIL import Image

    rng = np.random.default_rng(11)
    cases = []
    for photo in PHOTOS:
        image = Image.fromarray(package_photos()[photo])
        good = _good(photo, image)
        cases += [Upload(f"{photo}/{name}", data, EMBED) for name, data in good]
        files = dict(good)
        others = {s: files[n] for s, n in (("webp", "lossy.webp"), ("tiff", "rgb.tiff"), ("jp2", "rgb.jp2"),
                                           ("ppm", "rgb.ppm"), ("bmp", "rgb.bmp"), ("gif", "animated.gif"),
                                           ("avif", "rgb.avif"), ("heic", "rgb.heic"))}
        cases += [Upload(f"{photo}/{name}", data, REFUSE)
                  for name, data in _broken(files["baseline.jpg"], files["rgb.png"], others, rng)]
    return tuple(cases)
