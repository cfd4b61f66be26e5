"""`bench serve`'s measurements on the real server: side-by-side rows, and the memory and CPU of
the server's processes attributed to the models that spent them."""

from equiprobe.services.contract import GATE, ModelNames
from equiprobe.trainer.benchmarks.harness import bench_images
from equiprobe.trainer.benchmarks.serve import triton_vs_in_process
from equiprobe.trainer.benchmarks.server_usage import cpu_per_item, rss_by_model

from .conftest import ENCODER

NAMES = ModelNames(ENCODER)


def test_memory_is_read_per_model_stub(server):
    rss = rss_by_model(server.process.pid)
    for model in (GATE, NAMES.preprocess, NAMES.onnx, NAMES.versions, "tritonserver"):
        assert rss[model] > 10, f"{model} has {rss.get(model)} MiB"


def test_serve_bench_rows_attribute_cpu_to_the_embed_steps(server, repo):
    images = bench_images(12)
    rows = triton_vs_in_process(repo, server.config.grpc_url, ENCODER, images, levels=(1, 4),
                                server_pid=server.process.pid)
    assert [r["level"] for r in rows] == [1, 4]
    for row in rows:
        cpu = row["triton_cpu_ms_per_image"]
        assert cpu[NAMES.onnx] > 0.5 and cpu[NAMES.preprocess] > 0.5, cpu  # the encoder and DALI did the work
        assert cpu.get(NAMES.versions, 0.0) < cpu[NAMES.onnx] / 10  # no expansion was asked for
        assert abs(cpu["total"] - sum(v for k, v in cpu.items() if k not in ("total", "wall_ms"))) < 1e-6
        assert row["in_process"]["cpu_ms_per_image"] > 0.5
        assert row["throughput_ratio"] == row["triton"]["images_per_s"] / row["in_process"]["images_per_s"]


def test_cpu_per_item_without_a_server_counts_this_process():
    with cpu_per_item(None, 10) as cpu:
        sum(i * i for i in range(2_000_000))
    assert cpu["client"] > 0 and cpu["total"] == cpu["client"] and cpu["wall_ms"] > 0


def test_expansion_profile_costs_every_stage():
    """bench expansion's profile: one row per transformation of the catalog, plus decoding, the
    upload re-encoding and the resize; CPU costs measured (not negative), the whole pipeline's too."""
    from equiprobe.trainer.benchmarks.expansion import expansion_profile
    from equiprobe.services.transforms import get_catalog

    catalog = get_catalog("groups")
    profile = expansion_profile(ENCODER, "groups", bench_images(4), batch=4, repeats=1)
    stages = [r["stage"] for r in profile["rows"]]
    assert stages[0].startswith("decode") and stages[1:1 + len(catalog.transforms)] == catalog.class_names
    assert stages[-2].startswith("as_upload") and stages[-1].startswith("resize + crop")
    assert all(r["cpu_ms"] >= 0 for r in profile["rows"]) and profile["rows"][0]["cpu_ms"] > 0
    assert profile["whole_cpu_ms"] > profile["rows"][0]["cpu_ms"]
