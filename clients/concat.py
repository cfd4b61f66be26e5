"""Stores of several encoders over the same images joined into one: the embedding of a row is
the concatenation of the parts' embeddings, in the order given; FEATURES likewise, of the parts
that hold them (so a probe reading both sees every embedding, then every part's FEATURES).

The result is a store like any other, for an encoder named "A+B" (ONNX hash "shaA+shaB",
dim DA + DB): `equiprobe train` fits a probe on it unchanged, and `equiprobe deploy` serves
that probe as `A+B_detector`, an ensemble that runs both encoders on the same upload.
Only stores of the same job (dataset, catalog and its version, seed, uploads, images) join,
so the parts' rows are the same (image, version) examples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from equiprobe.services.contract import COMPOSITE, compose

from .store import PENDING, Store, StoreError, StoreWriter, manifest_differences, manifest_value

# Everything but the encoder must match for rows to be the same examples.
SAME_IMAGES = ("format_version", "dtype", "catalog", "catalog_version", "rows", "dataset", "seed", "count", "shard",
               "uploads", "limit")


def joined_layout(parts: list[Store]) -> list[dict]:
    """Each part's FEATURES blocks, with the part named and their columns shifted to the joined column."""
    layout, offset = [], 0
    for p in parts:
        for block in p.manifest.get("feature_layout") or []:
            layout.append({**block, "part": p.manifest["encoder"],
                           **{k: [block[k][0] + offset, block[k][1] + offset] for k in ("mean", "std")}})
        offset += p.features_dim
    return layout


def concat_stores(paths: list[Path], out: Path, block: int = 1024) -> Store:
    if len(paths) < 2:
        raise StoreError("concat joins at least two stores")
    parts = [Store.open(p) for p in paths]
    first = parts[0]
    for p in parts[1:]:
        differences = manifest_differences(p.manifest, first.manifest, SAME_IMAGES, str(p.path))
        if differences:
            raise StoreError(f"cannot join {p.path} with {first.path}: not the same images (" + "; ".join(differences)
                             + ")")
    for p in parts:
        if not p.complete:
            raise StoreError(f"{p.path} is not complete ({p.summary()['pending']} rows pending); resume it first")
    keys = np.asarray(first.array("image_keys"))
    for p in parts[1:]:
        if not np.array_equal(np.asarray(p.array("image_keys")), keys):
            raise StoreError(f"{p.path} and {first.path} hold different image bytes in some rows")
    manifest = {**first.manifest,
                "encoder": compose(p.manifest["encoder"] for p in parts),
                "encoder_onnx_sha256": COMPOSITE.join(p.manifest["encoder_onnx_sha256"] for p in parts),
                "encoder_precision": COMPOSITE.join(manifest_value(p.manifest, "encoder_precision") for p in parts),
                "dim": sum(int(p.manifest["dim"]) for p in parts),
                "features_dim": sum(p.features_dim for p in parts),
                "feature_layout": joined_layout(parts),
                "parts": [{"store": str(p.path), "encoder": p.manifest["encoder"], "dim": p.manifest["dim"],
                           "features_dim": p.features_dim,
                           "encoder_onnx_sha256": p.manifest["encoder_onnx_sha256"],
                           "encoder_precision": manifest_value(p.manifest, "encoder_precision")} for p in parts]}
    store = Store.create_or_resume(out, manifest)
    writer = StoreWriter(store)
    if not (store.status() == PENDING).any():
        return store  # already joined
    n = int(manifest["count"])
    for name in Store.FILES:
        if name not in ("embeddings", "status"):
            writer.arrays[name][:] = first.array(name)
    for column in ("embeddings", "features") if store.features_dim else ("embeddings",):
        sources = [p.array(column) for p in parts if column in p.files]
        for start in range(0, n, block):  # in blocks: never a whole store in memory
            writer.arrays[column][start:start + block] = np.concatenate([s[start:start + block] for s in sources], -1)
    for p in parts:  # a row failed in any part has no whole embedding
        writer.failures.update({e["row"]: e for e in p.errors()})
    writer.commit(list(range(n)))
    return store
