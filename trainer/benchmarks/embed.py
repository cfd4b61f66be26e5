"""`equiprobe bench embed`: `equiprobe embed` end to end on a loopback server against each of its
stages alone (the expansion in DALI, the encoder in ONNX Runtime, each at its best batch size),
the pipeline limit of both stages on the same cores, and a naive Pillow + torch loop."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from equiprobe.clients.photos import encode
from equiprobe.services.model_config import ServingSpec

from .harness import bench_server


def best_rate(measure, batch_sizes) -> tuple[float, int]:
    """(images/s, batch size) of the fastest batch size."""
    return max((measure(b), b) for b in batch_sizes)


def expansion_stage_rate(repo: Path, encoder: str, images: list[bytes], batch: int) -> float:
    """DALI decoding + every transformation + resize/crop for the encoder, host inputs included."""
    from equiprobe.services.contract import ExpansionNames
    from equiprobe.services.transforms import get_catalog, image_key
    from equiprobe.services.transforms.expand import Expander

    names = ExpansionNames(encoder, "fine")
    expander = Expander(repo / names.expand / "1" / "model.dali", get_catalog("fine"), batch, 2)
    arrays, keys = [np.frombuffer(d, np.uint8) for d in images], [image_key(d) for d in images]
    expander.expand(arrays[:batch], keys[:batch], 0)
    start = time.perf_counter()
    for i in range(0, len(arrays), batch):
        expander.expand(arrays[i:i + batch], keys[i:i + batch], 0)
    return len(arrays) / (time.perf_counter() - start)


def served_encoder_on_random_crops(repo: Path, encoder: str, crops: int, serving: ServingSpec):
    """A call that runs NAME_encoder's model.onnx as served (threads, micro-batches, parallel runs)
    on `crops` random uint8 crops: the encoder stage alone."""
    from equiprobe.services.contract import PIXELS, ModelNames
    from equiprobe.services.runtime import OnnxRunner

    runner = OnnxRunner.served_encoder(repo / ModelNames(encoder).onnx / "1" / "model.onnx", serving)
    shape = runner.session.get_inputs()[0].shape[1:]
    batch = np.random.default_rng(0).integers(0, 256, (crops, *shape)).astype(np.uint8)
    return lambda: runner({PIXELS: batch})


def encoder_stage_rate(repo: Path, encoder: str, images: int, batch: int, versions: int = 31,
                       serving: ServingSpec = ServingSpec()) -> float:
    """NAME_encoder (normalization + ONNX) on ready uint8 crops, `batch` images of `versions`
    crops per call as NAME_versions sends them, run as the served model runs them (its micro
    batches); images/s."""
    run = served_encoder_on_random_crops(repo, encoder, batch * versions, serving)

    run()
    start = time.perf_counter()
    for _ in range(max(1, images // batch)):
        run()
    return max(1, images // batch) * batch / (time.perf_counter() - start)


def encoder_cpu_ms_per_crop(repo: Path, encoder: str, crops: int = 62, serving: ServingSpec = ServingSpec()) -> float:
    """NAME_encoder's CPU ms per crop, run as served (its micro-batches), the cheaper of two passes."""
    run = served_encoder_on_random_crops(repo, encoder, crops, serving)
    run()  # warm-up
    best = float("inf")
    for _ in range(2):
        start = time.process_time()
        run()
        best = min(best, (time.process_time() - start) * 1000 / crops)
    return best


def naive_loop_rate(encoder: str, images: list[bytes]) -> float:
    """Pillow decode and transformations, then a torch eager forward per version, one at a time."""
    import torch

    from equiprobe.services.encoders import get_encoder
    from equiprobe.services.reference import reference_preprocess
    from equiprobe.services.transforms import get_catalog, image_key
    from equiprobe.services.transforms.reference import expand_reference

    catalog, spec = get_catalog("fine"), get_encoder(encoder)
    model = spec.build()
    start = time.perf_counter()
    with torch.no_grad():
        for data in images:
            for version in expand_reference(catalog, data, catalog.host_inputs(image_key(data), 0)):
                pixels = reference_preprocess(encode(version, "BMP"), spec.preprocess)
                model(torch.from_numpy(pixels)[None])
    return len(images) / (time.perf_counter() - start)


def end_to_end_embed_rate(url: str, encoder: str, images: int, tmp: Path,
                          server_pid: Optional[int] = None) -> tuple[float, dict[str, float]]:
    """Images/s of `equiprobe embed`'s job on the corpus, the better of two runs after a warm-up
    (first ONNX Runtime and DALI runs), as the stage measurements do; this machine's timings are noisy.
    Also that run's CPU ms per image by server process and for this process (the job's client)."""
    import asyncio

    from equiprobe.clients.embed_job import EmbedJob, run_embed_job

    from .server_usage import cpu_per_item

    asyncio.run(run_embed_job(EmbedJob("corpus", encoder, tmp / "warm", url, limit=8), progress=False))
    best = (0.0, {})
    for attempt in range(2):
        job = EmbedJob("corpus", encoder, tmp / f"store{attempt}", url, limit=images)
        start = time.perf_counter()
        with cpu_per_item(server_pid, images) as cpu:
            asyncio.run(run_embed_job(job, progress=False))
        best = max(best, (images / (time.perf_counter() - start), cpu), key=lambda r: r[0])
    return best


def run_embed_bench(repo: Path, encoder: str, images: int, naive_images: int) -> dict:
    """End-to-end embedding on a loopback server over `repo` against each stage alone (best batch
    size), the pipeline limit of both stages on the same cores, and a naive loop."""
    import tempfile

    from equiprobe.clients.datasets import open_dataset

    photos = open_dataset("corpus")
    data = [photos.record(i).load() for i in range(images)]
    with tempfile.TemporaryDirectory() as tmp, bench_server(repo, encoder) as server:
        end_to_end, cpu = end_to_end_embed_rate(server.config.grpc_url, encoder, images, Path(tmp), server.process.pid)
    expand, expand_batch = best_rate(lambda b: expansion_stage_rate(repo, encoder, data, b), (1, 4, 8))
    encode_rate, encode_batch = best_rate(lambda b: encoder_stage_rate(repo, encoder, images, b), (1, 2, 4, 8))
    return {"end_to_end": end_to_end, "cpu_ms_per_image": cpu, "expand": expand, "expand_batch": expand_batch, "encode": encode_rate,
            "encode_batch": encode_batch, "limit": 1 / (1 / expand + 1 / encode_rate),  # both stages on the same cores
            "naive": naive_loop_rate(encoder, data[:naive_images])}
