"""`equiprobe bench ...`: every benchmark (serve, perf-analyzer, detector, transforms, embed,
expansion, soak, train, match). The measurements are trainer/benchmarks/'s; here, the options
and the tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from equiprobe.services.contract import DetectorNames, ExpansionNames, MatchNames, ModelNames, encoder_of

from .common import baseline_options, fail, probe_options


def write_json(path: Optional[Path], figures) -> None:
    """--json: the figures a benchmark printed, machine-readable."""
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2))


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print side-by-side ratios.")


@bench_app.command("serve")
def bench_serve(
    encoder: str = typer.Option("squeezenet1_1"),
    repo: Path = typer.Option(Path("build/bench/model_repository"), help="Built if it has no NAME_embed."),
    images: int = typer.Option(256, help="Images per measurement."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures here."),
    int8: bool = typer.Option(False, help="Also the INT8 encoder's throughput against FP32 (build-repo --precision "
                              "int8; built once into --int8-repo): alone, NAME_embed in-process and via Triton."),
    int8_repo: Path = typer.Option(Path("build/bench/model_repository_int8"), help="The INT8 side's repository."),
) -> None:
    """Triton gRPC (concurrency 1, 8, 32) against in-process DALI + ONNX Runtime (batch 1, 8, 32)."""
    from equiprobe.trainer.benchmarks.harness import bench_images
    from equiprobe.trainer.benchmarks.serve import run_serve_bench

    data = bench_images(images)
    figures = run_serve_bench(repo, encoder, data)
    rows = figures["rows"]
    print_side_by_side(f"{ModelNames(encoder).embed}: {images} JPEG photos (224-512 px) per row", rows,
                       ("triton", "in_process"),
                       ("in flight | batch", "Triton img/s", "p50 ms", "p99 ms", "in-process img/s", "p50 ms/batch",
                        "p99 ms/batch", "Triton/in-process"))
    print_cpu_breakdown(rows, encoder)
    print_memory(encoder, figures["rss_mib_loaded"], figures["rss_mib_after"])
    if int8:
        from equiprobe.trainer.benchmarks.precision import run_precision_bench

        comparison = run_precision_bench(repo, int8_repo, encoder, data[:128])
        print(f"INT8 against FP32 ({ModelNames(encoder).onnx}, {comparison.images} photos, batch {comparison.batch}, "
              f"best of {comparison.rounds} alternating rounds):")
        for line in comparison.lines():
            print("  " + line)
        figures["int8_vs_fp32"] = comparison.as_dict()
    write_json(json_out, figures)


@bench_app.command("perf-analyzer")
def bench_perf_analyzer(
    encoder: str = typer.Option("squeezenet1_1"),
    model: Optional[str] = typer.Option(None, help="The served model to load (default NAME_embed); it takes IMAGE."),
    repo: Path = typer.Option(Path("build/bench/model_repository"), help="Built if missing or stale."),
    images: int = typer.Option(16, help="Package photos in perf_analyzer's input data (requests cycle through them)."),
    concurrency: list[int] = typer.Option([1, 8, 16, 32], help="Concurrency levels (repeatable: --concurrency 1 8)."),
    measurement_interval_ms: int = typer.Option(5000, help="perf_analyzer's time window per trial."),
    stability_percent: float = typer.Option(10.0, help="perf_analyzer's stability criterion over 3 windows."),
    serve: bool = typer.Option(True, help="Also run bench serve's measurement at the same levels, on the same server, "
                               "and print the two side by side."),
    serve_images: int = typer.Option(256, help="Images per bench serve level."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the figures here."),
) -> None:
    """NVIDIA's perf_analyzer (the tritonclient wheel's binary) on NAME_embed with real photos at
    a concurrency range, its table next to `bench serve`'s, on one loopback server."""
    from equiprobe.trainer.benchmarks.perf_analyzer import (TABLE_COLUMNS, PerfAnalyzerError, format_rows,
                                                            run_perf_analyzer_bench)

    target = model or ModelNames(encoder).embed
    try:
        figures = run_perf_analyzer_bench(repo, encoder, target, images, concurrency, serve_images if serve else 0,
                                          measurement_interval_ms=measurement_interval_ms,
                                          stability_percent=stability_percent)
    except PerfAnalyzerError as exc:
        raise fail(str(exc))
    rows, serve_rows, side = figures["perf_analyzer"], figures["bench_serve"], figures["side_by_side"]
    table = Table(title=f"perf_analyzer on {target}: {images} photos, gRPC, time windows of {measurement_interval_ms} ms")
    for name, _, _ in TABLE_COLUMNS:
        table.add_column(name, justify="right")
    for cells in format_rows(rows):
        table.add_row(*cells)
    Console(width=180).print(table)
    if side:
        table = Table(title="perf_analyzer beside bench serve (the project's gRPC client threads), same server")
        for col in ("in flight", "perf_analyzer infer/s", "p50 ms", "p99 ms", "bench serve img/s", "p50 ms", "p99 ms",
                    "bench serve / perf_analyzer", "in-process img/s", "Triton / in-process"):
            table.add_column(col, justify="right")
        for r, s_ in zip(side, [r for r in serve_rows if r["level"] in {x["level"] for x in side}]):
            table.add_row(str(r["level"]), f"{r['perf_analyzer_infer_per_s']:.1f}", f"{r['perf_analyzer_p50_ms']:.1f}",
                          f"{r['perf_analyzer_p99_ms']:.1f}", f"{r['serve_images_per_s']:.1f}",
                          f"{r['serve_p50_ms']:.1f}", f"{r['serve_p99_ms']:.1f}", f"{r['serve_over_perf_analyzer']:.2f}",
                          f"{s_['in_process']['images_per_s']:.1f}", f"{s_['throughput_ratio']:.2f}")
        Console(width=180).print(table)
    write_json(json_out, figures)


def print_cpu_breakdown(rows: list[dict], encoder: str) -> None:
    """CPU ms per image: each server process (by model; those under 0.05 ms left out) and the
    client, against the in-process run's."""
    processes = sorted({k for r in rows for k, ms in r["triton_cpu_ms_per_image"].items() if ms >= 0.05}
                       - {"client", "total", "wall_ms"})
    table = Table(title=f"CPU ms per image (user + system), by process ({encoder}_ left out of model names)")
    for col in ("in flight | batch", *(_role(p, encoder) for p in processes), "client", "Triton total",
                "in-process total"):
        table.add_column(col, justify="right")
    for r in rows:
        cpu = r["triton_cpu_ms_per_image"]
        table.add_row(str(r["level"]), *(f"{cpu.get(p, 0.0):.2f}" for p in processes), f"{cpu['client']:.2f}",
                      f"{cpu['total']:.2f}", f"{r['in_process']['cpu_ms_per_image']:.2f}")
    Console(width=180).print(table)


def _role(process: str, encoder: str) -> str:
    """A process's column: the role of one of ENCODER's models ("embed", "encoder"), else its name."""
    try:
        owner, role = encoder_of(process)
    except ValueError:  # tritonserver
        return process
    return role if owner == encoder else process


def print_memory(encoder: str, loaded: dict[str, float], after: dict[str, float]) -> None:
    """RSS of tritonserver and each model's stubs: everything one encoder's repository keeps loaded."""
    table = Table(title=f"server memory (RSS MiB), one encoder ({encoder}) loaded")
    for col in ("process", "after loading", "after the benchmark"):
        table.add_column(col, justify="left" if col == "process" else "right")
    for name in sorted(after, key=lambda n: -after[n]):
        table.add_row(name, f"{loaded.get(name, 0.0):.0f}", f"{after[name]:.0f}")
    table.add_row("total", f"{sum(loaded.values()):.0f}", f"{sum(after.values()):.0f}")
    Console(width=140).print(table)


def print_side_by_side(title: str, rows: list[dict], sides: tuple[str, str], columns: tuple[str, ...]) -> None:
    """One table row per level: both sides' images/s, p50 and p99, and their throughput ratio."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows:
        a, b = r[sides[0]], r[sides[1]]
        table.add_row(str(r["level"]), *(f"{m[k]:.1f}" for m in (a, b) for k in ("images_per_s", "p50_ms", "p99_ms")),
                      f"{r['throughput_ratio']:.2f}")
    Console(width=140).print(table)


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
    features_images: int = typer.Option(64, help="Images for the in-process FEATURES cost (before/after)."),
) -> None:
    """The detector's CPU ms per image before and after FEATURES (in-process, side by side); then
    NAME_detector p50/p99 at concurrency 1 and 16, and its throughput against NAME_embed alone
    (or against another detector)."""
    from equiprobe.services.server import ServerError
    from equiprobe.trainer.benchmarks.detector import run_detector_bench
    from equiprobe.trainer.benchmarks.harness import bench_images

    try:
        figures = run_detector_bench(repo, encoder, bench_images(images), versus, features_images)
    except (ServerError, ValueError) as exc:
        raise fail(str(exc))
    for cost in figures["features_cost"]:
        table = Table("stage", "before FEATURES", "after FEATURES", "ratio", title=(
            f"{cost['encoder']} detector, CPU ms per image in-process ({cost['images']} JPEG photos, cheapest of "
            f"alternating rounds; after: EMBEDDING + {cost['features_dim']} FEATURES from one pass, probe on both)"))
        for row in cost["rows"]:
            table.add_row(row["stage"], f"{row['before']:.2f}", f"{row['after']:.2f}", f"{row['after'] / row['before']:.2f}")
        Console(width=140).print(table)
    other = DetectorNames(versus).detector if versus else ModelNames(encoder).embed
    print_side_by_side(f"{DetectorNames(encoder).detector} vs {other} through gRPC: {images} JPEG photos per row",
                       figures["served"],
                       ("detector", "baseline"), ("in flight", "detector img/s", "p50 ms", "p99 ms", f"{other} img/s",
                                                  "p50 ms", "p99 ms", "ratio"))
    write_json(json_out, figures)


def rates_table(title: str) -> Table:
    """A table of measurements: images/s, embeddings/s and a ratio each."""
    table = Table(title=title, show_lines=False)
    for col in ("measurement", "images/s", "embeddings/s", "ratio"):
        table.add_column(col, justify="left" if col == "measurement" else "right")
    return table


@bench_app.command("transforms")
def bench_transforms(
    encoder: str = typer.Option("squeezenet1_1"),
    repo: Path = typer.Option(Path("build/bench/model_repository"), help="Built if it has no NAME_embed31."),
    images: int = typer.Option(16, help="Images per measurement."),
    concurrency: int = typer.Option(4, help="Requests in flight."),
) -> None:
    """embed31 (one upload, 31 server-side transformations) vs 31 client-side-transformed uploads
    through NAME_embed; and the DALI CPU expansion vs the same transformations in Pillow/numpy."""
    from equiprobe.trainer.benchmarks.expansion import run_transforms_bench

    r = run_transforms_bench(repo, encoder, images, concurrency)
    k, server_rate, client_rate = r["versions"], r["server_side"], r["client_side"]
    table = rates_table(f"{encoder}, fine catalog ({k} versions), {images} JPEG photos")
    table.add_row(f"{ExpansionNames(encoder, 'fine').embed}: 1 upload, {k} versions in the server",
                  f"{server_rate:.2f}",
                  f"{server_rate * k:.1f}", f"{server_rate / client_rate:.2f}x")
    table.add_row(f"client expands (DALI) + {k} JPEG uploads to {ModelNames(encoder).embed}", f"{client_rate:.2f}",
                  f"{client_rate * k:.1f}", "1.00x")
    table.add_row(f"expansion alone: DALI on CPU, batch 8 ({k} canvases/image)", f"{r['dali']:.2f}", "",
                  f"{r['dali'] / r['pillow']:.2f}x")
    table.add_row("expansion alone: Pillow/numpy, one image at a time", f"{r['pillow']:.2f}", "", "1.00x")
    Console(width=140).print(table)


@bench_app.command("embed")
def bench_embed(
    encoder: str = typer.Option("squeezenet1_1"),
    repo: Path = typer.Option(Path("build/bench/model_repository"), help="Built if it has no NAME_embed31."),
    images: int = typer.Option(32, help="Images embedded end to end (x31 versions), twice."),
    naive_images: int = typer.Option(4, help="Images through the naive loop (it is slow)."),
) -> None:
    """End-to-end `equiprobe embed` against each stage alone, the pipeline limit, and a naive loop."""
    from equiprobe.trainer.benchmarks.embed import run_embed_bench

    r = run_embed_bench(repo, encoder, images, naive_images)
    end_to_end, limit, naive = r["end_to_end"], r["limit"], r["naive"]
    k = 31
    table = rates_table(f"{encoder}, photos, fine catalog ({k} versions per image)")
    table.add_row(f"equiprobe embed, end to end ({images} images, best of 2, server on the same cores)",
                  f"{end_to_end:.2f}", f"{end_to_end * k:.1f}", "")
    table.add_row(f"stage alone: DALI decode + transforms + crops (batch {r['expand_batch']})", f"{r['expand']:.2f}",
                  f"{r['expand'] * k:.1f}", "")
    table.add_row(f"stage alone: encoder on crops, ONNX Runtime (batch {r['encode_batch']})", f"{r['encode']:.2f}",
                  f"{r['encode'] * k:.1f}", "")
    table.add_row("pipeline limit 1 / (1/preprocess + 1/encoder)", f"{limit:.2f}", f"{limit * k:.1f}",
                  f"efficiency {end_to_end / limit:.2f}")
    table.add_row(f"naive loop: Pillow + torch eager, one at a time ({naive_images} images)", f"{naive:.3f}",
                  f"{naive * k:.1f}", f"embed is {end_to_end / naive:.1f}x")
    table.add_row("end to end / encoder alone (its best batch)", "", "", f"{end_to_end / r['encode']:.2f}")
    Console(width=150).print(table)
    cpu = r["cpu_ms_per_image"]
    print("end to end, CPU ms per image (x31 versions) by process: " + ", ".join(
        f"{name} {ms:.1f}" for name, ms in sorted(cpu.items(), key=lambda kv: -kv[1]) if name != "wall_ms"))


@bench_app.command("expansion")
def bench_expansion(
    encoder: str = typer.Option("squeezenet1_1"),
    catalog: str = typer.Option("fine"),
    repo: Path = typer.Option(Path("build/bench/model_repository"), help="Built if missing or stale."),
    images: int = typer.Option(32, help="Photos per measurement."),
    batch: int = typer.Option(8, help="Images per DALI run."),
    out: Path = typer.Option(Path("build/bench/expansion"), help="expansion_profile.json and .png go here."),
) -> None:
    """What each stage of the server-side expansion costs: CPU ms per version of every
    transformation, the upload re-encoding and the resize/crop, against NAME_encoder's CPU ms
    per crop (served micro-batches), all in this process."""
    from equiprobe.trainer.benchmarks.expansion import run_expansion_bench
    from equiprobe.trainer.plots import grouped_bars

    profile = run_expansion_bench(repo, encoder, catalog, images, batch)
    encoder_ms = profile["encoder_cpu_ms_per_crop"]
    k, rows = profile["versions"], profile["rows"]
    table = Table(title=f"{encoder}, {catalog} catalog ({k} versions): CPU ms (user + system, DALI's 2 threads "
                        f"summed), {images} photos, batch {batch}")
    for col in ("stage", "CPU ms per version", "share of the expansion"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    whole = profile["whole_cpu_ms"]
    for row in rows:
        per_image = row["cpu_ms"] * (k if "per version" in row["stage"] else 1)
        table.add_row(row["stage"], f"{row['cpu_ms']:.2f}", f"{per_image / whole:.0%}")
    table.add_row("whole expansion, per version (per image / K)", f"{whole / k:.2f}", "100%")
    table.add_row(f"{ModelNames(encoder).onnx}, per crop", f"{encoder_ms:.2f}", "")
    Console(width=140).print(table)
    print(f"per image: expansion {whole:.0f} ms, encoder {encoder_ms * k:.0f} ms of CPU; the encoder's share "
          f"{encoder_ms * k / (whole + encoder_ms * k):.2f} (what embed's emb/s can reach of the encoder alone "
          "on the same cores, before any serving overhead)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "expansion_profile.json").write_text(json.dumps(profile, indent=2))
    names = [r["stage"] for r in rows] + ["encoder (per crop)"]
    grouped_bars(out / "expansion_profile.png", f"{encoder}, {catalog}: CPU ms per version", "CPU ms", names,
                 {"CPU ms": [r["cpu_ms"] for r in rows] + [encoder_ms]}, ylim=None)
    print(f"wrote {out / 'expansion_profile.json'} and {out / 'expansion_profile.png'}")


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
    from equiprobe.trainer.benchmarks.soak import GOOD_FAILED, plot_soak, run_soak_bench

    console = Console()

    def show(row: dict) -> None:
        console.print(f"{row['end_s']:7.1f} s  {row['requests_per_s']:6.1f} req/s  {row['good_per_s']:6.1f} good/s  "
                      f"good ok {row['good_ok']}  good failed {row['good_failed']}  bad refused "
                      f"{row['bad_refused']}  bad other {row['bad_other']}", highlight=False)

    report = run_soak_bench(repo, encoder, minutes, concurrency, interval_s, warmup_s, progress=show)
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


@bench_app.command("train")
@baseline_options()
@probe_options(helps={"max_epochs": "Upper bound for the torch probes (early stopping)."})
def bench_train(
    store: Path = typer.Option(..., help="Store to train on."),
    task: str = typer.Option("fine", help="fine or general."),
    probe_fields: Optional[dict] = None,
    baseline_fields: Optional[dict] = None,
) -> None:
    """Torch linear probe vs scikit-learn logistic regression vs MLP, and store read rate, in one run.

    The probe options set both torch probes (linear, mlp); the baseline options the regression."""
    from equiprobe.clients.store import StoreError
    from equiprobe.trainer.baselines import BaselineConfig
    from equiprobe.trainer.benchmarks.training import run_train_bench as run
    from equiprobe.trainer.probes import ProbeConfig

    try:
        results = run(store, task, ProbeConfig(**probe_fields), BaselineConfig(**baseline_fields))
    except (StoreError, ValueError) as exc:
        raise fail(str(exc))
    read = results["read"]
    table = Table("probe", "train time (s)", "test accuracy", "detail", title=f"{store} ({task} task)")
    for name in ("torch linear", "sklearn logreg", "torch mlp"):
        r = results[name]
        detail = ", ".join(f"{k} {v}" for k, v in r["detail"].items() if k in ("epochs", "chosen"))
        table.add_row(name, f"{r['seconds']:.2f}", f"{r['test_accuracy']:.3f}", detail)
    console = Console()
    console.print(table)
    console.print(f"store read: {read['examples']:,} training examples in {read['seconds']:.2f} s = "
                  f"{read['examples_per_s']:,.0f} rows/s ({read['mb_per_s']:.0f} MB/s)")
    console.print(f"sklearn logreg time / torch linear time = {results['logreg_time_over_torch_linear']:.2f}; "
                  f"accuracy torch linear - logreg = {results['accuracy_torch_linear_minus_logreg']:+.3f}")



@bench_app.command("match")
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
    from equiprobe.trainer.benchmarks.harness import bench_images
    from equiprobe.trainer.benchmarks.match import run_match_bench
    from equiprobe.services.server import ServerError

    try:
        figures = run_match_bench(repo, encoder, index, bench_images(images), tuple(concurrency), repeats,
                                  tuple(memory_sizes))
    except (ServerError, ValueError) as exc:
        raise fail(str(exc))
    console = Console(width=160)
    table = Table(title=f"{MatchNames(encoder).matcher} vs {ModelNames(encoder).embed} through gRPC: {images} JPEG "
                  "photos per row, index of "
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
    write_json(json_out, figures)
