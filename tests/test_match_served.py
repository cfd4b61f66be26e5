"""Served matching (issue 24): an index of real squeezenet1_1 embeddings of the package photos,
deployed as NAME_match / NAME_matcher into a copy of the session repository's NAME_embed models
and served by a real Triton server in explicit model control. First without a reference-aware
probe (COPY from --copy-threshold; EDITED false, TRANSFORMATION and CATEGORY empty, EDIT_SCORE
-1), then with a real one trained by `equiprobe index train-probe` on a second store of the same
photos (Pillow-made edits, embedded by the same server)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from equiprobe.clients.embedding import EmbeddingClient, as_image_input
from equiprobe.clients.index_build import build_index
from equiprobe.clients.matching import parse_outputs
from equiprobe.clients.store import Store, StoreWriter
from equiprobe.services.contract import (CATEGORY, COPY, EDIT_SCORE, EDITED, EMBEDDING, FEATURES, MATCH_KEYS,
                                         MATCH_OUTPUTS, MATCH_SIMILARITIES, TRANSFORMATION, MatchNames, ModelNames)
from equiprobe.services.match_index import MatchIndex
from equiprobe.services.repository import read_manifest, served_part

from .conftest import ENCODER, copy_models, explicit_server_fixture, grpc_client_fixture, requests_flowing

EQUIPROBE = str(Path(sys.executable).parent / "equiprobe")
NAMES, BASE = MatchNames(ENCODER), ModelNames(ENCODER)
COPY_THRESHOLD = 0.95
HELD_OUT = ("moon", "flower")  # photos in no index

pytestmark = pytest.mark.server  # (conftest marks tests by its own fixtures' names)


def run_cli(*args: str, timeout: float = 180, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([EQUIPROBE, *args], capture_output=True, text=True, timeout=timeout, env=env)


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file.read_bytes() if file.is_file() else str(file.readlink()).encode())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def match_repo(repo, tmp_path_factory) -> Path:
    return copy_models(repo, tmp_path_factory.mktemp("match") / "repo", BASE.embed)


match_server = explicit_server_fixture("match_repo", BASE.embed)
client = grpc_client_fixture("match_server")


@pytest.fixture(scope="module")
def served(match_server, jpegs) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(EMBEDDING, FEATURES) of every package photo, from the served NAME_embed."""
    embedder = EmbeddingClient(match_server.config.grpc_url, ENCODER)
    return {name: embedder.features(data) for name, data in jpegs.items()}


def write_store(path: Path, repo: Path, vectors: dict, rows=("identity",), catalog: str = "photos",
                splits: dict = None) -> Path:
    """A store holding the served vectors as they are: vectors[name] = (EMBEDDING [K, D] or [D],
    FEATURES [K, F] or [F]), one version per row name."""
    names = sorted(vectors)
    part = served_part(repo, ENCODER)
    k = len(rows)
    manifest = {"format_version": 2, "tool_version": "test", "encoder": ENCODER,
                "encoder_onnx_sha256": read_manifest(repo, ENCODER)["onnx_sha256"], "dim": part.dim,
                "features_dim": part.features, "dtype": "float32", "catalog": catalog, "catalog_version": f"{catalog}-1",
                "rows": list(rows), "params_width": 1, "row_labels": list(range(k)), "classes": list(rows),
                "row_splits": ["both"] * k, "dataset": "package-photos", "label_names": [], "limit": None,
                "seed": 0, "count": len(names), "shard": None}
    writer = StoreWriter(Store.create_or_resume(path, manifest))
    for r, name in enumerate(names):
        embedding, features = vectors[name]
        writer.put(r, embeddings=embedding.reshape(k, -1), params=np.zeros((k, 1)), key=name, image_key=f"{r:016x}",
                   label=-1, split=(splits or {}).get(name, "test"), index=r, source=name,
                   features=features.reshape(k, -1))
    writer.commit(list(range(len(names))))
    return path


@pytest.fixture(scope="module")
def indexes(served, match_repo, tmp_path_factory) -> dict[str, Path]:
    """v1: every photo but the held-out ones; v2: half of them (other answers)."""
    root = tmp_path_factory.mktemp("indexes")
    known = {n: v for n, v in served.items() if n not in HELD_OUT}
    half = {n: v for n, v in sorted(known.items())[::2]}
    out = {}
    for name, vectors in (("v1", known), ("v2", half)):
        build_index([write_store(root / f"store_{name}", match_repo, vectors)], root / name, progress=False)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def deployed(match_server, match_repo, indexes) -> Path:
    proc = run_cli("deploy", "--index", str(indexes["v1"]), "--repo", str(match_repo), "--url",
                   match_server.config.grpc_url, "--copy-threshold", str(COPY_THRESHOLD))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"deployed {NAMES.match} version 1" in proc.stdout and "no probe" in proc.stdout
    return match_repo


def matcher_outputs(client, data: bytes) -> dict[str, np.ndarray]:
    result = client.infer(NAMES.matcher, [as_image_input(data)],
                          outputs=[grpcclient.InferRequestedOutput(n) for n in MATCH_OUTPUTS])
    return {n: result.as_numpy(n)[0] for n in MATCH_OUTPUTS}


def keys_of(outputs) -> list[str]:
    return [k.decode() for k in outputs[MATCH_KEYS]]


# -- what NAME_matcher answers ---------------------------------------------------------------------

def test_served_matches_equal_an_in_process_search_of_the_served_embedding(client, deployed, indexes, served, jpegs):
    index = MatchIndex.open(indexes["v1"])
    names = sorted(jpegs)
    with ThreadPoolExecutor(8) as pool:  # concurrent requests: the batcher hands NAME_match several at once
        answers = list(pool.map(lambda n: matcher_outputs(client, jpegs[n]), names))
    sims, ids, keys = index.search(np.stack([served[n][0] for n in names]), 5)
    for name, answer, s, k in zip(names, answers, sims, keys):
        assert keys_of(answer) == list(k), name
        np.testing.assert_allclose(answer[MATCH_SIMILARITIES], s, atol=1e-4)
        assert bool(answer[COPY][0]) == (s[0] >= COPY_THRESHOLD)
        # no probe: nothing about the edit
        assert not answer[EDITED][0] and answer[TRANSFORMATION][0] == b"" and answer[CATEGORY][0] == b""
        assert answer[EDIT_SCORE][0] == -1.0
    # a known upload finds itself, a copy; the held-out photos are no copies of anything
    for name, answer in zip(names, answers):
        if name in HELD_OUT:
            assert name not in keys_of(answer) and not answer[COPY][0]
        else:
            assert keys_of(answer)[0] == name and answer[COPY][0] and answer[MATCH_SIMILARITIES][0] > 0.9999


def test_one_batch_request_to_the_match_model_answers_row_by_row(client, deployed, indexes, served):
    names = sorted(served)[:6]
    embeddings = np.stack([served[n][0] for n in names])
    inputs = [grpcclient.InferInput(EMBEDDING, list(embeddings.shape), "FP32")]
    inputs[0].set_data_from_numpy(embeddings)
    config = client.get_model_config(NAMES.match, as_json=True)["config"]
    if any(i["name"] == FEATURES for i in config["input"]):  # the index's references hold FEATURES
        features = np.stack([served[n][1] for n in names])
        inputs.append(grpcclient.InferInput(FEATURES, list(features.shape), "FP32"))
        inputs[1].set_data_from_numpy(features)
    result = client.infer(NAMES.match, inputs)
    _, _, keys = MatchIndex.open(indexes["v1"]).search(embeddings, 5)
    assert [[k.decode() for k in row] for row in result.as_numpy(MATCH_KEYS)] == keys.tolist()
    assert config["parameters"]["copy_threshold"]["string_value"] == repr(COPY_THRESHOLD)


def test_match_cli_prints_one_json_object_per_file(match_server, deployed, jpegs, tmp_path):
    files = []
    for name in ("astronaut", HELD_OUT[0]):
        files.append(tmp_path / f"{name}.jpg")
        files[-1].write_bytes(jpegs[name])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(jpegs["coffee"][:500])
    proc = run_cli("match", *map(str, files), str(broken), str(tmp_path / "missing.jpg"), "--url",
                   match_server.config.grpc_url, "--encoder", ENCODER, "--json", "--top", "3")
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 1, proc.stderr  # two files could not be matched; the others were
    assert [line["file"] for line in lines] == [str(f) for f in (*files, broken, tmp_path / "missing.jpg")]
    for line in lines[:2]:
        assert set(line) == {"file", "matches", "copy", "edited", "transformation", "category", "score"}
        assert len(line["matches"]) == 3 and set(line["matches"][0]) == {"key", "similarity"}
        sims = [m["similarity"] for m in line["matches"]]
        assert sims == sorted(sims, reverse=True)
        assert line["edited"] is False and line["transformation"] is None and line["category"] is None
        assert line["score"] == -1.0
    assert lines[0]["copy"] is True and lines[0]["matches"][0]["key"] == "astronaut"
    assert lines[1]["copy"] is False
    assert "truncated" in lines[2]["error"] and "No such file" in lines[3]["error"]
    dead = run_cli("match", str(files[0]), "--url", "127.0.0.1:1", "--json", timeout=60)
    assert dead.returncode == 1 and "no Triton server answers at 127.0.0.1:1" in dead.stderr


# -- versions --------------------------------------------------------------------------------------

def match_version_served(client, served) -> str:
    embedding, features = served["astronaut"]
    inputs = [grpcclient.InferInput(EMBEDDING, [1, len(embedding)], "FP32")]
    inputs[0].set_data_from_numpy(embedding[None])
    if any(i["name"] == FEATURES for i in client.get_model_config(NAMES.match, as_json=True)["config"]["input"]):
        inputs.append(grpcclient.InferInput(FEATURES, [1, len(features)], "FP32"))
        inputs[1].set_data_from_numpy(features[None])
    return client.infer(NAMES.match, inputs).get_response().model_version


def test_deploy_and_rollback_under_load_fail_no_request(match_server, client, deployed, indexes, served, jpegs):
    url = match_server.config.grpc_url
    probe_image = jpegs["coffee"]
    before = keys_of(matcher_outputs(client, probe_image))
    with requests_flowing(url, lambda own: keys_of(matcher_outputs(own, probe_image))) as (answers, failures):
        proc = run_cli("deploy", "--index", str(indexes["v2"]), "--repo", str(deployed), "--url", url,
                       "--copy-threshold", str(COPY_THRESHOLD))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "version 2, replacing version 1" in proc.stdout
        assert match_version_served(client, served) == "2"
        during = keys_of(matcher_outputs(client, probe_image))
        rolled = run_cli("deploy", "--rollback", "--matcher", "--repo", str(deployed), "--url", url)
        assert rolled.returncode == 0, rolled.stderr[-2000:]
        assert f"rolled back to {NAMES.match} version 1, replacing version 2" in rolled.stdout
        assert match_version_served(client, served) == "1"
        time.sleep(0.5)
    assert failures == [] and len(answers) > 10
    assert during != before  # another index really served
    assert keys_of(matcher_outputs(client, probe_image)) == before
    assert {tuple(a) for a in answers} == {tuple(before), tuple(during)}  # each answer whole from one version
    events = json.loads((deployed / NAMES.match / "deploy_history.json").read_text())["events"]
    assert [(e["action"], e["version"]) for e in events[-3:]] == [("deploy", 1), ("deploy", 2), ("rollback", 1)]
    assert (deployed / NAMES.match / "2" / "index.faiss").is_file()  # kept for a later rollback


def test_a_corrupt_index_is_refused_and_a_corrupted_version_fails_to_load_alone(match_server, client, deployed,
                                                                                indexes, served, jpegs, tmp_path):
    url = match_server.config.grpc_url
    corrupt = tmp_path / "corrupt"
    shutil.copytree(indexes["v1"], corrupt)
    with open(corrupt / "index.faiss", "r+b") as f:
        f.truncate(100)
    digest = tree_digest(deployed)
    refused = run_cli("deploy", "--index", str(corrupt), "--repo", str(deployed), "--url", url,
                      "--copy-threshold", "0.9")
    assert refused.returncode == 1 and "index.faiss is 100 bytes" in refused.stderr and "truncated" in refused.stderr
    assert tree_digest(deployed) == digest  # nothing written
    # A version whose index is damaged on disk after the deploy: its load fails, naming the file.
    placed = run_cli("deploy", "--index", str(indexes["v1"]), "--repo", str(deployed), "--copy-threshold", "0.9")
    assert placed.returncode == 0, placed.stderr[-2000:]
    version = placed.stdout.split("version ")[1].split(",")[0]
    with open(deployed / NAMES.match / version / "index.faiss", "r+b") as f:
        f.truncate(100)
    with pytest.raises(InferenceServerException) as failed:
        client.load_model(NAMES.match)
    message = failed.value.message()
    assert f"{NAMES.match}/{version}/index.faiss is 100 bytes" in message and "truncated" in message, message
    # The server stays up; the previous version and the other models keep answering.
    assert client.is_server_live() and client.is_model_ready(BASE.embed)
    assert match_version_served(client, served) == "1"
    assert keys_of(matcher_outputs(client, jpegs["coffee"]))[0] == "coffee"
    rolled = run_cli("deploy", "--rollback", "--matcher", "--repo", str(deployed), "--url", url)
    assert rolled.returncode == 0, rolled.stderr[-2000:]
    assert f"rolled back to {NAMES.match} version 1, replacing version {version}" in rolled.stdout


# -- refusals (no server) --------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [("encoder_onnx_sha256", "f" * 64), ("dim", 7)])
def test_an_index_of_another_encoder_is_refused_writing_nothing(field, value, repo, indexes, tmp_path):
    path = copy_models(repo, tmp_path / "repo", BASE.embed)
    other = tmp_path / "other"
    shutil.copytree(indexes["v2"], other)
    meta = json.loads((other / "index.json").read_text())
    served_value = meta[field]
    (other / "index.json").write_text(json.dumps({**meta, field: value}))
    digest = tree_digest(path)
    proc = run_cli("deploy", "--index", str(other), "--repo", str(path), "--copy-threshold", "0.9", timeout=60)
    assert proc.returncode == 1
    assert repr(value) in proc.stderr and repr(served_value) in proc.stderr and "nothing was changed" in proc.stderr
    assert tree_digest(path) == digest


def test_an_index_without_a_probe_needs_a_copy_threshold(repo, indexes, tmp_path):
    path = copy_models(repo, tmp_path / "repo", BASE.embed)
    proc = run_cli("deploy", "--index", str(indexes["v2"]), "--repo", str(path), timeout=60)
    assert proc.returncode == 1 and "--copy-threshold" in proc.stderr
    assert not (path / NAMES.match).exists()


def test_parse_outputs_drops_missing_matches():
    outputs = {MATCH_KEYS: np.array([b"a", b""], object), MATCH_SIMILARITIES: np.array([0.5, -np.inf], np.float32),
               COPY: np.array([False]), EDITED: np.array([False]), TRANSFORMATION: np.array([b""], object),
               CATEGORY: np.array([b""], object), EDIT_SCORE: np.array([-1.0], np.float32)}
    match = parse_outputs(outputs)
    assert match.matches == [("a", 0.5)] and match.transformation is None and match.score == -1.0


# -- with a reference-aware probe ------------------------------------------------------------------

EDITS = ("identity", "blur", "darken", "mirror")


def edited(image: np.ndarray, edit: str) -> bytes:
    """A Pillow-made version of a photo, as the JPEG an upload would be (the identity re-encoded
    at another quality than the index's photo: an independent encoding)."""
    from PIL import Image, ImageEnhance, ImageFilter, ImageOps

    from equiprobe.clients.photos import encode

    picture = Image.fromarray(image)
    picture = {"identity": lambda p: p, "blur": lambda p: p.filter(ImageFilter.GaussianBlur(4)),
               "darken": lambda p: ImageEnhance.Brightness(p).enhance(0.4), "mirror": ImageOps.mirror}[edit](picture)
    return encode(np.asarray(picture), quality=75)


@pytest.fixture(scope="module")
def probe_index(match_server, match_repo, indexes, photos, tmp_path_factory) -> tuple[Path, dict]:
    """A copy of index v1 with a probe trained on a second store of its photos (EDITS, embedded
    by the served NAME_embed); returns it and the uploads {(photo, edit): JPEG}."""
    root = tmp_path_factory.mktemp("probe")
    embedder = EmbeddingClient(match_server.config.grpc_url, ENCODER)
    known = sorted(n for n in photos if n not in HELD_OUT)
    uploads = {(n, e): edited(photos[n], e) for n in known for e in EDITS}
    vectors = {}
    for name in known:
        pairs = [embedder.features(uploads[name, e]) for e in EDITS]
        vectors[name] = (np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
    splits = {name: ("test", "validation", "train", "train")[i % 4] for i, name in enumerate(known)}
    store = write_store(root / "edits", match_repo, vectors, rows=EDITS, catalog="photo-edits", splits=splits)
    index = root / "index"
    shutil.copytree(indexes["v1"], index)
    proc = run_cli("index", "train-probe", "--index", str(index), "--store", str(store), "--quiet",
                   "--hidden", "64", "--epochs", "40", env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return index, uploads


def test_a_probed_index_names_the_edit_of_a_copy_as_the_in_process_probe_does(match_server, client, deployed,
                                                                              probe_index, served, jpegs, tmp_path):
    from equiprobe.trainer.match_probe import load_probe, match_uploads

    index_path, uploads = probe_index
    url = match_server.config.grpc_url
    proc = run_cli("deploy", "--index", str(index_path), "--repo", str(deployed), "--url", url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "reference-aware probe" in proc.stdout and "(probe)" in proc.stdout
    index = MatchIndex.open(index_path)
    probe = load_probe(index)
    classes = set(probe.record["classes"])
    cases = [(n, e, data) for (n, e), data in sorted(uploads.items())] + [(n, "held out", jpegs[n]) for n in HELD_OUT]
    embedder = EmbeddingClient(url, ENCODER)
    copies = 0
    for name, edit, data in cases:
        answer = matcher_outputs(client, data)
        embedding, features = embedder.features(data)
        (expected,) = match_uploads(index, probe, np.concatenate([embedding, features])[None], k=5)
        assert keys_of(answer) == expected["keys"], (name, edit)
        np.testing.assert_allclose(answer[MATCH_SIMILARITIES], expected["similarities"], atol=1e-4)
        assert bool(answer[COPY][0]) == expected["copy"], (name, edit)
        assert answer[TRANSFORMATION][0].decode() == expected["transformation"], (name, edit)
        assert answer[CATEGORY][0].decode() == expected["category"], (name, edit)
        assert answer[EDIT_SCORE][0] == pytest.approx(expected["edit_score"], abs=1e-4)
        if abs(expected["edit_score"] - probe.record["edited_threshold"]) > 1e-4:  # not on the threshold
            assert bool(answer[EDITED][0]) == expected["edited"], (name, edit)
        if answer[COPY][0]:
            copies += 1
            assert answer[TRANSFORMATION][0].decode() in classes and 0.0 <= answer[EDIT_SCORE][0] <= 1.0
        else:
            assert answer[TRANSFORMATION][0] == b"" and answer[EDIT_SCORE][0] == -1.0 and not answer[EDITED][0]
    assert copies >= len(uploads) // 2  # the known photos' versions are mostly copies
    # the CLI: a copy's transformation and category are named
    file = tmp_path / "astronaut.jpg"
    file.write_bytes(uploads["astronaut", "identity"])
    line = json.loads(run_cli("match", str(file), "--url", url, "--encoder", ENCODER, "--json").stdout)
    assert line["matches"][0]["key"] == "astronaut" and line["copy"] is True
    assert line["transformation"] in classes and line["category"] is not None and 0.0 <= line["score"] <= 1.0


@pytest.fixture(scope="module")
def projected_index(indexes, probe_index, tmp_path_factory) -> Path:
    """Index v1's photos searched in a copy projection learned from the edits store's training
    photos (`index build --projection-from`), with a probe trained on that store."""
    index_path, _ = probe_index
    edits = index_path.parent / "edits"
    out = tmp_path_factory.mktemp("projected") / "index"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = run_cli("index", "build", "--store", str(indexes["v1"].parent / "store_v1"), "--out", str(out),
                   "--projection-from", str(edits), "--projection-dim", "16", "--quiet", env=env)
    assert proc.returncode == 0 and "copy projection" in proc.stdout, proc.stderr[-2000:]
    proc = run_cli("index", "train-probe", "--index", str(out), "--store", str(edits), "--quiet", "--hidden", "64",
                   "--epochs", "20", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_a_projected_index_serves_what_the_in_process_search_answers(match_server, client, deployed, probe_index,
                                                                    projected_index, jpegs):
    """NAME_match projects the upload's [EMBEDDING, FEATURES] before the search: the served answers equal
    MatchIndex.search and match_uploads in-process; a corrupted projection.npz fails the load alone."""
    from equiprobe.trainer.match_probe import load_probe, match_uploads

    _, uploads = probe_index
    url = match_server.config.grpc_url
    proc = run_cli("deploy", "--index", str(projected_index), "--repo", str(deployed), "--url", url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    index = MatchIndex.open(projected_index)
    assert index.projection is not None and index.query_width == index.dim + index.meta["features_dim"]
    probe = load_probe(index)
    embedder = EmbeddingClient(url, ENCODER)
    cases = [(n, e, data) for (n, e), data in sorted(uploads.items()) if e in ("identity", "blur")]
    cases += [(n, "held out", jpegs[n]) for n in HELD_OUT]
    for name, edit, data in cases:
        answer = matcher_outputs(client, data)
        upload = np.concatenate(embedder.features(data))[None]
        sims, _, keys = index.search(upload, 5)
        (expected,) = match_uploads(index, probe, upload, k=5)
        assert keys_of(answer) == list(keys[0]) == expected["keys"], (name, edit)
        np.testing.assert_allclose(answer[MATCH_SIMILARITIES], sims[0], atol=1e-4)
        assert bool(answer[COPY][0]) == expected["copy"], (name, edit)
        assert answer[TRANSFORMATION][0].decode() == expected["transformation"], (name, edit)
        assert answer[EDIT_SCORE][0] == pytest.approx(expected["edit_score"], abs=1e-4)
    # refused before anything is written when projection.npz is damaged; damaged after the deploy,
    # the load fails naming it and the served version stays
    damaged = projected_index.parent / "damaged"
    shutil.copytree(projected_index, damaged)
    (damaged / "projection.npz").write_bytes(b"garbage")
    digest = tree_digest(deployed)
    refused = run_cli("deploy", "--index", str(damaged), "--repo", str(deployed))
    assert refused.returncode == 1 and "projection.npz: sha256 differs" in refused.stderr, refused.stderr[-2000:]
    assert tree_digest(deployed) == digest
    placed = run_cli("deploy", "--index", str(projected_index), "--repo", str(deployed))
    assert placed.returncode == 0, placed.stderr[-2000:]
    version = placed.stdout.split("version ")[1].split(",")[0]
    (deployed / NAMES.match / version / "projection.npz").write_bytes(b"garbage")
    with pytest.raises(InferenceServerException) as failed:
        client.load_model(NAMES.match)
    assert f"{NAMES.match}/{version}/projection.npz" in failed.value.message(), failed.value.message()
    assert client.is_server_live() and keys_of(matcher_outputs(client, jpegs["coffee"]))
    rolled = run_cli("deploy", "--rollback", "--matcher", "--repo", str(deployed), "--url", url)
    assert rolled.returncode == 0, rolled.stderr[-2000:]
