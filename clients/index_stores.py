"""The stores an index is built from: their identity column, encoder fields and W-wide versions
(embedding, then FEATURES), read by memory map. Shared by index builds (clients/index_build.py),
the copy projection (clients/index_projection.py) and the match probe and cards (trainer/)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from equiprobe.clients.store import Store
from equiprobe.services import match_index as mx
from equiprobe.services.match_index import MatchIndexError

IDENTITY = "identity"


def identity_column(store: Store) -> int:
    rows = store.manifest.get("rows") or []
    if IDENTITY not in rows:
        raise MatchIndexError(f"{store.path}: the store has no '{IDENTITY}' version among its {len(rows)} versions "
                              f"({', '.join(rows[:4])}{', ...' if len(rows) > 4 else ''}); nothing to index")
    return rows.index(IDENTITY)


def encoder_fields(manifest: dict) -> dict:
    return {"encoder": manifest.get("encoder"), "encoder_onnx_sha256": manifest.get("encoder_onnx_sha256"),
            "dim": manifest.get("dim"), "encoder_precision": manifest.get("encoder_precision", "fp32"),
            "features_dim": int(manifest.get("features_dim") or 0)}


def reference_width(fields: dict) -> int:
    """W of references.npy: the embedding's width plus FEATURES'."""
    return int(fields["dim"]) + int(fields.get("features_dim") or 0)


def open_stores(paths: Sequence[Path], against: Optional[dict] = None, against_name: str = "") -> list[Store]:
    """Open stores (ValueError for a missing one, one without an identity version, or one whose
    encoder, ONNX hash or dim differs from the first's, or from `against`, an index's metadata)."""
    stores = []
    for path in paths:
        store = Store.open(Path(path))
        identity_column(store)
        if stores:
            mx.check_compatible(encoder_fields(stores[0].manifest), encoder_fields(store.manifest),
                                f"store {stores[0].path}", f"store {store.path}")
        elif against is not None:
            mx.check_compatible(against, encoder_fields(store.manifest), against_name, f"store {store.path}")
        stores.append(store)
    return stores


def full_columns(store: Store) -> list:
    """The memory maps of a store's vectors, in W order: embeddings, then FEATURES (if any)."""
    return [store.array("embeddings")] + ([store.array("features")] if store.features_dim else [])


def read_versions(store: Store, rows: np.ndarray) -> np.ndarray:
    """float32 [b, K, W]: every version of `rows` (sorted rows), embedding then FEATURES."""
    return np.concatenate([np.asarray(c[rows], np.float32) for c in full_columns(store)], -1)
