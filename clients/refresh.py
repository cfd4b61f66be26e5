"""Refresh: a store for a newer catalog version that reuses an older store's still-valid columns.

A column of the old store is valid for the new one when its row fingerprint (the transformation's
id, parameters and code, or a style network's hash; see services.expansion_models.row_fingerprints)
is equal. For each image the valid columns are copied from the old store's row (same dataset
index and key) and only the others are asked of the server, with ROWS: the encoder then computes
just those versions. Images the old store failed or left pending are embedded in full. The old
store is only read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .store import DONE, IDENTITY_FIELDS, KEY_WIDTH, Store, StoreError, manifest_differences

# What must match for an old store's rows to stand for the new store's rows: a store's identity
# except its catalog version and rows (what a refresh changes), and the same images (limit).
SAME_JOB_FIELDS = tuple(f for f in IDENTITY_FIELDS if f not in ("catalog_version", "rows")) + ("limit",)


@dataclass
class ReuseSource:
    """An older store and which of its columns the new store's columns can take."""

    store: Store
    new_columns: list[int]  # new store columns that are copied ...
    old_columns: list[int]  # ... from these old store columns
    missing: list[int]  # new store columns the server computes
    width: int  # the new catalog's parameter width
    arrays: dict = field(default_factory=dict)

    def __post_init__(self):
        self.arrays = {name: self.store.array(name) for name in ("embeddings", "params", "status", "index", "keys",
                                                                 "image_keys", "features") if name in self.store.files}

    def image_key(self, row: int, record) -> Optional[str]:
        """The old image key of the row if the old store holds this very record done, else None."""
        a = self.arrays
        if a["status"][row] != DONE or a["index"][row] != record.index or a["keys"][row] != record.key[-KEY_WIDTH:]:
            return None
        return str(a["image_keys"][row])

    @property
    def columns(self) -> int:
        """The new store's columns per image."""
        return len(self.new_columns) + len(self.missing)

    def assemble(self, row: int, computed_embeddings: Optional[np.ndarray],
                 computed_params: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The new row: old columns where valid, the server's rows (in `missing` order) elsewhere."""
        old_p = self.arrays["params"][row]
        width = self.width
        embeddings = self._columns("embeddings", row, computed_embeddings)
        params = np.zeros((self.columns, width), np.float32)
        # Parameter rows are zero-padded to the catalog's widest: a reused transformation has the
        # same parameters, so its values fit whichever catalog is wider.
        shared = min(width, old_p.shape[-1])
        params[self.new_columns, :shared] = old_p[self.old_columns, :shared]
        if self.missing:
            params[self.missing] = computed_params[self.missing]
        return embeddings, params

    def assemble_features(self, row: int, computed: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """The new row's FEATURES, assembled as its embeddings (None: the stores hold none)."""
        return self._columns("features", row, computed) if "features" in self.arrays else None

    def _columns(self, name: str, row: int, computed: Optional[np.ndarray]) -> np.ndarray:
        old = self.arrays[name][row]
        out = np.zeros((self.columns, old.shape[-1]), old.dtype)
        out[self.new_columns] = old[self.old_columns]
        if self.missing:
            out[self.missing] = computed
        return out


def open_reuse(old: Path, out: Path, manifest: dict) -> ReuseSource:
    """Check that `old` can stand for the job of `manifest` and plan which columns it gives."""
    if Path(old).resolve() == Path(out).resolve():
        raise StoreError(f"--reuse {old} is the --out store; write the refreshed store to a new directory")
    source = Store.open(old)
    found = source.manifest
    differences = manifest_differences(found, manifest, SAME_JOB_FIELDS, str(old))
    if differences:
        raise StoreError(f"cannot reuse {old}: it was made by another job (" + "; ".join(differences) + ")")
    if not found.get("row_fingerprints"):
        raise StoreError(f"cannot reuse {old}: it has no row fingerprints (made before refresh support); "
                         "embed without --reuse")
    if not manifest.get("row_fingerprints"):
        raise StoreError("the server publishes no row fingerprints; rebuild the repository to refresh stores")
    where = {fp: i for i, fp in enumerate(found["row_fingerprints"])}
    new_columns = [j for j, fp in enumerate(manifest["row_fingerprints"]) if fp in where]
    missing = [j for j, fp in enumerate(manifest["row_fingerprints"]) if fp not in where]
    old_columns = [where[manifest["row_fingerprints"][j]] for j in new_columns]
    return ReuseSource(source, new_columns, old_columns, missing, manifest["params_width"])
