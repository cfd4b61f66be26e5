"""Backgrounds: square crops of the built-in photo corpus (clients/corpus.py), one bank per split.

The corpus splits its sources by group (`split_of`: train 60%, validation 15%, test 25%), so the
train, validation and test banks are cut from disjoint photographs: no test background was ever
seen in training. Crop k of a bank comes from source k mod S of that split's sources, its
position and side (0.25..0.8 of the source's shorter side) drawn from a hash of (source, k), then
resized to SIZE x SIZE (antialiased); a flat crop (pixel spread under FLAT_STD) or a copy of an earlier one (tiled patterns)
is cut again, or by the other sources. A bank is cached as .npy under the equiprobe cache
(EQUIPROBE_CACHE, else ~/.cache/equiprobe), keyed by its recipe; the crops do not depend on the cache.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
CORPUS_SPLIT = {"train": "train", "val": "validation", "test": "test"}
# Crops per bank by default: 1,000 distinct backgrounds in all (the paper has 882).
DEFAULT_BANK = {"train": 600, "val": 150, "test": 250}
VERSION = "t2d-backgrounds-3"
FLAT_STD = 6.0  # of 255: a crop with less spread is flat; cut another (at most ATTEMPTS tries)
ATTEMPTS = 8


def _cache() -> Path:
    return Path(os.environ.get("EQUIPROBE_CACHE") or Path.home() / ".cache" / "equiprobe") / "t2d"


def split_sources(split: str) -> list[dict]:
    """The corpus entries (sorted by id) whose group falls in the split."""
    from equiprobe.clients.corpus import check_corpus, split_of

    if split not in CORPUS_SPLIT:
        raise ValueError(f"unknown split {split!r}; use {', '.join(SPLITS)}")
    return [e for e in check_corpus() if split_of(e["group"]) == CORPUS_SPLIT[split]]


def crop_box(entry: dict, k: int, height: int, width: int, attempt: int = 0) -> tuple[int, int, int]:
    """(x, y, side) of crop k of a source, from a hash of (id, k, attempt)."""
    seed = hashlib.blake2b(f"t2d/{entry['id']}/{k}/{attempt}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(seed, "little"))
    side = max(8, int(round(rng.uniform(0.25, 0.8) * min(height, width))))
    return int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1)), side


def bank_ids(split: str, count: int) -> list[str]:
    sources = split_sources(split)
    return [f"{sources[k % len(sources)]['id']}/{k // len(sources)}" for k in range(count)]


def build_bank(split: str, size: int, count: int) -> np.ndarray:
    from PIL import Image

    from equiprobe.clients.corpus import source_image

    sources = split_sources(split)
    if not sources:
        raise ValueError(f"the corpus has no {split} sources")
    out = np.empty((count, size, size, 3), np.uint8)
    seen: set[bytes] = set()

    def cut(entry: dict, rgb: np.ndarray, k: int, attempts: range) -> bool:
        """Crop k into out[k]: the first attempt that is neither flat nor a copy of an earlier crop
        (a tiled pattern repeats itself)."""
        for attempt in attempts:
            x, y, side = crop_box(entry, k // len(sources), *rgb.shape[:2], attempt)
            crop = np.asarray(Image.fromarray(rgb[y:y + side, x:x + side]).resize((size, size), Image.LANCZOS))
            digest = hashlib.blake2b(crop.tobytes(), digest_size=16).digest()
            if crop.std() >= FLAT_STD and digest not in seen:
                seen.add(digest)
                out[k] = crop
                return True
        return False

    pending = []
    for s, entry in enumerate(sources[:count]):  # source by source: each picture is decoded once
        rgb = source_image(entry)
        pending += [k for k in range(s, count, len(sources)) if not cut(entry, rgb, k, range(ATTEMPTS))]
    for k in pending:  # slots a source could not fill: the other sources, in order, with fresh attempts
        if not any(cut(e, source_image(e), k, range(ATTEMPTS, 2 * ATTEMPTS)) for e in sources):
            raise ValueError(f"the corpus's {split} sources give fewer than {count} distinct crops")
    return out


def bank(split: str, size: int, count: int | None = None) -> np.ndarray:
    """uint8 [count, size, size, 3]: the split's backgrounds (read-only; cached on disk)."""
    count = DEFAULT_BANK[split] if count is None else count
    if count < 1:
        raise ValueError(f"a background bank needs at least one crop, not {count}")
    file = _cache() / f"{VERSION}-{split}-{size}-{count}.npy"
    if file.exists():
        crops = np.load(file)
    else:
        crops = build_bank(split, size, count)
        file.parent.mkdir(parents=True, exist_ok=True)
        temporary = file.with_name(f"{file.name}.{os.getpid()}.tmp.npy")
        np.save(temporary, crops)
        os.replace(temporary, file)
    crops.setflags(write=False)
    return crops
