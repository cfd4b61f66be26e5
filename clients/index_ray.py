"""`equiprobe index build --ray [--shards N]`: an index built across the nodes of a Ray cluster.

Each of N Ray tasks builds shard i/N of the stores (`build_index(..., shard="i/N")`: the i-th
contiguous slice of their done, de-duplicated rows, exact) into a directory beside OUT; the
driver then joins them with `merge_indexes` into the kind asked for (the index one build would
have made: same ids, keys and answers) and removes the shards. Every node must read the stores,
and the driver the shards, at the same paths: a shared filesystem, as for `embed --ray`'s
refresh. Only paths travel through Ray, never vectors.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

from equiprobe.services.match_index import MatchIndexError


def build_shard(store_paths: list[str], out: str, shard: str, seed: int) -> str:
    """One Ray task: shard `shard` of the stores, written to `out` (its path returned)."""
    from equiprobe.clients.index_build import build_index

    build_index([Path(p) for p in store_paths], Path(out), shard=shard, seed=seed, replace=True, progress=False)
    return out


def count_rows(store_paths: Sequence[Path]) -> int:
    """The done, de-duplicated rows a build over the stores would index."""
    from .index_build import locate, open_stores

    stores = open_stores(store_paths)
    return len(locate(stores, range(len(stores)))[1])


def build_index_ray(store_paths: Sequence[Path], out: Path, shards: Optional[int] = None, kind: str = "auto",
                    seed: int = 0, replace: bool = False, address: Optional[str] = None, progress: bool = True) -> dict:
    """Build N shard indexes of the stores as Ray tasks (N: `shards`, default the cluster's CPUs;
    at most the rows to index) and merge them into `out`; the merged index's metadata, with
    "shards". Joins the cluster at `address` (or RAY_ADDRESS), or starts a local one, unless Ray
    is initialized already."""
    import ray

    out = Path(out)
    if out.exists() and not replace:
        raise MatchIndexError(f"{out} exists; refusing to overwrite it")
    if shards is not None and shards < 1:
        raise MatchIndexError(f"--shards {shards}: at least 1")
    paths = [str(Path(p).resolve()) for p in store_paths]
    total = count_rows(paths)  # also checks the stores before any task starts
    if not total:
        raise MatchIndexError("no done rows to index in " + ", ".join(paths))
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), ignore_reinit_error=True,
                 include_dashboard=False, log_to_driver=False)
    n = min(total, shards or max(1, int(ray.cluster_resources().get("CPU", 1))))
    work = out.parent / f".{out.name}.shards-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    task = ray.remote(num_cpus=1)(build_shard)
    try:
        refs = [task.remote(paths, str(work / f"shard-{i}"), f"{i}/{n}", seed) for i in range(n)]
        try:
            built = ray.get(refs)
        except ray.exceptions.RayTaskError as exc:  # the task's own error (a store gone, say), unwrapped
            raise exc.cause from None
        from .index_build import merge_indexes

        meta = merge_indexes([Path(p) for p in built], out, kind=kind, seed=seed, replace=replace, progress=progress)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if started:
            ray.shutdown()
    return {**meta, "shards": n}
