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
from equiprobe.services.match_projection import DIM as PROJECTION_DIM


def build_shard(store_paths: list[str], out: str, shard: str, seed: int, learned: Optional[str] = None,
                exclude_keys: Optional[list[str]] = None) -> str:
    """One Ray task: shard `shard` of the stores, written to `out` (its path returned); `learned`:
    the build's copy projection, learned once by the driver."""
    from equiprobe.clients.index_build import build_index

    build_index([Path(p) for p in store_paths], Path(out), shard=shard, seed=seed, replace=True, progress=False,
                learned=Path(learned) if learned else None, exclude_keys=exclude_keys)
    return out


def count_rows(store_paths: Sequence[Path], exclude_keys: Optional[Sequence[str]] = None) -> int:
    """The done, de-duplicated rows a build over the stores would index."""
    import numpy as np

    from .index_build import locate
    from .index_stores import open_stores

    stores = open_stores(store_paths)
    keys = locate(stores, range(len(stores)))[2]
    return int((~np.isin(keys, np.asarray(sorted(exclude_keys or []), dtype=str))).sum())


def build_index_ray(store_paths: Sequence[Path], out: Path, shards: Optional[int] = None, kind: str = "auto",
                    seed: int = 0, replace: bool = False, address: Optional[str] = None, progress: bool = True,
                    projection_from: Optional[Path] = None, projection_dim: int = PROJECTION_DIM,
                    exclude_keys: Optional[Sequence[str]] = None) -> dict:
    """Build N shard indexes of the stores as Ray tasks (N: `shards`, default the cluster's CPUs;
    at most the rows to index) and merge them into `out`; the merged index's metadata, with
    "shards". Joins the cluster at `address` (or RAY_ADDRESS), or starts a local one, unless Ray
    is initialized already. `projection_from` (build_index's) is learned once, here, and every
    shard reads it; `exclude_keys` are left out of every shard."""
    import ray

    out = Path(out)
    if out.exists() and not replace:
        raise MatchIndexError(f"{out} exists; refusing to overwrite it")
    if shards is not None and shards < 1:
        raise MatchIndexError(f"--shards {shards}: at least 1")
    paths = [str(Path(p).resolve()) for p in store_paths]
    exclude = sorted(exclude_keys) if exclude_keys else None
    total = count_rows(paths, exclude)  # also checks the stores before any task starts
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
        learned = None
        if projection_from is not None:  # once, so that every shard carries the same projection.npz
            from .index_projection import save_learned_projection

            learned = str(save_learned_projection(paths, Path(projection_from), work / "projection", projection_dim))
        refs = [task.remote(paths, str(work / f"shard-{i}"), f"{i}/{n}", seed, learned, exclude) for i in range(n)]
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
