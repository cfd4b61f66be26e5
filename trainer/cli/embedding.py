"""`equiprobe embed` (a dataset into a store) and `equiprobe score` (images by the served detector)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from equiprobe.clients.connection import api_key_option, root_certificates_option, tls_option

from .common import answer_files, fail



def embed(
    dataset: str = typer.Option(..., help="corpus, fashion-mnist, folder:PATH, list:FILE or tar:GLOB."),
    encoder: str = typer.Option(..., help="Encoder whose NAME_embed31 / NAME_embed_general / NAME_embed_groups "
                                "the server has."),
    out: Path = typer.Option(..., help="Store directory (created, or resumed if it holds this same job)."),
    url: list[str] = typer.Option(["127.0.0.1:8001"], help="Triton gRPC address HOST:PORT; with --ray, "
                                  "repeat it for every server of the fleet."),
    catalog: str = typer.Option("fine", help="fine (31 versions), general (one per sub-transformation), "
                                "groups (5: identity, three rotations, a flip) or detect (the detection catalog: "
                                "mild to strong and everyday edits)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N images of the dataset."),
    shard: Optional[str] = typer.Option(None, help="I/N: this run's deterministic share of the dataset."),
    seed: int = typer.Option(0, help="Dataset seed for the transformation parameters."),
    dtype: str = typer.Option("float16", help="float16 or float32 embeddings."),
    max_in_flight: int = typer.Option(8, help="Requests in flight at once."),
    timeout: float = typer.Option(120.0, help="Deadline of each request, seconds."),
    retry_for: float = typer.Option(60.0, help="Seconds a request failing with UNAVAILABLE / DEADLINE_EXCEEDED "
                                    "(a server restarting) is retried after its first failure; then the job "
                                    "stops, and a rerun resumes it."),
    retries: Optional[int] = typer.Option(None, help="At most this many retries of a request (default: as many "
                                          "as --retry-for allows)."),
    tls: bool = tls_option(),
    root_certificates: Optional[Path] = root_certificates_option(),
    api_key: Optional[str] = api_key_option(),
    header: list[str] = typer.Option([], help="KEY=VALUE header sent with every request (auth). Repeatable."),
    chunk_size: int = typer.Option(32, help="Rows committed to the store at a time."),
    quiet: bool = typer.Option(False, help="No progress bar."),
    ray: bool = typer.Option(False, "--ray", help="Run on a Ray cluster: actors as clients to the --url fleet."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster address (default: RAY_ADDRESS or a local one)."),
    actors: int = typer.Option(2, help="With --ray: client actors."),
    reuse: Optional[Path] = typer.Option(None, help="Refresh: an older store of the same job (encoder, dataset, "
                                         "seed) for an older catalog version; its columns of unchanged "
                                         "transformations are copied and only the others computed."),
    uploads: Optional[str] = typer.Option(None, help="jpeg: every version re-encoded as a JPEG of random quality "
                                          "(60-95), as users' uploads are; none: versions as made (the study's "
                                          "protocol). Default: jpeg for the fine and general catalogs (detector "
                                          "training), none for groups (exact pixel operations)."),
) -> None:
    """Embed every image of a dataset in all its versions into a memory-mapped store."""
    import asyncio

    from equiprobe.clients.connection import Connection
    from equiprobe.clients.datasets import DatasetError
    from equiprobe.clients.embed_job import EmbedJob, parse_shard, run_embed_job
    from equiprobe.clients.embedding import ServiceError
    from equiprobe.clients.store import StoreError

    try:
        headers = dict(h.split("=", 1) for h in header)
    except ValueError:
        raise fail("--header takes KEY=VALUE")
    if len(url) > 1 and not ray:
        raise fail("several --url servers need --ray (one machine talks to one server)")
    try:
        connection = Connection(url[0], tls, root_certificates, api_key or None, extra_headers=tuple(headers.items()))
        job = EmbedJob(dataset, encoder, out, url[0], catalog, limit, parse_shard(shard), seed, dtype, chunk_size,
                       reuse=reuse, uploads=uploads or "",
                       client=connection.client_options(max_in_flight=max_in_flight, timeout_s=timeout,
                                                        retries=retries, retry_for_s=retry_for))
        if ray:
            from equiprobe.clients.ray_runner import run_ray_embed

            summary = run_ray_embed(job, url, actors, ray_address, progress=not quiet)
        else:
            summary = asyncio.run(run_embed_job(job, progress=not quiet))
    except (DatasetError, StoreError, ServiceError, ValueError) as exc:
        raise fail(str(exc))
    print(json.dumps(summary))


def score(
    files: list[Path] = typer.Argument(..., help="Image files (JPEG, PNG, BMP) to score."),
    url: str = typer.Option("127.0.0.1:8001", help="Triton gRPC address HOST:PORT."),
    encoder: str = typer.Option("squeezenet1_1", help="Encoder whose NAME_detector the server has."),
    top: int = typer.Option(3, help="Most likely transformations and categories to show."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line (file, scores or error)."),
    tls: bool = tls_option(),
    root_certificates: Optional[Path] = root_certificates_option(),
    api_key: Optional[str] = api_key_option(),
) -> None:
    """Score images: the probability each was edited (equal prior), the verdict at the deployed
    threshold, and how."""
    from equiprobe.clients.connection import Connection
    from equiprobe.clients.embedding import ServiceError
    from equiprobe.clients.scoring import Scorer, format_threshold

    try:
        scorer = Scorer(Connection(url, tls, root_certificates, api_key or None), encoder, top=top)
        scorer.check()
    except (ServiceError, ValueError) as exc:
        raise fail(str(exc))
    def show(console, path, result: dict) -> None:
        top_t = ", ".join(f"{t['name']} {t['probability']:.2f}" for t in result["transformations"])
        top_c = ", ".join(f"{c['name']} {c['probability']:.2f}" for c in result["categories"])
        verdict = "yes" if result["manipulated"] else "no"
        console.print(f"[bold]{path}[/bold]  manipulated: {verdict} (P(edited) {result['manipulation_score']:.3f}, "
                      f"threshold {format_threshold(result['threshold'])})  "
                      f"transformations: {top_t}  categories: {top_c}")

    try:
        answer_files(files, lambda data: scorer.score(data).as_dict(), as_json, show, errors=(ServiceError,))
    finally:
        scorer.close()
