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
