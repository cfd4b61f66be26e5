"""`equiprobe bench serve`: the embedding service through Triton gRPC against the same DALI
pipeline and ONNX model run in-process, on the same images, side by side in one run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from equiprobe.services.embed_models import InProcessEmbed
from equiprobe.services.model_config import ServingSpec

from .harness import Measurement, bench_server, summarize, through_triton


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
    return summarize("in-process", batch, len(arrays), time.perf_counter() - start, latencies)


def triton_vs_in_process(repo: Path, url: str, encoder: str, images: list[bytes], levels=(1, 8, 32),
                         serving: ServingSpec = ServingSpec(), server_pid: Optional[int] = None) -> list[dict]:
    """Each level: in-process then Triton, with their images/s and, given the local server's pid,
    the CPU ms per image of each server process (by model) and of the client, against the
    in-process run's own CPU ms per image: where Triton's extra cost goes."""
    from .server_usage import cpu_per_item

    rows = []
    for level in levels:
        with cpu_per_item(None, len(images)) as local_cpu:
            local = in_process(repo, encoder, images, level, serving)
        row = {"level": level, "in_process": local.as_dict() | {"cpu_ms_per_image": local_cpu["total"]}}
        if server_pid is None:
            remote = through_triton(url, encoder, images, level)
        else:
            with cpu_per_item(server_pid, len(images)) as remote_cpu:
                remote = through_triton(url, encoder, images, level)
            row["triton_cpu_ms_per_image"] = remote_cpu
        row["triton"] = remote.as_dict()
        row["throughput_ratio"] = remote.images_per_s / local.images_per_s
        rows.append(row)
    return rows


def run_serve_bench(repo: Path, encoder: str, images: list[bytes], levels=(1, 8, 32)) -> dict:
    """On a loopback server over the bench repository: triton_vs_in_process at each level, and the
    RSS of the server's processes by model once loaded and after the runs."""
    from .server_usage import rss_by_model

    with bench_server(repo, encoder) as server:
        pid = server.process.pid
        loaded = rss_by_model(pid)
        rows = triton_vs_in_process(repo, server.config.grpc_url, encoder, images, levels, server_pid=pid)
        after = rss_by_model(pid)
    return {"rows": rows, "rss_mib_loaded": loaded, "rss_mib_after": after}
