"""What every benchmark repeats: the bench repository -> a loopback server -> a measurement.

- `bench_repo`: the benchmarks' repository, built once and reused while current;
- `bench_images`: the photos the benchmarks send;
- `bench_server`: builds (or reuses) a repository, starts the real tritonserver over it on
  loopback, yields it (config.grpc_url, process.pid, group_pids), stops it;
- `in_flight` / `through_triton`: requests sent by client threads, summarized as a Measurement;
  `fastest_alternating`: two or more such measurements alternated, each side's fastest kept.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from equiprobe.clients.photos import encode, package_photos


@dataclass
class Measurement:
    mode: str
    parallelism: int  # Triton: requests in flight; in-process: batch size
    images: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    def as_dict(self) -> dict:
        return asdict(self) | {"images_per_s": self.images_per_s}


def summarize(mode: str, parallelism: int, images: int, seconds: float, latencies: list[float]) -> Measurement:
    ms = np.array(latencies) * 1000
    return Measurement(mode, parallelism, images, seconds, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))


def bench_repo(repo: Path, encoder: str) -> Path:
    """The benchmarks' repository: built once, reused by later runs while the services' code
    that rendered it is unchanged (its manifest's renderer_sha256)."""
    from equiprobe.services.contract import GATE, MANIFEST, ExpansionNames, ModelNames
    from equiprobe.services.repository import build_repo, renderer_fingerprint

    manifest = repo / ModelNames(encoder).onnx / MANIFEST
    current = (manifest.exists() and json.loads(manifest.read_text()).get("renderer_sha256") == renderer_fingerprint()
               and all((repo / m / "config.pbtxt").exists() for m in (ExpansionNames(encoder, "fine").embed, GATE)))
    if not current:
        build_repo(encoder, repo)
    return repo


def bench_images(count: int, seed: int = 0) -> list[bytes]:
    """JPEG crops (224 to 512 pixels) of the package photos: real content, varied byte lengths."""
    rng = np.random.default_rng(seed)
    photos = list(package_photos().values())
    images = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(224, min(512, h, w) + 1))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        images.append(encode(photo[y:y + side, x:x + side]))
    return images


@contextmanager
def bench_server(repo: Path, encoder: str, build: Optional[Callable[[Path, str], object]] = bench_repo,
                 **options) -> Iterator:
    """A tritonserver over `repo` on loopback (a benchmark never leaves this machine), after
    `build(repo, encoder)` (default bench_repo; None: `repo` as it is, e.g. the demo's with a
    deployed detector); `options` go to loopback_config (e.g. explicit model control). Yields the
    running TritonServer; stops it on exit."""
    from equiprobe.services.server import TritonServer, loopback_config

    if build is not None:
        build(repo, encoder)
    with TritonServer(loopback_config(repo, **options)) as server:
        yield server


def in_flight(mode: str, clients: Sequence[tuple[object, Callable[[bytes], object]]], images: list[bytes]) -> Measurement:
    """One thread per (client, call), the threads sharing the images (each sent once); every call
    made once first (a warm-up, one connection each); the clients closed after."""
    for _, call in clients:
        call(images[0])
    next_index, lock, latencies = iter(range(len(images))), threading.Lock(), []

    def worker(call) -> None:
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            t0 = time.perf_counter()
            call(images[i])
            elapsed = time.perf_counter() - t0
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=worker, args=(call,)) for _, call in clients]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    for client, _ in clients:
        client.close()
    return summarize(mode, len(clients), len(images), seconds, latencies)


def _client(url: str, encoder: str, model: str):
    """(client, call): NAME_embed's embedding client, or NAME_detector's scorer."""
    if model == "detector":
        from equiprobe.clients.scoring import Scorer

        scorer = Scorer(url, encoder)
        return scorer, scorer.score
    from equiprobe.clients.embedding import EmbeddingClient

    client = EmbeddingClient(url, encoder)
    return client, client.embed


def through_triton(url: str, encoder: str, images: list[bytes], concurrency: int, model: str = "embed") -> Measurement:
    """`concurrency` client threads, each with its own gRPC client, share the images."""
    return in_flight(f"triton-grpc {model}", [_client(url, encoder, model) for _ in range(concurrency)], images)


def fastest_alternating(sides: dict[str, Callable[[], Measurement]], repeats: int) -> dict[str, Measurement]:
    """Each side measured `repeats` times, the sides alternating, so that drift on a shared
    machine does not land on one side; each side's fastest pass."""
    passes: dict[str, list[Measurement]] = {side: [] for side in sides}
    for _ in range(repeats):
        for side, measure in sides.items():
            passes[side].append(measure())
    return {side: min(p, key=lambda m: m.seconds) for side, p in passes.items()}
