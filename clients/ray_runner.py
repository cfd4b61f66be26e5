"""Bulk embedding beyond one machine: Ray actors as gRPC clients to a fleet of Triton servers.

The same runner as `equiprobe embed` (clients/runner.py) on the driver, which owns the store
(same format, same resume rules): its mapper, `RayMapper`, hands each chunk of pending rows to
the next `EmbedActor` and the next server of the fleet (round-robin by chunk number), and each
actor maps the chunk with the job's own mapper (the server expansion, or with --reuse the
refresh, which reads the old store's valid columns). Only rows travel through Ray, never the
store; the old store of a refresh must be readable where the actors run.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from typing import Optional

from .aio import AsyncTritonClient
from .datasets import open_dataset
from .embed_job import EmbedJob, dataset_indices, job_manifest, server_metadata, server_mapper
from .refresh import open_reuse
from .runner import Outcome, StoreSink, run


class EmbedActor:
    """One Ray actor: a gRPC client to the server it is told, mapping each chunk it is given."""

    def __init__(self, job: EmbedJob, manifest: dict):
        self.job, self.manifest, self.dataset = job, manifest, open_dataset(job.dataset)
        self.reuse = open_reuse(job.reuse, job.out, manifest) if job.reuse else None

    async def map(self, rows: list[int], indices: list[int], url: str) -> list[Outcome]:
        # An async actor: Ray runs its methods on the actor's own event loop.
        async with AsyncTritonClient(replace(self.job.client, url=url)) as client:
            mapper = server_mapper(self.job, client, self.manifest, self.reuse)
            return await mapper.map([(r, self.dataset.record(i)) for r, i in zip(rows, indices)])


class RayMapper:
    """The driver's mapper: chunk n goes to actor n mod A and server n mod S."""

    def __init__(self, actors: list, urls: list[str]):
        self.actors, self.urls, self.chunks = actors, urls, 0

    async def map(self, items) -> list[Outcome]:
        import ray

        n, self.chunks = self.chunks, self.chunks + 1
        rows, indices = [r for r, _ in items], [record.index for _, record in items]
        try:
            return await self.actors[n % len(self.actors)].map.remote(rows, indices, self.urls[n % len(self.urls)])
        except ray.exceptions.RayTaskError as exc:  # the actor's own error (a server gone, say), unwrapped
            raise exc.cause from None


def run_ray_embed(job: EmbedJob, urls: list[str], actors: int = 2, address: Optional[str] = None,
                  progress: bool = True) -> dict:
    return asyncio.run(_run_ray_embed(job, urls, actors, address, progress))


async def _run_ray_embed(job: EmbedJob, urls: list[str], actors: int, address: Optional[str],
                         progress: bool) -> dict:
    import ray

    dataset = open_dataset(job.dataset)
    indices = dataset_indices(len(dataset), job.limit, job.shard)
    async with AsyncTritonClient(job.client) as client:
        config = await client.model_config(job.names.embed)
    manifest = job_manifest(job, dataset, server_metadata(config), len(indices))
    sink = StoreSink(job.out, manifest, job.reuse)
    if sink.pending():
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True,
                 include_dashboard=False, log_to_driver=False)
        # gRPC clients wait on the servers: an actor needs no core of its own.
        pool = [ray.remote(num_cpus=0)(EmbedActor).remote(job, manifest) for _ in range(max(actors, 1))]
        mapper = RayMapper(pool, urls)
    else:
        mapper = None  # nothing to do: no cluster started
    return await run(lambda row: dataset.record(int(indices[row])), mapper, sink, chunk_size=job.chunk_size,
                     progress=progress, in_flight=max(actors, 2))
