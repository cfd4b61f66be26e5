"""`equiprobe embed` against the real server: stores, failures, resume after SIGKILL, shards."""

import asyncio
import filecmp
import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from equiprobe.clients.aio import ClientOptions
from equiprobe.clients.datasets import open_dataset
from equiprobe.clients.embed_job import EmbedJob, merge_stores, run_embed_job
from equiprobe.clients.photos import encode
from equiprobe.clients.store import DONE, FAILED, SPLITS, Store, StoreError
from equiprobe.services.transforms import get_catalog
from equiprobe.services.contract import ExpansionNames

from .conftest import CHUNK, ENCODER, LIMIT, embed_cli
from .test_expansion_service import infer

EQUIPROBE = str(Path(sys.executable).parent / "equiprobe")


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert mismatch == [] and errors == [], mismatch


@pytest.fixture(scope="module")
def reference_store(photo_store):
    """An uninterrupted run (conftest): the yardstick for resumed and sharded runs."""
    return photo_store


def test_store_rows_are_the_servers_embeddings_and_parameters(server, reference_store):
    store = Store.open(reference_store)
    m = store.manifest
    assert m["count"] == LIMIT and m["catalog_version"] == "fine-1" and m["dtype"] == "float16"
    assert m["uploads"] == "jpeg"
    assert len(m["rows"]) == 31 and m["encoder"] == ENCODER and len(m["encoder_onnx_sha256"]) == 64
    assert m["encoder_precision"] == "fp32"  # what the server's expansion published
    assert store.complete and store.summary()["done"] == LIMIT
    embeddings = store.array("embeddings")
    assert isinstance(embeddings, np.memmap) and embeddings.shape == (LIMIT, 31, 512)
    assert embeddings.dtype == np.float16
    photos = open_dataset("corpus")
    catalog = get_catalog("fine")
    for row in (0, 7, 15):
        record = photos.record(row)
        served, params, key = infer(server, ExpansionNames(ENCODER, "fine").embed, record.load(), seed=0, uploads=True)
        np.testing.assert_array_equal(embeddings[row], served.astype(np.float16))
        np.testing.assert_array_equal(store.array("params")[row], params)
        np.testing.assert_array_equal(params, catalog.params(key, 0, uploads=True))  # fine stores: as uploads
        assert store.array("keys")[row] == record.key and store.array("image_keys")[row] == key
        assert store.array("labels")[row] == record.label and store.sources()[row] == record.source
        assert store.array("split")[row] == SPLITS[record.split]


def test_killed_run_resumes_to_a_byte_identical_store(server, reference_store, tmp_path):
    out = tmp_path / "resumed"
    status = out / "status.npy"
    for _ in range(2):  # killed twice, each time a chunk after the rows done so far
        done_before = (np.load(status) == DONE).sum() if status.exists() else 0
        proc = subprocess.Popen(embed_cli(server, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if status.exists() and (np.load(status, mmap_mode="r") == DONE).sum() >= done_before + CHUNK:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert Store.open(out).summary()["pending"] > 0, "the run finished before it could be killed"
    proc = subprocess.run(embed_cli(server, out), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    same_files(reference_store, out)


def digest(path: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(path.iterdir()))).hexdigest()


def test_an_int8_servers_store_is_another_job_and_old_stores_read_as_fp32(reference_store):
    """An INT8 encoder keeps the FP32 graph's sha256, so precision alone must tell the stores apart;
    stores written before the field existed are FP32 ones."""
    from equiprobe.clients.store import IDENTITY_FIELDS, manifest_differences

    fp32 = Store.open(reference_store).manifest
    int8 = {**fp32, "encoder_precision": "int8"}
    old = {k: v for k, v in fp32.items() if k != "encoder_precision"}
    assert manifest_differences(int8, fp32, IDENTITY_FIELDS, "store") == [
        "encoder_precision: store has 'int8', this run wants 'fp32'"]
    assert manifest_differences(old, fp32, IDENTITY_FIELDS, "store") == []


def test_a_store_made_for_another_job_is_refused_untouched(server, reference_store):
    before = digest(reference_store)
    proc = subprocess.run(embed_cli(server, reference_store, "--seed", "9"), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "refusing to overwrite" in proc.stderr and "seed: store has 0, this run wants 9" in proc.stderr
    assert digest(reference_store) == before


def test_shards_merge_into_the_unsharded_store(server, reference_store, tmp_path):
    shards = []
    for i in range(2):
        shards.append(tmp_path / f"shard{i}")
        proc = subprocess.run(embed_cli(server, shards[-1], "--shard", f"{i}/2"), capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert Store.open(shards[-1]).manifest["count"] == LIMIT // 2
    proc = subprocess.run([EQUIPROBE, "store", "merge", "--out", str(tmp_path / "merged"), *map(str, shards)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    same_files(reference_store, tmp_path / "merged")
    with pytest.raises(StoreError, match="not 0..0 of 1"):
        merge_stores(shards[1:], tmp_path / "bad")


def test_unreadable_files_are_skipped_logged_and_counted(server, photos, tmp_path):
    tree = tmp_path / "tree" / "things"
    tree.mkdir(parents=True)
    (tree / "a_good.jpg").write_bytes(encode(photos["astronaut"]))
    (tree / "b_truncated.jpg").write_bytes(encode(photos["rocket"])[:2500])
    (tree / "c_empty.png").write_bytes(b"")
    (tree / "d_text.bmp").write_bytes(b"this is not a bitmap")
    (tree / "e_good.png").write_bytes(encode(photos["coins"], "PNG"))
    job = EmbedJob(f"folder:{tmp_path / 'tree'}", ENCODER, tmp_path / "store", server.config.grpc_url,
                   catalog="general", client=ClientOptions(server.config.grpc_url))
    summary = asyncio.run(run_embed_job(job, progress=False))
    assert summary == {"rows": 5, "done": 2, "failed": 3, "pending": 0, "store": str(tmp_path / "store"),
                       "rows_per_image": 47}
    store = Store.open(tmp_path / "store")
    assert list(store.status()) == [DONE, FAILED, FAILED, FAILED, DONE]
    reasons = {e["key"]: e["reason"] for e in store.errors()}
    assert "JPEG is truncated" in reasons["things/b_truncated.jpg"]
    assert "empty" in reasons["things/c_empty.png"]
    assert "not an image file of an accepted format" in reasons["things/d_text.bmp"]
    assert not store.array("embeddings")[1].any() and store.array("embeddings")[0].any()
    info = subprocess.run([EQUIPROBE, "store", "info", str(tmp_path / "store")], capture_output=True, text=True)
    assert "2 done, 3 failed, 0 pending of 5" in info.stdout and "b_truncated.jpg" in info.stdout


@pytest.mark.slow
def test_ray_runner_on_a_local_cluster_and_two_servers_writes_the_same_store(server, repo, reference_store, tmp_path):
    import tritonclient.grpc as grpcclient

    from equiprobe.services.server import TritonServer, loopback_config

    model = ExpansionNames(ENCODER, "fine").embed
    with TritonServer(loopback_config(repo)) as second:
        fleet = [server.config.grpc_url, second.config.grpc_url]
        before = [grpcclient.InferenceServerClient(u).get_inference_statistics(model).model_stats[0].inference_count
                  for u in fleet]
        proc = subprocess.run(embed_cli(server, tmp_path / "ray", "--ray", "--actors", "2",
                                        "--url", second.config.grpc_url), capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        after = [grpcclient.InferenceServerClient(u).get_inference_statistics(model).model_stats[0].inference_count
                 for u in fleet]
    assert all(a > b for a, b in zip(after, before)), "both servers of the fleet did work"
    same_files(reference_store, tmp_path / "ray")
