"""The reference-aware probe's data: pairs (version k of a store's image, the index's reference
of that image's key), split by the store's sources and read by memory map (trainer/match_probe_train.py
trains on them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np

from equiprobe.clients.index_stores import full_columns
from equiprobe.clients.store import DONE, Store
from equiprobe.services import match_index as mx

from .match_probe import IDENTITY, MatchProbeError

CHUNK_IMAGES = 256  # images read at once in evaluation
# A part's pairs kept in memory as the probe's inputs when they fit: training reads every pair
# once an epoch, and reading, converting and transforming them took half the demo's training.
RESIDENT_BYTES = 2 << 30


@dataclass
class Part:
    rows: np.ndarray  # STORE rows (images)
    ids: np.ndarray  # the index's ids of the same keys
    sources: np.ndarray


class PairData:
    """Pairs (version k of STORE's image r, the index's reference of r's key), read by memory map."""

    def __init__(self, store: Store, index: mx.MatchIndex, parts: dict[str, Part]):
        self.store, self.index, self.parts = store, index, parts
        m = store.manifest
        self.classes = list(m["classes"])
        self.rows_names = list(m["rows"])
        self.labels = np.asarray(m.get("row_labels") or range(len(self.rows_names)), np.int64)
        self.versions = np.arange(len(self.rows_names))
        self.identity = self.classes.index(IDENTITY)
        self.dim, self.features_dim = int(m["dim"]), store.features_dim
        self.width = self.dim + self.features_dim
        self.columns = full_columns(store)
        self._kept: dict = {}  # prepared parts and statistics, by (what, key)

    def count(self, part: str) -> int:
        return len(self.parts[part].rows) * len(self.versions)

    def queries(self, rows: np.ndarray, versions: np.ndarray) -> np.ndarray:
        """float32 [b, W]: STORE's versions `versions` of images `rows` (embedding, then FEATURES)."""
        order = np.argsort(rows, kind="stable")  # the memory map front to back, the order restored after
        out = np.empty((len(rows), self.width), np.float32)
        at = 0
        for column in self.columns:
            block = column[rows[order], versions[order]]
            out[order, at:at + block.shape[1]] = block
            at += block.shape[1]
        return out

    def images(self, rows: np.ndarray) -> np.ndarray:
        """float32 [b, K, W]: every version of images `rows` (sorted reads)."""
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), len(self.versions), self.width), np.float32)
        at = 0
        for column in self.columns:
            block = column[rows[order]]
            out[order, :, at:at + block.shape[2]] = block
            at += block.shape[2]
        return out

    def order(self, part: str, shuffle_seed: Optional[int] = None,
              versions: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the part, versions) of every pair of a part (of `versions` only, where
        given), in batch order."""
        p = self.parts[part]
        chosen = self.versions if versions is None else np.asarray(versions)
        positions = np.repeat(np.arange(len(p.rows)), len(chosen))
        versions = np.tile(chosen, len(p.rows))
        if shuffle_seed is not None:
            order = np.arange(len(positions))
            np.random.default_rng(shuffle_seed).shuffle(order)
            positions, versions = positions[order], versions[order]
        return positions, versions

    def batches(self, part: str, batch_size: int, shuffle_seed: Optional[int] = None,
                versions: Optional[np.ndarray] = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(queries [b, W], references [b, W], labels [b]) over every pair of a part (of `versions`
        only, where given)."""
        p = self.parts[part]
        positions, versions = self.order(part, shuffle_seed, versions)
        for start in range(0, len(positions), batch_size):
            pos, ver = positions[start:start + batch_size], versions[start:start + batch_size]
            yield self.queries(p.rows[pos], ver), self.index.reference(p.ids[pos]), self.labels[ver]

    def prepared(self, part: str, key, transform: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Optional[np.ndarray]:
        """[n, K, D] float32: transform(q, o) of every pair of a part (image by image, versions
        within), computed once per key and kept when it takes at most RESIDENT_BYTES; None above."""
        if ("prepared", part, key) not in self._kept:
            p = self.parts[part]
            sample = transform(self.queries(p.rows[:1], self.versions[:1]), self.index.reference(p.ids[:1]))
            kept = None
            if len(p.rows) * len(self.versions) * sample.shape[1] * 4 <= RESIDENT_BYTES:
                kept = np.empty((len(p.rows), len(self.versions), sample.shape[1]), np.float32)
                for pos, versions, references in self.chunks(part):
                    b, k, w = versions.shape
                    kept[pos] = transform(versions.reshape(b * k, w), np.repeat(references, k, axis=0)).reshape(b, k, -1)
            self._kept["prepared", part, key] = kept
        return self._kept["prepared", part, key]

    def release(self) -> None:
        """Forget the kept inputs and statistics (PairData.prepared, PairData.statistics)."""
        self._kept.clear()

    def chunks(self, part: str, size: int = CHUNK_IMAGES) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(positions in the part [b], versions [b, K, W], references [b, W]), image by image."""
        p = self.parts[part]
        for start in range(0, len(p.rows), size):
            pos = np.arange(start, min(start + size, len(p.rows)))
            yield pos, self.images(p.rows[pos]), self.index.reference(p.ids[pos])

    def statistics(self, inputs: Callable[[np.ndarray, np.ndarray], np.ndarray], key=None,
                   batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Mean and deviation of `inputs`(q, o) (the probe's unstandardized inputs) over the
        training pairs, streamed; kept per `key` (where given) for the next probe asking."""
        if key is not None and ("statistics", key) in self._kept:
            return self._kept["statistics", key]
        total = total_sq = None
        count = 0
        for q, o, _ in self.batches("train", batch_size):
            x = inputs(q, o).astype(np.float64)
            total = x.sum(0) if total is None else total + x.sum(0)
            total_sq = (x ** 2).sum(0) if total_sq is None else total_sq + (x ** 2).sum(0)
            count += len(x)
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
        result = mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)
        if key is not None:
            self._kept["statistics", key] = result
        return result


def split_parts(store: Store, index: mx.MatchIndex) -> tuple[dict[str, Part], dict]:
    """STORE's training and validation images (by source, as every probe splits) whose keys the
    index holds; test sources are left out."""
    from .data import ProbeData, Task

    k = len(store.manifest["rows"])
    # Any task without semantic labels gives the store's split; "fine" only names it.
    task = Task("fine", list(store.manifest["classes"]), np.zeros(k, np.int64), np.arange(k), np.arange(k))
    data = ProbeData.from_store(store, task)
    keys = store.array("keys")
    sources = store.sources()
    parts, counts = {}, {"done": int((np.asarray(store.array("status")) == DONE).sum())}
    for name, rows in (("train", data.train_rows), ("val", data.val_rows)):
        ids = np.array([index.id_of(str(key)) for key in np.asarray(keys[rows])], np.int64)
        keep = ids >= 0
        parts[name] = Part(rows[keep], ids[keep], np.asarray(sources[rows[keep]]))
        counts[name] = {"images": int(keep.sum()), "not_indexed": int((~keep).sum()),
                        "sources": int(len(np.unique(parts[name].sources)))}
        if not keep.any():
            raise MatchProbeError(f"none of {store.path}'s {len(rows)} {'training' if name == 'train' else 'validation'}"
                                  f" images has its key in index {index.path}; index the same images (another "
                                  "store of the same corpus)")
    return parts, counts
