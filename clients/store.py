"""Embedding stores: a directory of .npy files that plain numpy can memory-map.

    manifest.json    what the store holds: encoder and its ONNX hash, dimension, dtype, catalog
                     version and row names, dataset spec, seed, row count, shard, tool version
    embeddings.npy   [N, K, D] float16 (or float32): K versions of each image
    features.npy     [N, K, F] same dtype, only where the encoder taps early blocks (manifest
                     features_dim > 0; feature_layout says which block each column is from)
    params.npy       [N, K, W] float32: each version's drawn transformation parameters
    keys.npy         [N] unicode: the dataset's key of each image (path, or source/crop id)
    image_keys.npy   [N] unicode: SHA-256 prefix of the image bytes (parameters depend on it)
    sources.npy      [N] unicode: what each image was made from (a photograph, a semantic group);
                     splits go by source, so no source is on two sides
    labels.npy       [N] int32: semantic label, -1 where the dataset has none
    split.npy        [N] int8: 0 train, 1 test, 2 validation, -1 unspecified (the trainer splits by source)
    index.npy        [N] int64: each row's position in the whole dataset (shards merge by it)
    status.npy       [N] uint8: the completion record: 0 pending, 1 done, 2 failed
    errors.jsonl     one line per failed row: index, key, reason (rewritten at each commit)

Every file is created at full size, its disk blocks reserved, when the store is created (a
memory-mapped write into an unreserved block of a full disk kills the process with SIGBUS; a
store that does not fit fails at creation with a message instead); rows are filled in chunks.
A chunk is committed by flushing its data, then rewriting the error log atomically, then
flushing its status rows; a run killed (or out of disk space) at any point leaves the rows of
uncommitted chunks (partly written or not) marked pending, and resuming rewrites exactly those
rows. Nothing depends on time or process, so a resumed store ends byte-identical to an
uninterrupted one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from equiprobe.services.files import write_atomically

FORMAT_VERSION = 2  # 2: sources.npy and the validation split
PENDING, DONE, FAILED = 0, 1, 2
SPLITS = {"train": 0, "test": 1, "validation": 2, None: -1}
KEY_WIDTH = 96


class StoreError(ValueError):
    """A store that cannot be used as asked (mismatched manifest, missing files, no disk space)."""


# Writes that fail for want of space: a full disk, a quota, a file size limit (RLIMIT_FSIZE).
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def space_error(exc: OSError, path: Path, doing: str) -> StoreError:
    free = shutil.disk_usage(path).free if path.exists() else 0
    return StoreError(f"no disk space to {doing} in {path}: {exc.strerror} ({free / 1e6:.1f} MB free there); "
                      "free some space and run the same command again: it resumes from the last committed rows")


def reserve(path: Path) -> None:
    """Allocate the disk blocks of a (sparse) store file now, where running out of space is an error."""
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem that cannot: as before
                raise


def _short(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


# Fields that must match for a run to resume (or merge into) an existing store.
IDENTITY_FIELDS = ("format_version", "encoder", "encoder_onnx_sha256", "encoder_precision", "dim", "features_dim",
                   "dtype", "catalog", "catalog_version", "rows", "dataset", "seed", "count", "shard", "uploads")
# Fields later versions added, as stores written before them hold them implicitly.
FIELD_DEFAULTS = {"encoder_precision": "fp32", "features_dim": 0}


def manifest_value(manifest: dict, field: str):
    """A manifest's field, or what stores written before the field existed hold implicitly."""
    return manifest.get(field, FIELD_DEFAULTS.get(field))


def manifest_differences(found: dict, wanted: dict, fields, holder: str) -> list[str]:
    """'field: HOLDER has X, this run wants Y' for each of `fields` where two manifests differ."""
    return [f"{field}: {holder} has {_short(manifest_value(found, field))}, this run wants "
            f"{_short(manifest_value(wanted, field))}"
            for field in fields if manifest_value(found, field) != manifest_value(wanted, field)]


@dataclass
class Store:
    path: Path
    manifest: dict
    mode: str = "r"

    FILES = ("embeddings", "params", "keys", "image_keys", "sources", "labels", "split", "index", "status")
    # What creating a store writes (and write_atomically's staged names), for cleaning up after one.
    CREATED = (*(f"{name}.npy" for name in FILES), "features.npy", "errors.jsonl", "manifest.json",
               ".manifest.json.tmp", ".errors.jsonl.tmp")

    @staticmethod
    def files_of(manifest: dict) -> tuple[str, ...]:
        """The arrays a store of this manifest holds: FILES, and "features" where it has FEATURES."""
        return ("features", *Store.FILES) if manifest.get("features_dim") else Store.FILES

    @property
    def files(self) -> tuple[str, ...]:
        return self.files_of(self.manifest)

    @property
    def features_dim(self) -> int:
        """FEATURES' width (0: the store holds none)."""
        return int(self.manifest.get("features_dim") or 0)

    # -- creation and opening ---------------------------------------------------------------
    @classmethod
    def create_or_resume(cls, path: Path, manifest: dict) -> "Store":
        """Open `path` for writing: a new store, or the same store to resume; anything else is refused."""
        path = Path(path)
        existing = path / "manifest.json"
        if existing.exists():
            found = json.loads(existing.read_text())
            differences = manifest_differences(found, manifest, IDENTITY_FIELDS, "store")
            if differences:
                raise StoreError(f"{path} holds a different store; refusing to overwrite it ("
                                 + "; ".join(differences) + ")")
            try:
                for name in cls.files_of(found):  # a store written before blocks were reserved
                    if (path / f"{name}.npy").is_file():
                        reserve(path / f"{name}.npy")
            except OSError as exc:
                if exc.errno in SPACE_ERRNOS:
                    raise space_error(exc, path, "resume the store") from None
                raise
            return cls(path, found, "r+")
        if path.exists() and any(path.iterdir()):
            if not cls._interrupted_creation(path):
                raise StoreError(f"{path} exists, is not empty and has no manifest.json; refusing to write there")
            for item in path.iterdir():  # a creation that was killed or ran out of space: start it again
                item.unlink()
        path.mkdir(parents=True, exist_ok=True)
        try:
            cls._create_files(path, manifest)
        except OSError as exc:
            for name in cls.CREATED:  # nothing half-made stays behind
                (path / name).unlink(missing_ok=True)
            if exc.errno in SPACE_ERRNOS:
                raise space_error(exc, path, f"create the store ({cls.size_of(manifest) / 1e6:.1f} MB)") from None
            raise
        return cls(path, manifest, "r+")

    @classmethod
    def _interrupted_creation(cls, path: Path) -> bool:
        """Only files a creation makes, and no manifest: a creation that did not finish."""
        return all(item.name in cls.CREATED and item.is_file() for item in path.iterdir())

    @staticmethod
    def _shapes(manifest: dict) -> dict[str, tuple[tuple[int, ...], str]]:
        n, k, d, w = manifest["count"], len(manifest["rows"]), manifest["dim"], manifest["params_width"]
        shapes = {
            "embeddings": ((n, k, d), manifest["dtype"]), "params": ((n, k, w), "float32"),
            "keys": ((n,), f"<U{KEY_WIDTH}"), "image_keys": ((n,), "<U16"), "sources": ((n,), f"<U{KEY_WIDTH}"),
            "labels": ((n,), "int32"),
            "split": ((n,), "int8"), "index": ((n,), "int64"), "status": ((n,), "uint8"),
        }
        if manifest.get("features_dim"):
            shapes["features"] = ((n, k, manifest["features_dim"]), manifest["dtype"])
        return shapes

    @classmethod
    def size_of(cls, manifest: dict) -> int:
        return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in cls._shapes(manifest).values())

    @classmethod
    def _create_files(cls, path: Path, manifest: dict) -> None:
        for name, (shape, dtype) in cls._shapes(manifest).items():
            array = np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
            array.flush()
            del array
            reserve(path / f"{name}.npy")
        (path / "errors.jsonl").write_text("")
        # The manifest is written last: a store without one was never complete enough to resume.
        write_atomically(path / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))

    @classmethod
    def open(cls, path: Path) -> "Store":
        path = Path(path)
        if not (path / "manifest.json").exists():
            raise StoreError(f"{path} is not a store (no manifest.json)")
        return cls(path, json.loads((path / "manifest.json").read_text()), "r")

    def array(self, name: str) -> np.memmap:
        """A memory map of one of the store's files (never loaded whole)."""
        return np.load(self.path / f"{name}.npy", mmap_mode=self.mode)

    def sources(self) -> np.ndarray:
        """Each row's source; a store written before sources were recorded (format 1) has none,
        and each image is then its own source."""
        if not (self.path / "sources.npy").exists():
            return np.asarray(self.array("keys"))
        return np.asarray(self.array("sources"))

    # -- state --------------------------------------------------------------------------------
    def status(self) -> np.ndarray:
        return np.asarray(self.array("status"))

    def summary(self) -> dict:
        status = self.status()
        return {"rows": int(status.size), "done": int((status == DONE).sum()),
                "failed": int((status == FAILED).sum()), "pending": int((status == PENDING).sum())}

    @property
    def complete(self) -> bool:
        return self.summary()["pending"] == 0

    def errors(self) -> list[dict]:
        """The failed rows' errors (the log can be ahead of the status: a commit writes it first)."""
        text = (self.path / "errors.jsonl").read_text()
        status = self.status()
        return [e for e in (json.loads(line) for line in text.splitlines() if line) if status[e["row"]] == FAILED]


class StoreWriter:
    """Fills rows chunk by chunk; `commit` makes a chunk durable in the documented order."""

    def __init__(self, store: Store):
        self.store = store
        self.arrays = {name: store.array(name) for name in store.files}
        self.failures = {e["row"]: e for e in store.errors()}

    def pending_rows(self) -> np.ndarray:
        return np.flatnonzero(np.asarray(self.arrays["status"]) == PENDING)

    def put(self, row: int, *, embeddings: np.ndarray, params: np.ndarray, key: str, image_key: str,
            label: int, split: Optional[str], index: int, source: str = "",
            features: Optional[np.ndarray] = None) -> None:
        a = self.arrays
        a["embeddings"][row] = embeddings.astype(a["embeddings"].dtype)
        if "features" in a:
            if features is None:  # a store with FEATURES never holds a row without them
                raise StoreError(f"{self.store.path} holds FEATURES, and row {row} came without them")
            a["features"][row] = features.astype(a["features"].dtype)
        a["params"][row] = params
        self._describe(row, key, image_key, label, split, index, source)
        self.failures.pop(row, None)

    def fail(self, row: int, *, key: str, label: int, split: Optional[str], index: int, reason: str,
             source: str = "") -> None:
        a = self.arrays
        a["embeddings"][row] = 0
        a["params"][row] = 0
        if "features" in a:
            a["features"][row] = 0
        self._describe(row, key, "", label, split, index, source)
        self.failures[row] = {"row": row, "index": index, "key": key, "reason": reason}

    def _describe(self, row, key, image_key, label, split, index, source) -> None:
        a = self.arrays
        a["keys"][row] = key[-KEY_WIDTH:]
        a["image_keys"][row] = image_key
        a["sources"][row] = (source or key)[-KEY_WIDTH:]
        a["labels"][row] = label
        a["split"][row] = SPLITS[split]
        a["index"][row] = index

    def commit(self, rows: list[int]) -> None:
        """Data first, then the error log, then the completion record: a row is marked done or
        failed only once everything about it is on disk."""
        try:
            for name in self.arrays:
                if name != "status":
                    self.arrays[name].flush()
            lines = [json.dumps(self.failures[r], sort_keys=True) for r in sorted(self.failures)]
            write_atomically(self.store.path / "errors.jsonl", "".join(line + "\n" for line in lines))
            status = self.arrays["status"]
            for row in rows:
                status[row] = FAILED if row in self.failures else DONE
            status.flush()
        except OSError as exc:
            if exc.errno in SPACE_ERRNOS:
                raise space_error(exc, self.store.path, f"commit {len(rows)} rows") from None
            raise
