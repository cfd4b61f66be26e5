"""Match indexes (services/match_index.py, clients/index_build.py, `equiprobe index`) on small
synthetic stores whose geometry is known (no server needed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from equiprobe.clients.index_build import add_to_index, build_index, merge_indexes
from equiprobe.clients.store import Store, StoreWriter
from equiprobe.services import match_index as mx
from equiprobe.services.match_index import MatchIndex
from equiprobe.trainer.cli import app

ROWS = ["identity", "blur", "crop"]
D = 32


def write_store(path: Path, embeddings: np.ndarray, prefix: str = "img", rows=ROWS, encoder: str = "synthetic",
                done=None, split: str = "test") -> Path:
    """A store holding exactly `embeddings` [N, K, D]; rows not in `done` stay pending."""
    n, k, d = embeddings.shape
    manifest = {"format_version": 2, "tool_version": "test", "encoder": encoder, "encoder_onnx_sha256": "0" * 64,
                "dim": d, "dtype": "float16", "catalog": "synthetic", "catalog_version": "synthetic-1",
                "rows": list(rows), "params_width": 1, "row_labels": list(range(k)), "classes": list(rows),
                "row_splits": ["both"] * k, "dataset": f"synthetic:{prefix}", "label_names": [], "limit": None,
                "seed": 0, "count": n, "shard": None}
    writer = StoreWriter(Store.create_or_resume(path, manifest))
    done = list(range(n)) if done is None else done
    for r in done:
        writer.put(r, embeddings=embeddings[r], params=np.zeros((k, 1)), key=f"{prefix}{r:04d}",
                   image_key=f"{r:016x}", label=-1, split=split, index=r)
    writer.commit(done)
    return path


def versions(n: int, seed: int, k: int = len(ROWS), spread: float = 0.15) -> np.ndarray:
    """[n, k, D]: a random identity per image; its edited versions close to it."""
    rng = np.random.default_rng(seed)
    content = rng.normal(size=(n, 1, D))
    edits = spread * rng.normal(size=(n, k, D))
    edits[:, 0] = 0
    return content + edits


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("match")
    a = versions(300, 1)
    b = versions(120, 2)
    b[:20] = a[:20]  # store b's first 20 images are store a's, under other keys
    store_a = write_store(root / "a", a, "a", done=[r for r in range(300) if r != 7])  # row 7 pending
    store_b = write_store(root / "b", b, "b")
    return root, (store_a, a), (store_b, b)


def test_build_finds_each_identity_and_its_edited_versions(stores, tmp_path):
    root, (store_a, a), _ = stores
    meta = build_index([store_a], tmp_path / "ix", progress=False)
    assert meta["kind"] == "flat" and meta["count"] == 299 and meta["recall"] is None
    assert meta["encoder"] == "synthetic" and meta["dim"] == D and meta["metric"] == "inner_product"
    assert meta["catalogs"] == ["synthetic/synthetic-1"] and meta["stores"][0]["images"] == 299
    assert sorted(os.listdir(tmp_path)) == ["ix"]  # no staged directory left behind
    index = MatchIndex.open(tmp_path / "ix", verify=True)
    done = [r for r in range(300) if r != 7]
    sims, ids, keys = index.search(a[done, 0], k=5)
    assert list(keys[:, 0]) == [f"a{r:04d}" for r in done]
    assert np.allclose(sims[:, 0], 1.0, atol=1e-3)
    assert "a0007" not in set(index.keys)  # a pending row is not indexed
    for column in (1, 2):
        _, _, keys = index.search(a[done, column], k=1)
        assert list(keys[:, 0]) == [f"a{r:04d}" for r in done]
    # where each image's versions are
    path, row = index.location(index.id_of("a0042"))
    assert Path(path) == store_a.resolve() and row == 42


def test_add_appends_and_keeps_the_old_answers(stores, tmp_path):
    root, (store_a, a), (store_b, b) = stores
    build_index([store_a], tmp_path / "ix", progress=False)
    before = MatchIndex.open(tmp_path / "ix")
    old_sims, old_ids, old_keys = before.search(a[:50, 1], k=3)
    meta = add_to_index(tmp_path / "ix", store_b, progress=False)
    assert meta["added"] == 120 and meta["count"] == 299 + 120 and meta["skipped_duplicates"] == 0
    after = MatchIndex.open(tmp_path / "ix")
    assert [s["images"] for s in after.meta["stores"]] == [299, 120]
    _, _, keys = after.search(b[20:, 2], k=1)
    assert list(keys[:, 0]) == [f"b{r:04d}" for r in range(20, 120)]
    sims, ids, keys = after.search(a[20:50, 1], k=1)  # (the new images may come in at ranks 2 and 3)
    assert (keys[:, 0] == old_keys[20:, 0]).all() and (ids[:, 0] == old_ids[20:, 0]).all()
    assert np.allclose(sims[:, 0], old_sims[20:, 0])
    path, row = after.location(after.id_of("b0100"))
    assert Path(path) == store_b.resolve() and row == 100
    again = add_to_index(tmp_path / "ix", store_b, progress=False)  # the same keys: nothing added
    assert again["added"] == 0 and again["skipped_duplicates"] == 120
    assert MatchIndex.open(tmp_path / "ix").count == 419


def test_duplicate_keys_across_stores_are_indexed_once(stores, tmp_path):
    root, (store_a, a), _ = stores
    meta = build_index([store_a, store_a], tmp_path / "ix", progress=False)
    assert meta["count"] == 299 and meta["skipped_duplicates"] == 299


def test_merged_shards_answer_like_one_build(stores, tmp_path):
    root, (store_a, a), (store_b, b) = stores
    single = build_index([store_a, store_b], tmp_path / "one", progress=False)
    for i in range(3):
        build_index([store_a, store_b], tmp_path / f"s{i}", shard=f"{i}/3", progress=False)
    shard_counts = [MatchIndex.open(tmp_path / f"s{i}").count for i in range(3)]
    assert sum(shard_counts) == single["count"] and min(shard_counts) > 0
    merged = merge_indexes([tmp_path / "s2", tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged", progress=False)
    assert merged["count"] == single["count"] and merged["kind"] == single["kind"]
    assert [s["images"] for s in merged["stores"]] == [s["images"] for s in single["stores"]]
    one, joined = MatchIndex.open(tmp_path / "one"), MatchIndex.open(tmp_path / "merged")
    assert (one.keys == joined.keys).all() and (one.rows == joined.rows).all()
    queries = np.concatenate([a[:, 2], b[:, 1]])
    s1, i1, k1 = one.search(queries, k=10)
    s2, i2, k2 = joined.search(queries, k=10)
    assert (i1 == i2).all() and (k1 == k2).all() and np.array_equal(s1, s2)
    with pytest.raises(ValueError, match="expected each of 0/3"):
        merge_indexes([tmp_path / "s0", tmp_path / "s1"], tmp_path / "half", progress=False)


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
def test_approximate_kinds_report_recall(stores, tmp_path, kind):
    root, (store_a, a), (store_b, b) = stores
    meta = build_index([store_a, store_b], tmp_path / "ix", kind=kind, progress=False)
    recall = meta["recall"]
    assert meta["kind"] == kind and recall["queries"] > 0 and recall["queries_from"] == "non-identity versions"
    assert 0 <= recall["recall@1"] <= recall["recall@10"] <= 1 and recall["match@1_exact"] > 0.9
    if kind != "ivfpq":  # uncompressed: near exact on this small set
        assert recall["recall@10"] > 0.9
    stored = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert stored["recall"] == recall and stored["params"] == meta["params"]
    index = MatchIndex.open(tmp_path / "ix")
    _, _, keys = index.search(b[20:, 0], k=10)
    found = (keys == np.array([f"b{r:04d}" for r in range(20, 120)])[:, None]).any(1).mean()
    assert found > (0.5 if kind == "ivfpq" else 0.9)  # 3-bit PQ codes here: 400 vectors train no more


def test_broken_indexes_are_refused_with_the_file_named(stores, tmp_path):
    root, (store_a, a), _ = stores
    build_index([store_a], tmp_path / "ix", progress=False)
    with pytest.raises(ValueError, match="nowhere.*does not exist"):
        MatchIndex.open(tmp_path / "nowhere")
    faiss_file = tmp_path / "ix" / "index.faiss"
    good = faiss_file.read_bytes()
    faiss_file.write_bytes(good[:len(good) // 2])  # truncated
    with pytest.raises(ValueError, match="index.faiss.*truncated"):
        MatchIndex.open(tmp_path / "ix")
    faiss_file.write_bytes(b"\x01" * len(good))  # same size, garbage
    with pytest.raises(ValueError, match="index.faiss is corrupt"):
        MatchIndex.open(tmp_path / "ix")
    faiss_file.write_bytes(good)
    keys = np.load(tmp_path / "ix" / "keys.npy")
    np.save(tmp_path / "ix" / "keys.npy", keys[:-1])
    with pytest.raises(ValueError, match="keys.npy holds 298 entries"):
        MatchIndex.open(tmp_path / "ix")


def test_a_failed_rewrite_leaves_the_old_index(stores, tmp_path, monkeypatch):
    root, (store_a, a), (store_b, b) = stores
    build_index([store_a], tmp_path / "ix", progress=False)

    def broken(*args):
        raise OSError("disk full")

    monkeypatch.setattr(mx.faiss, "write_index", broken)
    with pytest.raises(OSError, match="disk full"):
        add_to_index(tmp_path / "ix", store_b, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["ix"] and MatchIndex.open(tmp_path / "ix").count == 299


def test_mixed_encoders_and_stores_without_identity_are_refused(stores, tmp_path):
    root, (store_a, a), _ = stores
    other = write_store(tmp_path / "other", versions(10, 3), "o", encoder="clip_vit_b32")
    with pytest.raises(ValueError, match="encoder differs: .*'synthetic'.*'clip_vit_b32'"):
        build_index([store_a, other], tmp_path / "ix", progress=False)
    build_index([store_a], tmp_path / "ix", progress=False)
    with pytest.raises(ValueError, match="encoder differs: .*'synthetic'.*'clip_vit_b32'"):
        add_to_index(tmp_path / "ix", other, progress=False)
    wide = write_store(tmp_path / "wide", np.ones((4, 3, D * 2)), "w")
    with pytest.raises(ValueError, match="dim differs: .*32.*64"):
        build_index([store_a, wide], tmp_path / "ix2", progress=False)
    edited_only = write_store(tmp_path / "edited", versions(5, 4, k=2), "e", rows=["blur", "crop"])
    with pytest.raises(ValueError, match="no 'identity' version"):
        build_index([edited_only], tmp_path / "ix3", progress=False)


def test_cli_build_add_info(stores, tmp_path):
    root, (store_a, a), (store_b, b) = stores
    runner = CliRunner()
    out = tmp_path / "ix"
    result = runner.invoke(app, ["index", "build", "--store", str(store_a), "--out", str(out), "--kind", "hnsw",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    assert "299 images, hnsw" in result.output and "recall@1" in result.output
    result = runner.invoke(app, ["index", "add", "--index", str(out), "--store", str(store_b), "--quiet"])
    assert result.exit_code == 0 and "120 added" in result.output, result.output
    result = runner.invoke(app, ["index", "info", str(out), "--json"])
    info = json.loads(result.output)
    assert info["count"] == 419 and info["kind"] == "hnsw" and len(info["stores"]) == 2
    assert info["memory"]["bytes_per_vector"] > D * 4 and info["recall"]["recall@1"] > 0.5
    result = runner.invoke(app, ["index", "info", str(out)])
    assert result.exit_code == 0 and "per million images" in result.output
    result = runner.invoke(app, ["index", "build", "--store", str(store_a), "--out", str(out), "--quiet"])
    assert result.exit_code == 1 and "exists" in result.output
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["index", "build", "--store", str(store_a), "--out", str(tmp_path / "notes"),
                                 "--force", "--quiet"])
    assert result.exit_code == 1 and "not an index" in result.output
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    result = runner.invoke(app, ["index", "build", "--store", str(store_a), "--out", str(out), "--force", "--quiet"])
    assert result.exit_code == 0 and MatchIndex.open(out).count == 299, result.output
    result = runner.invoke(app, ["index", "info", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "missing" in result.output


def test_index_help_loads_no_faiss():
    code = ("import sys; from equiprobe.trainer.cli import main\n"
            "try:\n    main(['index', 'build', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', 'faiss' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "LOADED False" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def write_store_with_features(path: Path, embeddings: np.ndarray, features: np.ndarray, prefix: str,
                              split: str = "test") -> Path:
    n, k, d = embeddings.shape
    manifest = {"format_version": 2, "tool_version": "test", "encoder": "synthetic", "encoder_onnx_sha256": "0" * 64,
                "dim": d, "dtype": "float16", "catalog": "synthetic", "catalog_version": "synthetic-1",
                "rows": list(ROWS), "params_width": 1, "row_labels": list(range(k)), "classes": list(ROWS),
                "row_splits": ["both"] * k, "dataset": f"synthetic:{prefix}", "label_names": [], "limit": None,
                "seed": 0, "count": n, "shard": None, "features_dim": features.shape[-1],
                "feature_layout": [{"block": "synthetic", "width": features.shape[-1]}]}
    writer = StoreWriter(Store.create_or_resume(path, manifest))
    for r in range(n):
        writer.put(r, embeddings=embeddings[r], features=features[r], params=np.zeros((k, 1)), key=f"{prefix}{r:04d}",
                   image_key=f"{r:016x}", label=-1, split=split, index=r)
    writer.commit(list(range(n)))
    return path


def test_references_are_the_identity_rows_with_features(stores, tmp_path):
    root, (store_a, a), _ = stores
    rng = np.random.default_rng(5)
    f_a, f_b = rng.normal(size=(40, 3, 8)), rng.normal(size=(30, 3, 8))
    e_a, e_b = versions(40, 11), versions(30, 12)
    fa = write_store_with_features(tmp_path / "fa", e_a, f_a, "fa")
    fb = write_store_with_features(tmp_path / "fb", e_b, f_b, "fb")
    expected = np.concatenate([np.concatenate([e_a[:, 0], f_a[:, 0]], 1), np.concatenate([e_b[:, 0], f_b[:, 0]], 1)])
    expected = expected.astype(np.float16)
    meta = build_index([fa], tmp_path / "ix", progress=False)
    assert meta["reference_width"] == D + 8 and meta["features_dim"] == 8 and meta["references_bytes"] > 0
    index = MatchIndex.open(tmp_path / "ix")
    assert isinstance(index.references, np.memmap) and index.reference_width == D + 8
    assert np.array_equal(np.asarray(index.references), expected[:40])  # raw, not normalised
    assert np.array_equal(index.reference([3, 1]), expected[[3, 1]].astype(np.float32))
    (tmp_path / "ix" / "probe").mkdir()
    (tmp_path / "ix" / "probe" / "match_probe.json").write_text("{}")
    add_to_index(tmp_path / "ix", fb, progress=False)
    grown = MatchIndex.open(tmp_path / "ix")
    assert np.array_equal(np.asarray(grown.references), expected)
    assert (tmp_path / "ix" / "probe" / "match_probe.json").read_text() == "{}"  # `add` keeps the probe
    for i in range(2):
        build_index([fa, fb], tmp_path / f"s{i}", shard=f"{i}/2", progress=False)
    merge_indexes([tmp_path / "s1", tmp_path / "s0"], tmp_path / "merged", progress=False)
    assert np.array_equal(np.asarray(MatchIndex.open(tmp_path / "merged").references), expected)
    meta = build_index([store_a], tmp_path / "noft", progress=False)  # no FEATURES: W = D
    assert meta["reference_width"] == D and meta["features_dim"] == 0
    assert MatchIndex.open(tmp_path / "noft").references.shape == (299, D)
    with pytest.raises(ValueError, match="features_dim differs: .*0.*8"):
        build_index([store_a, fa], tmp_path / "mixed", progress=False)
    with pytest.raises(ValueError, match="features_dim differs"):
        add_to_index(tmp_path / "noft", fb, progress=False)
    np.save(tmp_path / "noft" / "references.npy", np.zeros((298, D), np.float16))
    with pytest.raises(ValueError, match="references.npy is float16 \\(298, 32\\)"):
        MatchIndex.open(tmp_path / "noft")


def test_an_index_written_before_references_gets_them_from_its_stores(stores, tmp_path):
    root, (store_a, a), (store_b, b) = stores
    build_index([store_a], tmp_path / "ix", progress=False)
    (tmp_path / "ix" / "references.npy").unlink()  # as slice 1 wrote it
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    for field in ("reference_width", "references_bytes", "features_dim"):
        meta.pop(field)
    (tmp_path / "ix" / "index.json").write_text(json.dumps(meta))
    old = MatchIndex.open(tmp_path / "ix")
    assert old.references is None and old.reference_width is None
    with pytest.raises(ValueError, match="no references.npy"):
        old.reference([0])
    add_to_index(tmp_path / "ix", store_b, progress=False)  # reads the old rows' references from store a
    grown = MatchIndex.open(tmp_path / "ix")
    done = [r for r in range(300) if r != 7]
    assert np.array_equal(np.asarray(grown.references), np.concatenate([a[done, 0], b[:, 0]]).astype(np.float16))


# -- the copy projection (--projection-from) -----------------------------------------------------

F = 8  # FEATURES: W = D + F


def edited_world(n: int, seed: int, edit_dims: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings [n, K, D], FEATURES [n, K, F]): photos differ in every direction; edits move them
    far, but only along the first `edit_dims` of the W directions (tests/test_match_projection.py)."""
    rng = np.random.default_rng(seed)
    x = np.repeat(rng.normal(size=(n, 1, D + F)), len(ROWS), 1)
    x[:, 1:, :edit_dims] += rng.normal(scale=3.0, size=(n, len(ROWS) - 1, edit_dims))
    return x[..., :D], x[..., D:]


@pytest.fixture(scope="module")
def projected(tmp_path_factory):
    """A training store (split train: what the projection learns from), a store of known images, a
    store to add, and the raw and projected indexes of the known one."""
    root = tmp_path_factory.mktemp("projected")
    train = write_store_with_features(root / "train", *edited_world(300, 21), "t", split="train")
    known_e, known_f = edited_world(200, 22)
    known = write_store_with_features(root / "known", known_e, known_f, "k")
    more_e, more_f = edited_world(60, 23)
    more = write_store_with_features(root / "more", more_e, more_f, "m")
    build_index([known], root / "raw", progress=False)
    meta = build_index([known], root / "proj", progress=False, projection_from=train, projection_dim=10)
    return root, train, (known, np.concatenate([known_e, known_f], -1)), (more, np.concatenate([more_e, more_f], -1)), meta


def _recall_at_1(index: MatchIndex, uploads: np.ndarray, prefix: str) -> float:
    """Share of the edited versions [n, K, W] whose own key is ranked first."""
    _, _, keys = index.search(uploads[:, 1:].reshape(-1, uploads.shape[-1]), k=1)
    own = np.repeat([f"{prefix}{r:04d}" for r in range(len(uploads))], uploads.shape[1] - 1)
    return float((keys[:, 0] == own).mean())


def test_a_projected_index_finds_each_identity_and_keeps_references_raw(projected):
    root, train, (known, x), _, meta = projected
    assert meta["dim"] == D and meta["search_dim"] == 10 and meta["reference_width"] == D + F
    record = meta["projection"]
    assert record["store"] == str(train.resolve()) and record["images"] == 300 and record["dim"] == 10
    assert record["width"] == D + F and record["sha256"] == mx.sha256_of(root / "proj" / "projection.npz")
    index = MatchIndex.open(root / "proj", verify=True)
    assert index.dim == D and index.search_dim == 10 and index.query_width == D + F and index.projection.dim == 10
    sims, _, keys = index.search(x[:, 0], k=3)  # every identity, W wide: its own key first
    assert list(keys[:, 0]) == [f"k{r:04d}" for r in range(200)] and np.allclose(sims[:, 0], 1.0, atol=1e-3)
    assert np.array_equal(np.asarray(index.references), x[:, 0].astype(np.float16))  # raw
    vectors = index.index.reconstruct_n(0, index.count)
    np.testing.assert_allclose(vectors, mx.unit(index.projection(index.reference(np.arange(200)))), atol=1e-6)
    with pytest.raises(ValueError, match=f"queries are {D} wide.*takes {D + F}"):
        index.search(x[:5, 0, :D])  # the embedding alone cannot be projected
    raw = MatchIndex.open(root / "raw")
    assert raw.projection is None and raw.query_width == D and raw.search_dim == D and "projection" not in raw.meta
    same = raw.search(x[:5, 1], k=3)  # an index without projection reads the embedding of a W-wide upload
    for a, b in zip(same, raw.search(x[:5, 1, :D], k=3)):
        assert np.array_equal(a, b)


def test_the_projection_raises_recall_of_edited_copies(projected):
    root, train, (known, x), _, _ = projected
    raw = _recall_at_1(MatchIndex.open(root / "raw"), x, "k")
    learned = _recall_at_1(MatchIndex.open(root / "proj"), x, "k")
    assert learned > 0.95 and learned > raw + 0.2, (raw, learned)


def test_add_and_merge_keep_the_projection(projected, tmp_path):
    root, train, (known, x), (more, y), _ = projected
    shutil.copytree(root / "proj", tmp_path / "ix")
    before = (root / "proj" / "projection.npz").read_bytes()
    meta = add_to_index(tmp_path / "ix", more, progress=False)
    assert meta["added"] == 60 and meta["search_dim"] == 10 and meta["dim"] == D
    assert (tmp_path / "ix" / "projection.npz").read_bytes() == before
    grown = MatchIndex.open(tmp_path / "ix", verify=True)
    assert grown.meta["projection"] == json.loads((root / "proj" / "index.json").read_text())["projection"]
    np.testing.assert_allclose(grown.index.reconstruct_n(200, 60),
                               mx.unit(grown.projection(grown.reference(np.arange(200, 260)))), atol=1e-6)
    assert _recall_at_1(grown, y, "m") > 0.95  # new images through the same projection
    other = write_store(tmp_path / "other", versions(10, 3), "o", encoder="clip_vit_b32")
    with pytest.raises(ValueError, match="encoder differs"):
        add_to_index(tmp_path / "ix", other, progress=False)
    # shards that learned the projection from the same store merge into what one build makes
    for i in range(2):
        build_index([known, more], tmp_path / f"s{i}", shard=f"{i}/2", progress=False, projection_from=train,
                    projection_dim=10)
    assert (tmp_path / "s0" / "projection.npz").read_bytes() == (tmp_path / "s1" / "projection.npz").read_bytes()
    one = build_index([known, more], tmp_path / "one", progress=False, projection_from=train, projection_dim=10)
    merged = merge_indexes([tmp_path / "s1", tmp_path / "s0"], tmp_path / "merged", progress=False)
    assert merged["projection"] == one["projection"] and merged["search_dim"] == 10
    a, b = MatchIndex.open(tmp_path / "one"), MatchIndex.open(tmp_path / "merged")
    queries = np.concatenate([x[:, 1], y[:, 2]])
    (s1, i1, k1), (s2, i2, k2) = a.search(queries, k=5), b.search(queries, k=5)
    assert np.array_equal(i1, i2) and np.array_equal(k1, k2)
    np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-6)  # BLAS rounds by batch on some CPUs (AVX2)
    # a shard without the projection (or with another) is refused
    build_index([known, more], tmp_path / "r1", shard="1/2", progress=False)
    with pytest.raises(ValueError, match="different copy projections.*--projection-from"):
        merge_indexes([tmp_path / "s0", tmp_path / "r1"], tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_a_missing_or_corrupt_projection_is_refused_with_the_file_named(projected, tmp_path):
    root, train, (known, x), _, _ = projected
    shutil.copytree(root / "proj", tmp_path / "ix")
    file = tmp_path / "ix" / "projection.npz"
    good = file.read_bytes()
    file.write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match="projection.npz: sha256 differs"):
        MatchIndex.open(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    meta["projection"]["sha256"] = mx.sha256_of(file)  # a record that agrees with the garbage
    (tmp_path / "ix" / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="projection.npz is missing or unreadable"):
        MatchIndex.open(tmp_path / "ix")
    file.unlink()
    with pytest.raises(ValueError, match="projection.npz is missing"):
        MatchIndex.open(tmp_path / "ix")
    file.write_bytes(good)
    # a store of another encoder (or FEATURES width) cannot teach the projection; nothing is written
    other = write_store(tmp_path / "other", versions(10, 3), "o", encoder="clip_vit_b32")
    with pytest.raises(ValueError, match="encoder differs: store .*'synthetic', --projection-from .*other has "
                                         "'clip_vit_b32'"):
        build_index([known], tmp_path / "x1", progress=False, projection_from=other)
    plain = write_store(tmp_path / "plain", versions(10, 3), "p")
    with pytest.raises(ValueError, match="features_dim differs: .* 8, --projection-from .* 0"):
        build_index([known], tmp_path / "x2", progress=False, projection_from=plain)
    with pytest.raises(ValueError, match="no done training-source images"):
        build_index([known], tmp_path / "x3", progress=False, projection_from=known)  # split test only
    assert not any((tmp_path / f"x{i}").exists() for i in (1, 2, 3))


def test_cli_build_with_a_projection_and_info(projected, tmp_path):
    root, train, (known, x), _, _ = projected
    runner = CliRunner()
    result = runner.invoke(app, ["index", "build", "--store", str(known), "--out", str(tmp_path / "ix"),
                                 "--projection-from", str(train), "--projection-dim", "12", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "copy projection 40 -> 12 dims" in result.output
    info = json.loads(runner.invoke(app, ["index", "info", str(tmp_path / "ix"), "--json"]).output)
    assert info["projection"]["dim"] == 12 and info["search_dim"] == 12 and info["dim"] == D
    result = runner.invoke(app, ["index", "info", str(tmp_path / "ix")])
    assert result.exit_code == 0 and "40 -> 12 dims" in result.output and "300 training images" in result.output


def test_excluded_keys_stay_out_of_the_index(stores, tmp_path):
    root, (store_a, a), _ = stores
    keys = [str(k) for k in np.asarray(Store.open(store_a).array("keys"))[[0, 1, 2, 3, 4, 5, 6, 8, 9, 10]]]  # 7: pending
    (tmp_path / "held_out.txt").write_text("\n".join(keys) + "\n")
    result = CliRunner().invoke(app, ["index", "build", "--store", str(store_a), "--out", str(tmp_path / "ix"),
                                      "--exclude-keys", str(tmp_path / "held_out.txt"), "--quiet"])
    assert result.exit_code == 0 and "excluded" in result.output, result.output
    index = MatchIndex.open(tmp_path / "ix")
    assert index.count == 299 - 10 and not set(keys) & set(index.keys.tolist())
    assert index.meta["excluded_keys"] == 10


def test_a_gpu_search_on_a_faiss_without_gpus_is_a_clear_error(stores, tmp_path):
    """The native flavour's NAME_match moves its index onto its GPU (faiss_device gpu); where faiss
    cannot (faiss-cpu, or no GPU visible), loading says so in one line instead of searching
    somewhere else."""
    import faiss

    from equiprobe.services.matching import ServedIndex

    root, (store_a, a), _ = stores
    build_index([store_a], tmp_path / "ix", progress=False)
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        pytest.skip("this faiss sees a GPU")
    with pytest.raises(mx.MatchIndexError, match="faiss_device gpu.*(without GPU support|sees 0 GPU)"):
        ServedIndex.load(tmp_path / "ix", copy_threshold=0.9, faiss_device="gpu")
    with pytest.raises(mx.MatchIndexError, match="faiss_device 'tpu'"):
        ServedIndex.load(tmp_path / "ix", copy_threshold=0.9, faiss_device="tpu")
    served = ServedIndex.load(tmp_path / "ix", copy_threshold=0.9)
    assert served.searched_on == "cpu" and served.match(a[:3, 0].astype(np.float32))["COPY"].all()


@pytest.mark.parametrize("flavour,kind,device", [("portable", "KIND_CPU", "cpu"), ("native", "KIND_GPU", "gpu")])
def test_the_match_model_searches_on_the_gpu_in_the_native_flavour(flavour, kind, device):
    from types import SimpleNamespace

    from tritonclient.grpc import model_config_pb2 as mc

    from equiprobe.services.contract import MatchNames
    from equiprobe.services.match_models import match_config

    served = SimpleNamespace(flavour=flavour, embed_config=SimpleNamespace(max_batch_size=32))
    meta = {"dim": D, "features_dim": 0, "k": 5, "version": 3, "encoder": "synthetic", "encoder_onnx_sha256": "0" * 64,
            "copy_threshold": 0.9, "copy_threshold_source": "flag", "count": 10, "kind": "flat",
            "index_sha256": "1" * 64, "probe": None}
    config = match_config(served, MatchNames("synthetic"), meta)
    assert [mc.ModelInstanceGroup.Kind.Name(g.kind) for g in config.instance_group] == [kind]
    assert config.parameters["faiss_device"].string_value == device and config.backend == "python"
