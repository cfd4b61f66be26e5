"""`equiprobe bench match`: what matching costs, side by side in one run (docs/match.md, "Benchmark").

On one loopback server over a repository with an index deployed (`deploy --index`):

- `NAME_matcher` (upload -> NAME_embed's steps -> NAME_match: faiss top k, the probe for copies)
  against `NAME_embed` alone, both through gRPC at each concurrency, alternating `repeats`
  times, each keeping its fastest pass (as `bench detector` does): what matching adds;
- faiss search alone, in-process, on the same images' served embeddings (MatchIndex.search, the
  served k), one query a call and in batches: the search's own share;
- the index's memory per million images for flat, ivf and ivfpq, from `index info`'s figures
  (describe_memory) of small indexes of synthetic unit vectors of the encoder's dim, each
  written at two sizes with the same trained quantizers: the bytes a vector adds (measured)
  times a million, plus the fixed part (coarse centroids, PQ codebooks) at the parameters
  `auto` would pick for a million images: extrapolated, not measured at that size.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .harness import Measurement, bench_server, fastest_alternating, in_flight, summarize, through_triton

MEMORY_KINDS = ("flat", "ivf", "ivfpq")
MILLION = 1_000_000


def through_matcher(url: str, encoder: str, images: list[bytes], concurrency: int) -> Measurement:
    """`concurrency` client threads, each with its own gRPC Matcher, share the images (as
    through_triton does for NAME_embed)."""
    from equiprobe.clients.matching import Matcher

    matchers = [Matcher(url, encoder) for _ in range(concurrency)]
    return in_flight("triton-grpc matcher", [(m, m.match) for m in matchers], images)


def matcher_vs_embed(url: str, encoder: str, images: list[bytes], levels=(1, 8), repeats: int = 2) -> list[dict]:
    """Per concurrency: NAME_matcher and NAME_embed, alternating, the fastest pass of each."""
    rows = []
    for level in levels:
        best = fastest_alternating({"matcher": lambda: through_matcher(url, encoder, images, level),
                                    "embed": lambda: through_triton(url, encoder, images, level, "embed")}, repeats)
        m, e = best["matcher"], best["embed"]
        rows.append({"level": level, **{side: x.as_dict() for side, x in best.items()},
                     "throughput_ratio": m.images_per_s / e.images_per_s,
                     "added_ms_per_image": 1000 / m.images_per_s - 1000 / e.images_per_s})
    return rows


def served_embeddings(url: str, encoder: str, images: list[bytes], width: Optional[int] = None) -> np.ndarray:
    """The queries NAME_match gets, from NAME_embed: [n, D] EMBEDDINGs, or [n, W] EMBEDDING then
    FEATURES where the index searches both (`width`: MatchIndex.query_width, a projected index)."""
    from equiprobe.clients.embedding import EmbeddingClient

    client = EmbeddingClient(url, encoder)
    try:
        if width is None:
            return np.stack([client.embed(data) for data in images])
        return np.stack([np.concatenate(client.features(data)) for data in images])[:, :width]
    finally:
        client.close()


def faiss_alone(index_path: Path, queries: np.ndarray, k: int, batches=(1, 32), repeats: int = 3) -> list[dict]:
    """MatchIndex.search of the queries in-process, `batch` queries a call: queries/s (the best
    of `repeats` passes) and the latency of a call."""
    from equiprobe.services.match_index import MatchIndex

    index = MatchIndex.open(index_path)
    rows = []
    for batch in batches:
        calls = [queries[i:i + batch] for i in range(0, len(queries), batch)]
        index.search(calls[0], k)  # warm-up
        best = None
        for _ in range(repeats):
            latencies = []
            start = time.perf_counter()
            for q in calls:
                t0 = time.perf_counter()
                index.search(q, k)
                latencies.append(time.perf_counter() - t0)
            m = summarize("in-process faiss", batch, len(queries), time.perf_counter() - start, latencies)
            best = m if best is None or m.seconds < best.seconds else best
        rows.append(best.as_dict() | {"kind": index.meta["kind"], "count": index.count, "k": k})
    return rows


def memory_per_million(dim: int, key_chars: int, sizes: tuple[int, int] = (10_000, 20_000), seed: int = 0) -> list[dict]:
    """Per kind: `index info`'s memory figures (describe_memory) of synthetic indexes of `dim`-dim
    unit vectors keyed by `key_chars`-character keys, written at both sizes with the same trained
    index, and the extrapolation to a million images (see the module's docstring)."""
    from equiprobe.services import match_index as mx

    small, large = sizes
    rng = np.random.default_rng(seed)
    vectors = mx.unit(rng.normal(size=(large, dim)).astype(np.float32))
    keys = np.array([f"{i:0{key_chars}d}"[-key_chars:] for i in range(large)])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in MEMORY_KINDS:
            params = mx.kind_params(kind, large, dim)
            index = mx.new_index(kind, dim, params)
            if not index.is_trained:
                index.train(vectors[:mx.train_size(kind, large, params.get("nlist", 1))])
            figures, start = [], 0
            for n in sizes:
                index.add(vectors[start:n])
                start = n
                meta = {"encoder": "synthetic", "encoder_onnx_sha256": "0" * 64, "dim": dim, "kind": kind,
                        "params": params, "stores": [], "recall": None}
                written = mx.write_index(Path(tmp) / f"{kind}-{n}", index, keys[:n], np.zeros(n, np.int32),
                                         np.arange(n, dtype=np.int64), meta)
                figures.append(mx.describe_memory(written))
            (a, b) = figures
            index_per_vector = (b["index_bytes"] - a["index_bytes"]) / (large - small)
            side_per_vector = (b["keys_and_locations_bytes"] - a["keys_and_locations_bytes"]) / (large - small)
            fixed_small = b["index_bytes"] - index_per_vector * large  # quantizers, codebooks, headers
            params_1m = mx.kind_params(kind, MILLION, dim)
            extra_lists = params_1m.get("nlist", 0) - params.get("nlist", 0)  # more coarse centroids at 1M
            fixed_1m = fixed_small + extra_lists * dim * 4
            rows.append({"kind": kind, "dim": dim, "measured_at": list(sizes), "params_measured": params,
                         "params_at_1m": params_1m, "index_info_bytes_per_vector": b["bytes_per_vector"],
                         "index_bytes_per_vector": index_per_vector, "keys_and_locations_bytes_per_vector": side_per_vector,
                         "fixed_bytes_at_1m": fixed_1m,
                         "bytes_per_million_images": fixed_1m + (index_per_vector + side_per_vector) * MILLION,
                         "extrapolated": True})
    return rows


def deployed_index(repo: Path, encoder: str) -> Optional[Path]:
    """The selected NAME_match version's directory (an index directory copied whole), or None."""
    from equiprobe.services.contract import MatchNames
    from equiprobe.trainer.deploy import selected_version

    model_dir = Path(repo) / MatchNames(encoder).match
    version = selected_version(model_dir)
    return None if version is None else model_dir / str(version)


def run_match_bench(repo: Path, encoder: str, index: Optional[Path], images: list[bytes], levels=(1, 8),
                    repeats: int = 2, memory_sizes: tuple[int, int] = (10_000, 20_000)) -> dict:
    """Everything `bench match` prints, measured on a loopback server over `repo` (explicit model
    control: only NAME_embed, NAME_match and NAME_matcher are loaded)."""
    from equiprobe.services.contract import MatchNames, ModelNames
    from equiprobe.services.match_index import MatchIndex, read_meta

    names = MatchNames(encoder)
    deployed = deployed_index(repo, encoder)
    if deployed is None or not (Path(repo) / names.matcher / "config.pbtxt").exists():
        raise ValueError(f"no {names.matcher} in {repo}: deploy an index into (a copy of) it first: "
                         f"equiprobe deploy --index INDEX --repo {repo} --copy-threshold X")
    index = Path(index) if index else deployed
    served_meta, local_meta = read_meta(deployed), read_meta(index)
    same = served_meta.get("index_sha256") == local_meta.get("index_sha256")
    k = min(5, int(local_meta["count"]))
    deployed_json = deployed / "deployed.json"
    if deployed_json.exists():
        import json

        k = int(json.loads(deployed_json.read_text()).get("k", k))
    with bench_server(repo, encoder, build=None, model_control_mode="explicit",
                      startup_models=(ModelNames(encoder).embed, names.match, names.matcher)) as server:
        url = server.config.grpc_url
        served = matcher_vs_embed(url, encoder, images, levels, repeats)
        width = MatchIndex.open(index).query_width
        queries = served_embeddings(url, encoder, images, width if width != int(local_meta["dim"]) else None)
    searched = faiss_alone(index, queries, k, batches=(1, max(levels)))
    dim = int(local_meta["dim"])
    key_chars = int(np.dtype(MatchIndex.open(index).keys.dtype).itemsize // 4) or 16
    memory = memory_per_million(dim, key_chars, memory_sizes)
    for row in served:
        row["faiss_batch1_over_matcher"] = searched[0]["images_per_s"] / row["matcher"]["images_per_s"]
    return {"encoder": encoder, "images": len(images), "index": str(index), "deployed": str(deployed),
            "same_index_as_deployed": same, "k": k, "count": int(local_meta["count"]), "kind": local_meta["kind"],
            "served": served, "faiss": searched, "memory": memory,
            "references_bytes_per_image": 2 * int(local_meta.get("reference_width") or 0)}
