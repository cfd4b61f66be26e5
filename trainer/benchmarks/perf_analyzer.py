"""NVIDIA's perf_analyzer as the serving yardstick: the binary that the tritonclient 2.51.0 wheel
ships, driven on a served model with real photos, its CSV report parsed into rows.

The binary needs two libraries no wheel puts on the loader's path: libb64.so.0d (Debian
`libb64-0d`) and libcudart.so.12 (even without a GPU). The nvidia-pytriton wheel ships a CUDA 12
runtime under a hashed name (`nvidia_pytriton.libs/libcudart-*.so.12*`), on the library path the
server already uses (services/server.py `server_environment()`); `perf_analyzer_binary()` links
it under the name perf_analyzer asks for, in a directory of its own that only perf_analyzer's
environment sees (the server's path stays as it is).
"""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from equiprobe.services.contract import IMAGE

BINARY = "perf_analyzer"
CUDART = "libcudart.so.12"
# What provides each library perf_analyzer links against that a fresh machine may lack.
PROVIDERS = {
    "libb64.so.0d": "Debian package libb64-0d (apt-get install libb64-0d; `make setup` installs it)",
    CUDART: "the nvidia-pytriton wheel's nvidia_pytriton.libs/libcudart-*.so.12* "
            "(pip install --no-deps nvidia-pytriton==0.7.0), or a CUDA 12 runtime on LD_LIBRARY_PATH",
}

# The printed table: (header, row key, format). Times in ms; server times are Triton's averages.
TABLE_COLUMNS = (
    ("concurrency", "concurrency", "{:d}"),
    ("infer/s", "infer_per_s", "{:.1f}"),
    ("p50 ms", "p50_ms", "{:.1f}"),
    ("p90 ms", "p90_ms", "{:.1f}"),
    ("p99 ms", "p99_ms", "{:.1f}"),
    ("client send ms", "client_send_ms", "{:.2f}"),
    ("client recv ms", "client_recv_ms", "{:.2f}"),
    ("server queue ms", "server_queue_ms", "{:.2f}"),
    ("compute input ms", "compute_input_ms", "{:.2f}"),
    ("compute infer ms", "compute_infer_ms", "{:.2f}"),
    ("compute output ms", "compute_output_ms", "{:.2f}"),
)

# perf_analyzer's CSV header (microseconds, but for the rate) -> row key (milliseconds).
_CSV_COLUMNS = {
    "Inferences/Second": "infer_per_s",
    "Client Send": "client_send_ms",
    "Network+Server Send/Recv": "network_server_send_recv_ms",
    "Server Queue": "server_queue_ms",
    "Server Compute Input": "compute_input_ms",
    "Server Compute Infer": "compute_infer_ms",
    "Server Compute Output": "compute_output_ms",
    "Client Recv": "client_recv_ms",
    "p50 latency": "p50_ms",
    "p90 latency": "p90_ms",
    "p95 latency": "p95_ms",
    "p99 latency": "p99_ms",
}


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer is missing, cannot load, or did not produce a measurement (`rows`: the
    levels it did measure before it stopped)."""

    def __init__(self, message: str, rows: Sequence[dict] = ()):
        super().__init__(message)
        self.rows = list(rows)


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    env: dict[str, str]  # the environment to run it in (LD_LIBRARY_PATH with libcudart.so.12)


def _server_library_dirs() -> list[str]:
    from equiprobe.services.server import server_environment

    return [d for d in server_environment()["LD_LIBRARY_PATH"].split(os.pathsep) if d]


def _cudart_dir(library_dirs: Sequence[str], link_dir: Optional[Path]) -> Optional[Path]:
    """A directory holding a file named libcudart.so.12: one of `library_dirs` if it has one,
    else `link_dir` with a link to the first hashed wheel copy found there."""
    for d in library_dirs:
        if (Path(d) / CUDART).exists():
            return Path(d)
    for d in library_dirs:
        copies = sorted(Path(d).glob("libcudart-*.so.12*"))
        if copies:
            return _link(copies[0].resolve(), link_dir or Path(sys.prefix) / "lib" / BINARY)
    return None


def _link(target: Path, directory: Path) -> Path:
    """`directory` with `target` linked as libcudart.so.12 in it; in a read-only environment, a
    private temporary directory instead."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        link = directory / CUDART
        if link.is_symlink() and link.resolve() != target:
            link.unlink()
        if not link.exists():
            link.symlink_to(target)
    except FileExistsError:  # another process linked it at the same moment
        pass
    except OSError:
        directory = Path(tempfile.mkdtemp(prefix="equiprobe-perf-analyzer-"))
        (directory / CUDART).symlink_to(target)
    return directory


def missing_libraries(ldd_output: str) -> list[str]:
    """The libraries ldd reports as `not found`."""
    return re.findall(r"^\s*(\S+) => not found", ldd_output, flags=re.MULTILINE)


def missing_message(binary: Path, libraries: Sequence[str]) -> str:
    """One line naming each missing library and what provides it."""
    named = "; ".join(f"{lib} (from {PROVIDERS.get(lib, 'no known provider')})" for lib in libraries)
    return f"{binary} cannot load: missing {named}"


def perf_analyzer_binary(search_path: Optional[str] = None, library_path: Optional[str] = None,
                         link_dir: Optional[Path] = None) -> PerfAnalyzer:
    """The perf_analyzer binary and the environment it runs in, or a PerfAnalyzerError naming what
    is missing (the binary, libb64.so.0d, libcudart.so.12).

    search_path: where to look for the binary (default: this interpreter's bin, then PATH).
    library_path: the directories searched for a libcudart.so.12, os.pathsep-separated (default:
    the server's library path, which holds pytriton's libs, then LD_LIBRARY_PATH).
    link_dir: where the wheel's copy is linked as libcudart.so.12 (default: .venv/lib/perf_analyzer).
    """
    if search_path is None:
        search_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(BINARY, path=search_path)
    if found is None:
        raise PerfAnalyzerError(f"{BINARY} not found on {search_path!r}: it ships in the tritonclient 2.51.0 wheel "
                                f"(pip install 'tritonclient[all]==2.51.0'; newer wheels do not have it)")
    binary = Path(found)
    # The server's library path already ends with this process's LD_LIBRARY_PATH.
    library_dirs = [d for d in (_server_library_dirs() if library_path is None else library_path.split(os.pathsep))
                    if d]
    cudart = _cudart_dir(library_dirs, link_dir)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(library_dirs + ([str(cudart)] if cudart and str(cudart) not in
                                                              library_dirs else []))
    ldd = shutil.which("ldd")
    if ldd:  # without ldd, a missing library shows as the loader's error when it runs
        report = subprocess.run([ldd, str(binary)], env=env, capture_output=True, text=True)
        missing = missing_libraries(report.stdout)
        if missing:
            raise PerfAnalyzerError(missing_message(binary, missing))
    return PerfAnalyzer(binary, env)


def input_data_json(images: Sequence[bytes], path: Path, input_name: str = IMAGE) -> Path:
    """perf_analyzer's --input-data file: one request per image (perf_analyzer cycles through
    them), each the encoded file's bytes as base64 with its own length as the shape."""
    data = [{input_name: {"b64": base64.b64encode(b).decode("ascii"), "shape": [len(b)]}} for b in images]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": data}))
    return path


def parse_report(csv_text: str) -> list[dict]:
    """perf_analyzer's -f CSV, one row per concurrency level, times in ms."""
    rows = []
    for record in csv.DictReader(csv_text.splitlines()):
        row: dict = {"concurrency": int(record["Concurrency"])}
        for header, key in _CSV_COLUMNS.items():
            if record.get(header) not in (None, ""):
                value = float(record[header])
                row[key] = value if key == "infer_per_s" else value / 1000
        rows.append(row)
    return rows


_LEVEL = re.compile(r"^Request concurrency: (\d+)", re.MULTILINE)
_USEC = r"(\d+(?:\.\d+)?) usec"


def parse_summary(stdout: str) -> dict[int, dict]:
    """From perf_analyzer's printed summary, per concurrency level: the client's request count,
    the server's average request latency, queue and compute (for an ensemble, summed over its
    steps, which the CSV's queue is not), and each composing model's queue and compute infer."""
    levels = {}
    starts = list(_LEVEL.finditer(stdout))
    for i, start in enumerate(starts):
        block = stdout[start.end(): starts[i + 1].start() if i + 1 < len(starts) else len(stdout)]
        level: dict = {}
        if m := re.search(r"Client:\s*\n\s*Request count: (\d+)", block):
            level["requests"] = int(m.group(1))
        if m := re.search(rf"Client:.*?Avg latency: {_USEC}", block, re.DOTALL):
            level["avg_ms"] = float(m.group(1)) / 1000
        if m := re.search(rf"Server:.*?Avg request latency: {_USEC} \(overhead {_USEC} \+ queue {_USEC} "
                          rf"\+ compute {_USEC}\)", block, re.DOTALL):
            latency, _, queue, compute = (float(v) / 1000 for v in m.groups())
            level |= {"server_latency_ms": latency, "server_queue_ms": queue, "server_compute_ms": compute}
        composing = {}
        for m in re.finditer(rf"^\s*(\S+), version: \S+\n(?:.*\n)*?.*?Avg request latency: {_USEC} \(overhead "
                             rf"{_USEC} \+ queue {_USEC} \+ compute input {_USEC} \+ compute infer {_USEC}", block,
                             re.MULTILINE):
            name, latency, _, queue, _, infer = m.group(1), *(float(v) / 1000 for v in m.groups()[1:])
            composing[name] = {"latency_ms": latency, "queue_ms": queue, "compute_infer_ms": infer}
        if composing:
            level["composing"] = composing
        levels[int(start.group(1))] = level
    return levels


def _levels(concurrency: Union[str, Sequence[int]]) -> list[tuple[str, list[int]]]:
    """(--concurrency-range, the levels it measures): `"1:16:2"` is one perf_analyzer run over the
    range; levels such as (1, 8, 16, 32) are one run each."""
    if isinstance(concurrency, str):
        parts = [int(p) for p in concurrency.split(":")]
        start, end, step = parts[0], parts[1] if len(parts) > 1 else parts[0], parts[2] if len(parts) > 2 else 1
        return [(concurrency, list(range(start, end + 1, step)))]
    return [(f"{c}:{c}", [c]) for c in concurrency]


def run_perf_analyzer(url: str, model: str, input_json: Path, concurrency: Union[str, Sequence[int]] = "1:16:1", *,
                      measurement_interval_ms: int = 5000, percentile: Optional[int] = 99,
                      stability_percent: float = 10.0, max_trials: int = 10, protocol: str = "grpc",
                      extra_args: Sequence[str] = (), timeout_s: Optional[float] = None,
                      analyzer: Optional[PerfAnalyzer] = None, report_dir: Optional[Path] = None) -> list[dict]:
    """perf_analyzer on `model` at `url` (host:port of the protocol's endpoint) with the requests in
    `input_json`, in time_windows mode stabilizing on the `percentile` latency (None: the
    average) and the throughput, each within `stability_percent` over 3 windows; one row per
    concurrency level (TABLE_COLUMNS' keys, p95_ms, network_server_send_recv_ms, requests,
    server_latency_ms, server_compute_ms, composing). Raises PerfAnalyzerError when it fails."""
    analyzer = analyzer or perf_analyzer_binary()
    rows = []
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-") as tmp:
        out = Path(report_dir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        for i, (level, expected) in enumerate(_levels(concurrency)):
            report = out / f"perf_analyzer_{i}.csv"
            command = [str(analyzer.binary), "-m", model, "-u", url, "-i", protocol,
                       "--input-data", str(input_json), "--concurrency-range", level,
                       "--measurement-mode", "time_windows", "--measurement-interval", str(measurement_interval_ms),
                       *([f"--percentile={percentile}"] if percentile else []),
                       "--stability-percentage", str(stability_percent),
                       "--max-trials", str(max_trials), "-f", str(report), *extra_args]
            try:
                proc = subprocess.run(command, env=analyzer.env, capture_output=True, text=True, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                raise PerfAnalyzerError(f"perf_analyzer ran past {timeout_s} s at concurrency {level}", rows) from None
            report.with_suffix(".log").write_text(proc.stdout + proc.stderr)
            summary = parse_summary(proc.stdout)
            measured = parse_report(report.read_text()) if report.exists() else []
            rows += [row | summary.get(row["concurrency"], {}) for row in measured]
            # An unstable level ends the run; perf_analyzer may still exit 0 with the levels before it.
            missing = sorted(set(expected) - {row["concurrency"] for row in measured})
            if proc.returncode != 0 or missing:
                lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
                reason = [line for line in lines if "Failed" in line or "error" in line.lower()] or lines[-2:]
                raise PerfAnalyzerError(f"perf_analyzer (exit {proc.returncode}) measured no row for concurrency "
                                        f"{', '.join(map(str, missing or expected))}: {' | '.join(reason[:3])} "
                                        f"(a longer --measurement-interval or a larger --stability-percentage helps "
                                        f"on a busy machine)", rows)
    return rows


def run_perf_analyzer_bench(repo: Path, encoder: str, model: Optional[str] = None, images: int = 16,
                            concurrency: Union[str, Sequence[int]] = (1, 8, 16, 32), serve_images: int = 256,
                            **options) -> dict:
    """`equiprobe bench perf-analyzer`'s measurement, on one loopback server over the bench
    repository: perf_analyzer's rows on `model` (default NAME_embed) with `images` package photos
    as its requests (`options` go to run_perf_analyzer); then, on NAME_embed with `serve_images`,
    `bench serve`'s rows at the same levels (serve.triton_vs_in_process) and the two side by side
    (beside_serve). Raises PerfAnalyzerError, before building or starting anything when the binary
    cannot run."""
    from equiprobe.services.contract import ModelNames

    from .harness import bench_images, bench_server
    from .serve import triton_vs_in_process

    analyzer = perf_analyzer_binary()  # fail before building or starting anything
    embed = ModelNames(encoder).embed
    levels = tuple(level for _, measured in _levels(concurrency) for level in measured)
    with tempfile.TemporaryDirectory(prefix="perf-analyzer-input-") as tmp, bench_server(repo, encoder) as server:
        input_json = input_data_json(bench_images(images), Path(tmp) / "input.json")
        url = server.config.grpc_url
        rows = run_perf_analyzer(url, model or embed, input_json, concurrency, analyzer=analyzer, **options)
        serve_rows = (triton_vs_in_process(repo, url, encoder, bench_images(serve_images), levels,
                                           server_pid=server.process.pid)
                      if serve_images and (model or embed) == embed else [])
    return {"perf_analyzer": rows, "bench_serve": serve_rows, "side_by_side": beside_serve(rows, serve_rows)}


def format_rows(rows: Sequence[dict]) -> list[list[str]]:
    """Each row's TABLE_COLUMNS cells as text (a cell perf_analyzer did not report is '-')."""
    return [[fmt.format(row[key]) if key in row else "-" for _, key, fmt in TABLE_COLUMNS] for row in rows]


def beside_serve(rows: Sequence[dict], serve_rows: Sequence[dict]) -> list[dict]:
    """perf_analyzer's rows next to `bench serve`'s Triton side (serve.py triton_vs_in_process)
    at the levels both measured: throughput, p50 and p99 of each, and bench serve's throughput as
    a fraction of perf_analyzer's (how much the project's own client loses to NVIDIA's)."""
    serve = {r["level"]: r["triton"] for r in serve_rows}
    table = []
    for r in rows:
        other = serve.get(r["concurrency"])
        if other is None:
            continue
        table.append({"level": r["concurrency"],
                      "perf_analyzer_infer_per_s": r["infer_per_s"], "serve_images_per_s": other["images_per_s"],
                      "perf_analyzer_p50_ms": r["p50_ms"], "serve_p50_ms": other["p50_ms"],
                      "perf_analyzer_p99_ms": r["p99_ms"], "serve_p99_ms": other["p99_ms"],
                      "serve_over_perf_analyzer": other["images_per_s"] / r["infer_per_s"]})
    return table
