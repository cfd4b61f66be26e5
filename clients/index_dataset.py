"""`equiprobe index build --dataset SPEC`: a match index straight from a dataset, embedded by
the server (docs/match.md, "Building from a dataset").

An index needs each image's identity version, with FEATURES where the encoder taps early blocks
(the reference-aware probe's references). `equiprobe embed` always embeds a catalog's every
version: the store format holds any list of versions (`manifest["rows"]`), but the job's
manifest is the server expansion's. So this reuses the bulk embed job's pieces (EmbedJob, its
manifest from the server's NAME_embedK config, ExpansionMapper, the runner and StoreSink: resume,
chunk commits, failed files) and asks the expansion for the identity row alone (its ROWS input,
what a refresh uses): one encoder pass per image, not K, into a store whose only version is
`identity`. The catalog's expansion is only the vehicle (default: groups, the smallest; any the
server has will do) and the identity is embedded as given (`uploads` none), as `NAME_matcher`
embeds an upload. The store is then indexed by `build_index` (or, with Ray, by
`clients/index_ray.py`'s shard builds and a merge).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from equiprobe.services.match_index import MatchIndexError

from .aio import AsyncTritonClient
from .datasets import open_dataset
from .embed_job import EmbedJob, ExpansionMapper, dataset_indices, job_manifest, server_metadata
from .runner import Outcome, StoreSink, run

IDENTITY = "identity"
DEFAULT_CATALOG = "groups"  # 5 versions, identity first: the cheapest expansion to ask one row of


def identity_manifest(manifest: dict) -> tuple[dict, int]:
    """(the job's store manifest restricted to the identity version, the identity's column in
    the catalog's expansion)."""
    rows = list(manifest["rows"])
    if IDENTITY not in rows:
        raise MatchIndexError(f"the server's {manifest['catalog']} expansion has no '{IDENTITY}' version; "
                              "give another --catalog")
    j = rows.index(IDENTITY)

    def one(field):
        values = manifest.get(field)
        return None if values is None else [values[j]]

    return {**manifest, "rows": [IDENTITY], "row_labels": one("row_labels"), "row_splits": one("row_splits"),
            "row_fingerprints": one("row_fingerprints"), "identity_only": True}, j


@dataclass
class IdentityMapper(ExpansionMapper):
    """One expansion request per image for its identity row alone (ROWS = [column])."""

    column: int = 0

    async def map(self, items) -> list[Outcome]:
        return list(await asyncio.gather(*(self.identity(record) for _, record in items)))

    async def identity(self, record) -> Outcome:
        outcome = await self.one(record, [self.column])
        if not outcome.reason and outcome.params is not None and len(outcome.params) != 1:
            outcome.params = outcome.params[[self.column]]  # the catalog's parameters come for every row
        return outcome


async def embed_identities(job: EmbedJob, progress: bool = True) -> dict:
    """Embed the identity version of every image of the job's dataset into the store job.out
    (created, or resumed if it holds this same job); the store's summary."""
    dataset = open_dataset(job.dataset)
    indices = dataset_indices(len(dataset), job.limit, job.shard)
    async with AsyncTritonClient(job.client) as client:
        full = job_manifest(job, dataset, server_metadata(await client.model_config(job.names.embed)), len(indices))
        manifest, column = identity_manifest(full)
        sink = StoreSink(job.out, manifest)
        mapper = IdentityMapper(client, job.names.embed, job.seed, job.as_uploads, bool(manifest.get("features_dim")),
                                column=column)
        return await run(lambda row: dataset.record(int(indices[row])), mapper, sink, chunk_size=job.chunk_size,
                         progress=progress, label="embedding identities")


def staging_store(out: Path) -> Path:
    """The temporary store of a build without --store-dir: beside the index, removed after."""
    out = Path(out)
    return out.parent / f".{out.name}.store-{os.getpid()}"


def build_from_dataset(job: EmbedJob, out: Path, keep_store: bool, kind: str = "auto", seed: int = 0,
                       replace: bool = False, progress: bool = True, ray: bool = False, shards: Optional[int] = None,
                       ray_address: Optional[str] = None, **index_options) -> dict:
    """Embed the dataset's identity versions into job.out (kept if `keep_store`, else removed
    after, also on failure) and index them; the index's metadata with "embedding" (the store's
    summary: done, failed) and, for a temporary store, "store_removed". `index_options`:
    build_index's projection_from, projection_dim and exclude_keys."""
    out = Path(out)
    if out.exists() and not replace:
        raise MatchIndexError(f"{out} exists; refusing to overwrite it (--force, or add to it with `index add`)")
    if job.uploads != "none":
        raise MatchIndexError("an index's identity versions are embedded as given (uploads none)")
    try:
        summary = asyncio.run(embed_identities(job, progress))
        if not summary["done"]:
            raise MatchIndexError(f"no image of {job.dataset} could be embedded ({summary['failed']} failed; "
                                  f"`equiprobe store info {job.out}` names them)" if keep_store else
                                  f"no image of {job.dataset} could be embedded ({summary['failed']} failed)")
        if ray:
            from .index_ray import build_index_ray

            meta = build_index_ray([job.out], out, shards=shards, kind=kind, seed=seed, replace=replace,
                                   address=ray_address, progress=progress, **index_options)
        else:
            from .index_build import build_index

            meta = build_index([job.out], out, kind=kind, seed=seed, replace=replace, progress=progress,
                               **index_options)
    finally:
        if not keep_store:
            shutil.rmtree(job.out, ignore_errors=True)
    return {**meta, "embedding": summary, "store_removed": not keep_store}
