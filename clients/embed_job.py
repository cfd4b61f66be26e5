"""`equiprobe embed`: a dataset, expanded and embedded by the server, into a store.

The job's pieces for the runner (clients/runner.py): reader (dataset records, bytes loaded in
threads) -> mapper (`ExpansionMapper`: one NAME_embed31 / NAME_embed_general request per image,
a bounded number in flight; `RefreshMapper` with --reuse) -> sink (store rows, committed per chunk).
`--shard I/N` keeps the images whose dataset index is I modulo N; N shard stores merge into
the store an unsharded run would have written (`merge_stores`). `--reuse OLD` refreshes: columns
OLD already holds for unchanged transformations are copied, the server computes the rest
(clients/refresh.py).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from equiprobe.services.contract import EMBEDDINGS, FEATURES, IMAGE, KEY, PARAMS, ROWS, SEED, UPLOADS, ExpansionNames

from .aio import AsyncTritonClient, ClientOptions, RequestError
from .datasets import Dataset, open_dataset
from .embedding import ServiceError
from .refresh import ReuseSource
from .runner import Outcome, StoreSink, run
from .store import FORMAT_VERSION, IDENTITY_FIELDS, PENDING, Store, StoreError, StoreWriter, manifest_differences

TOOL_VERSION = "equiprobe 0.1.0"
UPLOAD_MODES = ("jpeg", "none")


def default_uploads(catalog: str) -> str:
    """Detector training stores (fine, general) see versions as uploads; the groups catalog's
    exact pixel operations stay exact."""
    return "none" if catalog == "groups" else "jpeg"


@dataclass
class EmbedJob:
    dataset: str
    encoder: str
    out: Path
    url: str
    catalog: str = "fine"
    limit: Optional[int] = None
    shard: Optional[tuple[int, int]] = None
    seed: int = 0
    dtype: str = "float16"
    chunk_size: int = 32
    reuse: Optional[Path] = None  # an older store of the same job: its still-valid columns are copied
    # "jpeg": every version re-encoded as a JPEG of random quality, as uploads are (detector
    # training); "none": versions as made (the study's protocol; exact groups); "": the catalog's default.
    uploads: str = ""
    client: ClientOptions = field(default=None)  # type: ignore[assignment]

    def __post_init__(self):
        if self.client is None:
            self.client = ClientOptions(self.url)
        if self.shard and not 0 <= self.shard[0] < self.shard[1]:
            raise ValueError(f"shard {self.shard[0]}/{self.shard[1]}: I must be in 0..N-1")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype {self.dtype!r}: use float16 or float32")
        self.uploads = self.uploads or default_uploads(self.catalog)
        if self.uploads not in UPLOAD_MODES:
            raise ValueError(f"uploads {self.uploads!r}: use {' or '.join(UPLOAD_MODES)}")

    @property
    def names(self) -> ExpansionNames:
        return ExpansionNames(self.encoder, self.catalog)

    @property
    def as_uploads(self) -> bool:
        """What the server's UPLOADS input gets."""
        return self.uploads == "jpeg"


def parse_shard(text: Optional[str]) -> Optional[tuple[int, int]]:
    if not text:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes I/N (for example 0/4), not {text!r}") from None
    return i, n


def dataset_indices(count: int, limit: Optional[int], shard: Optional[tuple[int, int]]) -> np.ndarray:
    indices = np.arange(min(count, limit) if limit else count)
    return indices[indices % shard[1] == shard[0]] if shard else indices


def server_metadata(config: dict) -> dict[str, str]:
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def catalog_metadata(job: EmbedJob, server: dict[str, str]) -> dict:
    """What the store records of the catalog, from the server's NAME_embedK config (so a
    client-only install, without DALI, can write it); from this code's catalog for a repository
    built before the server published it, which must then be the same catalog version."""
    if "row_labels" in server:
        return {"catalog_version": server["catalog_version"], "params_width": int(server["params_width"]),
                "row_labels": json.loads(server["row_labels"]), "classes": json.loads(server["classes"]),
                "row_splits": json.loads(server["row_splits"])}
    from equiprobe.services.transforms import get_catalog

    catalog = get_catalog(job.catalog)
    if server.get("catalog_version") != catalog.version:
        raise ServiceError(f"the server's {job.encoder} expansion uses catalog {server.get('catalog_version')}, "
                           f"this client has {catalog.version}; rebuild the repository or update the client")
    return {"catalog_version": catalog.version, "params_width": catalog.params_width,
            "row_labels": catalog.labels.tolist(), "classes": list(catalog.classes),
            "row_splits": [t.split for t in catalog.transforms]}


def job_manifest(job: EmbedJob, dataset: Dataset, server: dict[str, str], count: int) -> dict:
    catalog = catalog_metadata(job, server)
    return {
        "format_version": FORMAT_VERSION, "tool_version": TOOL_VERSION,
        "encoder": job.encoder, "encoder_onnx_sha256": server["onnx_sha256"], "dim": int(server["dim"]),
        # The encoder's early-block statistics (services/encoders/taps.py), stored beside the embeddings.
        "features_dim": int(server.get("features_dim", 0)),
        "feature_layout": json.loads(server.get("feature_layout", "[]")),
        # An INT8 encoder keeps the FP32 graph's sha256 (its parity gate lets FP32 probes run on
        # it), so the precision is its own field: stores of the two never resume or join as one.
        "encoder_precision": server.get("precision", "fp32"),
        "dtype": job.dtype, "catalog": job.catalog, "catalog_version": catalog["catalog_version"],
        "rows": json.loads(server["rows"]), "params_width": catalog["params_width"], "uploads": job.uploads,
        "row_labels": catalog["row_labels"], "classes": catalog["classes"],
        "row_splits": catalog["row_splits"],
        "dataset": dataset.spec, "label_names": dataset.label_names, "limit": job.limit,
        "seed": job.seed, "count": count, "shard": f"{job.shard[0]}/{job.shard[1]}" if job.shard else None,
        # Which transformation (and code) made each column: a refresh reuses columns where equal.
        "row_fingerprints": json.loads(server["row_fingerprints"]) if "row_fingerprints" in server else None,
    }


async def run_embed_job(job: EmbedJob, progress: bool = True) -> dict:
    """The job on this machine: one gRPC client, the records of this shard, the store at job.out."""
    dataset = open_dataset(job.dataset)
    indices = dataset_indices(len(dataset), job.limit, job.shard)
    async with AsyncTritonClient(job.client) as client:
        manifest = job_manifest(job, dataset, server_metadata(await client.model_config(job.names.embed)),
                                len(indices))
        sink = StoreSink(job.out, manifest, job.reuse)
        mapper = server_mapper(job, client, manifest, sink.reuse)
        return await run(lambda row: dataset.record(int(indices[row])), mapper, sink, chunk_size=job.chunk_size,
                         progress=progress)


def server_mapper(job: EmbedJob, client: AsyncTritonClient, manifest: dict,
                  reuse: Optional[ReuseSource] = None) -> "ExpansionMapper":
    """The job's mapper: the server expansion, or, with an old store to reuse, the refresh. It asks
    for FEATURES where the job's store holds them (the server published them: job_manifest)."""
    features = bool(manifest.get("features_dim"))
    if reuse:
        return RefreshMapper(client, job.names.embed, job.seed, job.as_uploads, features, reuse)
    return ExpansionMapper(client, job.names.embed, job.seed, job.as_uploads, features)


@dataclass
class ExpansionMapper:
    """One NAME_embed31 / _general / _groups request per image (the client bounds how many are in
    flight): the image's versions embedded, with their parameters and the image key."""

    client: AsyncTritonClient
    model: str
    seed: int
    uploads: bool = False
    features: bool = False  # ask for FEATURES too

    async def map(self, items) -> list[Outcome]:
        return list(await asyncio.gather(*(self.one(record) for _, record in items)))

    async def one(self, record, rows: Optional[list[int]] = None) -> Outcome:
        """Load one record and have the server expand and embed it (only `rows` if given). A bad
        file is an Outcome with a reason; a server problem raises (the run stops; committed
        chunks stay)."""
        try:
            data = await asyncio.to_thread(record.load)
        except OSError as exc:
            return Outcome(reason=f"unreadable: {exc}")
        inputs = {IMAGE: np.frombuffer(data, np.uint8).reshape(1, -1), SEED: np.array([[self.seed]], np.int64)}
        if rows is not None:
            inputs[ROWS] = np.array([rows], np.int32)
        if self.uploads:
            inputs[UPLOADS] = np.array([[True]])
        outputs = [EMBEDDINGS, PARAMS, KEY] + ([FEATURES] if self.features else [])
        try:
            out = await self.client.infer(self.model, inputs, outputs)
        except RequestError as exc:
            if exc.status != "StatusCode.INVALID_ARGUMENT":
                raise
            return Outcome(reason=str(exc).split(", ", 1)[-1])
        return Outcome(out[EMBEDDINGS][0], out[PARAMS][0], out[KEY][0, 0].decode(),
                       features=out[FEATURES][0] if self.features else None)


@dataclass
class RefreshMapper(ExpansionMapper):
    """The old store's still-valid columns of each image, the server's (ROWS) for the rest."""

    reuse: Optional[ReuseSource] = None

    async def map(self, items) -> list[Outcome]:
        return list(await asyncio.gather(*(self.refresh(row, record) for row, record in items)))

    async def refresh(self, row: int, record) -> Outcome:
        """An image the old store does not hold done (failed, pending, or other bytes now) is
        embedded in full."""
        reuse = self.reuse
        old_key = reuse.image_key(row, record)
        if old_key is not None:
            if not reuse.missing:
                embeddings, params = reuse.assemble(row, None, None)
                return Outcome(embeddings, params, old_key, reused=len(reuse.new_columns),
                               features=reuse.assemble_features(row, None))
            outcome = await self.one(record, reuse.missing)
            if outcome.reason:
                return outcome
            if outcome.image_key == old_key:
                outcome.features = reuse.assemble_features(row, outcome.features)
                outcome.embeddings, outcome.params = reuse.assemble(row, outcome.embeddings, outcome.params)
                outcome.reused, outcome.computed = len(reuse.new_columns), len(reuse.missing)
                return outcome
        outcome = await self.one(record)
        outcome.computed = 0 if outcome.reason else reuse.columns
        return outcome


# -- shards -------------------------------------------------------------------------------------

def merge_stores(shards: list[Path], out: Path) -> Store:
    """Merge complete shard stores (same job, shards 0..N-1 of N) into one unsharded store."""
    stores = [Store.open(p) for p in shards]
    first = stores[0].manifest
    expected = {f"{i}/{len(stores)}" for i in range(len(stores))}
    found = {s.manifest["shard"] for s in stores}
    if found != expected:
        raise StoreError(f"shards {sorted(map(str, found))} are not 0..{len(stores) - 1} of {len(stores)}")
    for s in stores:
        if manifest_differences(s.manifest, first, [f for f in IDENTITY_FIELDS if f not in ("shard", "count")], ""):
            raise StoreError(f"{s.path} was made by a different job than {stores[0].path}")
        if not s.complete:
            raise StoreError(f"{s.path} is not complete ({s.summary()['pending']} rows pending); resume it first")
    total = sum(s.manifest["count"] for s in stores)
    manifest = {**first, "shard": None, "count": total}
    merged = Store.create_or_resume(out, manifest)
    writer = StoreWriter(merged)
    if not (merged.status() == PENDING).any():
        return merged  # already merged
    for s in stores:
        index = np.asarray(s.array("index"))  # the row of a global index in the unsharded store is the index
        for name in merged.files:
            source, target = s.array(name), writer.arrays[name]
            for start in range(0, len(index), 4096):  # in blocks: never the whole store in memory
                rows = index[start:start + 4096]
                target[rows] = source[start:start + 4096]
        for error in s.errors():
            writer.failures[int(error["index"])] = {**error, "row": int(error["index"])}
    writer.commit([])  # flushes the copied rows and status, rewrites the error log
    return merged
