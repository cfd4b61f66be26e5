"""The INT8 encoder (build-repo --precision int8): quantization, its parity gate, the manifest,
the native rendering, and an INT8 NAME_embed served by the real Triton server."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from equiprobe.clients.embedding import EmbeddingClient
from equiprobe.services.contract import FEATURES, MANIFEST, ModelNames
from equiprobe.services.embed_models import InProcessEmbed
from equiprobe.services.encoders import get_encoder
from equiprobe.services.encoders.taps import tap_nodes, tapped_tensors
from equiprobe.services.model_config import read_config
from equiprobe.services.quantize import (CpuTwin, Int8Options, ParityError, ParityThresholds, cosine_figures,
                                         gate_failures, trt_calibration_table)
from equiprobe.services.repository import Int8Build, build_repo
from equiprobe.services.server import TritonServer, loopback_config
from equiprobe.trainer.benchmarks.precision import int8_vs_fp32
from equiprobe.trainer.int8_parity import corpus_images

from .conftest import ENCODER, copy_models

NAMES = ModelNames(ENCODER)
EQUIPROBE = str(Path(sys.executable).parent / "equiprobe")
# Small sizes: the gate's logic and the served path, in about a minute on 2 cores. 24 test images: with 16
# (496 examples) the accuracy gate (0.01, about 5 examples) refused on sampling noise alone once the corpus grew.
CALIBRATION, PARITY, DETECTOR = 32, 48, "24,8,24"


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def graph_ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def images() -> dict[str, list[bytes]]:
    return {"train": corpus_images("train", 16), "test": corpus_images("test", 48)}


@pytest.fixture(scope="module")
def fp32_repo(tmp_path_factory) -> Path:
    """NAME_embed's family in FP32, no expansions: the reference and a 'previous repository'."""
    path = tmp_path_factory.mktemp("fp32") / "repo"
    build_repo(ENCODER, path, catalogs=())
    return path


@pytest.fixture(scope="module")
def int8_cli(tmp_path_factory) -> tuple[Path, str]:
    """`equiprobe build-repo --precision int8` end to end: corpus calibration and the full gate."""
    path = tmp_path_factory.mktemp("int8") / "repo"
    proc = subprocess.run([EQUIPROBE, "build-repo", "--encoder", ENCODER, "--repo", str(path), "--precision", "int8",
                           "--calibration-images", str(CALIBRATION), "--parity-images", str(PARITY),
                           "--detector-images", DETECTOR], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return path, proc.stdout


def test_cli_build_records_precision_sizes_and_parity(int8_cli):
    repo, output = int8_cli
    manifest = json.loads((repo / NAMES.onnx / MANIFEST).read_text())
    assert manifest["precision"] == "int8" and manifest["flavour"] == "portable"
    int8 = manifest["int8"]
    assert int8["calibration_images"] == CALIBRATION and int8["passed"] and not int8["override"]
    assert int8["options"]["detector_images"] == {"train": 24, "validation": 8, "test": 24}
    assert int8["sources"]["calibration"] == "train" and int8["sources"]["parity"] == "test"
    cosine, detector = int8["parity"]["cosine"], int8["parity"]["detector"]
    assert cosine["images"] == PARITY and cosine["median"] >= 0.99 and cosine["p1"] >= 0.95
    features = int8["parity"]["features"]  # squeezenet1_1 serves FEATURES: gated as the embedding is
    assert features["images"] == PARITY and features["median"] >= 0.99 and features["p1"] >= 0.95
    assert int8["thresholds"]["features_median"] == 0.99
    assert abs(detector["auc_int8"] - detector["auc_fp32"]) <= 0.01
    assert abs(detector["accuracy_int8"] - detector["accuracy_fp32"]) <= 0.01
    assert detector["test_images"] == 24 and detector["versions"] == 31
    assert 0.5 < detector["auc_fp32"] <= 1  # the probe learned something: its parity means something
    # The build prints every figure and the gate it passed; the served graph is the QDQ one.
    for figure in ("median", "1st percentile", "FEATURES (standardized)", "AUC", "31-way accuracy", "gate passed",
                   "built in"):
        assert figure in output
    assert {"QuantizeLinear", "DequantizeLinear"} <= graph_ops(repo / NAMES.onnx / "1" / "model.onnx")
    assert read_config(repo / NAMES.onnx / "config.pbtxt").parameters["precision"].string_value == "int8"
    # Every expansion publishes the encoder's precision for the stores it feeds (clients/embed_job.py).
    expansions = [read_config(c) for c in repo.glob(f"{ENCODER}_embed*/config.pbtxt")]
    expansions = [c for c in expansions if "catalog" in c.parameters]
    assert expansions and all(c.parameters["precision"].string_value == "int8" for c in expansions)
    assert not list(repo.parent.glob(".repo.int8-*"))  # the staging directory is gone


def test_int8_keeps_the_features_statistics_and_their_tapped_nodes_in_float(int8_cli):
    """Quantized, the statistics and a tapped tensor read before its ReLU (conv1) failed the gate
    (embedding 1st percentile 0.9488 on 164 test crops): nothing they read comes out of a
    DequantizeLinear, and the graph still has quantized convolutions."""
    model = onnx.load(str(int8_cli[0] / NAMES.onnx / "1" / "model.onnx"))
    producer = {out: node for node in model.graph.node for out in node.output}
    taps = tap_nodes(model, FEATURES)
    assert len(taps) == 9 * len(get_encoder(ENCODER).features.blocks) + 1  # 9 nodes a block, one Concat
    made_by_taps = {out for node in taps for out in node.output}
    blocks = [producer[name] for name in tapped_tensors(model, FEATURES)]
    # The statistics are computed in float and never requantized...
    consumers = {name for node in model.graph.node if node.op_type == "QuantizeLinear" for name in node.input}
    assert not made_by_taps & consumers
    # ...and conv1, whose output they read before its ReLU, runs in float: it reads the float head's pixels
    # and float weights, and the statistics read its own output.
    conv1 = next(node for node in blocks if node.op_type == "Conv")
    fed = [producer[name].op_type for name in conv1.input if name in producer]
    assert fed and "DequantizeLinear" not in fed and conv1.input[1] in {t.name for t in model.graph.initializer}
    quantized_convs = [n for n in model.graph.node if n.op_type == "Conv"
                       and any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in n.input)]
    assert len(quantized_convs) > 20


def test_int8_embeddings_match_fp32_on_held_out_crops(int8_cli, fp32_repo, images):
    """In-process, on test-split crops the calibration never saw: cosine median >= 0.99."""
    int8 = InProcessEmbed(int8_cli[0], ENCODER)
    fp32 = InProcessEmbed(fp32_repo, ENCODER)
    encoded = [np.frombuffer(b, np.uint8) for b in images["test"]]
    figures = cosine_figures(fp32(encoded), int8(encoded))
    assert figures["median"] >= 0.99 and figures["p1"] >= 0.95, figures
    assert figures["median"] < 1 - 1e-6  # it really is another graph


def test_served_int8_embed_equals_in_process(int8_cli, tmp_path, images):
    repo = copy_models(int8_cli[0], tmp_path / "served", NAMES.embed)
    in_process = InProcessEmbed(repo, ENCODER)
    with TritonServer(loopback_config(repo)) as server:
        client = EmbeddingClient(server.config.grpc_url, ENCODER)
        client.check()
        for data in images["test"][:6]:
            served = client.embed(data)
            assert served.shape == (512,) and served.dtype == np.float32
            np.testing.assert_allclose(served, in_process([np.frombuffer(data, np.uint8)])[0], rtol=1e-4, atol=1e-3)
        client.close()


def int8_build(images, **options) -> Int8Build:
    return Int8Build(images["train"], images["test"][:16], Int8Options(**options))


@pytest.mark.parametrize("case", ["strict cosine", "detector delta"])
def test_gate_refuses_and_leaves_the_previous_repository_intact(case, fp32_repo, tmp_path, images):
    previous = shutil.copytree(fp32_repo, tmp_path / "repo")
    before = snapshot(previous)
    if case == "strict cosine":  # no INT8 graph is that close to FP32
        build = int8_build(images, thresholds=ParityThresholds(cosine_median=0.99999))
    else:  # a detector check that reports a 0.05 drop in accuracy
        build = int8_build(images)
        build.detector_parity = lambda spec, fp32, int8: {"auc_fp32": 0.9, "auc_int8": 0.9, "accuracy_fp32": 0.5,
                                                          "accuracy_int8": 0.45, "test_images": 1, "versions": 31}
    with pytest.raises(ParityError, match="refusing the INT8") as refused:
        build_repo(ENCODER, previous, catalogs=(), precision="int8", int8=build)
    assert ("cosine to FP32: median" if case == "strict cosine" else "detector accuracy") in str(refused.value)
    assert refused.value.figures["cosine"]["images"] == 16
    assert snapshot(previous) == before  # every file as it was, nothing added
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging directory left


def test_override_is_explicit_and_recorded(tmp_path, images):
    build = int8_build(images, thresholds=ParityThresholds(cosine_median=0.99999), accept_parity_failure=True)
    result = build_repo(ENCODER, tmp_path / "repo", catalogs=(), precision="int8", int8=build)
    record = json.loads((tmp_path / "repo" / NAMES.onnx / MANIFEST).read_text())["int8"]
    assert record == json.loads(json.dumps(result.int8))
    assert record["override"] and not record["passed"] and record["failures"][0].startswith("cosine to FP32")


def test_an_int8_build_needs_its_images(tmp_path):
    with pytest.raises(ValueError, match="calibration and parity images"):
        build_repo(ENCODER, tmp_path / "repo", catalogs=(), precision="int8")
    with pytest.raises(ValueError, match="unknown precision"):
        build_repo(ENCODER, tmp_path / "repo", catalogs=(), precision="int4")
    assert not (tmp_path / "repo").exists()


def test_gate_failures_name_each_threshold():
    figures = {"cosine": {"median": 0.995, "p1": 0.96}, "features": {"median": 0.993, "p1": 0.955},
               "detector": {"auc_fp32": 0.80, "auc_int8": 0.805, "accuracy_fp32": 0.50, "accuracy_int8": 0.509}}
    assert gate_failures(figures, ParityThresholds()) == []
    strict = ParityThresholds(cosine_median=0.999, cosine_p1=0.97, features_median=0.995, features_p1=0.96,
                              auc_delta=0.001, accuracy_delta=0.005)
    failures = gate_failures(figures, strict)
    assert [f.split(":")[0] for f in failures] == ["cosine to FP32", "cosine to FP32", "FEATURES cosine to FP32",
                                                   "FEATURES cosine to FP32", "detector auc", "detector accuracy"]
    del figures["features"]  # an encoder without FEATURES: nothing to gate there
    assert [f.split(":")[0] for f in gate_failures(figures, strict)].count("FEATURES cosine to FP32") == 0


def test_native_int8_renders_tensorrt_int8_with_its_calibration_table(tmp_path, images):
    repo = tmp_path / "native"
    build_repo(ENCODER, repo, "native", catalogs=(), precision="int8", int8=int8_build(images))
    config = read_config(repo / NAMES.onnx / "config.pbtxt")
    (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "INT8"
    assert trt.parameters["int8_use_native_calibration_table"] == "0"
    table = repo / NAMES.onnx / "1" / trt.parameters["int8_calibration_table_name"]
    assert table.name == trt_calibration_table(ENCODER) and table.is_file()
    # TensorRT builds the INT8 engine itself: the served graph stays FP32 (no Q/DQ beside a table).
    model = repo / NAMES.onnx / "1" / "model.onnx"
    assert "QuantizeLinear" not in graph_ops(model)
    from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable

    parsed = TrtTable.GetRootAsTrtTable(table.read_bytes(), 0)
    keys = {parsed.Dict(i).Key().decode() for i in range(parsed.DictLength())}
    graph = onnx.load(str(model)).graph
    assert "normalized_PIXELS" in keys and keys <= {o for n in graph.node for o in n.output}
    record = json.loads((repo / NAMES.onnx / MANIFEST).read_text())["int8"]
    assert record["calibration_table"] == f"1/{table.name}" and "trt_engine_cache_path" in record["note"]


def test_calibration_pixels_are_the_served_preprocessing(fp32_repo, images):
    """The CPU twin the build calibrates with cuts the very crops NAME_preprocess serves."""
    served = InProcessEmbed(fp32_repo, ENCODER).preprocess.run([np.frombuffer(b, np.uint8) for b in images["train"]])
    np.testing.assert_array_equal(CpuTwin(get_encoder(ENCODER).preprocess)(images["train"]), served)


def test_precision_bench_compares_both_repositories(int8_cli, fp32_repo):
    result = int8_vs_fp32(fp32_repo, int8_cli[0], ENCODER, count=8, batch=4, rounds=1)
    assert set(result.rates) == {"encoder", "embed"} and result.images == 8
    assert all(pair.fp32 > 0 and pair.int8 > 0 for pair in result.rates.values())
    assert result.ratio == result.rates["embed"].int8 / result.rates["embed"].fp32
    assert len(result.lines()) == 2 and "ratios" in result.as_dict()
    # SqueezeNet 1.1 at 227 x 227: 0.53 GFLOP (the figure; a multiply-add is 2 FLOPs).
    assert abs(result.gflop_per_image - 0.533) < 0.005 and "GFLOP/s" in result.lines()[0]
