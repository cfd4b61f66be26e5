"""`equiprobe embed`: a dataset, expanded and embedded by the server, into a store.

reader (dataset records, bytes loaded in threads) -> mapper (one NAME_embed31 / NAME_embed_general
request per image, a bounded number in flight) -> writer (store rows, committed per chunk).
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

from equiprobe.services.expansion_repo import ExpansionNames
from equiprobe.services.transforms import get_catalog

from .aio import AsyncTritonClient, ClientOptions, RequestError
from .datasets import Dataset, open_dataset
from .embedding import ServiceError
from .refresh import ReuseSource, open_reuse
from .store import FORMAT_VERSION, IDENTITY_FIELDS, PENDING, Store, StoreError, StoreWriter

TOOL_VERSION = "equiprobe 0.1.0"
UPLOADS = ("jpeg", "none")


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
        if self.uploads not in UPLOADS:
            raise ValueError(f"uploads {self.uploads!r}: use {' or '.join(UPLOADS)}")

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


def job_manifest(job: EmbedJob, dataset: Dataset, server: dict[str, str], count: int) -> dict:
    catalog = get_catalog(job.catalog)
    if server.get("catalog_version") != catalog.version:
        raise ServiceError(f"the server's {job.encoder} expansion uses catalog {server.get('catalog_version')}, "
                           f"this client has {catalog.version}; rebuild the repository or update the client")
    return {
        "format_version": FORMAT_VERSION, "tool_version": TOOL_VERSION,
        "encoder": job.encoder, "encoder_onnx_sha256": server["onnx_sha256"], "dim": int(server["dim"]),
        "dtype": job.dtype, "catalog": job.catalog, "catalog_version": catalog.version,
        "rows": json.loads(server["rows"]), "params_width": catalog.params_width, "uploads": job.uploads,
        "row_labels": catalog.labels.tolist(), "classes": list(catalog.classes),
        "row_splits": [t.split for t in catalog.transforms],
        "dataset": dataset.spec, "label_names": dataset.label_names, "limit": job.limit,
        "seed": job.seed, "count": count, "shard": f"{job.shard[0]}/{job.shard[1]}" if job.shard else None,
        # Which transformation (and code) made each column: a refresh reuses columns where equal.
        "row_fingerprints": json.loads(server["row_fingerprints"]) if "row_fingerprints" in server else None,
    }


class Progress:
    """Images/s, embeddings/s and ETA on a rich progress bar."""

    def __init__(self, total: int, done: int, rows_per_image: int, enabled: bool):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        import time

        self.rows = rows_per_image
        self.clock, self.start, self.done_here = time.perf_counter, time.perf_counter(), 0
        self.bar = Bar(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                       TimeRemainingColumn(), disable=not enabled)
        self.task = self.bar.add_task("embed", total=total, completed=done, rate="")

    def advance(self, n: int) -> None:
        # The run's average, not a short window: chunks complete in bursts.
        self.done_here += n
        speed = self.done_here / max(self.clock() - self.start, 1e-9)
        self.bar.update(self.task, advance=n, rate=f"{speed:.1f} img/s, {speed * self.rows:.0f} emb/s")


async def run_embed_job(job: EmbedJob, progress: bool = True) -> dict:
    dataset = open_dataset(job.dataset)
    names = ExpansionNames(job.encoder, job.catalog)
    indices = dataset_indices(len(dataset), job.limit, job.shard)
    async with AsyncTritonClient(job.client) as client:
        manifest = job_manifest(job, dataset, server_metadata(await client.model_config(names.embed)), len(indices))
        reuse = open_reuse(job.reuse, job.out, manifest) if job.reuse else None  # checked before writing
        store = Store.create_or_resume(job.out, manifest)
        writer = StoreWriter(store)
        pending = [int(r) for r in writer.pending_rows()]
        bar = Progress(len(indices), len(indices) - len(pending), len(manifest["rows"]), progress)

        async def embed_row(row: int) -> None:
            record = dataset.record(int(indices[row]))
            if reuse:
                outcome = await refresh_record(client, names.embed, record, job.seed, reuse, row, manifest,
                                               job.as_uploads)
            else:
                outcome = await embed_record(client, names.embed, record, job.seed, uploads=job.as_uploads)
            write_outcome(writer, row, record, outcome)

        with bar.bar:
            # Chunks overlap: up to two are in flight so the server never waits on a commit.
            window: list[tuple[list[int], asyncio.Task]] = []
            try:
                for start in range(0, len(pending), job.chunk_size):
                    rows = pending[start:start + job.chunk_size]
                    window.append((rows, asyncio.gather(*(embed_row(r) for r in rows))))
                    if len(window) > 1:
                        await _commit(window.pop(0), writer, bar)
                while window:
                    await _commit(window.pop(0), writer, bar)
            except ServiceError as exc:  # the server gone for longer than the retries last, say
                left = int((np.asarray(writer.arrays["status"]) == PENDING).sum())
                raise ServiceError(f"{exc}; the job stopped with {left} of {len(indices)} images pending, and "
                                   f"{job.out} keeps the rows committed so far: run the same command again to "
                                   "resume") from None
            finally:
                for _, task in window:  # the chunk still in flight: stopped, its rows stay pending
                    task.cancel()
                await asyncio.gather(*(task for _, task in window), return_exceptions=True)
    summary = {**Store.open(job.out).summary(), "store": str(job.out), "rows_per_image": len(manifest["rows"])}
    if reuse:  # columns of the rows written by this run
        summary.update(reused_columns=reuse.reused, computed_columns=reuse.computed)
    return summary


@dataclass
class Outcome:
    """What embedding one image gave: its rows, or why it failed."""

    embeddings: Optional[np.ndarray] = None
    params: Optional[np.ndarray] = None
    image_key: str = ""
    reason: str = ""


async def embed_record(client: AsyncTritonClient, model: str, record, seed: int,
                       rows: Optional[list[int]] = None, uploads: bool = False) -> Outcome:
    """Load one record and have the server expand and embed it (only `rows` if given). A bad file
    is an Outcome with a reason; a server problem raises (the run stops; committed chunks stay)."""
    try:
        data = await asyncio.to_thread(record.load)
    except OSError as exc:
        return Outcome(reason=f"unreadable: {exc}")
    inputs = {"IMAGE": np.frombuffer(data, np.uint8).reshape(1, -1), "SEED": np.array([[seed]], np.int64)}
    if rows is not None:
        inputs["ROWS"] = np.array([rows], np.int32)
    if uploads:
        inputs["UPLOADS"] = np.array([[True]])
    try:
        out = await client.infer(model, inputs, ["EMBEDDINGS", "PARAMS", "KEY"])
    except RequestError as exc:
        if exc.status != "StatusCode.INVALID_ARGUMENT":
            raise
        return Outcome(reason=str(exc).split(", ", 1)[-1])
    return Outcome(out["EMBEDDINGS"][0], out["PARAMS"][0], out["KEY"][0, 0].decode())


async def refresh_record(client: AsyncTritonClient, model: str, record, seed: int, reuse: ReuseSource, row: int,
                         manifest: dict, uploads: bool = False) -> Outcome:
    """One image of a refresh: the old store's valid columns, the server's for the rest. An image
    the old store does not hold done (failed, pending, or other bytes now) is embedded in full."""
    width = manifest["params_width"]
    old_key = reuse.image_key(row, record)
    if old_key is not None:
        if not reuse.missing:
            return Outcome(*reuse.assemble(row, None, None, width), old_key)
        outcome = await embed_record(client, model, record, seed, reuse.missing, uploads)
        if outcome.reason:
            return outcome
        if outcome.image_key == old_key:
            outcome.embeddings, outcome.params = reuse.assemble(row, outcome.embeddings, outcome.params, width)
            return outcome
    outcome = await embed_record(client, model, record, seed, uploads=uploads)
    reuse.computed += 0 if outcome.reason else len(manifest["rows"])
    return outcome


def write_outcome(writer: StoreWriter, row: int, record, outcome: Outcome) -> None:
    where = dict(key=record.key, label=record.label, split=record.split, index=record.index, source=record.source)
    if outcome.reason:
        writer.fail(row, reason=outcome.reason, **where)
    else:
        writer.put(row, embeddings=outcome.embeddings, params=outcome.params, image_key=outcome.image_key, **where)


async def _commit(item, writer: StoreWriter, bar: Progress) -> None:
    rows, task = item
    await task
    writer.commit(rows)
    bar.advance(len(rows))


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
        other = {f: s.manifest.get(f) for f in IDENTITY_FIELDS if f not in ("shard", "count")}
        if other != {f: first.get(f) for f in other}:
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
        for name in Store.FILES:
            source, target = s.array(name), writer.arrays[name]
            for start in range(0, len(index), 4096):  # in blocks: never the whole store in memory
                rows = index[start:start + 4096]
                target[rows] = source[start:start + 4096]
        for error in s.errors():
            writer.failures[int(error["index"])] = {**error, "row": int(error["index"])}
    writer.commit([])  # flushes the copied rows and status, rewrites the error log
    return merged
