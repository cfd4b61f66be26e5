"""NVIDIA's perf_analyzer (the tritonclient 2.51.0 wheel's binary) as the yardstick: its input data
is the photos' own bytes, it runs against the real server, its rows parse, and Triton's own
statistics counted every request it reports."""

import base64
import json
import os
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from equiprobe.services.contract import IMAGE, ModelNames
from equiprobe.services.server import server_environment
from equiprobe.trainer.benchmarks.harness import bench_images
from equiprobe.trainer.benchmarks.perf_analyzer import (CUDART, TABLE_COLUMNS, PerfAnalyzerError, beside_serve,
                                                        format_rows, input_data_json, missing_libraries,
                                                        missing_message, parse_report, perf_analyzer_binary,
                                                        run_perf_analyzer)

from .conftest import ENCODER

EMBED = ModelNames(ENCODER).embed


def test_input_data_json_round_trips_the_photos_bytes(tmp_path):
    images = bench_images(16)
    path = input_data_json(images, tmp_path / "input.json")
    data = json.loads(path.read_text())["data"]
    assert len(data) == len(images) and len({len(b) for b in images}) > 1  # requests vary
    for entry, image in zip(data, images):
        assert set(entry) == {IMAGE}
        assert base64.b64decode(entry[IMAGE]["b64"], validate=True) == image
        assert entry[IMAGE]["shape"] == [len(image)]


def test_a_missing_binary_is_named(tmp_path):
    with pytest.raises(PerfAnalyzerError, match=r"perf_analyzer not found.*tritonclient 2\.51\.0"):
        perf_analyzer_binary(search_path=str(tmp_path))


def test_a_missing_cuda_runtime_is_named(tmp_path):
    # A library path without pytriton's libs (nor the system's libcudart.so.12: this machine has none).
    with pytest.raises(PerfAnalyzerError, match=rf"missing .*{CUDART} \(from the nvidia-pytriton wheel"):
        perf_analyzer_binary(library_path=str(tmp_path), link_dir=tmp_path / "links")


def test_the_wheels_cuda_runtime_is_linked_under_the_name_perf_analyzer_asks_for(tmp_path):
    wheel_libs = [d for d in server_environment()["LD_LIBRARY_PATH"].split(os.pathsep) if d.endswith(".libs")]
    analyzer = perf_analyzer_binary(library_path=os.pathsep.join(wheel_libs), link_dir=tmp_path / "links")
    link = tmp_path / "links" / CUDART
    assert link.resolve().parent == Path(wheel_libs[0]).resolve() and link.resolve().name.startswith("libcudart-")
    assert analyzer.env["LD_LIBRARY_PATH"].split(os.pathsep)[-1] == str(link.parent)


def test_missing_libraries_are_named_with_what_provides_them():
    ldd = ("\tlinux-vdso.so.1 (0x00007ffd)\n\tlibb64.so.0d => not found\n\tlibcudart.so.12 => not found\n"
           "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n")
    missing = missing_libraries(ldd)
    assert missing == ["libb64.so.0d", CUDART]
    message = missing_message("perf_analyzer", missing)
    assert "libb64.so.0d (from Debian package libb64-0d" in message and "nvidia_pytriton.libs" in message


def test_the_report_parses_into_milliseconds():
    csv = ("Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
           "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
           "1,82.7406,11,0,2,85,10623,1543,5,11406,14532,15657,20657\n")
    (row,) = parse_report(csv)
    assert row["concurrency"] == 1 and row["infer_per_s"] == pytest.approx(82.7406)
    assert row["p50_ms"] == pytest.approx(11.406) and row["compute_infer_ms"] == pytest.approx(10.623)
    assert format_rows([row])[0][:3] == ["1", "82.7", "11.4"]
    serve = [{"level": 1, "triton": {"images_per_s": 41.37, "p50_ms": 20.0, "p99_ms": 30.0}},
             {"level": 8, "triton": {"images_per_s": 90.0, "p50_ms": 80.0, "p99_ms": 120.0}}]
    (both,) = beside_serve([row], serve)  # only the levels both measured
    assert both["level"] == 1 and both["serve_over_perf_analyzer"] == pytest.approx(0.5, abs=1e-3)


def success_count(server) -> int:
    client = grpcclient.InferenceServerClient(server.config.grpc_url)
    return client.get_inference_statistics(EMBED).model_stats[0].inference_stats.success.count


def test_perf_analyzer_drives_the_embed_service(server, tmp_path):
    analyzer = perf_analyzer_binary()
    input_json = input_data_json(bench_images(16), tmp_path / "input.json")
    before = success_count(server)
    # Short windows on a shared 2-core machine: stabilize on the average latency, loosely.
    rows = run_perf_analyzer(server.config.grpc_url, EMBED, input_json, "1:2:1", measurement_interval_ms=1000,
                             percentile=None, stability_percent=100, max_trials=10, timeout_s=120,
                             analyzer=analyzer, report_dir=tmp_path / "report")
    after = success_count(server)
    assert [r["concurrency"] for r in rows] == [1, 2]
    for row in rows:
        assert row["infer_per_s"] > 0 and row["requests"] > 0
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["compute_infer_ms"] > 0 and row["server_latency_ms"] > 0
        assert set(row["composing"]) >= {ModelNames(ENCODER).onnx, ModelNames(ENCODER).preprocess}
        assert all(cell != "-" for cell in format_rows([row])[0]), [c for c, *_ in TABLE_COLUMNS]
    # Triton counted at least every request perf_analyzer reports (it also counts the unreported
    # windows before the measurement stabilized).
    assert after - before >= sum(r["requests"] for r in rows)
