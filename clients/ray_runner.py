"""Bulk embedding beyond one machine: Ray Data actors as gRPC clients to a fleet of Triton servers.

The driver owns the store (same format, same resume rules as `equiprobe embed`): it lists the
pending rows, Ray Data hands them in batches to `EmbedActor`s, each batch goes to the next
server of the fleet (round-robin by batch number), and the driver writes and commits each
returned batch. Only rows travel through Ray, never the store.
"""

from __future__ import annotations

import asyncio
import os
from typing import Optional

import numpy as np

from equiprobe.services.expansion_repo import ExpansionNames

from .aio import AsyncTritonClient, ClientOptions
from .datasets import open_dataset
from .embed_job import EmbedJob, Progress, dataset_indices, embed_record, job_manifest, server_metadata, write_outcome
from .store import Store, StoreWriter


class EmbedActor:
    """One Ray actor: a gRPC client to one server, embedding the rows of each batch it is given."""

    def __init__(self, dataset: str, model: str, seed: int, urls: list[str], chunk_size: int, client: dict,
                 uploads: bool = False):
        self.dataset = open_dataset(dataset)
        self.model, self.seed, self.urls, self.chunk_size, self.client = model, seed, urls, chunk_size, client
        self.uploads = uploads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return asyncio.run(self._embed(batch))

    async def _embed(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        url = self.urls[int(batch["position"].min()) // self.chunk_size % len(self.urls)]
        async with AsyncTritonClient(ClientOptions(**{**self.client, "url": url})) as client:
            outcomes = await asyncio.gather(*(embed_record(client, self.model, self.dataset.record(int(i)), self.seed,
                                                           uploads=self.uploads)
                                              for i in batch["index"]))
        shape = next((o.embeddings.shape for o in outcomes if o.embeddings is not None), (0,))
        width = next((o.params.shape for o in outcomes if o.params is not None), (0,))
        return {
            "row": batch["row"],
            "embeddings": np.stack([o.embeddings if o.embeddings is not None else np.zeros(shape, np.float32)
                                    for o in outcomes]),
            "params": np.stack([o.params if o.params is not None else np.zeros(width, np.float32) for o in outcomes]),
            "image_key": np.array([o.image_key for o in outcomes]),
            "reason": np.array([o.reason for o in outcomes]),
        }


async def _manifest(job: EmbedJob, dataset, count: int) -> dict:
    async with AsyncTritonClient(job.client) as client:
        config = await client.model_config(ExpansionNames(job.encoder, job.catalog).embed)
    return job_manifest(job, dataset, server_metadata(config), count)


def run_ray_embed(job: EmbedJob, urls: list[str], actors: int = 2, address: Optional[str] = None,
                  progress: bool = True) -> dict:
    import ray

    from .embed_job import Outcome

    dataset = open_dataset(job.dataset)
    indices = dataset_indices(len(dataset), job.limit, job.shard)
    manifest = asyncio.run(_manifest(job, dataset, len(indices)))
    store = Store.create_or_resume(job.out, manifest)
    writer = StoreWriter(store)
    pending = [int(r) for r in writer.pending_rows()]
    bar = Progress(len(indices), len(indices) - len(pending), len(manifest["rows"]), progress)
    if pending:
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True,
                 include_dashboard=False, log_to_driver=False)
        client = {k: v for k, v in vars(job.client).items() if k != "url"}
        rows = ray.data.from_items([{"row": r, "index": int(indices[r]), "position": p}
                                    for p, r in enumerate(pending)])
        embedded = rows.map_batches(
            EmbedActor, batch_size=job.chunk_size, concurrency=actors,
            fn_constructor_kwargs=dict(dataset=job.dataset, model=ExpansionNames(job.encoder, job.catalog).embed,
                                       seed=job.seed, urls=urls, chunk_size=job.chunk_size, client=client,
                                       uploads=job.as_uploads))
        with bar.bar:
            for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
                for j, row in enumerate(batch["row"]):
                    record = dataset.record(int(indices[row]))
                    reason = str(batch["reason"][j])
                    outcome = Outcome(reason=reason) if reason else Outcome(
                        batch["embeddings"][j], batch["params"][j], str(batch["image_key"][j]))
                    write_outcome(writer, int(row), record, outcome)
                writer.commit([int(r) for r in batch["row"]])
                bar.advance(len(batch["row"]))
    return {**Store.open(job.out).summary(), "store": str(job.out), "rows_per_image": len(manifest["rows"])}
