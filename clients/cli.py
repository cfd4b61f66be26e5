"""Commands for what talks to the server: benchmarks (embedding jobs and scoring come later)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print side-by-side ratios.")


@bench_app.command("serve")
def bench_serve(
    encoder: str = typer.Option("squeezenet1_1"),
    repo: Path = typer.Option(Path("build/bench/model_repository"), help="Built if it has no NAME_embed."),
    images: int = typer.Option(256, help="Images per measurement."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """Triton gRPC (concurrency 1, 8, 32) against in-process DALI + ONNX Runtime (batch 1, 8, 32)."""
    from services.repository import ModelNames, build_repo
    from services.server import TritonServer, loopback_config

    from .bench import bench_images, run_serve_bench

    if not (repo / ModelNames(encoder).embed / "config.pbtxt").exists():
        build_repo(encoder, repo)
    data = bench_images(images)
    with TritonServer(loopback_config(repo)) as server:
        rows = run_serve_bench(repo, server.config.grpc_url, encoder, data)
    table = Table(title=f"{encoder}_embed: {images} JPEG photos (224-512 px) per row", show_lines=False)
    for col in ("in flight | batch", "Triton img/s", "p50 ms", "p99 ms",
                "in-process img/s", "p50 ms/batch", "p99 ms/batch", "Triton/in-process"):
        table.add_column(col, justify="right")
    for r in rows:
        t, l = r["triton"], r["in_process"]
        table.add_row(str(r["level"]), f"{t['images_per_s']:.1f}", f"{t['p50_ms']:.1f}", f"{t['p99_ms']:.1f}",
                      f"{l['images_per_s']:.1f}", f"{l['p50_ms']:.1f}", f"{l['p99_ms']:.1f}",
                      f"{r['throughput_ratio']:.2f}")
    Console(width=140).print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(rows, indent=2))


@bench_app.command("transforms")
def bench_transforms(
    encoder: str = typer.Option("squeezenet1_1"),
    repo: Path = typer.Option(Path("build/bench/model_repository"), help="Built if it has no NAME_embed31."),
    images: int = typer.Option(16, help="Images per measurement."),
    concurrency: int = typer.Option(4, help="Requests in flight."),
) -> None:
    """embed31 (one upload, 31 server-side transformations) vs 31 client-side-transformed uploads
    through NAME_embed; and the DALI CPU expansion vs the same transformations in Pillow/numpy."""
    import tempfile

    from services.repository import build_repo
    from services.server import TritonServer, loopback_config
    from services.transforms import get_catalog
    from services.transforms.expand import Expander, serialize_expand

    from .bench import bench_images, client_side_expansion, expansion_dali_vs_pillow, server_side_expansion

    if not (repo / f"{encoder}_embed31" / "config.pbtxt").exists():
        build_repo(encoder, repo)
    catalog = get_catalog("fine")
    data = bench_images(images, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        expander = Expander(serialize_expand(catalog, Path(tmp) / "e.dali", "cpu", 1, 2), catalog, 1, 2)
    with TritonServer(loopback_config(repo)) as server:
        url = server.config.grpc_url
        server_rate = server_side_expansion(url, encoder, "fine", data, concurrency)
        client_rate = client_side_expansion(url, encoder, expander, data, concurrency * 2)
    dali_rate, pillow_rate = expansion_dali_vs_pillow(catalog, data)
    k = len(catalog.transforms)
    table = Table(title=f"{encoder}, fine catalog ({k} versions), {images} JPEG photos", show_lines=False)
    for col in ("measurement", "images/s", "embeddings/s", "ratio"):
        table.add_column(col, justify="right" if col != "measurement" else "left")
    table.add_row(f"{encoder}_embed31: 1 upload, {k} versions in the server", f"{server_rate:.2f}",
                  f"{server_rate * k:.1f}", f"{server_rate / client_rate:.2f}x")
    table.add_row(f"client expands (DALI) + {k} JPEG uploads to {encoder}_embed", f"{client_rate:.2f}",
                  f"{client_rate * k:.1f}", "1.00x")
    table.add_row(f"expansion alone: DALI on CPU, batch 8 ({k} canvases/image)", f"{dali_rate:.2f}", "",
                  f"{dali_rate / pillow_rate:.2f}x")
    table.add_row("expansion alone: Pillow/numpy, one image at a time", f"{pillow_rate:.2f}", "", "1.00x")
    Console(width=140).print(table)
