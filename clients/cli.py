"""Commands for what talks to the server: benchmarks (embedding jobs and scoring come later)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from equiprobe.services.cli import fail

from .connection import api_key_option, root_certificates_option, tls_option

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print side-by-side ratios.")


def bench_repo(repo: Path, encoder: str) -> Path:
    """The benchmarks' repository: built once, reused by later runs."""
    from equiprobe.services.repository import GATE, build_repo

    if not all((repo / m / "config.pbtxt").exists() for m in (f"{encoder}_embed31", GATE)):
        build_repo(encoder, repo)
    return repo


@bench_app.command("serve")
def bench_serve(
    encoder: str = typer.Option("squeezenet1_1"),
    repo: Path = typer.Option(Path("build/bench/model_repository"), help="Built if it has no NAME_embed."),
    images: int = typer.Option(256, help="Images per measurement."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """Triton gRPC (concurrency 1, 8, 32) against in-process DALI + ONNX Runtime (batch 1, 8, 32)."""
    from equiprobe.services.server import TritonServer, loopback_config

    from .bench import bench_images, run_serve_bench

    bench_repo(repo, encoder)
    data = bench_images(images)
    with TritonServer(loopback_config(repo)) as server:
        rows = run_serve_bench(repo, server.config.grpc_url, encoder, data)
    print_side_by_side(f"{encoder}_embed: {images} JPEG photos (224-512 px) per row", rows, ("triton", "in_process"),
                       ("in flight | batch", "Triton img/s", "p50 ms", "p99 ms", "in-process img/s", "p50 ms/batch",
                        "p99 ms/batch", "Triton/in-process"), json_out)


def print_side_by_side(title: str, rows: list[dict], sides: tuple[str, str], columns: tuple[str, ...],
                       json_out: Optional[Path]) -> None:
    """One table row per level: both sides' images/s, p50 and p99, and their throughput ratio."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows:
        a, b = r[sides[0]], r[sides[1]]
        table.add_row(str(r["level"]), *(f"{m[k]:.1f}" for m in (a, b) for k in ("images_per_s", "p50_ms", "p99_ms")),
                      f"{r['throughput_ratio']:.2f}")
    Console(width=140).print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(rows, indent=2))


@bench_app.command("detector")
def bench_detector(
    encoder: str = typer.Option("squeezenet1_1"),
    repo: Path = typer.Option(Path("build/demo/model_repository"), help="A repository with a deployed NAME_detector "
                              "(make demo leaves one here; or equiprobe deploy --probe DIR --repo DIR)."),
    images: int = typer.Option(128, help="Images per measurement."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures here."),
    versus: Optional[str] = typer.Option(None, help="Compare against this encoder's NAME_detector instead of "
                                         "NAME_embed: e.g. --encoder squeezenet1_1+open_nsfw --versus squeezenet1_1 "
                                         "gives the concatenated detector's cost against the single one."),
) -> None:
    """NAME_detector p50/p99 at concurrency 1 and 16, and its throughput against NAME_embed alone
    (or against another detector)."""
    from equiprobe.services.server import ServerError, TritonServer, loopback_config

    from .bench import bench_images, run_detector_bench

    for name in [encoder] + ([versus] if versus else []):
        if not (repo / f"{name}_detector" / "config.pbtxt").exists():
            raise fail(f"no {name}_detector in {repo}: run `make demo`, or train a probe and "
                       f"`equiprobe deploy --probe DIR --repo {repo}`")
    baseline = (versus, "detector") if versus else (encoder, "embed")
    other = f"{baseline[0]}_{baseline[1]}"
    data = bench_images(images)
    try:
        with TritonServer(loopback_config(repo)) as server:
            rows = run_detector_bench(server.config.grpc_url, encoder, data, baseline=baseline)
    except ServerError as exc:
        raise fail(str(exc))
    print_side_by_side(f"{encoder}_detector vs {other} through gRPC: {images} JPEG photos per row", rows,
                       ("detector", "baseline"), ("in flight", "detector img/s", "p50 ms", "p99 ms", f"{other} img/s",
                                                  "p50 ms", "p99 ms", "ratio"), json_out)


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

    from equiprobe.services.server import TritonServer, loopback_config
    from equiprobe.services.transforms import get_catalog
    from equiprobe.services.transforms.expand import Expander, serialize_expand

    from .bench import bench_images, client_side_expansion, expansion_dali_vs_pillow, server_side_expansion

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


def embed(
    dataset: str = typer.Option(..., help="corpus, fashion-mnist, folder:PATH, list:FILE or tar:GLOB."),
    encoder: str = typer.Option(..., help="Encoder whose NAME_embed31 / NAME_embed_general / NAME_embed_groups "
                                "the server has."),
    out: Path = typer.Option(..., help="Store directory (created, or resumed if it holds this same job)."),
    url: list[str] = typer.Option(["127.0.0.1:8001"], help="Triton gRPC address HOST:PORT; with --ray, "
                                  "repeat it for every server of the fleet."),
    catalog: str = typer.Option("fine", help="fine (31 versions), general (one per sub-transformation) or "
                                "groups (5: identity, three rotations, a flip)."),
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

    from .connection import Connection
    from .datasets import DatasetError
    from .embed_job import EmbedJob, parse_shard, run_embed_job
    from .embedding import ServiceError
    from .store import StoreError

    try:
        headers = dict(h.split("=", 1) for h in header)
    except ValueError:
        raise fail("--header takes KEY=VALUE")
    if len(url) > 1 and not ray:
        raise fail("several --url servers need --ray (one machine talks to one server)")
    if reuse and ray:
        raise fail("--reuse runs on one machine; leave out --ray")
    try:
        connection = Connection(url[0], tls, root_certificates, api_key or None, extra_headers=tuple(headers.items()))
        job = EmbedJob(dataset, encoder, out, url[0], catalog, limit, parse_shard(shard), seed, dtype, chunk_size,
                       reuse=reuse, uploads=uploads or "",
                       client=connection.client_options(max_in_flight=max_in_flight, timeout_s=timeout,
                                                        retries=retries, retry_for_s=retry_for))
        if ray:
            from .ray_runner import run_ray_embed

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
    """Score images: how likely each was manipulated, and how."""
    from .connection import Connection
    from .embedding import ServiceError
    from .scoring import Scorer

    try:
        scorer = Scorer(Connection(url, tls, root_certificates, api_key or None), encoder, top=top)
        scorer.check()
    except (ServiceError, ValueError) as exc:
        raise fail(str(exc))
    console, failed = Console(width=140), 0
    for path in files:
        try:
            result = scorer.score(path.read_bytes()).as_dict()
        except (OSError, ServiceError) as exc:  # one bad file does not stop the others
            failed += 1
            result = {"error": exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)}
        if as_json:
            print(json.dumps({"file": str(path), **result}), flush=True)
        elif "error" in result:
            console.print(f"[red]{path}: {result['error']}[/red]")
        else:
            top_t = ", ".join(f"{t['name']} {t['probability']:.2f}" for t in result["transformations"])
            top_c = ", ".join(f"{c['name']} {c['probability']:.2f}" for c in result["categories"])
            verdict = "yes" if result["manipulated"] else "no"
            console.print(f"[bold]{path}[/bold]  manipulated: {verdict} (score {result['manipulation_score']:.3f}, "
                          f"threshold {result['threshold']:.6f})  "
                          f"transformations: {top_t}  categories: {top_c}")
    scorer.close()
    if failed:
        raise typer.Exit(1)


corpus_app = typer.Typer(no_args_is_help=True, help="The built-in corpus (clients/corpus_manifest.json).")


@corpus_app.command("info")
def corpus_info() -> None:
    """Sources per package, kind and split, after checking that every file is installed."""
    from collections import Counter

    from .corpus import CorpusError, check_corpus, load_manifest, split_of

    try:
        entries = check_corpus()
    except CorpusError as exc:
        raise fail(str(exc))
    table = Table("package", "licence", "photograph", "screenshot", "illustration", "train", "validation", "test",
                  title=f"{len(entries)} colour sources in {len({e['group'] for e in entries})} groups "
                        f"({sum(not e['colour'] for e in load_manifest()['entries'])} grayscale images excluded)")
    for package in sorted({e["package"] for e in entries}):
        mine = [e for e in entries if e["package"] == package]
        kinds, splits = Counter(e["kind"] for e in mine), Counter(split_of(e["group"]) for e in mine)
        table.add_row(package, ", ".join(sorted({e["licence"] for e in mine}))[:40],
                      *(str(kinds[k]) for k in ("photograph", "screenshot", "illustration")),
                      *(str(splits[k]) for k in ("train", "validation", "test")))
    Console(width=160).print(table)


@corpus_app.command("manifest")
def corpus_manifest(out: Path = typer.Option(None, help="Where to write it (default: the committed manifest).")
                    ) -> None:
    """Rescan the installed packages and rewrite the manifest (file, package, licence, kind, group...)."""
    from .corpus import MANIFEST, build_manifest, save_manifest

    save_manifest(build_manifest(), out or MANIFEST)
    print(f"wrote {out or MANIFEST}")


store_app = typer.Typer(no_args_is_help=True, help="Embedding stores.")


@store_app.command("info")
def store_info(path: Path = typer.Argument(..., help="Store directory.")) -> None:
    """Print a store's manifest and how complete it is."""
    from .store import Store, StoreError

    try:
        store = Store.open(path)
    except StoreError as exc:
        raise fail(str(exc))
    m = store.manifest
    summary = store.summary()
    table = Table("field", "value", title=str(path), show_header=False)
    for key in ("dataset", "shard", "limit", "count", "encoder", "encoder_onnx_sha256", "dim", "dtype", "catalog",
                "catalog_version", "seed", "tool_version"):
        table.add_row(key, str(m.get(key)))
    table.add_row("versions per image", f"{len(m['rows'])} ({', '.join(m['rows'][:4])}, ...)")
    table.add_row("labels", f"{len(m['label_names'])} ({', '.join(m['label_names'][:5])}...)" if m["label_names"]
                  else "none")
    table.add_row("completeness", f"{summary['done']} done, {summary['failed']} failed, {summary['pending']} pending "
                  f"of {summary['rows']} ({'complete' if store.complete else 'incomplete: run embed again to resume'})")
    Console(width=140).print(table)
    for error in store.errors()[:10]:
        print(f"  failed: {error['key']}: {error['reason']}")


@store_app.command("concat")
def store_concat(out: Path = typer.Option(..., help="Joined store to write."),
                 stores: list[Path] = typer.Argument(..., help="Complete stores of the same images, one per encoder.")
                 ) -> None:
    """Join stores of several encoders over the same images: each embedding is the parts' concatenated
    (encoder "A+B"); train and deploy it like any store, as one detector that runs every encoder."""
    from .concat import concat_stores
    from .store import StoreError

    try:
        joined = concat_stores(stores, out)
    except StoreError as exc:
        raise fail(str(exc))
    print(json.dumps({**joined.summary(), "store": str(out), "encoder": joined.manifest["encoder"],
                      "dim": joined.manifest["dim"]}))


@store_app.command("merge")
def store_merge(out: Path = typer.Option(..., help="Merged store to write."),
                shards: list[Path] = typer.Argument(..., help="Complete shard stores 0/N .. N-1/N.")) -> None:
    """Merge N shard stores into the store one unsharded run would have written."""
    from .embed_job import merge_stores
    from .store import StoreError

    try:
        merged = merge_stores(shards, out)
    except StoreError as exc:
        raise fail(str(exc))
    print(json.dumps({**merged.summary(), "store": str(out)}))


@bench_app.command("embed")
def bench_embed(
    encoder: str = typer.Option("squeezenet1_1"),
    repo: Path = typer.Option(Path("build/bench/model_repository"), help="Built if it has no NAME_embed31."),
    images: int = typer.Option(32, help="Images embedded end to end (x31 versions), twice."),
    naive_images: int = typer.Option(4, help="Images through the naive loop (it is slow)."),
) -> None:
    """End-to-end `equiprobe embed` against each stage alone, the pipeline limit, and a naive loop."""
    import asyncio
    import tempfile
    import time

    from equiprobe.services.server import TritonServer, loopback_config

    from .bench import best_rate, encoder_stage_rate, expansion_stage_rate, naive_loop_rate
    from .datasets import open_dataset
    from .embed_job import EmbedJob, run_embed_job

    bench_repo(repo, encoder)
    photos = open_dataset("corpus")
    data = [photos.record(i).load() for i in range(images)]
    with tempfile.TemporaryDirectory() as tmp, TritonServer(loopback_config(repo)) as server:
        # Warm-up first (first ONNX Runtime and DALI runs), as the stage measurements do.
        warm = EmbedJob("corpus", encoder, Path(tmp) / "warm", server.config.grpc_url, limit=8)
        asyncio.run(run_embed_job(warm, progress=False))
        rates = []
        for attempt in range(2):  # the better of two runs: this machine's timings are noisy
            job = EmbedJob("corpus", encoder, Path(tmp) / f"store{attempt}", server.config.grpc_url, limit=images)
            start = time.perf_counter()
            asyncio.run(run_embed_job(job, progress=False))
            rates.append(images / (time.perf_counter() - start))
        end_to_end = max(rates)
    expand, expand_batch = best_rate(lambda b: expansion_stage_rate(repo, encoder, data, b), (1, 4, 8))
    encode_rate, encode_batch = best_rate(lambda b: encoder_stage_rate(repo, encoder, images, b), (1, 2, 4, 8))
    limit = 1 / (1 / expand + 1 / encode_rate)  # both stages on the same cores
    naive = naive_loop_rate(encoder, data[:naive_images])
    k = 31
    table = Table(title=f"{encoder}, photos, fine catalog ({k} versions per image)")
    for col in ("measurement", "images/s", "embeddings/s", "ratio"):
        table.add_column(col, justify="left" if col == "measurement" else "right")
    table.add_row(f"equiprobe embed, end to end ({images} images, best of 2, server on the same cores)",
                  f"{end_to_end:.2f}",
                  f"{end_to_end * k:.1f}", "")
    table.add_row(f"stage alone: DALI decode + transforms + crops (batch {expand_batch})", f"{expand:.2f}",
                  f"{expand * k:.1f}", "")
    table.add_row(f"stage alone: encoder on crops, ONNX Runtime (batch {encode_batch})", f"{encode_rate:.2f}",
                  f"{encode_rate * k:.1f}", "")
    table.add_row("pipeline limit 1 / (1/preprocess + 1/encoder)", f"{limit:.2f}", f"{limit * k:.1f}",
                  f"efficiency {end_to_end / limit:.2f}")
    table.add_row(f"naive loop: Pillow + torch eager, one at a time ({naive_images} images)", f"{naive:.3f}",
                  f"{naive * k:.1f}", f"embed is {end_to_end / naive:.1f}x")
    Console(width=150).print(table)


@bench_app.command("soak")
def bench_soak(
    encoder: str = typer.Option("squeezenet1_1"),
    repo: Path = typer.Option(Path("build/bench/model_repository"), help="Built if it has no NAME_embed31."),
    minutes: float = typer.Option(10.0, min=0.1, max=120.0, help="How long to run (bounded)."),
    concurrency: int = typer.Option(16, min=1, max=256, help="Requests in flight."),
    interval_s: float = typer.Option(10.0, min=1.0, help="Seconds per reported interval."),
    warmup_s: float = typer.Option(90.0, min=0.0, help="Seconds under the full load before the RSS growth baseline "
                                   "(DALI's buffers reach their size in about a minute at concurrency 16)."),
    json_out: Optional[Path] = typer.Option(Path("build/bench/soak.json"), "--json", help="Figures (JSON)."),
    plot: Optional[Path] = typer.Option(Path("build/bench/soak.png"), help="Throughput and RSS plot (PNG)."),
) -> None:
    """Mixed good and bad uploads (clients/upload_corpus.py) to NAME_embed on a loopback server:
    throughput over time, outcomes, and RSS of the server and every stub at start and end."""
    from equiprobe.services.server import TritonServer, loopback_config

    from .soak import GOOD_FAILED, plot_soak, run_soak

    bench_repo(repo, encoder)
    console = Console()
    with TritonServer(loopback_config(repo)) as server:  # loopback only: a soak never leaves this machine
        def show(row: dict) -> None:
            console.print(f"{row['end_s']:7.1f} s  {row['requests_per_s']:6.1f} req/s  {row['good_per_s']:6.1f} good/s  "
                          f"good ok {row['good_ok']}  good failed {row['good_failed']}  bad refused "
                          f"{row['bad_refused']}  bad other {row['bad_other']}", highlight=False)
        report = run_soak(server.config.grpc_url, f"{encoder}_embed", server.group_pids, minutes, concurrency,
                          interval_s, warmup_s, progress=show)
    table = Table("process", "RSS before load (MB)", f"after {warmup_s:g} s warm-up", "at end", "end / warm-up")
    for name in sorted(report.rss_start_mb):
        start, end = report.rss_start_mb[name], report.rss_end_mb.get(name, 0.0)
        table.add_row(name, f"{report.rss_before_load_mb.get(name, 0.0):.1f}", f"{start:.1f}", f"{end:.1f}",
                      f"{end / start:.3f}" if start else "-")
    console.print(table)
    console.print(f"totals {report.totals} in {report.seconds:.0f} s; RSS growth after warm-up (all processes) "
                  f"{report.rss_growth:+.1%}, largest single process {report.largest_process_growth[0]} "
                  f"{report.largest_process_growth[1]:+.1%}; target: 0 failed good requests, growth under 10%",
                  highlight=False)
    for failure in report.failures:
        console.print(f"  {failure}", highlight=False)
    for path in (json_out, plot):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
    if json_out:
        json_out.write_text(json.dumps(report.as_json(), indent=2))
    if plot:
        plot_soak(report, plot)
    print(f"wrote {json_out} {plot}")
    if report.totals.get(GOOD_FAILED) or report.totals.get("bad_other"):
        raise typer.Exit(code=1)
