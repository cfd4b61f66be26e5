"""The reference-aware probe (trainer/match_probe.py, trainer/match_probe_train.py, `equiprobe index
train-probe`) on two small synthetic stores of the same keys, with FEATURES (no server needed).

Store geometry: every image r has a content c_r; version k of it is c_r + O_k (a class offset,
O_identity = 0) + noise. The index is built from one store (catalog fine) and the probe trained
on the other (catalog detect): their identity versions differ by independent noise, as two
independent JPEG re-encodings of one upload do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from equiprobe.clients.index_build import build_index
from equiprobe.clients.store import Store, StoreWriter
from equiprobe.services import match_index as mx
from equiprobe.services.match_index import MatchIndex
from equiprobe.trainer.cli import app
from equiprobe.trainer.match_probe import (MatchProbeConfig, load_probe, match_uploads, name_edit, read_record,
                                           score_pairs)
from equiprobe.trainer.match_probe_train import load_torch_head, train_match_probe

ROWS = ["identity", "hue_shift", "grayscale", "sharpen", "gaussian_blur", "jpeg", "crop_zoom", "text_overlay"]
N, D, F = 300, 24, 8
NOISE = 0.15


def split_of(r: int) -> str:
    return "train" if r % 10 < 6 else "validation" if r % 10 < 9 else "test"


def write_store(path: Path, embeddings: np.ndarray, features: np.ndarray, catalog: str, seed: int = 0) -> Path:
    n, k, d = embeddings.shape
    manifest = {"format_version": 2, "tool_version": "test", "encoder": "synthetic", "encoder_onnx_sha256": "0" * 64,
                "dim": d, "dtype": "float16", "catalog": catalog, "catalog_version": f"{catalog}-1", "rows": ROWS,
                "params_width": 1, "row_labels": list(range(k)), "classes": ROWS, "row_splits": ["both"] * k,
                "dataset": "synthetic:corpus", "label_names": [], "limit": None, "seed": seed, "count": n,
                "shard": None, "uploads": True, "features_dim": features.shape[-1],
                "feature_layout": [{"block": "synthetic", "width": features.shape[-1]}]}
    writer = StoreWriter(Store.create_or_resume(path, manifest))
    for r in range(n):
        writer.put(r, embeddings=embeddings[r], features=features[r], params=np.zeros((k, 1)), key=f"img{r:04d}",
                   image_key=f"{r:016x}", label=-1, split=split_of(r), index=r, source=f"src{r // 2:04d}")
    writer.commit(list(range(n)))
    return path


def synthetic(seed: int, content: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """[N, K, W]: content + class offset + this store's own noise."""
    noise = NOISE * np.random.default_rng(seed).normal(size=(N, len(ROWS), content.shape[-1]))
    return content[:, None] + offsets[None] + noise


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("matchprobe")
    rng = np.random.default_rng(0)
    content = rng.normal(size=(N, D + F))
    offsets = 0.5 * rng.normal(size=(len(ROWS), D + F))
    offsets[0] = 0
    indexed, queried = synthetic(1, content, offsets), synthetic(2, content, offsets)
    fine = write_store(root / "fine", indexed[..., :D], indexed[..., D:], "fine")
    detect = write_store(root / "detect", queried[..., :D], queried[..., D:], "detect")
    build_index([fine], root / "ix", progress=False)
    result = CliRunner().invoke(app, ["index", "train-probe", "--index", str(root / "ix"), "--store", str(detect),
                                      "--epochs", "40", "--hidden", "64", "--quiet"])
    assert result.exit_code == 0, result.output
    return root, fine, detect, indexed, queried, result.output


def test_references_are_the_identity_rows(world):
    root, fine, detect, indexed, queried, _ = world
    index = MatchIndex.open(root / "ix")
    assert index.meta["reference_width"] == D + F and index.meta["features_dim"] == F
    assert np.array_equal(np.asarray(index.references), indexed[:, 0].astype(np.float16))


def test_the_probe_names_edits_and_tells_originals(world):
    root, fine, detect, indexed, queried, output = world
    record = read_record(root / "ix")
    val = record["validation"]
    assert "8-way accuracy" in output and "copy threshold" in output
    assert val["classes"] == len(ROWS) and val["val"]["images"] == 90 and record["training"]["images"] == 180
    assert val["probe"]["accuracy"] > 0.8  # chance: 1/8
    assert val["probe"]["edited_auc"] > 0.95
    assert val["probe"]["identity_pairs_mean_score"] < 0.3 < 0.7 < val["probe"]["edited_pairs_mean_score"]
    assert val["baseline"]["accuracy"] is not None and val["baseline"]["edited_auc"] is not None
    assert val["baseline"]["answered"] == 1.0
    # The in-process reference on validation pairs: identity pairs (independent encodings) low, edited high.
    index, probe = MatchIndex.open(root / "ix"), load_probe(MatchIndex.open(root / "ix"))
    rows = np.array([r for r in range(N) if split_of(r) == "validation"])
    ids = np.array([index.id_of(f"img{r:04d}") for r in rows])
    identity = score_pairs(index, probe, queried[rows, 0], ids)
    edited = score_pairs(index, probe, queried[rows, 4], ids)
    assert identity["edited_score"].mean() < 0.2 and identity["edited"].mean() <= 0.15
    assert edited["edited_score"].mean() > 0.8 and edited["edited"].mean() > 0.9
    named = name_edit(index, probe, queried[rows, 4], ids)
    assert np.mean([n["transformation"] == "gaussian_blur" for n in named]) > 0.8
    assert named[0]["category"] == "blur"
    served = match_uploads(index, probe, queried[rows[:10], 4], k=3)
    assert all(s["copy"] and s["keys"][0] == f"img{r:04d}" for s, r in zip(served, rows[:10]))


def test_contract_and_parity_with_torch(world):
    root, fine, detect, indexed, queried, _ = world
    record = json.loads((root / "ix" / "probe" / "match_probe.json").read_text())
    for field in ("format", "classes", "categories", "identity", "width", "features_dim", "encoder",
                  "encoder_onnx_sha256", "catalog", "catalog_version", "copy_threshold", "copy_target_fpr",
                  "edited_threshold", "edited_target_fpr", "calibration", "validation", "store", "trained_at"):
        assert field in record, field
    assert record["format"] == 1 and record["classes"] == ROWS and record["identity"] == 0
    assert record["categories"][0] == "identity" and record["categories"][4] == "blur" and record["width"] == D + F
    assert record["features_dim"] == F and record["catalog"] == "detect" and record["catalog_version"] == "detect-1"
    assert record["copy_target_fpr"] == 0.01 and record["edited_target_fpr"] == 0.05
    assert record["store"] == str(detect.resolve())
    evidence = record["edited_evidence"]  # the auxiliary probe never saw every 3rd edit row
    assert evidence["held_out"]["rows"] == ["sharpen", "crop_zoom"] and evidence["chosen"] in ("probe", "probe+distances")
    assert evidence["inputs"] == ["log_odds", "log_embedding_cosine_distance", "log_features_rms_distance"]
    assert set(evidence["cross_validated_auc"]) == {"probe", "probe+distances", "folds"}
    model = onnx.load(str(root / "ix" / "probe" / "match_probe.onnx"))

    def shapes(values):
        return {v.name: (v.type.tensor_type.elem_type, [d.dim_value if d.HasField("dim_value") else -1
                                                       for d in v.type.tensor_type.shape.dim]) for v in values}
    floats = onnx.TensorProto.FLOAT
    assert shapes(model.graph.input) == {"QUERY": (floats, [-1, D + F]), "REFERENCE": (floats, [-1, D + F])}
    assert shapes(model.graph.output) == {"TRANSFORM_PROBS": (floats, [-1, len(ROWS)]), "EDITED_SCORE": (floats, [-1, 1])}
    assert [v.name for v in model.graph.output] == ["TRANSFORM_PROBS", "EDITED_SCORE"]
    # ONNX Runtime against the torch module it was exported from, on pairs it never saw in training
    index = MatchIndex.open(root / "ix")
    head = load_torch_head(root / "ix" / "probe")
    rows = np.arange(N)
    q = queried[rows, rows % len(ROWS)].astype(np.float16).astype(np.float32)
    served = score_pairs(index, None, q, rows)
    with torch.no_grad():
        probs, score = head(torch.from_numpy(q), torch.from_numpy(index.reference(rows)))
    assert np.abs(served["transform_probs"] - probs.numpy()).max() <= 1e-5
    assert np.abs(served["edited_score"] - score.numpy()[:, 0]).max() <= 1e-5
    assert record["parity_max_abs_diff"] <= 1e-5


def test_heldout_every_zero_scores_with_the_log_odds_alone(world, tmp_path):
    root, fine, detect, indexed, queried, _ = world
    shutil.copytree(root / "ix", tmp_path / "ix")
    record = train_match_probe(tmp_path / "ix", detect, MatchProbeConfig(epochs=3, patience=0, heldout_every=0),
                               progress=False)
    assert record["edited_evidence"]["chosen"] == "probe" and record["edited_evidence"]["weights"] == [1.0, 0.0, 0.0]
    assert record["edited_evidence"]["held_out"] == {}
    assert record["training"]["epochs_run"] == 3  # onecycle runs its epochs to the end (constant would stop at 1)
    with pytest.raises(ValueError, match="heldout_every"):
        MatchProbeConfig(heldout_every=1)


def test_members_serve_their_seeds_probabilities_averaged(world, tmp_path):
    from equiprobe.trainer.probes import SeedEnsemble

    root, fine, detect, indexed, queried, _ = world
    runs = {}
    for name, config in (("one", MatchProbeConfig(epochs=3, heldout_every=0, seed=1, members=1)),
                         ("two", MatchProbeConfig(epochs=3, heldout_every=0, members=2))):
        shutil.copytree(root / "ix", tmp_path / name)
        runs[name] = train_match_probe(tmp_path / name, detect, config, progress=False)
    assert [m["seed"] for m in runs["two"]["training"]["members"]] == [0, 1]
    head = load_torch_head(tmp_path / "two" / "probe")
    assert isinstance(head.probe, SeedEnsemble) and len(head.probe.members) == 2
    seed1 = load_torch_head(tmp_path / "one" / "probe").probe  # fit is deterministic: the ensemble's second member
    index, rows = MatchIndex.open(tmp_path / "two"), np.arange(N)
    q = torch.from_numpy(queried[rows, rows % len(ROWS)].astype(np.float16).astype(np.float32))
    o = torch.from_numpy(index.reference(rows))
    with torch.no_grad():
        torch.testing.assert_close(head.probe.members[1](q, o), seed1(q, o))
        averaged = (torch.softmax(head.probe.members[0](q, o), 1) + torch.softmax(seed1(q, o), 1)) / 2
    served = score_pairs(index, None, q.numpy(), rows)  # the exported ONNX graph, as NAME_match runs it
    np.testing.assert_allclose(served["transform_probs"], averaged.numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="members"):
        MatchProbeConfig(members=0)


def test_pairs_kept_in_memory_train_the_same_probe_as_pairs_read_every_batch(world, monkeypatch):
    from equiprobe.clients.store import Store
    from equiprobe.trainer import match_pairs
    from equiprobe.trainer.match_probe_train import fit

    root, fine, detect, indexed, queried, _ = world
    config = MatchProbeConfig(epochs=3, members=1)
    index, store = MatchIndex.open(root / "ix"), Store.open(detect)
    kept = match_pairs.PairData(store, index, match_pairs.split_parts(store, index)[0])
    model, training = fit(kept, config, progress=False)
    assert kept._kept["prepared", "train", "ratio"] is not None  # the demo's size: in memory
    monkeypatch.setattr(match_pairs, "RESIDENT_BYTES", 0)
    streamed = match_pairs.PairData(store, index, match_pairs.split_parts(store, index)[0])
    again, training_again = fit(streamed, config, progress=False)
    assert streamed._kept["prepared", "train", "ratio"] is None
    assert [h["loss"] for h in training_again["history"]] == pytest.approx([h["loss"] for h in training["history"]],
                                                                             rel=1e-5)
    assert [h["val_accuracy"] for h in training_again["history"]] == [h["val_accuracy"] for h in training["history"]]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_category_loss_is_the_cross_entropy_of_the_summed_class_probabilities():
    from equiprobe.trainer.match_probe_train import CategoryLoss

    categories = ["identity", "tone", "blur", "tone", "blur", "blur"]
    logits = torch.randn(7, len(categories), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 3])
    probs = torch.softmax(logits, 1)
    sums = {c: probs[:, [i for i, x in enumerate(categories) if x == c]].sum(1) for c in set(categories)}
    expected = -torch.stack([torch.log(sums[categories[y]][i]) for i, y in enumerate(labels.tolist())]).mean()
    torch.testing.assert_close(CategoryLoss(categories)(logits, labels), expected)
    # one class per category: the class's own cross-entropy
    torch.testing.assert_close(CategoryLoss(["a", "b", "c"])(logits[:, :3], labels % 3),
                               torch.nn.functional.cross_entropy(logits[:, :3], labels % 3))
    with pytest.raises(ValueError, match="schedule"):
        MatchProbeConfig(schedule="cosine")
    with pytest.raises(ValueError, match="category_weight"):
        MatchProbeConfig(category_weight=-1)


def test_copy_threshold_keeps_new_photos_out_on_validation(world):
    root, fine, detect, indexed, queried, _ = world
    record = read_record(root / "ix")
    index = MatchIndex.open(root / "ix")
    rows = np.array([r for r in range(N) if split_of(r) == "validation"])
    queries = queried[rows][:, :, :D].astype(np.float16).astype(np.float32).reshape(-1, D)
    owners = np.repeat([index.id_of(f"img{r:04d}") for r in rows], len(ROWS))
    sims, ids, _ = index.search(queries, 2)
    others = np.where(ids[:, 0] == owners, sims[:, 1], sims[:, 0])  # leave one out: a photo in no index
    threshold = np.float32(record["copy_threshold"])
    assert (others >= threshold).mean() <= record["copy_target_fpr"]
    assert record["validation"]["copy"]["non_copy_fpr"] <= 0.01 and record["validation"]["copy"]["copy_recall"] > 0.9
    assert (sims[:, 0] >= threshold).mean() > 0.9  # its copies pass


def test_index_info_shows_the_probe_and_add_keeps_it(world, tmp_path):
    root, fine, detect, indexed, queried, _ = world
    result = CliRunner().invoke(app, ["index", "info", str(root / "ix"), "--json"])
    info = json.loads(result.output)
    assert info["probe"]["copy_threshold"] == read_record(root / "ix")["copy_threshold"]
    result = CliRunner().invoke(app, ["index", "info", str(root / "ix")])
    assert result.exit_code == 0 and "copy threshold" in result.output and "edited threshold" in result.output


def test_refuses_an_index_of_the_same_store(world, tmp_path):
    root, fine, detect, indexed, queried, _ = world
    build_index([detect], tmp_path / "same", progress=False)
    with pytest.raises(ValueError, match="built from .*detect itself"):
        train_match_probe(tmp_path / "same", detect, MatchProbeConfig(epochs=1), progress=False)
    twin = tmp_path / "twin"  # the same catalog and seed elsewhere: the same encodings
    shutil.copytree(detect, twin)
    build_index([twin], tmp_path / "twin_ix", progress=False)
    result = CliRunner().invoke(app, ["index", "train-probe", "--index", str(tmp_path / "twin_ix"), "--store",
                                      str(detect), "--quiet"])
    assert result.exit_code == 1 and "same catalog (detect) and seed 0" in result.output
    # another seed, yet identity versions equal to the references (embedded without uploads)
    again = write_store(tmp_path / "again", queried[..., :D], queried[..., D:], "detect", seed=7)
    with pytest.raises(ValueError, match="equal the index's references exactly"):
        train_match_probe(tmp_path / "twin_ix", again, MatchProbeConfig(epochs=1), progress=False)
    assert not (tmp_path / "twin_ix" / mx.PROBE_DIR).exists()


def test_a_projected_index_trains_and_serves_as_in_process(world, tmp_path):
    """An index searched in the copy projection (learned from the detect store's training sources):
    the copy threshold is a cosine in that space, and the served logic (services/matching.py, on
    the upload's EMBEDDING and FEATURES) answers as match_uploads does on the [embedding, FEATURES] rows."""
    from equiprobe.services.matching import ServedIndex

    root, fine, detect, indexed, queried, _ = world
    meta = build_index([fine], tmp_path / "ix", progress=False, projection_from=detect, projection_dim=16)
    assert meta["projection"]["images"] == N * 6 // 10 and meta["search_dim"] == 16
    result = CliRunner().invoke(app, ["index", "train-probe", "--index", str(tmp_path / "ix"), "--store", str(detect),
                                      "--epochs", "5", "--hidden", "32", "--quiet"])
    assert result.exit_code == 0, result.output
    record = read_record(tmp_path / "ix")
    assert record["copy_projection"] == meta["projection"]["sha256"]
    copy = record["validation"]["copy"]
    assert copy["non_copy_fpr"] <= 0.01 and copy["match@1"] > 0.95
    index = MatchIndex.open(tmp_path / "ix")
    probe = load_probe(index)
    rows = np.arange(0, N, 7)
    uploads = queried[rows, rows % len(ROWS)].astype(np.float32)  # [m, W]
    expected = match_uploads(index, probe, uploads, k=4)
    served = ServedIndex.load(tmp_path / "ix", k=4).match(uploads[:, :D], uploads[:, D:])
    assert [[k.decode() for k in row] for row in served["MATCH_KEYS"]] == [e["keys"] for e in expected]
    np.testing.assert_allclose(served["MATCH_SIMILARITIES"], [e["similarities"] for e in expected], atol=1e-5)
    assert list(served["COPY"][:, 0]) == [e["copy"] for e in expected]
    assert [t.decode() for t in served["TRANSFORMATION"][:, 0]] == [e["transformation"] for e in expected]
    np.testing.assert_allclose(served["EDIT_SCORE"][:, 0], [e["edit_score"] for e in expected], atol=1e-5)
    assert np.mean([e["keys"][0] == f"img{r:04d}" for e, r in zip(expected, rows)]) > 0.95


def test_an_upload_called_edited_is_named_by_its_most_probable_edit():
    """The distances can call an upload edited whose softmax stays on identity: the answer then
    names its most probable edit, never "edited, by identity"; an unedited copy keeps identity."""
    from types import SimpleNamespace

    from equiprobe.services.matching import MatchProbe

    probs = np.array([[0.7, 0.2, 0.1], [0.7, 0.1, 0.2], [0.1, 0.6, 0.3]], np.float32)
    named = MatchProbe.named(SimpleNamespace(identity=0), probs, np.array([True, False, True]))
    assert named.tolist() == [1, 0, 1]
    assert probs[0, 0] == np.float32(0.7)  # the probabilities are not changed in place
