"""`equiprobe index build`'s other sources and builders: a dataset embedded by the server
(--dataset, clients/index_dataset.py) and shard builds on Ray (--ray, clients/index_ray.py).
trainer/cli/index.py declares the options; here, what they do."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from equiprobe.clients.connection import ServiceError

from .common import fail


def build_from_sources(store: list[Path], out: Path, kind: str, shard: Optional[str], seed: int, force: bool,
                       quiet: bool, dataset: Optional[str], encoder: Optional[str], url: str,
                       store_dir: Optional[Path], catalog: str, limit: Optional[int], ray: bool,
                       shards: Optional[int], ray_address: Optional[str], **index_options) -> dict:
    """The index's metadata (the command prints it); typer's exit with one line for a refusal.
    `index_options`: build_index's projection_from, projection_dim and exclude_keys."""
    if dataset and store:
        raise fail("give --store or --dataset, not both")
    if not dataset and not store:
        raise fail("give --store DIR (repeatable) or --dataset SPEC --encoder NAME --url HOST:PORT")
    if ray and shard:
        raise fail("--ray builds every shard itself (--shards N); --shard I/N is one shard on this machine")
    if dataset and shard:
        raise fail("--shard I/N indexes a slice of stores; with --dataset, use --ray --shards N")
    if dataset and not encoder:
        raise fail("--dataset needs --encoder NAME (and --url HOST:PORT of a server that has it)")
    if not dataset and (store_dir or limit):
        raise fail("--store-dir and --limit go with --dataset")
    try:
        if dataset:
            from equiprobe.clients.embed_job import EmbedJob
            from equiprobe.clients.index_dataset import build_from_dataset, staging_store

            job = EmbedJob(dataset, encoder, store_dir or staging_store(out), url, catalog=catalog, limit=limit,
                           seed=seed, uploads="none")
            return build_from_dataset(job, out, keep_store=store_dir is not None, kind=kind, seed=seed,
                                      replace=force, progress=not quiet, ray=ray, shards=shards,
                                      ray_address=ray_address, **index_options)
        from equiprobe.clients.index_ray import build_index_ray

        return build_index_ray(store, out, shards=shards, kind=kind, seed=seed, replace=force, address=ray_address,
                               progress=not quiet, **index_options)
    except (ValueError, OSError, ServiceError) as exc:  # DatasetError, StoreError, MatchIndexError: ValueErrors
        raise fail(str(exc))


def describe_sources(meta: dict) -> str:
    """What the dataset embedding and the Ray build did, for the command's line."""
    parts = []
    if "embedding" in meta:
        e = meta["embedding"]
        parts.append(f"embedded {e['done']} images ({e['failed']} failed) into {e['store']}"
                     + (" (removed)" if meta.get("store_removed") else ""))
    if meta.get("shards"):
        parts.append(f"built as {meta['shards']} shards on Ray and merged")
    return "; ".join(parts)
