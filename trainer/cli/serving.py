"""`equiprobe encoders`, `formats`, `export`, `build-repo` and `serve`: what runs in or for Triton."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from equiprobe.services.serving_spec import ServingSpec

from .common import config_options, console, fail

# build-repo's options for the fields of ServingSpec (its defaults are the options' defaults).
SERVING_HELP = {
    "max_request_mb": "image_gate refuses uploads larger than this (MB).",
    "max_pixels": "image_gate refuses images with more pixels.",
    "max_batch_size": "Largest batch of every batched model.",
    "queue_delay_us": "Dynamic batchers' extra wait for a fuller batch (µs).",
    "dali_threads": "DALI CPU threads per pipeline model.",
    "ort_threads": "ONNX Runtime intra-op threads of the other ONNX models (style networks; portable).",
    "encoder_threads": "ONNX Runtime intra-op threads of each NAME_encoder run (portable).",
    "encoder_parallel_runs": "NAME_encoder's micro-batches run at once (portable).",
    "ort_spinning": "Let idle ONNX Runtime threads spin (portable).",
    "encoder_micro_batch": "NAME_encoder runs ONNX Runtime on at most this many crops at a time (portable; 0: the "
                           "whole dynamic batch).",
}
SERVING_BOUNDS = {name: {"min": 0 if name in ("queue_delay_us", "encoder_micro_batch") else 1}
                  for name in SERVING_HELP if name != "ort_spinning"}
SERVING_SKIP = ("preferred_batch_sizes", "trt_cache_path")  # not build-repo options


def encoders() -> None:
    """List the registered encoders."""
    from equiprobe.services.encoders import list_encoders

    table = Table("name", "dim", "input", "weights", "description")
    for spec in list_encoders():
        p = spec.preprocess
        table.add_row(spec.name, str(spec.dim), f"{p.size}px {p.channel_order} {p.layout}",
                      "bundled" if not spec.needs_weights_file else "--weights PATH", spec.description)
    Console().print(table)


def formats() -> None:
    """List the upload formats each flavour takes, who decodes them and what is checked."""
    from equiprobe.services.uploads import FORMATS, MAX_PIXELS, MAX_REQUEST_MB

    table = Table("format", "suffixes", "portable flavour", "native flavour", "checked before decoding",
                  title="Uploads (EXIF orientation is applied for every format)")
    for f in FORMATS:
        if f.decoder == "dali":
            # nvImageCodec has GPU codecs for these three; DALI's mixed decoder falls back to its CPU codecs otherwise.
            gpu = f.name in ("JPEG", "JPEG 2000", "TIFF")
            portable, native = "DALI (CPU)", f"DALI mixed decoder ({'GPU' if gpu else 'CPU codec'})"
        else:
            portable = native = "Pillow -> lossless PPM -> DALI"
        table.add_row(f.name, " ".join(f.suffixes), portable, native, f.checks)
    Console(width=160).print(table)
    print(f"Both flavours: requests over {MAX_REQUEST_MB} MB or images over {MAX_PIXELS:,} pixels are refused "
          "(build-repo --max-request-mb, --max-pixels). Portable only: an image the DALI decoder only partly "
          "understood (its warnings) is refused too; Triton's dali backend gives no such hook.")


def export(
    encoder: str = typer.Option(..., help="Registered encoder name (see `equiprobe encoders`)."),
    out: Path = typer.Option(None, help="ONNX file to write (default: build/onnx/NAME.onnx)."),
    weights: Optional[Path] = typer.Option(None, help="Local checkpoint with the encoder's weights."),
    random_weights: bool = typer.Option(False, help="Random weights, for pipeline tests only."),
) -> None:
    """Export an encoder to ONNX with a dynamic batch axis and check it against torch."""
    from equiprobe.services.encoders import EncoderError, get_encoder
    from equiprobe.services.export import FEATURES_TOLERANCE, RELATIVE_TOLERANCE, export_encoder

    out = out or Path("build/onnx") / f"{encoder}.onnx"
    try:
        spec = get_encoder(encoder)
        result = export_encoder(spec, spec.build(weights, random_weights), out)
    except EncoderError as exc:
        raise fail(str(exc))
    status = "ok" if result.within_tolerance else "OVER TOLERANCE"
    print(f"wrote {result.path} (sha256 {result.sha256[:16]}...)")
    print(f"ONNX Runtime vs source: max abs diff {result.max_abs_diff:.3g} on embeddings up to "
          f"{result.reference_scale:.3g} (tolerance {RELATIVE_TOLERANCE:g} relative): {status}")
    if result.features_scale:
        print(f"FEATURES: max abs diff {result.features_max_abs_diff:.3g} on values up to {result.features_scale:.3g} "
              f"(tolerance {FEATURES_TOLERANCE:g} relative)")
    if not result.within_tolerance:
        raise typer.Exit(code=1)


@config_options(ServingSpec, "serving_fields", skip=SERVING_SKIP, helps=SERVING_HELP, bounds=SERVING_BOUNDS,
                negatable=("ort_spinning",))
def build_repo(
    encoder: str = typer.Option(..., help="Registered encoder name."),
    repo: Path = typer.Option(Path("model_repository"), help="Model repository directory."),
    flavour: str = typer.Option("portable", help="portable (python backend, CPU) or native (NGC container, GPU)."),
    weights: Optional[Path] = typer.Option(None, help="Local checkpoint with the encoder's weights."),
    random_weights: bool = typer.Option(False, help="Random weights, for pipeline tests only."),
    style_net: list[str] = typer.Option([], help="NAME=PATH of a fast-neural-style ONNX network (float RGB "
                                        "[N,3,H,W] 0..255 in and out), added as an extra style version. Repeatable."),
    precision: str = typer.Option("fp32", help="fp32, or int8: NAME_encoder statically quantized (portable: ONNX "
                                  "Runtime QDQ; native: TensorRT INT8 from a shipped calibration table), calibrated "
                                  "on the built-in corpus's train sources and refused unless its parity with FP32 holds "
                                  "on held-out sources (cosine, the detector's AUC and 31-way accuracy)."),
    calibration_images: int = typer.Option(64, min=1, help="int8: corpus crops of train sources to calibrate on."),
    parity_images: int = typer.Option(164, min=2, help="int8: corpus crops of test sources for the cosine to FP32."),
    detector_images: str = typer.Option("196,50,82", help="int8: TRAIN,VALIDATION,TEST corpus crops (31 versions "
                                        "each) for the detector parity: probes trained on FP32 embeddings."),
    accept_parity_failure: bool = typer.Option(False, help="int8: write the INT8 encoder even if its parity gate "
                                               "fails (recorded in the manifest as an override). Not for production."),
    catalog: list[str] = typer.Option([], help="A catalog whose expansion to render: fine, general, groups or detect "
                                      "(NAME_embed_detect, the detection catalog). Repeatable; default fine, general "
                                      "and groups."),
    serving_fields: Optional[dict] = None,
) -> None:
    """Render NAME_embed (DALI -> ONNX ensemble) and the server-side expansions NAME_embed31,
    NAME_embed_general and NAME_embed_groups (--catalog picks others: NAME_embed_detect)."""
    import time

    from equiprobe.services.contract import CATALOG_SUFFIX
    from equiprobe.services.encoders import EncoderError
    from equiprobe.services.quantize import PRECISIONS, Int8Options, parity_summary
    from equiprobe.services.repository import build_repo as build

    nets = {}
    for item in style_net:
        name, _, path = item.partition("=")
        if not name.isidentifier() or not path:
            raise fail(f"--style-net takes NAME=PATH with NAME a plain identifier, not {item!r}")
        if not Path(path).is_file():
            raise fail(f"style network {path} does not exist")
        nets[name] = Path(path)
    if precision not in PRECISIONS:
        raise fail(f"--precision takes {' or '.join(PRECISIONS)}, not {precision!r}")
    unknown = [c for c in catalog if c not in CATALOG_SUFFIX]
    if unknown:
        raise fail(f"--catalog takes {', '.join(CATALOG_SUFFIX)}, not {', '.join(unknown)}")
    catalogs = {"catalogs": tuple(dict.fromkeys(catalog))} if catalog else {}  # else build_repo's default
    int8 = None
    start = time.perf_counter()
    try:
        serving = ServingSpec(**serving_fields)
        if precision == "int8":
            from equiprobe.trainer.int8_parity import corpus_int8_build

            sizes = tuple(int(n) for n in detector_images.split(","))
            if len(sizes) != 3 or min(sizes) < 1:
                raise fail(f"--detector-images takes TRAIN,VALIDATION,TEST counts, not {detector_images!r}")
            options = Int8Options(calibration_images, parity_images, sizes,  # type: ignore[arg-type]
                                  accept_parity_failure=accept_parity_failure)
            int8 = corpus_int8_build(options, detector=flavour == "portable")
            print(f"int8: calibrating on {calibration_images} corpus crops of train sources; parity on {parity_images} "
                  f"crops of test sources" + (f" and a detector trained on {sizes[0]} train images (validation "
                                              f"{sizes[1]}), judged on {sizes[2]} test images x 31 versions"
                                              if flavour == "portable" else ""), flush=True)
        result = build(encoder, repo, flavour, weights, random_weights, serving=serving,  # type: ignore[arg-type]
                       style_nets=nets, precision=precision, int8=int8, **catalogs)
    except (EncoderError, ValueError) as exc:  # ParityError too: the INT8 gate's refusal, with its figures
        raise fail(str(exc))
    except typer.Exit:
        raise
    except Exception as exc:  # an unreadable ONNX file, for example: name it, no traceback
        raise fail(f"could not build the repository: {type(exc).__name__}: {exc}")
    print(f"{result.flavour} repository {result.repo}: {', '.join(result.models)}")
    print(f"encoder ONNX sha256 {result.onnx_sha256[:16]}..., export max abs diff {result.export_max_abs_diff:.3g}")
    if result.int8 is not None:
        record = result.int8
        if isinstance(record.get("parity"), dict):
            print(f"int8 parity: {parity_summary(record['parity'])}")
            if record["override"]:
                console.print("[red]int8 parity gate FAILED[/red] (" + "; ".join(record["failures"]) + "): written "
                              "anyway because of --accept-parity-failure (recorded in the manifest)", highlight=False)
            else:
                print("int8 parity gate passed: " + ", ".join(f"{k} {v}" for k, v in record["thresholds"].items()))
        else:
            print(f"int8 ({record['method']}): {record['calibration_table']}; {record['note']}")
        print(f"built in {time.perf_counter() - start:.0f} s")


def serve(
    repo: Path = typer.Option(Path("model_repository"), help="Model repository to serve."),
    grpc_port: int = typer.Option(8001), http_port: int = typer.Option(8000),
    metrics_port: int = typer.Option(8002), host: str = typer.Option("127.0.0.1"),
    model_control: str = typer.Option(
        "none", "--model-control", "--model-control-mode",
        help="none (load everything at start), explicit (load everything at start, then what clients ask "
             "for: `equiprobe deploy --url` switches versions this way) or poll (rescan the repository)."),
    repository_poll_secs: int = typer.Option(5, help="With --model-control poll: seconds between rescans."),
    tls_cert: Optional[Path] = typer.Option(None, help="PEM certificate (chain) for gRPC TLS, with --tls-key. "
                                            "Needed for a --host that is not loopback, unless --insecure."),
    tls_key: Optional[Path] = typer.Option(None, help="PEM private key of --tls-cert."),
    insecure: bool = typer.Option(False, help="Serve a non-loopback --host in plaintext (a proxy or mesh in front "
                                  "terminates TLS). Keys still apply."),
    admin_key: Optional[str] = typer.Option(None, envvar="EQUIPROBE_ADMIN_KEY", show_envvar=True,
                                            help="Key for model control (load, unload, repository index), shared "
                                            "memory, trace and logging; needed off loopback with model control "
                                            "explicit or poll. Prefer the environment variable."),
    api_key: Optional[str] = typer.Option(None, envvar="EQUIPROBE_API_KEY", show_envvar=True,
                                          help="Key for inference, model config, metadata and statistics (health "
                                          "stays open). Prefer the environment variable."),
    metrics_host: Optional[str] = typer.Option(None, help="Address for Prometheus metrics (plaintext, no auth in "
                                               "Triton; default --host); 127.0.0.1 keeps them local."),
    restart_dead_stubs: bool = typer.Option(True, help="Restart the server when a python-backend stub dies (Triton "
                                            "2.51 keeps such a model READY and fails its every request)."),
) -> None:
    """Run the real Triton server on this repository until SIGINT/SIGTERM.

    Off loopback: gRPC with TLS (or --insecure), HTTP for health probes only, keys through
    Triton's restricted protocols (docs/serving.md, "Exposing the server")."""
    from equiprobe.services.security import http_health_only
    from equiprobe.services.server import MODEL_CONTROL_MODES, ServerConfig, ServerError, TritonServer

    if model_control not in MODEL_CONTROL_MODES:
        raise fail(f"--model-control takes {', '.join(MODEL_CONTROL_MODES)}, not {model_control!r}")
    if repository_poll_secs < 1:
        raise fail(f"--repository-poll-secs must be at least 1, not {repository_poll_secs}")
    config = ServerConfig(repo=repo, host=host, grpc_port=grpc_port, http_port=http_port,
                          metrics_port=metrics_port, model_control_mode=model_control,
                          repository_poll_secs=repository_poll_secs, tls_cert=tls_cert, tls_key=tls_key,
                          insecure=insecure, admin_key=admin_key or None, api_key=api_key or None,
                          metrics_host=metrics_host, restart_dead_stubs=restart_dead_stubs)
    try:
        config.check()  # before anything starts: a server that must not be exposed never binds
    except ServerError as exc:
        raise fail(str(exc))
    server = TritonServer(config, echo=lambda line: print(line, file=sys.stderr, flush=True))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
    except ServerError as exc:
        raise fail(str(exc))
    grpc = f"gRPC {config.grpc_url}" + (" (TLS)" if tls_cert else "")
    http = f"HTTP {config.http_url}" + (" (health only)" if http_health_only(host, tls_cert) else "")
    keys = ", ".join(k for k, v in (("admin key", config.admin_key), ("api key", config.api_key)) if v)
    console.print(f"[green]ready[/green]: {grpc}, {http}, metrics {metrics_host or host}:{metrics_port}"
                  f"{'; ' + keys + ' required' if keys else ''}; Ctrl-C stops", highlight=False)
    while not stop.is_set() and (server.process.poll() is None or server.restarting):
        stop.wait(0.5)
    died = server.process.poll() is not None and not server.restarting
    server.stop()
    if died:
        raise fail(f"tritonserver exited unexpectedly with code {server.process.returncode}")
    console.print("stopped")
