"""The copy projection an index searches in (`index build --projection-from STORE`,
services/match_projection.py): Fisher's projection learned from every version of STORE's
training-source images (split train, DONE), W wide, streamed PROJECTION_CHUNK images at a time;
STORE must be of the index's encoder. A build whose pieces run elsewhere (Ray shards) learns it
once (save_learned_projection) and every shard loads the same file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from equiprobe.clients.store import DONE, SPLITS, Store
from equiprobe.services import match_index as mx
from equiprobe.services.files import write_atomically
from equiprobe.services.match_index import MatchIndexError
from equiprobe.services.match_projection import DIM as PROJECTION_DIM
from equiprobe.services.match_projection import Projection, fit_projection

from .index_stores import encoder_fields, identity_column, open_stores, read_versions

PROJECTION_CHUNK = 64  # training images a chunk when learning the projection: [b, K, W] float32


class TrainingVersions:
    """Every version of a store's DONE training-source images (split train), [b, K, W] float32
    chunks of PROJECTION_CHUNK images; iterable again and again (fit_projection reads it twice)."""

    def __init__(self, store: Store, size: int = PROJECTION_CHUNK):
        self.store, self.size = store, size
        status, split = np.asarray(store.array("status")), np.asarray(store.array("split"))
        self.rows = np.flatnonzero((status == DONE) & (split == SPLITS["train"]))

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self.rows), self.size):
            yield read_versions(self.store, self.rows[start:start + self.size])


def learn_projection(path: Path, fields: dict, against_name: str, dim: int = PROJECTION_DIM
                     ) -> tuple[Projection, dict]:
    """The copy projection from store `path`'s training sources (it must be of `fields`' encoder,
    ONNX file, dim and FEATURES width); returns it and index.json's "projection" record."""
    store = Store.open(Path(path))
    theirs = encoder_fields(store.manifest)
    for name in mx.COMPATIBLE_FIELDS:
        a, b = fields.get(name, mx.FIELD_DEFAULTS.get(name)), theirs.get(name, mx.FIELD_DEFAULTS.get(name))
        if a != b:
            raise MatchIndexError(f"{name} differs: {against_name} has {a!r}, --projection-from {store.path} has "
                                  f"{b!r}; the projection must be learned from the same encoder's vectors")
    identity = identity_column(store)
    versions = TrainingVersions(store)
    if not len(versions.rows):
        raise MatchIndexError(f"--projection-from {store.path}: no done training-source images (split train) to "
                              "learn the copy projection from")
    if len(store.manifest["rows"]) < 2:
        raise MatchIndexError(f"--projection-from {store.path}: the store holds only the identity version; the "
                              "projection learns from edited versions")
    if dim < 1:
        raise MatchIndexError(f"--projection-dim must be at least 1, not {dim}")
    projection = fit_projection(versions, identity=identity, dim=dim)
    return projection, {"store": str(Path(store.path).resolve()), "images": int(len(versions.rows)),
                        "versions": len(store.manifest["rows"]), "catalog": store.manifest.get("catalog"),
                        "split": "train"}


LEARNED_RECORD = "projection.json"  # beside projection.npz in a learned-projection directory


def save_learned_projection(store_paths: Sequence[Path], projection_from: Path, directory: Path,
                            dim: int = PROJECTION_DIM) -> Path:
    """Learn the copy projection once for a build whose pieces run elsewhere (Ray shards): checked
    against the stores' encoder, written to `directory` (projection.npz and its record)."""
    stores = open_stores(store_paths)
    projection, record = learn_projection(projection_from, encoder_fields(stores[0].manifest),
                                          f"store {stores[0].path}", dim)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    projection.save(directory)
    write_atomically(directory / LEARNED_RECORD, json.dumps(record))
    return directory


def load_learned_projection(directory: Path) -> tuple[Projection, dict]:
    try:
        return Projection.load(directory), json.loads((Path(directory) / LEARNED_RECORD).read_text())
    except (OSError, ValueError) as exc:
        raise MatchIndexError(f"learned projection {directory}: {exc}") from None
