"""`equiprobe bench match` (registered in trainer/cli/bench.py): NAME_matcher against NAME_embed
alone and faiss alone, and the index's memory per million images; the measurements are
clients/match_bench.py's, here the options and the tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .common import fail


def bench_match(
    encoder: str = typer.Option("squeezenet1_1"),
    repo: Path = typer.Option(..., help="A repository with an index deployed (equiprobe deploy --index INDEX "
                              "--repo DIR; use a copy of the demo's, not build/demo itself)."),
    index: Optional[Path] = typer.Option(None, help="The index faiss searches in-process (default: the deployed "
                                         "version's directory)."),
    images: int = typer.Option(128, help="JPEG photos per measurement."),
    concurrency: list[int] = typer.Option([1, 8], help="Requests in flight (repeatable: --concurrency 1 --concurrency 8)."),
    repeats: int = typer.Option(2, help="Alternating passes of matcher and embed; each keeps its fastest."),
    memory_sizes: tuple[int, int] = typer.Option((10_000, 20_000), help="The two sizes of the synthetic indexes "
                                                 "memory per vector is measured between."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """NAME_matcher vs NAME_embed alone (what matching adds) vs faiss search alone in-process, same
    images, one run; and the index's memory per million images for flat, ivf and ivfpq (extrapolated)."""
    from equiprobe.clients.bench import bench_images
    from equiprobe.clients.match_bench import run_match_bench
    from equiprobe.services.server import ServerError

    try:
        figures = run_match_bench(repo, encoder, index, bench_images(images), tuple(concurrency), repeats,
                                  tuple(memory_sizes))
    except (ServerError, ValueError) as exc:
        raise fail(str(exc))
    console = Console(width=160)
    table = Table(title=f"{encoder}_matcher vs {encoder}_embed through gRPC: {images} JPEG photos per row, index of "
                  f"{figures['count']:,} ({figures['kind']}), k {figures['k']}")
    for col in ("in flight", "matcher img/s", "p50 ms", "p99 ms", "embed img/s", "p50 ms", "p99 ms",
                "matcher/embed", "ms added per image"):
        table.add_column(col, justify="right")
    for r in figures["served"]:
        m, e = r["matcher"], r["embed"]
        table.add_row(str(r["level"]), *(f"{x[f]:.1f}" for x in (m, e) for f in ("images_per_s", "p50_ms", "p99_ms")),
                      f"{r['throughput_ratio']:.2f}", f"{r['added_ms_per_image']:.2f}")
    console.print(table)
    note = "" if figures["same_index_as_deployed"] else " (NOT the deployed index: --index differs)"
    for f in figures["faiss"]:
        console.print(f"faiss search alone, in-process, {f['kind']} of {f['count']:,}, k {f['k']}, batch "
                      f"{f['parallelism']}: {f['images_per_s']:,.0f} queries/s, p50 {f['p50_ms']:.3f} ms a call"
                      f"{note}")
    for r in figures["served"]:
        console.print(f"faiss alone (batch 1) / matcher at {r['level']} in flight = {r['faiss_batch1_over_matcher']:,.1f}")
    first = figures["memory"][0]
    mem = Table(title=f"index memory per million images, dim {first['dim']}: EXTRAPOLATED from synthetic indexes of "
                f"{first['measured_at'][0]:,} and {first['measured_at'][1]:,} vectors (index info's figures)")
    for col in ("kind", "params at 1M", "index bytes/vector", "keys+locations bytes/vector", "GB per million"):
        mem.add_column(col, justify="left" if col in ("kind", "params at 1M") else "right")
    for r in figures["memory"]:
        mem.add_row(r["kind"], json.dumps(r["params_at_1m"]), f"{r['index_bytes_per_vector']:,.1f}",
                    f"{r['keys_and_locations_bytes_per_vector']:,.1f}", f"{r['bytes_per_million_images'] / 1e9:,.3f}")
    console.print(mem)
    console.print(f"references.npy (on disk, read by memory map, not held): {figures['references_bytes_per_image']:,} "
                  f"bytes an image = {figures['references_bytes_per_image'] * 1e6 / 1e9:,.2f} GB per million")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(figures, indent=2))
