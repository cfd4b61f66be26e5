"""Builds match indexes (`services/match_index.py`) from embedding stores.

The reference vector of an image is its identity version's embedding, L2-normalised, keyed by
the store's key; only DONE rows are indexed, and a key met twice (in two stores, or already in
the index) is indexed once, the first time, the others counted as skipped. Stores are read by
memory map, CHUNK rows of the identity column at a time, never whole.

Recall (approximate kinds): QUERY_IMAGES indexed images are drawn with a fixed seed, and their
non-identity versions (at most MAX_QUERIES queries in all; a store holding only the identity
gives slightly perturbed identities instead) are searched in the index and, exactly, among
every indexed vector during the same pass that adds them: recall@k is the fraction of queries
whose exact nearest neighbour is in the approximate top k, match@1 the fraction whose own image
comes first.

Sharded builds: `--shard i/n` indexes the i-th of n contiguous slices of the DONE, de-duplicated
rows of the stores, always exactly (flat); `merge_indexes` joins the shards in order (the ids of
one build over the same stores) and builds the asked kind over them.

References: every build, add and merge also writes references.npy [N, W] float16, each indexed
image's identity embedding as stored (not normalised) followed by its identity FEATURES where
the stores hold them (W = dim + features_dim; every store of an index has the same
features_dim): what the reference-aware probe (trainer/match_probe.py) compares an upload with.
They are read CHUNK rows at a time too.

The copy projection (`build --projection-from STORE`, clients/index_projection.py): the faiss
vectors are unit(projection(reference)) (references.npy stays raw), the recall queries are
projected the same way, `add` projects new references with the index's projection.npz, and
`merge` needs every shard to carry the same file, byte for byte (a Ray build learns it once).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from equiprobe.clients.store import DONE, Store
from equiprobe.services import match_index as mx
from equiprobe.services.match_index import PROJECTION, MatchIndexError
from equiprobe.services.match_projection import DIM as PROJECTION_DIM
from equiprobe.services.match_projection import Projection

from .index_projection import learn_projection, load_learned_projection
from .index_stores import encoder_fields, full_columns, identity_column, open_stores, read_versions, reference_width

CHUNK = 4096
QUERY_IMAGES = 500
MAX_QUERIES = 2000
PERTURBATION = 0.1  # a perturbed identity query: + Gaussian noise of this norm (on the unit vector)
RECALL_DEPTH = 10


# -- stores -------------------------------------------------------------------------------------

def store_entry(store: Store, images: int) -> dict:
    m = store.manifest
    return {"path": str(Path(store.path).resolve()), "images": int(images), "rows": int(m.get("count") or 0),
            "catalog": m.get("catalog"), "catalog_version": m.get("catalog_version"), "dataset": m.get("dataset"),
            "versions": len(m.get("rows") or []), "shard": m.get("shard"), "seed": m.get("seed"),
            "uploads": m.get("uploads")}


def locate(stores: Sequence[Store], store_ids: Sequence[int], known: Optional[np.ndarray] = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(store ids, rows, keys, skipped) of the DONE rows of `stores` (numbered `store_ids`), in
    store then row order, each key once: not in `known` and not seen earlier."""
    ids, rows, keys = [], [], []
    for sid, store in zip(store_ids, stores):
        done = np.flatnonzero(np.asarray(store.array("status")) == DONE)
        key_map = store.array("keys")
        for start in range(0, len(done), CHUNK):
            keys.append(np.asarray(key_map[done[start:start + CHUNK]]))
        ids.append(np.full(len(done), sid, dtype=np.int32))
        rows.append(done.astype(np.int64))
    ids_a = np.concatenate(ids) if ids else np.zeros(0, np.int32)
    rows_a = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    keys_a = np.concatenate(keys) if keys else np.zeros(0, "<U1")
    keep = np.zeros(len(keys_a), dtype=bool)
    if len(keys_a):
        keep[np.unique(keys_a, return_index=True)[1]] = True  # the first of each key
    if known is not None and len(known) and len(keys_a):
        keep &= ~np.isin(keys_a, known)
    skipped = int((~keep).sum())
    keys_a = keys_a[keep]
    if len(keys_a):
        keys_a = keys_a.astype(f"<U{max(1, int(np.char.str_len(keys_a).max()))}")
    return ids_a[keep], rows_a[keep], keys_a, skipped


def parse_shard(shard: Optional[str]) -> Optional[tuple[int, int]]:
    if not shard:
        return None
    try:
        i, n = (int(p) for p in shard.split("/"))
    except ValueError:
        raise MatchIndexError(f"--shard {shard!r}: expected I/N, such as 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise MatchIndexError(f"--shard {shard!r}: I must be in 0..N-1")
    return i, n


# -- readers: vectors by id ---------------------------------------------------------------------

@dataclass
class StoreReader:
    """The identity vectors of located rows, by position, read from the stores' memory maps
    (with a projection: unit(projection(reference)), the reference as references.npy holds it)."""
    stores: Sequence[Store]  # indexed by store id
    store_ids: np.ndarray
    rows: np.ndarray
    projection: Optional[Projection] = None

    def __post_init__(self):
        self.columns = {sid: identity_column(s) for sid, s in enumerate(self.stores) if s is not None}
        self.maps = {}

    @property
    def count(self) -> int:
        return len(self.rows)

    def take(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if self.projection is not None:
            return mx.unit(self.projection(self.references(positions).astype(np.float32)))
        out = None
        sids = self.store_ids[positions]
        for sid in np.unique(sids):
            where = np.flatnonzero(sids == sid)
            if sid not in self.maps:
                self.maps[sid] = self.stores[sid].array("embeddings")
            block = np.asarray(self.maps[sid][self.rows[positions[where]], self.columns[sid]], dtype=np.float32)
            if out is None:
                out = np.zeros((len(positions), block.shape[-1]), dtype=np.float32)
            out[where] = block
        return mx.unit(out if out is not None else np.zeros((0, 1), np.float32))

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.count, size):
            yield start, self.take(np.arange(start, min(start + size, self.count)))

    def references(self, positions: np.ndarray) -> np.ndarray:
        """float16 [b, W]: the identity embeddings as stored, then their identity FEATURES (if any)."""
        positions = np.asarray(positions, dtype=np.int64)
        out = None
        sids = self.store_ids[positions]
        for sid in np.unique(sids):
            where = np.flatnonzero(sids == sid)
            store, rows = self.stores[sid], self.rows[positions[where]]
            block = np.concatenate([np.asarray(c[rows, self.columns[sid]], dtype=np.float16)
                                    for c in full_columns(store)], 1)
            if out is None:
                out = np.zeros((len(positions), block.shape[-1]), dtype=np.float16)
            out[where] = block
        return out if out is not None else np.zeros((0, 1), np.float16)

    def reference_chunks(self, size: int = CHUNK) -> Iterator[np.ndarray]:
        for start in range(0, self.count, size):
            yield self.references(np.arange(start, min(start + size, self.count)))


def memmap_chunks(references: np.ndarray, size: int = CHUNK) -> Iterator[np.ndarray]:
    """An index's references.npy (a memory map), CHUNK rows at a time."""
    for start in range(0, len(references), size):
        yield np.asarray(references[start:start + size])


def index_references(index: mx.MatchIndex, against: dict, name: str) -> Iterator[np.ndarray]:
    """The references of an index's vectors in id order: its references.npy, or, for an index
    written before references existed, read from its source stores (they must still be there)."""
    if index.references is not None:
        return memmap_chunks(index.references)
    stores = open_stores([e["path"] for e in index.meta["stores"]], against=against, against_name=name)
    return StoreReader(stores, index.store_ids, index.rows).reference_chunks()


@dataclass
class IndexReader:
    """The vectors of exact (flat) shard indexes, one after the other, by position."""
    indexes: Sequence

    def __post_init__(self):
        self.offsets = np.cumsum([0] + [ix.ntotal for ix in self.indexes])

    @property
    def count(self) -> int:
        return int(self.offsets[-1])

    def take(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        out = np.zeros((len(positions), self.indexes[0].d), dtype=np.float32)
        part = np.searchsorted(self.offsets, positions, side="right") - 1
        for p in np.unique(part):
            where = np.flatnonzero(part == p)
            out[where] = self.indexes[p].reconstruct_batch(positions[where] - self.offsets[p])
        return out

    def chunks(self, size: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        for p, ix in enumerate(self.indexes):
            for start in range(0, ix.ntotal, size):
                n = min(size, ix.ntotal - start)
                yield int(self.offsets[p] + start), ix.reconstruct_n(start, n)


# -- queries and recall -------------------------------------------------------------------------

def sample_queries(reader: StoreReader, seed: int = 0, images: int = QUERY_IMAGES,
                   max_queries: int = MAX_QUERIES) -> tuple[np.ndarray, np.ndarray, str]:
    """(queries [Q, search dim], the id of each query's own image, what they are) for `images`
    indexed images drawn with `seed`: their non-identity versions, at most max_queries in all
    (W wide and projected, where the reader has a projection)."""
    rng = np.random.default_rng(seed)
    n = reader.count
    positions = np.sort(rng.choice(n, min(n, images), replace=False))
    per_image = max(1, max_queries // max(1, len(positions)))
    queries, owners, kinds = [], [], set()
    sids = reader.store_ids[positions]
    project = reader.projection
    for sid in np.unique(sids):
        chosen = positions[sids == sid]
        store, identity = reader.stores[sid], reader.columns[sid]
        others = [k for k in range(len(store.manifest["rows"])) if k != identity]
        embeddings = store.array("embeddings")
        for start in range(0, len(chosen), 256):
            part = chosen[start:start + 256]
            if project is None:
                block = np.asarray(embeddings[reader.rows[part]], dtype=np.float32)  # [b, K, D]
            else:  # [b, K, W] -> [b, K, d]
                block = project(read_versions(store, reader.rows[part]))
            for j, position in enumerate(part):
                if others:
                    picks = rng.choice(others, min(per_image, len(others)), replace=False)
                    queries.append(block[j, np.sort(picks)])
                    kinds.add("non-identity versions")
                else:
                    base = mx.unit(block[j, identity][None])
                    noise = rng.normal(size=base.shape).astype(np.float32)
                    queries.append(base + PERTURBATION * mx.unit(noise))
                    kinds.add("perturbed identity versions")
                owners.append(np.full(len(queries[-1]), position, dtype=np.int64))
    if not queries:
        return np.zeros((0, 1), np.float32), np.zeros(0, np.int64), "none"
    return mx.unit(np.concatenate(queries)), np.concatenate(owners), " and ".join(sorted(kinds))


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=True)


def populate(index, reader, kind: str, params: dict, exact: Optional[mx.ExactTopK] = None, seed: int = 0,
             progress: bool = True, label: str = "indexing") -> None:
    """Train `index` where it needs it and is untrained (on a fixed-seed sample of the reader's
    vectors), then add every vector chunk by chunk, updating `exact` with each chunk."""
    if not index.is_trained:
        size = mx.train_size(kind, reader.count, params.get("nlist", 1))
        sample = np.sort(np.random.default_rng(seed).choice(reader.count, size, replace=False))
        index.train(np.concatenate([reader.take(sample[s:s + CHUNK]) for s in range(0, len(sample), CHUNK)]))
    with _progress(progress) as bar:
        task = bar.add_task(label, total=reader.count)
        for start, vectors in reader.chunks():
            index.add(vectors)
            if exact is not None:
                exact.update(vectors, start)
            bar.advance(task, len(vectors))


def exact_pass(reader, queries: np.ndarray, progress: bool, label: str = "exact search for recall") -> mx.ExactTopK:
    exact = mx.ExactTopK(queries, RECALL_DEPTH)
    with _progress(progress) as bar:
        task = bar.add_task(label, total=reader.count)
        for start, vectors in reader.chunks():
            exact.update(vectors, start)
            bar.advance(task, len(vectors))
    return exact


def measure(index, queries: np.ndarray, owners: np.ndarray, exact: mx.ExactTopK, queries_from: str) -> dict:
    _, approx = index.search(queries, min(RECALL_DEPTH, index.ntotal))
    return mx.recall_figures(approx, exact, owners, queries_from)


def _meta(fields: dict, kind: str, params: dict, entries: list[dict], recall: Optional[dict], **more) -> dict:
    catalogs = sorted({f"{e['catalog']}/{e['catalog_version']}" for e in entries})
    return {**fields, "kind": kind, "params": params, "stores": entries, "catalogs": catalogs,
            "recall": recall, **more}


# -- build, add, merge --------------------------------------------------------------------------

def build_index(store_paths: Sequence[Path], out: Path, kind: str = "auto", shard: Optional[str] = None,
                seed: int = 0, replace: bool = False, progress: bool = True, projection_from: Optional[Path] = None,
                projection_dim: int = PROJECTION_DIM, exclude_keys: Optional[Sequence[str]] = None,
                learned: Optional[Path] = None) -> dict:
    """Index the identity versions of the stores' DONE rows into the directory `out`; returns
    its metadata (with "skipped_duplicates"). `projection_from`: a store of the same encoder whose
    training sources teach the copy projection (projection_dim dims) the vectors are indexed in;
    or `learned`: a directory where save_learned_projection put one already (shards of one build
    share it). `exclude_keys`: images kept out of the index (held-out new photos for an evaluation)."""
    out = Path(out)
    if out.exists() and not replace:
        raise MatchIndexError(f"{out} exists; refusing to overwrite it (add to it with `index add`, or remove it)")
    stores = open_stores(store_paths)
    sids, rows, keys, skipped = locate(stores, range(len(stores)))
    excluded = 0
    if exclude_keys:
        keep = ~np.isin(keys, np.asarray(sorted(exclude_keys)))
        excluded = int((~keep).sum())
        sids, rows, keys = sids[keep], rows[keep], keys[keep]
    parsed = parse_shard(shard)
    total = len(rows)
    if parsed:
        if kind not in ("auto", "flat"):
            raise MatchIndexError(f"a shard is always exact (flat); give --kind {kind} to `index merge`")
        i, n = parsed
        part = slice(i * total // n, (i + 1) * total // n)
        sids, rows, keys = sids[part], rows[part], keys[part]
        kind = "flat"
    if not len(rows):
        raise MatchIndexError("no done rows to index in " + ", ".join(str(p) for p in store_paths)
                              + (f" (shard {shard})" if parsed else ""))
    fields = encoder_fields(stores[0].manifest)
    projection, projection_meta = None, None
    if learned is not None:
        projection, projection_meta = load_learned_projection(learned)
    elif projection_from is not None:
        projection, projection_meta = learn_projection(projection_from, fields, f"store {stores[0].path}",
                                                       projection_dim)
    search_dim = projection.dim if projection is not None else fields["dim"]
    kind = mx.choose_kind(len(rows), kind)
    params = mx.kind_params(kind, len(rows), search_dim)
    index = mx.new_index(kind, search_dim, params)
    reader = StoreReader(stores, sids, rows, projection)
    recall, exact = None, None
    if kind != "flat":
        queries, owners, queries_from = sample_queries(reader, seed)
        exact = mx.ExactTopK(queries, RECALL_DEPTH)
    populate(index, reader, kind, params, exact, seed, progress)
    if exact is not None:
        recall = measure(index, queries, owners, exact, queries_from)
    counts = np.bincount(sids, minlength=len(stores))
    meta = _meta(fields, kind, params, [store_entry(s, c) for s, c in zip(stores, counts)], recall,
                 shard=f"{parsed[0]}/{parsed[1]}" if parsed else None, shard_of=int(total) if parsed else None,
                 seed=seed, skipped_duplicates=skipped, projection=projection_meta, excluded_keys=excluded)
    return mx.write_index(out, index, keys, sids, rows, meta, replace=replace, references=reader.reference_chunks(),
                          reference_width=reference_width(fields), projection=projection)


def add_to_index(index_path: Path, store_path: Path, seed: int = 0, progress: bool = True) -> dict:
    """Append a store's DONE identity vectors whose keys are not indexed yet, and rewrite the
    index atomically; returns the new metadata with "added" and "skipped_duplicates"."""
    current = mx.MatchIndex.open(index_path)
    meta = current.meta
    if meta.get("shard"):
        raise MatchIndexError(f"{index_path} is shard {meta['shard']}; merge the shards (`index merge`) before adding")
    (store,) = open_stores([store_path], against=meta, against_name=f"index {index_path}")
    entries = [dict(e) for e in meta["stores"]]
    path = str(Path(store.path).resolve())
    paths = [e["path"] for e in entries]
    sid = paths.index(path) if path in paths else len(entries)
    new_sids, new_rows, new_keys, skipped = locate([store], [sid], known=current.keys)
    if sid == len(entries):
        entries.append(store_entry(store, 0))
    entries[sid]["images"] = int(entries[sid]["images"]) + len(new_rows)
    kind, params = meta["kind"], meta.get("params") or {}
    index = current.index
    stores: list = [None] * len(entries)
    stores[sid] = store
    projection = current.projection  # new references go through the index's own projection
    populate(index, StoreReader(stores, new_sids, new_rows, projection), kind, params, None, seed, progress,
             "adding")
    keys = np.concatenate([current.keys.astype(str), new_keys.astype(str)]) if len(new_keys) else current.keys
    sids = np.concatenate([current.store_ids, new_sids]).astype(np.int32)
    rows = np.concatenate([current.rows, new_rows])
    recall = meta.get("recall")
    if kind != "flat" and len(new_rows):
        all_stores = open_stores([e["path"] for e in entries], against=meta, against_name=f"index {index_path}")
        reader = StoreReader(all_stores, sids, rows, projection)
        queries, owners, queries_from = sample_queries(reader, seed)
        recall = measure(index, queries, owners, exact_pass(reader, queries, progress), queries_from)
    new_meta = {**meta, "stores": entries, "recall": recall,
                "catalogs": sorted({f"{e['catalog']}/{e['catalog_version']}" for e in entries}),
                "skipped_duplicates": int(meta.get("skipped_duplicates") or 0) + skipped}
    if not len(new_rows):
        return {**meta, "added": 0, "skipped_duplicates": skipped}
    fields = encoder_fields(store.manifest)
    references = itertools.chain(index_references(current, meta, f"index {index_path}"),
                                 StoreReader(stores, new_sids, new_rows).reference_chunks())
    # the probe stays: it was trained for this encoder and these source stores
    new_meta["features_dim"] = fields["features_dim"]
    written = mx.write_index(Path(index_path), index, keys, sids, rows, new_meta, replace=True, references=references,
                             reference_width=reference_width(fields), keep=(mx.PROBE_DIR,),
                             projection=current.path / PROJECTION if projection is not None else None)
    return {**written, "added": int(len(new_rows)), "skipped_duplicates": skipped}


def merge_indexes(shard_paths: Sequence[Path], out: Path, kind: str = "auto", seed: int = 0,
                  replace: bool = False, progress: bool = True) -> dict:
    """Join shard indexes 0/n .. n-1/n (built by `build_index(shard=...)` over the same stores)
    into the index one build would have made, of `kind` (chosen on the joined count)."""
    out = Path(out)
    if out.exists() and not replace:
        raise MatchIndexError(f"{out} exists; refusing to overwrite it")
    shards = [mx.MatchIndex.open(p) for p in shard_paths]
    first = shards[0]
    parsed = []
    for shard in shards:
        if not shard.meta.get("shard"):
            raise MatchIndexError(f"{shard.path} is not a shard (built without --shard)")
        parsed.append(parse_shard(shard.meta["shard"]))
        mx.check_compatible(first.meta, shard.meta, f"shard {first.path}", f"shard {shard.path}")
        if [e["path"] for e in shard.meta["stores"]] != [e["path"] for e in first.meta["stores"]]:
            raise MatchIndexError(f"shards {first.path} and {shard.path} were built from different stores")
        digests = [(s.meta.get("projection") or {}).get("sha256") if s.projection is not None else None
                   for s in (first, shard)]
        if digests[0] != digests[1]:
            raise MatchIndexError(f"shards {first.path} and {shard.path} carry different copy projections ({PROJECTION}"
                                  f" sha256 {digests[0] or 'none'} and {digests[1] or 'none'}); build every shard "
                                  "with the same --projection-from and --projection-dim")
    n = parsed[0][1]
    order = sorted(range(len(shards)), key=lambda j: parsed[j][0])
    if sorted(p[0] for p in parsed) != list(range(n)) or any(p[1] != n for p in parsed):
        raise MatchIndexError(f"shards {', '.join(s.meta['shard'] for s in shards)}: expected each of 0/{n} .. "
                              f"{n - 1}/{n} once")
    shards = [shards[j] for j in order]
    keys = np.concatenate([s.keys.astype(str) for s in shards])
    sids = np.concatenate([s.store_ids for s in shards]).astype(np.int32)
    rows = np.concatenate([s.rows for s in shards])
    if len(np.unique(keys)) != len(keys):
        raise MatchIndexError("the shards share keys; were they built from the same stores with the same --shard N?")
    fields = {f: first.meta.get(f) for f in ("encoder", "encoder_onnx_sha256", "dim", "encoder_precision")}
    fields["features_dim"] = int(first.meta.get("features_dim") or 0)
    kind = mx.choose_kind(len(keys), kind)
    params = mx.kind_params(kind, len(keys), first.search_dim)
    index = mx.new_index(kind, first.search_dim, params)
    reader = IndexReader([s.index for s in shards])
    recall, exact = None, None
    if kind != "flat":
        stores = open_stores([e["path"] for e in first.meta["stores"]], against=first.meta,
                             against_name=f"shard {first.path}")
        queries, owners, queries_from = sample_queries(StoreReader(stores, sids, rows, first.projection), seed)
        exact = mx.ExactTopK(queries, RECALL_DEPTH)
    populate(index, reader, kind, params, exact, seed, progress, "merging")
    if exact is not None:
        recall = measure(index, queries, owners, exact, queries_from)
    counts = np.bincount(sids, minlength=len(first.meta["stores"]))
    entries = [{**e, "images": int(c)} for e, c in zip(first.meta["stores"], counts)]
    meta = _meta(fields, kind, params, entries, recall, shard=None, merged_shards=n, seed=seed,
                 skipped_duplicates=int(first.meta.get("skipped_duplicates") or 0),
                 projection=first.meta.get("projection") if first.projection is not None else None)
    references = itertools.chain.from_iterable(index_references(s, first.meta, f"shard {s.path}") for s in shards)
    return mx.write_index(out, index, keys, sids, rows, meta, replace=replace, references=references,
                          reference_width=reference_width(fields),
                          projection=first.path / PROJECTION if first.projection is not None else None)
