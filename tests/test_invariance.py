"""Invariance metrics on synthetic stores whose geometry is known (no server needed)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from equiprobe.clients.store import Store, StoreWriter
from equiprobe.trainer.invariance import (copy_detection_recall, distinct_pairs, latent_geed, mean_pair_distance, select_rows,
                                softmax_geed)
from equiprobe.trainer.probes import MultiTaskProbe, Probe, ProbeConfig, load_probe
from equiprobe.trainer.train import train_probes

from .test_trainer import synthetic_store


def write_store(path: Path, rows: list[str], embeddings: np.ndarray, splits: list, catalog: str = "synthetic",
                done: list[int] | None = None) -> Store:
    """A store holding exactly `embeddings` [N, K, D]; rows not in `done` stay pending."""
    n, k, d = embeddings.shape
    manifest = {"format_version": 1, "tool_version": "test", "encoder": "synthetic", "encoder_onnx_sha256": "0" * 64,
                "dim": d, "dtype": "float16", "catalog": catalog, "catalog_version": f"{catalog}-1", "rows": rows,
                "params_width": 1, "row_labels": list(range(k)), "classes": rows, "row_splits": ["both"] * k,
                "dataset": "synthetic", "label_names": [], "limit": None, "seed": 0, "count": n, "shard": None}
    store = Store.create_or_resume(path, manifest)
    writer = StoreWriter(store)
    done = list(range(n)) if done is None else done
    for r in done:
        writer.put(r, embeddings=embeddings[r], params=np.zeros((k, 1)), key=f"img{r:03d}", image_key=f"{r:016x}",
                   label=-1, split=splits[r], index=r)
    writer.commit(done)
    return Store.open(path)


@pytest.fixture(scope="module")
def geometry_store(tmp_path_factory) -> Store:
    """identity = per-image content; `invariant` = the same vector; `random` = a fresh vector from
    the content distribution (as far from x as another image is); `nudged` = a small move.
    Rows 0..199 are test, 200..239 train; 240..259 stay pending with garbage that must never be read."""
    rng = np.random.default_rng(1)
    n, d = 260, 64
    content = rng.normal(size=(n, d))
    embeddings = np.stack([content, content, rng.normal(size=(n, d)), content + 0.05 * rng.normal(size=(n, d))], 1)
    splits = ["test"] * 200 + ["train"] * 60
    store = write_store(tmp_path_factory.mktemp("geometry") / "s", ["identity", "invariant", "random", "nudged"],
                        embeddings, splits, done=list(range(240)))
    garbage = np.lib.format.open_memmap(store.path / "embeddings.npy", mode="r+")
    garbage[240:] = 1000.0
    garbage.flush()
    return store


def test_rows_default_to_done_test_images_and_subsample_with_a_fixed_seed(geometry_store):
    assert list(select_rows(geometry_store, max_images=None)) == list(range(200))
    assert list(select_rows(geometry_store, rows=[205, 3, 3], max_images=None)) == [3, 205]
    a, b = select_rows(geometry_store, max_images=50, seed=4), select_rows(geometry_store, max_images=50, seed=4)
    assert len(a) == 50 and list(a) == list(b) and list(a) == sorted(a) and a.max() < 200
    with pytest.raises(ValueError, match="not done"):
        select_rows(geometry_store, rows=[1, 250])
    i, j = distinct_pairs(5, pairs=100)
    assert len(i) == 20 and (i != j).all()  # all ordered pairs when few
    i, j = distinct_pairs(500, pairs=100, seed=2)
    assert len(i) == 100 and (i != j).all()


def test_exactly_invariant_version_has_zero_geed_and_a_random_one_about_one(geometry_store):
    result = latent_geed(geometry_store, max_images=None)
    json.dumps(result)
    assert result["images"] == 200 and result["normalizer"]["pairs"] == 2000
    # M between two independent N(0, I_64) vectors: sqrt(2) * E|N(0, I_64)| ~ sqrt(2 * 64).
    assert result["normalizer"]["euclidean"] == pytest.approx(math.sqrt(128), rel=0.05)
    assert result["normalizer"]["cosine"] == pytest.approx(1.0, abs=0.05)
    per = result["per_transformation"]
    assert set(per) == {"invariant", "random", "nudged"} and result["groups"] == {}
    assert per["invariant"]["euclidean"] == 0.0 and per["invariant"]["cosine"] == pytest.approx(0.0, abs=1e-9)
    assert per["random"]["euclidean"] == pytest.approx(1.0, abs=0.05)
    assert per["random"]["cosine"] == pytest.approx(1.0, abs=0.05)
    assert 0.0 < per["nudged"]["euclidean"] < 0.1 and 0.0 < per["nudged"]["cosine"] < 0.01
    m = mean_pair_distance(geometry_store, max_images=None)
    assert m == result["normalizer"]


def test_copy_detection_finds_invariant_copies_and_misses_random_ones(geometry_store):
    result = copy_detection_recall(geometry_store, max_images=None)
    json.dumps(result)
    per = result["per_transformation"]
    assert per["invariant"] == {"recall@1": 1.0, "recall@10": 1.0}
    assert per["nudged"]["recall@1"] == 1.0
    assert per["random"]["recall@10"] < 0.15  # chance is 10 / 200
    assert result["overall"]["recall@1"] == pytest.approx((1.0 + 1.0 + per["random"]["recall@1"]) / 3)
    subsample = copy_detection_recall(geometry_store, max_images=30)
    assert subsample["images"] == 30 and subsample["per_transformation"]["invariant"]["recall@1"] == 1.0


def c4_flip_store(path: Path) -> Store:
    """Two images in the plane, under the groups catalog's five versions (values exact in float16):
    x0: e=(1,0) r90=(0,1) r180=(-1,0) r270=(0,-1) h=(1,0)   (h leaves x0 alone)
    x1: e=(-1,0) r90=(0,-1) r180=(1,0) r270=(0,1) h=(1,0)   (h sends x1 to -x1)"""
    x0 = [[1, 0], [0, 1], [-1, 0], [0, -1], [1, 0]]
    x1 = [[-1, 0], [0, -1], [1, 0], [0, 1], [1, 0]]
    return write_store(path, ["identity", "rot90", "rot180", "rot270", "hflip"], np.array([x0, x1], float),
                       ["test", "test"], catalog="groups")


def test_group_forms_by_hand(tmp_path):
    result = latent_geed(c4_flip_store(tmp_path / "s"))
    # M: the only distinct images are x0, -x0: Euclidean 2, cosine 1 - (-1) = 2.
    assert result["normalizer"]["euclidean"] == 2.0 and result["normalizer"]["cosine"] == pytest.approx(2.0)
    rotation, flip = result["groups"]["rotation"], result["groups"]["flip"]
    assert rotation["members"] == ["identity", "rot90", "rot180", "rot270"] and flip["members"] == ["identity", "hflip"]
    # C4: E_x (0 + sqrt2 + 2 + sqrt2) / 4 / M  and cosine (0 + 1 + 2 + 1) / 4 / M.
    assert rotation["euclidean"] == pytest.approx((2 + 2 * math.sqrt(2)) / 4 / 2)
    assert rotation["cosine"] == pytest.approx(0.5)
    # Flip: d(f x, f h x) is 0 for x0 and 2 for x1: E_x (d / 2) / M = 0.5 / 2.
    assert flip["euclidean"] == pytest.approx(0.25) and flip["cosine"] == pytest.approx(0.25)
    # The two-point orbit form of hflip is twice the group form.
    assert result["per_transformation"]["hflip"]["euclidean"] == pytest.approx(0.5)
    assert result["per_transformation"]["rot180"]["cosine"] == pytest.approx(1.0)


def identity_probe(dim: int) -> Probe:
    """A linear probe whose logits are the embedding itself."""
    probe = Probe(dim, dim, ProbeConfig(kind="linear"), np.zeros(dim, np.float32), np.ones(dim, np.float32))
    with torch.no_grad():
        probe.head.weight.copy_(torch.eye(dim))
        probe.head.bias.zero_()
    return probe


def test_softmax_geed_by_hand(tmp_path):
    result = softmax_geed(identity_probe(2), c4_flip_store(tmp_path / "s"))
    json.dumps(result)
    # softmax(1,0) against softmax(0,1) (or (-1,0) against (1,0)): KL = (a - b) log(a / b) = tanh(1/2).
    t = math.tanh(0.5)
    assert result["normalizer"]["kl"] == pytest.approx(t)  # x0 against x1
    per = result["per_transformation"]
    assert per["rot90"]["kl"] == pytest.approx(t) and per["rot180"]["kl"] == pytest.approx(t)
    assert per["rot270"]["kl"] == pytest.approx(0.0, abs=1e-12)  # softmax(0,-1) == softmax(1,0)
    assert per["rot180"]["normalized"] == pytest.approx(1.0)
    assert per["hflip"]["kl"] == pytest.approx(t / 2)
    assert result["groups"]["rotation"]["kl"] == pytest.approx((0 + t + t + 0) / 4)
    assert result["groups"]["rotation"]["normalized"] == pytest.approx(0.5)
    assert result["groups"]["flip"]["normalized"] == pytest.approx(0.25)


def test_softmax_geed_is_zero_for_identical_inputs_with_saved_and_multi_task_probes(geometry_store, tmp_path):
    # What `equiprobe train` saves is what load_probe reads.
    store_path = synthetic_store(tmp_path / "fine", "fine", images=40)
    config = ProbeConfig(kind="mlp", hidden=32, max_epochs=2)
    train_probes(store_path, "fine", config, [0], tmp_path / "probe", progress=False)
    probe, record = load_probe(tmp_path / "probe")
    assert record["kind"] == "mlp" and not probe.training
    x = torch.from_numpy(np.asarray(Store.open(store_path).array("embeddings")[0], np.float32))
    saved = torch.load(tmp_path / "probe" / "probe.pt", weights_only=True)
    assert torch.equal(probe.mean, saved["mean"]) and probe(x).shape == (31, 31)

    # A probe for the geometry store's 64 dimensions: copies give KL 0, random vectors do not.
    torch.manual_seed(0)
    random_probe = Probe(64, 5, ProbeConfig(kind="linear"), np.zeros(64, np.float32), np.ones(64, np.float32))
    result = softmax_geed(random_probe, geometry_store, max_images=None)
    per = result["per_transformation"]
    assert per["invariant"] == {"kl": 0.0, "normalized": 0.0}
    assert per["random"]["normalized"] == pytest.approx(1.0, abs=0.25) and per["random"]["kl"] > 0.01
    assert per["nudged"]["normalized"] < 0.1
    with pytest.raises(ValueError, match="32-dimensional embeddings; .* has 64"):
        softmax_geed(probe, geometry_store)
    # A multi-task probe: `head` picks which task's softmax is compared.
    multi = MultiTaskProbe(64, [5, 3], ProbeConfig(kind="mlp", hidden=16), np.zeros(64, np.float32),
                           np.ones(64, np.float32)).eval()
    heads = [softmax_geed(multi, geometry_store, max_images=50, head=h)["per_transformation"] for h in (0, 1)]
    assert all(h["invariant"]["kl"] == 0.0 and h["random"]["kl"] > 0.0 for h in heads)
    assert heads[0]["random"]["kl"] != heads[1]["random"]["kl"]
