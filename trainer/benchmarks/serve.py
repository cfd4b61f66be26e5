"""`equiprobe bench serve`: the embedding service through Triton gRPC against the same DALI
pipeline and ONNX model run in-process, on the same images, side by side in one run."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from equiprobe.services.embed_models import InProcessEmbed
from equiprobe.services.model_config import ServingSpec

from .embedding import EmbeddingClient
from .photos import encode, package_photos


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


def bench_repo(repo: Path, encoder: str) -> Path:
    """The benchmarks' repository: built once, reused by later runs while the services' code
    that rendered it is unchanged (its manifest's renderer_sha256)."""
    import json

    from equiprobe.services.contract import GATE, MANIFEST, ModelNames
    from equiprobe.services.repository import build_repo, renderer_fingerprint

    manifest = repo / ModelNames(encoder).onnx / MANIFEST
    current = (manifest.exists() and json.loads(manifest.read_text()).get("renderer_sha256") == renderer_fingerprint()
               and all((repo / m / "config.pbtxt").exists() for m in (f"{encoder}_embed31", GATE)))
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


def _summary(mode: str, parallelism: int, images: int, seconds: float, latencies: list[float]) -> Measurement:
    ms = np.array(latencies) * 1000
    return Measurement(mode, parallelism, images, seconds, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))


def in_process(repo: Path, encoder: str, images: list[bytes], batch: int, serving: ServingSpec) -> Measurement:
    embed = InProcessEmbed(repo, encoder, serving)
    arrays = [np.frombuffer(b, np.uint8) for b in images]
    batches = [arrays[i:i + batch] for i in range(0, len(arrays), batch)]
    embed(batches[0])  # warm-up
    latencies = []
    start = time.perf_counter()
    for chunk in batches:
        t0 = time.perf_counter()
        embed(chunk)
        latencies.append(time.perf_counter() - t0)
    return _summary("in-process", batch, len(arrays), time.perf_counter() - start, latencies)


def _client(url: str, encoder: str, model: str):
    """(client, call): NAME_embed's embedding client, or NAME_detector's scorer."""
    if model == "detector":
        from .scoring import Scorer

        scorer = Scorer(url, encoder)
        return scorer, scorer.score
    client = EmbeddingClient(url, encoder)
    return client, client.embed


def through_triton(url: str, encoder: str, images: list[bytes], concurrency: int, model: str = "embed") -> Measurement:
    """`concurrency` client threads, each with its own gRPC client, share the images."""
    clients = [_client(url, encoder, model) for _ in range(concurrency)]
    for _, call in clients:
        call(images[0])  # warm-up, one connection each
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
    return _summary(f"triton-grpc {model}", concurrency, len(images), seconds, latencies)


def run_serve_bench(repo: Path, url: str, encoder: str, images: list[bytes], levels=(1, 8, 32),
                    serving: ServingSpec = ServingSpec(), server_pid: Optional[int] = None) -> list[dict]:
    """Each level: in-process then Triton, with their images/s and, given the local server's pid,
    the CPU ms per image of each server process (by model) and of the client, against the
    in-process run's own CPU ms per image: where Triton's extra cost goes."""
    from .server_usage import cpu_per_item

    rows = []
    for level in levels:
        with cpu_per_item(None, len(images)) as local_cpu:
            local = in_process(repo, encoder, images, level, serving)
        row = {"level": level, "in_process": asdict(local) | {"images_per_s": local.images_per_s,
                                                              "cpu_ms_per_image": local_cpu["total"]}}
        if server_pid is None:
            remote = through_triton(url, encoder, images, level)
        else:
            with cpu_per_item(server_pid, len(images)) as remote_cpu:
                remote = through_triton(url, encoder, images, level)
            row["triton_cpu_ms_per_image"] = remote_cpu
        row["triton"] = asdict(remote) | {"images_per_s": remote.images_per_s}
        row["throughput_ratio"] = remote.images_per_s / local.images_per_s
        rows.append(row)
    return rows


def run_detector_bench(url: str, encoder: str, images: list[bytes], levels=(1, 16), repeats: int = 2,
                       baseline: tuple[str, str] = ("", "embed")) -> list[dict]:
    """NAME_detector against `baseline` ((encoder, model); default NAME_embed alone: the probe's cost;
    or another detector, e.g. a single encoder's against a concatenated one), both through gRPC, at
    each concurrency. The two alternate `repeats` times and each keeps its fastest pass, so drift
    on a shared machine does not land on one side."""
    sides = {"detector": (encoder, "detector"), "baseline": (baseline[0] or encoder, baseline[1])}
    rows = []
    for level in levels:
        passes = {side: [] for side in sides}
        for _ in range(repeats):
            for side, (name, model) in sides.items():
                passes[side].append(through_triton(url, name, images, level, model))
        best = {side: min(passes[side], key=lambda r: r.seconds) for side in sides}
        rows.append({"level": level, **{side: asdict(m) | {"images_per_s": m.images_per_s} for side, m in best.items()},
                     "throughput_ratio": best["detector"].images_per_s / best["baseline"].images_per_s})
    return rows


# -- `equiprobe bench transforms` ---------------------------------------------------------------

def _parallel(jobs, worker, concurrency: int) -> float:
    """Run worker(job) for every job on `concurrency` threads; returns the wall time."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, jobs))
    return time.perf_counter() - start


def server_side_expansion(url: str, encoder: str, catalog: str, images: list[bytes], concurrency: int) -> float:
    """Images/s through NAME_embed31 (or _general): one upload per image."""
    import tritonclient.grpc as grpcclient

    from equiprobe.services.contract import ExpansionNames
    from .embedding import as_image_input

    model = ExpansionNames(encoder, catalog).embed
    local = threading.local()

    def send(data: bytes) -> None:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(url)
        local.client.infer(model, [as_image_input(data)])

    send(images[0])  # warm-up
    return len(images) / _parallel(images, send, concurrency)


def client_side_expansion(url: str, encoder: str, expander, images: list[bytes], concurrency: int) -> float:
    """Images/s when the client expands each image (DALI, in-process), encodes every version as
    JPEG (quality 95) and uploads each one to NAME_embed."""
    from equiprobe.services.transforms import image_key

    local = threading.local()

    def send(data: bytes) -> None:
        if not hasattr(local, "client"):
            local.client = EmbeddingClient(url, encoder)
        local.client.embed(data)

    def as_uploads(data: bytes) -> list[bytes]:
        versions, _ = expander.expand([np.frombuffer(data, np.uint8)], [image_key(data)], 0)
        return [encode(v, quality=95) for v in versions[0]]

    _parallel(as_uploads(images[0]), send, concurrency)  # warm-up
    start = time.perf_counter()
    for data in images:  # the expansion is serial in the client; each image's uploads go out in parallel
        _parallel(as_uploads(data), send, concurrency)
    return len(images) / (time.perf_counter() - start)


def expansion_dali_vs_pillow(catalog, images: list[bytes], batch: int = 8) -> tuple[float, float]:
    """Images/s of the 31x expansion alone (canvases, no encoder): DALI on the CPU vs Pillow/numpy."""
    import tempfile

    from equiprobe.services.transforms import image_key
    from equiprobe.services.transforms.expand import Expander, serialize_expand
    from equiprobe.services.transforms.reference import expand_reference

    with tempfile.TemporaryDirectory() as tmp:
        expander = Expander(serialize_expand(catalog, Path(tmp) / "e.dali", "cpu", batch, 2), catalog, batch, 2)
    arrays, keys = [np.frombuffer(d, np.uint8) for d in images], [image_key(d) for d in images]
    expander.expand(arrays[:batch], keys[:batch], 0)  # warm-up
    start = time.perf_counter()
    for i in range(0, len(arrays), batch):
        expander.expand(arrays[i:i + batch], keys[i:i + batch], 0)
    dali = len(arrays) / (time.perf_counter() - start)
    start = time.perf_counter()
    for data, key in zip(images, keys):
        expand_reference(catalog, data, catalog.host_inputs(key, 0))
    pillow = len(images) / (time.perf_counter() - start)
    return dali, pillow


def expansion_profile(encoder: str, catalog_name: str, images: list[bytes], batch: int = 8,
                      repeats: int = 2) -> dict:
    """CPU ms per version of each stage of the expansion pipeline (services/transforms/expand.py),
    on the CPU, as the served pipeline runs them: decoding to the canvas, each transformation
    alone, the upload re-encoding (as_upload) and the encoder's resize and crop; and the whole
    pipeline. Stages are costed as differences between pipelines cut after them, each the
    cheaper of `repeats` passes of process CPU time (DALI's threads run in this process)."""
    import tempfile
    from dataclasses import replace

    from equiprobe.services.encoders import get_encoder
    from equiprobe.services.transforms import get_catalog, image_key
    from equiprobe.services.transforms.expand import Expander, serialize_expand

    catalog, pre = get_catalog(catalog_name), get_encoder(encoder).preprocess
    arrays, keys = [np.frombuffer(d, np.uint8) for d in images], [image_key(d) for d in images]

    def cpu_ms_per_image(transforms, uploads: bool, crops: bool) -> float:
        per_row = catalog.classes == tuple(catalog.class_names)  # fine, detect: a class per row, the part's own
        part = replace(catalog, transforms=tuple(transforms), classes=() if per_row else catalog.classes)
        with tempfile.TemporaryDirectory() as tmp:
            path = serialize_expand(part, Path(tmp) / "e.dali", "cpu", batch, 2, pre if crops else None, False, uploads)
            expander = Expander(path, part, batch, 2)
        expander.expand(arrays[:batch], keys[:batch], 0, uploads=True)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.process_time()
            for i in range(0, len(arrays), batch):
                expander.expand(arrays[i:i + batch], keys[i:i + batch], 0, uploads=True)
            best = min(best, (time.process_time() - t0) * 1000 / len(arrays))
        return best

    identity = [t for t in catalog.transforms if t.name == "identity"][:1] or [catalog.transforms[0]]
    canvas = cpu_ms_per_image(identity, uploads=False, crops=False)
    rows = [{"stage": "decode + canvas (once per image)", "cpu_ms": canvas}]
    for t in catalog.transforms:
        rows.append({"stage": t.name, "cpu_ms": max(0.0, cpu_ms_per_image([t], False, False) - canvas)})
    uploaded = cpu_ms_per_image(identity, uploads=True, crops=False)
    cropped = cpu_ms_per_image(identity, uploads=True, crops=True)
    rows.append({"stage": "as_upload (per version)", "cpu_ms": max(0.0, uploaded - canvas)})
    rows.append({"stage": f"resize + crop to {pre.size} (per version)", "cpu_ms": max(0.0, cropped - uploaded)})
    whole = cpu_ms_per_image(catalog.transforms, uploads=True, crops=True)
    return {"catalog": catalog.name, "versions": len(catalog.transforms), "rows": rows, "whole_cpu_ms": whole}


def run_transforms_bench(repo: Path, encoder: str, images: int, concurrency: int) -> dict:
    """Images/s of NAME_embed31 (server-side expansion) and of client-side expansion + uploads to
    NAME_embed on a loopback server over `repo`, and of the expansion alone in DALI and in Pillow."""
    import tempfile

    from equiprobe.services.server import TritonServer, loopback_config
    from equiprobe.services.transforms import get_catalog
    from equiprobe.services.transforms.expand import Expander, serialize_expand

    bench_repo(repo, encoder)
    catalog = get_catalog("fine")
    data = bench_images(images, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        expander = Expander(serialize_expand(catalog, Path(tmp) / "e.dali", "cpu", 1, 2), catalog, 1, 2)
    with TritonServer(loopback_config(repo)) as server:
        url = server.config.grpc_url
        server_rate = server_side_expansion(url, encoder, "fine", data, concurrency)
        client_rate = client_side_expansion(url, encoder, expander, data, concurrency * 2)
    dali_rate, pillow_rate = expansion_dali_vs_pillow(catalog, data)
    return {"versions": len(catalog.transforms), "server_side": server_rate, "client_side": client_rate,
            "dali": dali_rate, "pillow": pillow_rate}


# -- `equiprobe bench embed` ----------------------------------------------------------------------

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

    from .embed_job import EmbedJob, run_embed_job
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

    from equiprobe.services.server import TritonServer, loopback_config

    from .datasets import open_dataset

    bench_repo(repo, encoder)
    photos = open_dataset("corpus")
    data = [photos.record(i).load() for i in range(images)]
    with tempfile.TemporaryDirectory() as tmp, TritonServer(loopback_config(repo)) as server:
        end_to_end, cpu = end_to_end_embed_rate(server.config.grpc_url, encoder, images, Path(tmp), server.process.pid)
    expand, expand_batch = best_rate(lambda b: expansion_stage_rate(repo, encoder, data, b), (1, 4, 8))
    encode_rate, encode_batch = best_rate(lambda b: encoder_stage_rate(repo, encoder, images, b), (1, 2, 4, 8))
    return {"end_to_end": end_to_end, "cpu_ms_per_image": cpu, "expand": expand, "expand_batch": expand_batch, "encode": encode_rate,
            "encode_batch": encode_batch, "limit": 1 / (1 / expand + 1 / encode_rate),  # both stages on the same cores
            "naive": naive_loop_rate(encoder, data[:naive_images])}
