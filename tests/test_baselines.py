"""Baselines: logistic regression and kNN on the probes' splits, and pixel / random-encoder feature
stores over the very images, versions and splits of a store the real server embedded."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from equiprobe.clients.datasets import open_dataset
from equiprobe.clients.store import DONE, FAILED, Store
from equiprobe.services.encoders import get_encoder
from equiprobe.trainer.baselines import BaselineConfig, fit_logreg, gather, train_baseline
from equiprobe.trainer.data import ProbeData, Task
from equiprobe.trainer.feature_stores import weights_sha256
from equiprobe.trainer.probes import Probe, load_probe

from .test_trainer import synthetic_store

EQUIPROBE = str(Path(sys.executable).parent / "equiprobe")


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([EQUIPROBE, *args], capture_output=True, text=True, timeout=timeout)


# -- baselines on a synthetic store -------------------------------------------------------------

@pytest.mark.parametrize("kind", ["logreg", "knn"])
def test_baseline_beats_chance_is_deterministic_and_records_its_choice(kind, tmp_path):
    path = synthetic_store(tmp_path / "s", "fine", noise=1.5)  # noisy enough that the grid matters
    first = train_baseline(path, "fine", BaselineConfig(kind=kind), tmp_path / "a", progress=False)
    again = train_baseline(path, "fine", BaselineConfig(kind=kind), tmp_path / "b", progress=False)
    assert first["runs"] == again["runs"] and first["selection"] == again["selection"]
    assert first["summary"]["test_accuracy"] == {"mean": first["runs"][0]["test_accuracy"], "std": 0.0}
    assert first["summary"]["test_accuracy"]["mean"] > 0.7  # chance is 1/31
    saved = json.loads((tmp_path / "a" / "probe.json").read_text())
    selection = saved["selection"]
    assert selection["parameter"] == ("C" if kind == "logreg" else "k")
    assert selection["chosen"] == selection["grid"][int(np.argmax(selection["val_accuracy"]))]
    assert len(set(selection["val_accuracy"])) > 1  # the grid made a difference
    assert saved["kind"] == kind and saved["catalog_version"] == "fine-1" and saved["encoder"] == "synthetic"
    assert set(saved["runs"][0]["per_version_accuracy"]) == set(saved["rows"])
    assert saved["deployable"] == (kind == "logreg") and (tmp_path / "a" / "probe.pt").exists() == (kind == "logreg")


def test_baselines_report_the_general_task_held_out_columns_and_honour_max_examples(tmp_path):
    path = synthetic_store(tmp_path / "s", "general")
    for kind in ("logreg", "knn"):
        record = train_baseline(path, "general", BaselineConfig(kind=kind, max_examples=300), tmp_path / kind,
                                progress=False)
        run_ = record["runs"][0]
        examples = record["selection"]["examples"]
        assert examples["train"] == 300 and 0 < examples["val"] <= 300  # 45 x 28 training examples, capped
        assert run_["test_accuracy"] > 0.5  # chance is 1/10
        assert run_["held_out_noise_accuracy"] is not None and run_["held_out_style_accuracy"] is not None
        assert sum(s["seen"] for s in run_["per_style_accuracy"].values()) == 6


def test_logreg_probe_loads_as_a_linear_probe_that_predicts_as_sklearn(tmp_path):
    path = synthetic_store(tmp_path / "s", "fine", noise=1.5)
    record = train_baseline(path, "fine", BaselineConfig(kind="logreg"), tmp_path / "p", progress=False)
    probe, saved = load_probe(tmp_path / "p")
    assert isinstance(probe, Probe) and isinstance(probe.head, torch.nn.Linear) and saved == record

    # The same fit, redone: the probe takes raw embeddings, sklearn the standardized ones.
    store = Store.open(path)
    data = ProbeData.from_store(store, Task.from_store(store, "fine"))
    mean, std = data.feature_statistics()
    config = BaselineConfig()
    train = gather(data, "train", mean, std, config.max_examples, config.seed)
    model = fit_logreg(train.x.astype(np.float64), train.y, record["selection"]["chosen"], config.max_iter)
    x = np.concatenate([b for b, _, _ in data.batches("test", 1024)])
    with torch.no_grad():
        logits = probe(torch.from_numpy(x)).numpy()
    standardized = (x - mean) / std
    np.testing.assert_allclose(logits, model.decision_function(standardized), rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(logits.argmax(1), model.predict(standardized))
    correct = logits.argmax(1) == np.concatenate([y for _, y, _ in data.batches("test", 1024)])
    assert abs(correct.mean() - record["summary"]["test_accuracy"]["mean"]) < 1e-12


def test_baseline_refuses_a_two_headed_task(tmp_path):
    path = synthetic_store(tmp_path / "s", "fine", semantic=3)
    with pytest.raises(ValueError, match="one head"):
        train_baseline(path, "multitask", BaselineConfig(kind="knn"), tmp_path / "p", progress=False)
    with pytest.raises(ValueError, match="unknown baseline"):
        BaselineConfig(kind="svm")


# -- baseline feature stores over the real photo store ---------------------------------------------

FAILED_ROW = 5


@pytest.fixture(scope="module")
def source(photo_store, tmp_path_factory) -> Path:
    """The server's photo store, with one row marked failed (as a bad file would leave it)."""
    path = tmp_path_factory.mktemp("baseline_source") / "store"
    shutil.copytree(photo_store, path)
    for name, value in (("status", FAILED), ("image_keys", ""), ("embeddings", 0), ("params", 0)):
        array = np.load(path / f"{name}.npy", mmap_mode="r+")  # what StoreWriter.fail leaves
        array[FAILED_ROW] = value
        array.flush()
    keys, index = np.load(path / "keys.npy"), np.load(path / "index.npy")
    error = {"index": int(index[FAILED_ROW]), "key": str(keys[FAILED_ROW]), "reason": "truncated file",
             "row": FAILED_ROW}
    (path / "errors.jsonl").write_text(json.dumps(error) + "\n")
    return path


def build_with_cli(source: Path, features: str, out: Path) -> Path:
    proc = run("baseline-store", "--store", str(source), "--features", features, "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 failed" in proc.stdout
    return out


@pytest.fixture(scope="module")
def pixel_store(source, tmp_path_factory) -> Path:
    return build_with_cli(source, "pixels", tmp_path_factory.mktemp("baseline_stores") / "pixels")


@pytest.fixture(scope="module")
def random_encoder_store(source, tmp_path_factory) -> Path:
    return build_with_cli(source, "random-encoder", tmp_path_factory.mktemp("baseline_stores") / "random")


@pytest.mark.parametrize("store, encoder, dim, dtype", [("pixel_store", "pixels16", 768, "float16"),
                                                        ("random_encoder_store", "squeezenet1_1-random", 512, "float32")])
def test_baseline_store_has_the_source_images_versions_and_splits(store, encoder, dim, dtype, source, request):
    built, original = Store.open(request.getfixturevalue(store)), Store.open(source)
    m, o = built.manifest, original.manifest
    assert m["encoder"] == encoder and m["dim"] == dim and m["baseline"]["source_encoder"] == "squeezenet1_1"
    assert m["dtype"] == dtype and built.array("embeddings").dtype == dtype
    for field in ("catalog", "catalog_version", "rows", "row_labels", "classes", "dataset", "seed", "count"):
        assert m[field] == o[field], field
    for name in ("keys", "image_keys", "labels", "split", "index", "status", "params"):
        np.testing.assert_array_equal(built.array(name), original.array(name), err_msg=name)
    assert built.status()[FAILED_ROW] == FAILED and built.errors() == original.errors()
    embeddings = np.asarray(built.array("embeddings"), np.float32)
    done = built.status() == DONE
    assert embeddings.shape == (o["count"], len(o["rows"]), dim) and np.isfinite(embeddings).all()
    assert not embeddings[~done].any()
    assert np.ptp(embeddings[done], axis=1).max(axis=-1).min() > 0  # every image's versions differ
    for part in ("train", "val", "test"):  # the probes' splits, image for image
        splits = [getattr(ProbeData.from_store(s, Task.from_store(s, "fine")), f"{part}_rows") for s in (built, original)]
        np.testing.assert_array_equal(*splits)


def test_pixel_store_identity_row_is_a_downsample_of_the_dataset_image(pixel_store):
    from equiprobe.services.reference import canvas

    built = Store.open(pixel_store)
    identity = built.manifest["rows"].index("identity")
    dataset = open_dataset(built.manifest["dataset"])
    embeddings, index = built.array("embeddings"), np.asarray(built.array("index"))
    expected = {}
    for row in (0, 7):
        # The one preprocessing path puts the crop on the 224 canvas (here in Pillow), then the
        # store's identity version is an upload: JPEG noise that 14x14 box averages mostly cancel.
        image = canvas(dataset.record(int(index[row])).load())
        expected[row] = image.reshape(16, 14, 16, 14, 3).astype(np.float64).mean(axis=(1, 3)).reshape(-1)
        diff = np.abs(embeddings[row, identity].astype(np.float64) - expected[row])
        assert diff.mean() <= 1.0 and diff.max() <= 8.0, (diff.mean(), diff.max())
    assert np.abs(embeddings[0, identity].astype(np.float64) - expected[7]).mean() > 10  # another image


def test_random_encoder_store_uses_seeded_random_weights(random_encoder_store, photo_store):
    built = Store.open(random_encoder_store)
    torch.manual_seed(built.manifest["baseline"]["weights_seed"])
    network = get_encoder("squeezenet1_1").build(random_weights=True)
    assert built.manifest["encoder_onnx_sha256"] == weights_sha256(network)
    assert built.manifest["encoder_onnx_sha256"] != Store.open(photo_store).manifest["encoder_onnx_sha256"]
    trained = np.asarray(Store.open(photo_store).array("embeddings"), np.float32)
    assert not np.allclose(np.asarray(built.array("embeddings"), np.float32), trained)


@pytest.mark.parametrize("fixture", ["pixel_store", "random_encoder_store"])
def test_train_runs_unchanged_on_a_baseline_store(fixture, request, tmp_path):
    store = request.getfixturevalue(fixture)
    for probe in ("linear", "knn"):  # logreg on real stores takes longer; the synthetic tests cover it
        proc = run("train", "--store", str(store), "--task", "fine", "--probe", probe, "--out", str(tmp_path / probe),
                   "--seeds", "1", "--max-epochs", "5", "--quiet")
        assert proc.returncode == 0, proc.stderr[-2000:]
        record = json.loads((tmp_path / probe / "probe.json").read_text())
        assert record["encoder"] == Store.open(store).manifest["encoder"] and record["images"]["test"] > 0
        assert 0.0 <= record["summary"]["test_accuracy"]["mean"] <= 1.0


def test_baseline_store_refuses_bad_input_in_one_line(source, pixel_store, tmp_path):
    unknown = run("baseline-store", "--store", str(source), "--features", "edges", "--out", str(tmp_path / "x"))
    assert unknown.returncode == 1 and "unknown features 'edges'" in unknown.stderr
    assert "Traceback" not in unknown.stderr and not (tmp_path / "x").exists()
    nested = run("baseline-store", "--store", str(pixel_store), "--features", "pixels", "--out",
                 str(tmp_path / "y"))
    assert nested.returncode == 1 and "is itself a baseline store" in nested.stderr


def test_a_warm_started_fit_goes_on_to_the_optimum_a_cold_fit_reaches():
    """fit_logreg(start=...): along a C path each fit starts from the last one's weights; at the
    last C it ends where a fit from zero does, in fewer iterations."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 20))
    y = np.repeat(np.arange(5), 60)
    x = centres[y] + 1.5 * rng.normal(size=(300, 20))
    cold = fit_logreg(x, y, 1.0, 5000)
    warm = None
    for c in (0.01, 0.1, 1.0):
        warm = fit_logreg(x, y, c, 5000, start=warm)
    assert warm.C == 1.0
    assert np.abs(warm.predict_proba(x) - cold.predict_proba(x)).max() < 0.01  # lbfgs stops at its tolerance
    assert warm.n_iter_[0] < cold.n_iter_[0]
