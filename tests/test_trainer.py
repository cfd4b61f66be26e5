"""Probes: data read by memory map with splits by image, learning, determinism, task metrics."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from equiprobe.clients.store import Store, StoreWriter
from equiprobe.services.transforms import get_catalog
from equiprobe.trainer.data import ProbeData, Task
from equiprobe.trainer.probes import ProbeConfig, fit
from equiprobe.trainer.train import train_probes

EQUIPROBE = str(Path(sys.executable).parent / "equiprobe")


def synthetic_store(path: Path, catalog_name: str, images: int = 60, dim: int = 32, noise: float = 0.6,
                    semantic: int = 0, split=lambda r: "test" if r % 4 == 0 else "train",
                    source=lambda r: "") -> Path:
    """A store whose version k embeddings sit around a version-specific point, plus per-image content
    (around one of `semantic` class centres when the store has semantic labels)."""
    catalog = get_catalog(catalog_name)
    k = len(catalog.transforms)
    manifest = {"format_version": 1, "tool_version": "test", "encoder": "synthetic", "encoder_onnx_sha256": "0" * 64,
                "dim": dim, "dtype": "float16", "catalog": catalog.name, "catalog_version": catalog.version,
                "rows": catalog.class_names, "params_width": catalog.params_width, "row_labels": catalog.labels.tolist(),
                "classes": list(catalog.classes), "row_splits": [t.split for t in catalog.transforms],
                "dataset": "synthetic", "label_names": [f"class{c}" for c in range(semantic)], "limit": None, "seed": 0, "count": images, "shard": None}
    store = Store.create_or_resume(path, manifest)
    writer = StoreWriter(store)
    rng = np.random.default_rng(0)
    # Versions of one category share a direction, so unseen sub-transformations are recognizable.
    category = rng.normal(size=(len(catalog.classes), dim))
    version = np.stack([category[label] + 0.5 * rng.normal(size=dim) for label in catalog.labels])
    centres = rng.normal(size=(max(semantic, 1), dim))
    for r in range(images):
        label = r % semantic if semantic else -1
        content = rng.normal(size=dim) + (2.0 * centres[label] if semantic else 0.0)
        embeddings = version + 0.3 * content + noise * rng.normal(size=(k, dim))
        writer.put(r, embeddings=embeddings, params=np.zeros((k, catalog.params_width)), key=f"img{r:03d}",
                   image_key=f"{r:016x}", label=label, split=split(r), index=r, source=source(r))
    writer.commit(list(range(images)))
    return path


def test_examples_split_by_image_and_read_by_memory_map(tmp_path):
    store = Store.open(synthetic_store(tmp_path / "s", "fine"))
    data = ProbeData.from_store(store, Task.from_store(store, "fine"))
    parts = [set(data.train_rows), set(data.val_rows), set(data.test_rows)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert parts[2] == {r for r in range(60) if r % 4 == 0}  # the store's split
    rows, versions = data.examples("train")
    assert len(rows) == len(data.train_rows) * 31
    embeddings = np.asarray(store.array("embeddings"))
    seen = 0
    for x, y, v in data.batches("train", 100, shuffle_seed=3):
        assert x.dtype == np.float32 and x.shape[1] == 32
        picked = rows[np.isin(versions, v)]  # every batch row is a stored embedding of its version
        assert len(picked) and (y == v).all()
        seen += len(x)
    assert seen == len(rows)
    x, _, v = next(data.batches("test", 31))
    np.testing.assert_array_equal(x, embeddings[data.test_rows[0]].astype(np.float32)[v])


@pytest.mark.parametrize("store_split", [True, False])
def test_train_validation_and_test_never_share_a_source(store_split, tmp_path):
    """Five crops per source; the store's split (train / validation / test by source) is kept, and
    without one the trainer splits by a hash of the source, not of the image."""
    sides = ("train", "train", "validation", "test")
    store = Store.open(synthetic_store(tmp_path / "s", "fine", images=200, source=lambda r: f"photo{r // 5}",
                                       split=(lambda r: sides[(r // 5) % 4]) if store_split else (lambda r: None)))
    data = ProbeData.from_store(store, Task.from_store(store, "fine"))
    sources = store.sources()
    parts = [set(sources[rows]) for rows in (data.train_rows, data.val_rows, data.test_rows)]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sum(map(len, parts)) == 40
    if store_split:
        assert parts[1] == {f"photo{s}" for s in range(40) if s % 4 == 2}  # the store's validation sources
        assert parts[2] == {f"photo{s}" for s in range(40) if s % 4 == 3}


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_probe_learns_the_fine_task_and_is_deterministic(kind, tmp_path):
    path = synthetic_store(tmp_path / "s", "fine")
    config = ProbeConfig(kind=kind, hidden=64, max_epochs=40, patience=5, batch_size=256)
    first = train_probes(path, "fine", config, [0, 1], tmp_path / "p1", progress=False)
    again = train_probes(path, "fine", config, [0, 1], tmp_path / "p2", progress=False)
    assert first["summary"]["test_accuracy"]["mean"] > 0.8  # chance is 1/31
    assert first["runs"] == again["runs"]
    saved = json.loads((tmp_path / "p1" / "probe.json").read_text())
    assert saved["classes"][0] == "identity" and saved["catalog_version"] == "fine-1" and saved["dim"] == 32
    assert len(saved["runs"]) == 2 and set(saved["summary"]["test_accuracy"]) == {"mean", "std"}


def test_an_ensemble_probe_is_its_seeds_probabilities_averaged_in_torch_and_onnx(tmp_path):
    import onnxruntime as ort
    import torch

    from equiprobe.trainer.probe_export import export_probes, read_probe
    from equiprobe.trainer.probes import SeedEnsemble, load_probe

    path = synthetic_store(tmp_path / "s", "fine", images=24)
    config = ProbeConfig(hidden=32, max_epochs=4, patience=2, batch_size=128)
    for seed in (0, 1):  # fit is deterministic per seed: these are the ensemble's members
        train_probes(path, "fine", config, [seed], tmp_path / f"seed{seed}", progress=False)
    record = train_probes(path, "fine", ProbeConfig(**{**config.__dict__, "ensemble": True}), [0, 1],
                          tmp_path / "both", progress=False)
    assert "saved_seed" not in record and record["config"]["ensemble"] and record["seeds"] == [0, 1]
    ensemble, _ = load_probe(tmp_path / "both")
    assert isinstance(ensemble, SeedEnsemble) and len(ensemble.members) == 2
    members = [load_probe(tmp_path / f"seed{seed}")[0] for seed in (0, 1)]
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(64, 32)).astype(np.float32))
    with torch.no_grad():
        averaged = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0)
        assert not torch.allclose(torch.softmax(members[0](x), 1), averaged, atol=1e-3)  # the seeds do differ
        torch.testing.assert_close(torch.softmax(ensemble(x), 1), averaged, atol=1e-6, rtol=1e-5)
    # Deployed whole: the exported detector's probabilities are the average too.
    exported = export_probes(read_probe(tmp_path / "both"), None, tmp_path / "model.onnx", 0.5)
    assert exported.max_abs_diff <= 1e-5
    probs, = ort.InferenceSession(str(tmp_path / "model.onnx")).run(["TRANSFORM_PROBS"], {"EMBEDDING": x.numpy()})
    np.testing.assert_allclose(probs, averaged.numpy(), atol=1e-5)


def test_general_task_trains_on_seen_versions_and_reports_held_out_columns(tmp_path):
    path = synthetic_store(tmp_path / "s", "general")
    store = Store.open(path)
    task = Task.from_store(store, "general")
    splits = store.manifest["row_splits"]
    assert all(splits[k] == "train" for k in task.train_versions) and len(task.test_versions) == len(splits)
    record = train_probes(path, "general", ProbeConfig(kind="mlp", hidden=64, max_epochs=30), [0], tmp_path / "p",
                          progress=False)
    run = record["runs"][0]
    assert run["test_accuracy"] > 0.5  # chance is 1/10
    assert run["held_out_noise_accuracy"] is not None and run["held_out_style_accuracy"] is not None
    styles = run["per_style_accuracy"]
    assert sum(s["seen"] for s in styles.values()) == 6 and sum(not s["seen"] for s in styles.values()) == 7


def test_probe_on_a_real_store_beats_chance(photo_store, tmp_path):
    proc = subprocess.run([EQUIPROBE, "train", "--store", str(photo_store), "--task", "fine", "--probe", "mlp",
                           "--out", str(tmp_path / "probe"), "--seeds", "2", "--max-epochs", "30", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert record["encoder"] == "squeezenet1_1" and record["images"]["test"] > 0
    assert record["summary"]["test_accuracy"]["mean"] > 3 / 31
    wrong = subprocess.run([EQUIPROBE, "train", "--store", str(photo_store), "--task", "general", "--out",
                            str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 1 and "needs a store of the general catalog" in wrong.stderr


def test_multitask_probe_compares_with_a_semantic_only_probe(tmp_path):
    path = synthetic_store(tmp_path / "s", "fine", semantic=3)  # r % 3 labels; test images r % 4 == 0
    config = ProbeConfig(kind="mlp", hidden=64, max_epochs=30, patience=5, batch_size=256)
    record = train_probes(path, "multitask", config, [0, 1], tmp_path / "p", progress=False)
    assert [h["name"] for h in record["heads"]] == ["transformation", "semantic"]
    assert record["heads"][1]["classes"] == ["class0", "class1", "class2"]
    for run in record["runs"]:
        assert run["test_accuracy"] > 0.8 and run["semantic_accuracy"] > 0.8  # chance 1/31 and 1/3
        assert run["semantic_accuracy_change"] == run["semantic_accuracy"] - run["semantic_only_accuracy"]
    assert {"semantic_accuracy", "semantic_only_accuracy"} <= set(record["summary"])
    with pytest.raises(ValueError, match="shares a hidden layer"):
        train_probes(path, "multitask", ProbeConfig(kind="linear"), [0], tmp_path / "q", progress=False)


def test_semantic_tasks_need_labels_seen_on_both_sides(tmp_path):
    unlabelled = synthetic_store(tmp_path / "u", "fine")
    with pytest.raises(ValueError, match="needs semantic labels"):
        train_probes(unlabelled, "semantic", ProbeConfig(kind="linear"), [0], tmp_path / "p", progress=False)
    # Every 4th image is a test image; with 4 classes by r % 4 the store's split holds class 0 out.
    held_out = synthetic_store(tmp_path / "h", "fine", semantic=4)
    with pytest.raises(ValueError, match="never seen in training.*--split hash"):
        train_probes(held_out, "semantic", ProbeConfig(kind="linear"), [0], tmp_path / "p", progress=False)
    record = train_probes(held_out, "semantic", ProbeConfig(kind="mlp", hidden=64, max_epochs=20), [0],
                          tmp_path / "p", progress=False, split_by="hash")
    assert record["split"] == "hash" and record["summary"]["test_accuracy"]["mean"] > 0.6  # chance 1/4


def test_another_stores_training_examples_join_the_training_part_labelled_by_row_name(tmp_path):
    """A fine store's training versions join a detect probe's training part, each labelled with the
    detect class of its row's name; validation and test stay the detect store's."""
    same = dict(source=lambda r: f"photo{r}", split=lambda r: ("train", "train", "validation", "test")[r % 4])
    detect = Store.open(synthetic_store(tmp_path / "detect", "detect", images=24, **same))
    fine = Store.open(synthetic_store(tmp_path / "fine", "fine", images=12, **same))
    data = ProbeData.from_store(detect, Task.from_store(detect, "detect"))
    alone = {part: sum(len(x) for x, _, _ in data.batches(part, 97)) for part in ("train", "val", "test")}
    data.also = (data.aligned(fine),)
    classes, fine_rows = data.task.classes, list(fine.manifest["rows"])
    expected = {}  # (embedding bytes, label) -> count, over both stores' training examples
    for store, rows, labels in ((detect, data.train_rows, np.arange(48)),
                                (fine, data.also[0].train_rows, np.array([classes.index(r) for r in fine_rows]))):
        stored = np.asarray(store.array("embeddings")).astype(np.float32)
        for r in rows:
            for v, label in enumerate(labels):
                key = (stored[r, v].tobytes(), int(label))
                expected[key] = expected.get(key, 0) + 1
    seen = {}
    for x, y, _ in data.batches("train", 97, shuffle_seed=1):
        for row, label in zip(x, y):
            seen[(row.tobytes(), int(label))] = seen.get((row.tobytes(), int(label)), 0) + 1
    assert seen == expected and sum(seen.values()) == alone["train"] + len(data.also[0].train_rows) * 31
    assert {part: sum(len(x) for x, _, _ in data.batches(part, 97)) for part in ("val", "test")} == \
        {"val": alone["val"], "test": alone["test"]}

    groups = Store.open(synthetic_store(tmp_path / "groups", "groups", images=12, **same))
    with pytest.raises(ValueError, match="are not classes of the detect task"):
        data.aligned(groups)
    shifted = Store.open(synthetic_store(tmp_path / "shifted", "fine", images=12, source=same["source"],
                                         split=lambda r: ("test", "train", "train", "train")[r % 4]))
    with pytest.raises(ValueError, match="validation or test sources"):
        data.aligned(shifted)  # its training photos are the detect store's test photos


def test_a_detector_stopped_on_validation_auc_keeps_its_best_auc_epoch(tmp_path):
    same = dict(source=lambda r: f"photo{r}", split=lambda r: ("train", "train", "validation", "test")[r % 4])
    detect = synthetic_store(tmp_path / "detect", "detect", images=40, **same)
    fine = synthetic_store(tmp_path / "fine", "fine", images=20, **same)
    config = ProbeConfig(kind="mlp", hidden=32, max_epochs=12, patience=3, batch_size=256, stop_on="auc")
    record = train_probes(detect, "detect", config, [0], tmp_path / "p", progress=False, also=[fine])
    run = record["runs"][0]
    assert 0.5 < run["val_auc"] <= 1.0
    store = Store.open(detect)
    data = ProbeData.from_store(store, Task.from_store(store, "detect"))
    result = fit(data, config, 0)
    aucs = [h["val_auc"] for h in result.history]
    assert result.best_epoch == int(np.argmax(aucs)) and result.val_score == max(aucs)
    assert result.val_accuracy == result.history[result.best_epoch]["val_accuracy"]
    assert record["also"] == [{"store": str(fine), "train_images": 10, "versions": 31}]
    assert record["images"]["train"] == 20  # the detect store's own
    with pytest.raises(ValueError, match="stop_on"):
        ProbeConfig(stop_on="loss")
