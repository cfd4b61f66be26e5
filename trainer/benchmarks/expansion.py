"""`equiprobe bench transforms` and `bench expansion`: the 31-version expansion served
(NAME_embed31, one upload) against the client expanding and uploading every version, DALI
against Pillow/numpy, and what each stage of the served expansion costs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from equiprobe.clients.embedding import EmbeddingClient
from equiprobe.clients.photos import encode

from .harness import bench_images, bench_repo, bench_server


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
    from equiprobe.clients.embedding import as_image_input

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

    from equiprobe.services.transforms import get_catalog
    from equiprobe.services.transforms.expand import Expander, serialize_expand

    catalog = get_catalog("fine")
    data = bench_images(images, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        expander = Expander(serialize_expand(catalog, Path(tmp) / "e.dali", "cpu", 1, 2), catalog, 1, 2)
    with bench_server(repo, encoder) as server:
        url = server.config.grpc_url
        server_rate = server_side_expansion(url, encoder, "fine", data, concurrency)
        client_rate = client_side_expansion(url, encoder, expander, data, concurrency * 2)
    dali_rate, pillow_rate = expansion_dali_vs_pillow(catalog, data)
    return {"versions": len(catalog.transforms), "server_side": server_rate, "client_side": client_rate,
            "dali": dali_rate, "pillow": pillow_rate}


def run_expansion_bench(repo: Path, encoder: str, catalog: str, images: int, batch: int) -> dict:
    """expansion_profile on `images` bench photos, and NAME_encoder's CPU ms per crop (served
    micro-batches) from the bench repository, all in this process."""
    from .embed import encoder_cpu_ms_per_crop

    bench_repo(repo, encoder)
    profile = expansion_profile(encoder, catalog, bench_images(images), batch)
    return profile | {"encoder_cpu_ms_per_crop": encoder_cpu_ms_per_crop(repo, encoder)}
