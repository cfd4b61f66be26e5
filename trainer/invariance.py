"""How invariant are the embeddings (and a probe's predictions) to each transformation?

Measured on stores, following Kvinge et al., "In what ways are deep neural networks invariant
and how should we measure this?" (NeurIPS 2022). Notation: x an image, f(x) the stored
embedding of its identity version, f(t x) that of version t, d a distance.

Normalizer M. Distances only mean something against the spread of the data, so every latent
deviation is divided by M = mean d(f(x), f(x')) over pairs of distinct evaluated images
(identity versions). M is exact over all ordered pairs when there are at most `pairs` of them
(default 2,000), otherwise estimated on `pairs` ordered pairs drawn uniformly with a fixed seed
(numpy default_rng(seed), seed 0 by default): the same rows give the same M on any machine.

Latent G-EED (invariance), with the Euclidean distance ||a - b|| and the cosine distance
1 - cos(a, b), reported for every version t other than the identity:

  - two-point orbit form, for any transformation (the catalogs' transformations are not
    groups): the orbit of x is {x, t x}, and

        G-EED(t) = E_x d(f(x), f(t x)) / M

  - finite-group form, for the groups catalog's groups (`services.transforms.groups.GROUPS`),
    averaging over the whole group G, identity e included (it contributes d = 0):

        G-EED(G) = E_x E_{g in G} d(f(x), f(g x)) / M
        C4 = {e, r90, r180, r270}:  E_x [d(f x, f r90 x) + d(f x, f r180 x) + d(f x, f r270 x)] / 4 / M
        flip = {e, h}:              E_x [d(f x, f h x) / 2] / M

    so for the flip group it is half the two-point value of `hflip`.

  0 means exactly invariant; about 1 means t moves an image as far as a different image is.

Softmax G-EED, for a trained probe p (`trainer.probes.load_probe`): the same forms with
d = KL(softmax(p(f(x))) || softmax(p(f(t x)))) in nats, reported raw and divided by the mean
KL between distinct images (KL(softmax p(f x) || softmax p(f x')), same pairs as M).

Copy-detection recall: the identity embeddings of the evaluated images, L2-normalized, in a
faiss inner-product index (cosine similarity); each transformed version t(x) is a query, and
recall@k is the fraction whose original x is among its k nearest neighbours; per
transformation and over all queries (with fewer than 10 images, @10 searches them all).

Every function reads embeddings by memory map in batches of image rows (float16 on disk,
float64 arithmetic), takes `rows` (image rows to evaluate; default the store's test split if it
has one, else every DONE row) and `max_images` (default 5,000: a subsample of those drawn with
`seed`, for speed; None for all), and returns a plain JSON-serializable dict keyed by the
store's row names (the identity row itself is left out: it is 0 and a trivial match).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from equiprobe.clients.store import DONE, Store


DEFAULT_MAX_IMAGES = 5000  # flat faiss search is quadratic in images: keep it a few seconds
DEFAULT_PAIRS = 2000
IDENTITY = "identity"
DISTANCES = ("euclidean", "cosine")
EPS = 1e-12

StoreLike = Union[Store, Path, str]


# -- which images, read how ---------------------------------------------------------------------

def open_store(store: StoreLike) -> Store:
    return store if isinstance(store, Store) else Store.open(Path(store))


def select_rows(store: StoreLike, rows: Optional[Sequence[int]] = None,
                max_images: Optional[int] = DEFAULT_MAX_IMAGES, seed: int = 0) -> np.ndarray:
    """Sorted image rows to evaluate: `rows` (all must be DONE), else the test split's DONE rows
    if there are any, else every DONE row; at most `max_images`, subsampled with `seed`."""
    store = open_store(store)
    status = np.asarray(store.array("status"))
    if rows is not None:
        chosen = np.unique(np.asarray(rows, dtype=np.int64))
        if len(chosen) and (chosen.min() < 0 or chosen.max() >= len(status)):
            raise ValueError(f"{store.path}: rows must be in 0..{len(status) - 1}")
        if (status[chosen] != DONE).any():
            raise ValueError(f"{store.path}: rows {chosen[status[chosen] != DONE][:5].tolist()} are not done "
                             "(pending or failed rows have no embeddings)")
    else:
        chosen = np.flatnonzero(status == DONE)
        test = chosen[np.asarray(store.array("split"))[chosen] == 1]
        if len(test):
            chosen = test
    if max_images is not None and len(chosen) > max_images:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, max_images, replace=False))
    if len(chosen) < 2:
        raise ValueError(f"{store.path}: {len(chosen)} image(s) to evaluate; distinct-image baselines need 2")
    return chosen


def identity_index(manifest: dict) -> int:
    if IDENTITY not in manifest["rows"]:
        raise ValueError(f"the store has no '{IDENTITY}' version to measure against")
    return manifest["rows"].index(IDENTITY)


def store_groups(manifest: dict) -> dict[str, tuple[str, ...]]:
    """The finite groups among the store's versions: those its catalog declares (only groups has any)."""
    from equiprobe.services.transforms import CATALOGS

    catalog = CATALOGS.get(manifest.get("catalog"))
    groups = catalog.groups if catalog is not None else {}
    return {name: members for name, members in groups.items() if set(members) <= set(manifest["rows"])}


def batches(store: Store, rows: np.ndarray, batch_size: int) -> Iterator[tuple[slice, np.ndarray]]:
    """(positions in `rows`, float64 [b, K, D]) image by image, front to back through the map."""
    embeddings = store.array("embeddings")
    for start in range(0, len(rows), batch_size):
        part = slice(start, start + batch_size)
        yield part, np.asarray(embeddings[rows[part]], dtype=np.float64)


def identity_embeddings(store: Store, rows: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """float64 [n, D]: f(x) of every evaluated image."""
    embeddings, k = store.array("embeddings"), identity_index(store.manifest)
    return np.concatenate([np.asarray(embeddings[rows[s:s + batch_size], k], dtype=np.float64)
                           for s in range(0, len(rows), batch_size)])


def distinct_pairs(n: int, pairs: int = DEFAULT_PAIRS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ordered pairs (i, j), i != j, of positions 0..n-1: all of them when there are at most
    `pairs`, else `pairs` drawn uniformly with `seed`."""
    if n < 2:
        raise ValueError("distinct pairs need at least 2 images")
    if n * (n - 1) <= pairs:
        i, j = np.nonzero(~np.eye(n, dtype=bool))
        return i, j
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, pairs)
    return i, (i + rng.integers(1, n, pairs)) % n  # j uniform over the others


# -- distances ------------------------------------------------------------------------------

def distances(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Euclidean and cosine distance along the last axis (broadcasting)."""
    dot = (a * b).sum(-1)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    cosine = np.clip(1.0 - dot / np.maximum(norms, EPS), 0.0, 2.0)  # clip: rounding for parallel vectors
    return {"euclidean": np.linalg.norm(a - b, axis=-1), "cosine": cosine}


def kl_divergence(logits_p: np.ndarray, logits_q: np.ndarray) -> np.ndarray:
    """KL(softmax(p) || softmax(q)) in nats along the last axis, from logits (float64)."""
    log_p = torch.log_softmax(torch.as_tensor(logits_p, dtype=torch.float64), -1)
    log_q = torch.log_softmax(torch.as_tensor(logits_q, dtype=torch.float64), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0).numpy()  # clamp: rounding below 0


def mean_pair_distance(store: StoreLike, rows: Optional[Sequence[int]] = None,
                       max_images: Optional[int] = DEFAULT_MAX_IMAGES, pairs: int = DEFAULT_PAIRS,
                       seed: int = 0) -> dict:
    """M: the mean Euclidean and cosine distance between identity embeddings of distinct images."""
    store = open_store(store)
    chosen = select_rows(store, rows, max_images, seed)
    return _normalizer(identity_embeddings(store, chosen), pairs, seed)


def _normalizer(identity: np.ndarray, pairs: int, seed: int) -> dict:
    i, j = distinct_pairs(len(identity), pairs, seed)
    d = distances(identity[i], identity[j])
    return {**{name: float(d[name].mean()) for name in DISTANCES}, "pairs": int(len(i)), "seed": seed}


def _group_forms(groups: dict[str, tuple[str, ...]], per_version_mean: dict[str, float], scale: float) -> dict:
    """E_x E_{g in G} d(f x, f g x) / scale from the per-version means (identity contributes 0)."""
    return {name: sum(per_version_mean.get(g, 0.0) for g in members) / len(members) / scale
            for name, members in groups.items()}


# -- latent G-EED -----------------------------------------------------------------------------

def latent_geed(store: StoreLike, rows: Optional[Sequence[int]] = None,
                max_images: Optional[int] = DEFAULT_MAX_IMAGES, pairs: int = DEFAULT_PAIRS, seed: int = 0,
                batch_size: int = 128) -> dict:
    """Latent G-EED per version (two-point orbit form) and per finite group (group form), with the
    Euclidean and the cosine distance, each divided by that distance's M.

    {"images", "normalizer": {"euclidean": M, "cosine": M, "pairs", "seed"},
     "per_transformation": {row: {"euclidean", "cosine", "mean_euclidean", "mean_cosine"}},
     "groups": {group: {"members": [...], "euclidean", "cosine"}}}   ("mean_*": raw E_x d)"""
    store = open_store(store)
    m = store.manifest
    chosen = select_rows(store, rows, max_images, seed)
    normalizer = _normalizer(identity_embeddings(store, chosen), pairs, seed)
    k_id = identity_index(m)
    sums = {name: np.zeros(len(m["rows"])) for name in DISTANCES}
    for _, batch in batches(store, chosen, batch_size):
        d = distances(batch[:, k_id:k_id + 1], batch)  # [b, K]
        for name in DISTANCES:
            sums[name] += d[name].sum(0)
    means = {name: sums[name] / len(chosen) for name in DISTANCES}
    versions = [k for k in range(len(m["rows"])) if k != k_id]
    per_transformation = {
        m["rows"][k]: {**{name: float(means[name][k] / normalizer[name]) for name in DISTANCES},
                       **{f"mean_{name}": float(means[name][k]) for name in DISTANCES}} for k in versions}
    groups = store_groups(m)
    forms = {name: _group_forms(groups, dict(zip(m["rows"], means[name].tolist())), normalizer[name])
             for name in DISTANCES}
    return {"images": int(len(chosen)), "normalizer": normalizer, "per_transformation": per_transformation,
            "groups": {g: {"members": list(members), **{name: float(forms[name][g]) for name in DISTANCES}}
                       for g, members in groups.items()}}


# -- softmax G-EED ---------------------------------------------------------------------------

@torch.no_grad()
def _logits(probe: nn.Module, embeddings: np.ndarray, head: int) -> np.ndarray:
    at = next(probe.parameters()).device
    x = torch.as_tensor(embeddings, dtype=torch.float32, device=at)
    out = probe(x.reshape(-1, x.shape[-1]))
    out = out[head] if isinstance(out, tuple) else out  # a multi-task probe returns one logit set per head
    return out.double().cpu().numpy().reshape(*x.shape[:-1], -1)


def softmax_geed(probe: nn.Module, store: StoreLike, rows: Optional[Sequence[int]] = None,
                 max_images: Optional[int] = DEFAULT_MAX_IMAGES, pairs: int = DEFAULT_PAIRS, seed: int = 0,
                 batch_size: int = 128, head: int = 0) -> dict:
    """Per version, E_x KL(softmax p(f x) || softmax p(f t x)) raw ("kl") and divided by the mean KL
    between distinct images ("normalized"); per finite group, the group form of both. `probe` takes
    raw embeddings (`load_probe`); for a multi-task probe, `head` picks the task.

    {"images", "normalizer": {"kl": mean distinct-image KL, "pairs", "seed"},
     "per_transformation": {row: {"kl", "normalized"}}, "groups": {group: {"members", "kl", "normalized"}}}"""
    store = open_store(store)
    m = store.manifest
    if int(probe.mean.shape[0]) != int(m["dim"]):
        raise ValueError(f"the probe takes {probe.mean.shape[0]}-dimensional embeddings; "
                         f"{store.path} has {m['dim']}")
    probe.eval()
    chosen = select_rows(store, rows, max_images, seed)
    k_id = identity_index(m)
    identity_logits = _logits(probe, identity_embeddings(store, chosen), head)
    i, j = distinct_pairs(len(chosen), pairs, seed)
    scale = float(kl_divergence(identity_logits[i], identity_logits[j]).mean())
    sums = np.zeros(len(m["rows"]))
    for _, batch in batches(store, chosen, batch_size):
        logits = _logits(probe, batch, head)  # [b, K, C]; f(x)'s logits from the same call, so e gives exactly 0
        sums += kl_divergence(logits[:, k_id:k_id + 1], logits).sum(0)
    means = sums / len(chosen)
    per_transformation = {m["rows"][k]: {"kl": float(means[k]), "normalized": float(means[k] / max(scale, EPS))}
                          for k in range(len(m["rows"])) if k != k_id}
    groups = store_groups(m)
    raw = _group_forms(groups, dict(zip(m["rows"], means.tolist())), 1.0)
    return {"images": int(len(chosen)), "normalizer": {"kl": scale, "pairs": int(len(i)), "seed": seed},
            "per_transformation": per_transformation,
            "groups": {g: {"members": list(members), "kl": float(raw[g]),
                           "normalized": float(raw[g] / max(scale, EPS))} for g, members in groups.items()}}


# -- copy detection ----------------------------------------------------------------------------

def _unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS), dtype=np.float32)


def copy_detection_recall(store: StoreLike, rows: Optional[Sequence[int]] = None,
                          max_images: Optional[int] = DEFAULT_MAX_IMAGES, seed: int = 0,
                          batch_size: int = 128) -> dict:
    """Recall@1 and @10 of finding x's identity embedding from f(t x) among the evaluated images
    (cosine similarity, exact faiss search), per version and over all queries.

    {"images", "per_transformation": {row: {"recall@1", "recall@10"}}, "overall": {"recall@1", "recall@10"}}"""
    import faiss

    store = open_store(store)
    m = store.manifest
    chosen = select_rows(store, rows, max_images, seed)
    k_id = identity_index(m)
    identity = _unit(identity_embeddings(store, chosen))
    index = faiss.IndexFlatIP(identity.shape[1])
    index.add(identity)
    depth = min(10, len(chosen))
    versions = [k for k in range(len(m["rows"])) if k != k_id]
    hits = {1: np.zeros(len(m["rows"])), 10: np.zeros(len(m["rows"]))}
    for part, batch in batches(store, chosen, batch_size):
        queries = _unit(batch[:, versions])  # [b, V, D]
        b = len(queries)
        _, found = index.search(queries.reshape(-1, queries.shape[-1]), depth)
        found = found.reshape(b, len(versions), depth)
        truth = np.arange(part.start, part.start + b)[:, None, None]
        hits[1][versions] += (found[..., :1] == truth).any(-1).sum(0)
        hits[10][versions] += (found == truth).any(-1).sum(0)
    n = len(chosen)
    return {"images": int(n),
            "per_transformation": {m["rows"][k]: {"recall@1": float(hits[1][k] / n),
                                                  "recall@10": float(hits[10][k] / n)} for k in versions},
            "overall": {"recall@1": float(hits[1][versions].sum() / (n * len(versions))),
                        "recall@10": float(hits[10][versions].sum() / (n * len(versions)))}}
