"""Refresh: `embed --reuse OLD` copies the columns of unchanged transformations and has the
server's encoder compute only the others (ROWS)."""

import asyncio
import dataclasses
import hashlib
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from equiprobe.clients.aio import ClientOptions
from equiprobe.clients.embed_job import EmbedJob, run_embed_job
from equiprobe.clients.store import PENDING, Store, StoreError
from equiprobe.services.contract import ExpansionNames
from equiprobe.services.transforms import get_catalog
from equiprobe.services.transforms.spec import Param, fingerprint
from equiprobe.services.contract import EMBEDDINGS, IMAGE, PARAMS, ROWS

from .conftest import CHUNK, ENCODER, LIMIT, embed_cli
from .test_bulk_embed import digest, same_files

NAMES = ExpansionNames(ENCODER, "fine")
CHANGED = [4, 13, 27]  # tint, gaussian_blur, icon_overlay: "changed" in the new catalog version
K = 31


def make_old_store(photo_store: Path, out: Path, pending_row: int = 5, **manifest_changes) -> Path:
    """The session's store rewritten as an older catalog version: CHANGED rows had other
    fingerprints (and hold garbage), one image was left pending."""
    shutil.copytree(photo_store, out)
    manifest = json.loads((out / "manifest.json").read_text())
    for j in CHANGED:
        manifest["row_fingerprints"][j] = hashlib.sha256(f"older {manifest['rows'][j]}".encode()).hexdigest()
    manifest.update(catalog_version="fine-0", **manifest_changes)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    rng = np.random.default_rng(0)
    embeddings, params = np.load(out / "embeddings.npy", mmap_mode="r+"), np.load(out / "params.npy", mmap_mode="r+")
    embeddings[:, CHANGED] = rng.normal(size=embeddings[:, CHANGED].shape)
    params[:, CHANGED] = rng.normal(size=params[:, CHANGED].shape)
    embeddings[pending_row] = 7
    status = np.load(out / "status.npy", mmap_mode="r+")
    status[pending_row] = PENDING
    for array in (embeddings, params, status):
        array.flush()
    return out


def encoder_statistics(server, model: str = NAMES.versions) -> tuple[int, int]:
    """(images, compute nanoseconds) NAME_versions (the expansion's encoder step, which waits for
    NAME_encoder) has run so far; for NAME_encoder itself, (crops, nanoseconds)."""
    client = grpcclient.InferenceServerClient(server.config.grpc_url)
    stats = client.get_inference_statistics(model).model_stats[0]
    return stats.inference_count, stats.inference_stats.compute_infer.ns


def infer(server, data: bytes, rows=None, dtype=np.int32):
    client = grpcclient.InferenceServerClient(server.config.grpc_url)
    array = np.frombuffer(data, np.uint8).reshape(1, -1)
    inputs = [grpcclient.InferInput(IMAGE, list(array.shape), "UINT8")]
    inputs[0].set_data_from_numpy(array)
    if rows is not None:
        values = np.array([rows], dtype)
        inputs.append(grpcclient.InferInput(ROWS, list(values.shape), "INT32" if dtype == np.int32 else "INT64"))
        inputs[1].set_data_from_numpy(values)
    result = client.infer(NAMES.embed, inputs)
    return result.as_numpy(EMBEDDINGS)[0], result.as_numpy(PARAMS)[0]


def test_fingerprints_follow_the_transformation_and_its_code():
    fine = get_catalog("fine")
    assert len(set(fine.fingerprints)) == K and fine.fingerprints == get_catalog("fine").fingerprints
    tint = fine.transforms[4]
    wider = dataclasses.replace(tint, params=tint.params[:3] + (Param("strength", 0.35, 0.6),))
    recoded = dataclasses.replace(tint, apply=fine.transforms[5].apply)
    assert len({fingerprint(tint), fingerprint(wider), fingerprint(recoded)}) == 3
    # A renderer's captured values count: the held-out fonts make another column than the seen ones.
    general = {t.name: t for t in get_catalog("general").transforms}
    assert fingerprint(general["text_overlay"]) != fingerprint(general["text_overlay_unseen_fonts"])


def test_rows_request_returns_exactly_those_rows_of_a_full_request(server, jpegs):
    data = jpegs["astronaut"]
    full, params = infer(server, data)
    picked, picked_params = infer(server, data, [30, 2, 7])
    assert full.shape == (K, 512) and picked.shape == (3, 512)
    np.testing.assert_allclose(picked, full[[30, 2, 7]], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(picked_params, params)  # parameters stay whole


@pytest.mark.parametrize("rows, dtype, message", [
    ([K], np.int32, "ROWS must be row indices in 0..30"), ([-1, 2], np.int32, "ROWS must be row indices in 0..30"),
    ([], np.int32, "ROWS is empty"), ([3, 3], np.int32, "repeated rows"),
    ([1], np.int64, f"data-type is 'INT64', but model '{NAMES.embed}' expects 'INT32'"),
])
def test_bad_rows_are_invalid_arguments_and_the_server_keeps_serving(server, jpegs, rows, dtype, message):
    with pytest.raises(InferenceServerException) as caught:
        infer(server, jpegs["coins"], rows, dtype)
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and message in caught.value.message()
    assert infer(server, jpegs["coins"], [0])[0].shape == (1, 512)


def test_refresh_computes_only_changed_columns_and_equals_a_full_embed(server, photo_store, jpegs, tmp_path):
    # The pending image is a training one, so both probes below have the same test images.
    train_row = int(np.flatnonzero(np.asarray(Store.open(photo_store).array("split")) == 0)[0])
    old = make_old_store(photo_store, tmp_path / "old", pending_row=train_row)
    untouched = digest(old)
    full_before = encoder_statistics(server, NAMES.onnx)
    for name in ("astronaut", "rocket"):  # yardstick: the encoder's cost of all 31 rows of an image
        infer(server, jpegs[name])
    full_after = encoder_statistics(server, NAMES.onnx)
    before, encoder_before = encoder_statistics(server), encoder_statistics(server, NAMES.onnx)
    start = time.perf_counter()
    proc = subprocess.run(embed_cli(server, tmp_path / "new", "--reuse", str(old)), capture_output=True, text=True,
                          timeout=600)
    seconds = time.perf_counter() - start
    after, encoder_after = encoder_statistics(server), encoder_statistics(server, NAMES.onnx)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    # 15 images reuse 28 columns and compute 3; the image pending in the old store is computed whole.
    assert summary["reused_columns"] == (LIMIT - 1) * (K - 3)
    assert summary["computed_columns"] == (LIMIT - 1) * 3 + K
    assert summary["done"] == LIMIT and summary["pending"] == 0
    # The encoder step ran once per image, and each run cost about 3 of 31 rows, not all 31:
    # only the rows asked for reach NAME_encoder (which counts crops), at its cost per crop.
    assert after[0] - before[0] == LIMIT
    assert encoder_after[0] - encoder_before[0] == (LIMIT - 1) * 3 + K
    assert full_after[0] - full_before[0] == 2 * K
    per_image_full = (full_after[1] - full_before[1]) / 2
    per_image_refresh = (encoder_after[1] - encoder_before[1]) / LIMIT
    assert per_image_refresh < 0.5 * per_image_full, (per_image_refresh, per_image_full)
    same_files(photo_store, tmp_path / "new")  # byte for byte, manifest included
    assert digest(old) == untouched
    print(f"refresh of {LIMIT} images: {seconds:.1f} s; encoder per image {per_image_refresh / 1e6:.1f} ms "
          f"vs {per_image_full / 1e6:.1f} ms for all {K} rows")

    # Retrained on each catalog version, the report compares old and new probes on the same test images.
    from equiprobe.trainer.probes import ProbeConfig
    from equiprobe.trainer.report import build_report
    from equiprobe.trainer.train import train_probes

    records = [train_probes(store, "fine", ProbeConfig(kind="linear", max_epochs=5), [0], tmp_path / f"probe_{name}",
                            progress=False) for name, store in (("old", old), ("new", tmp_path / "new"))]
    results = build_report([tmp_path / "new"], [tmp_path / "probe_old", tmp_path / "probe_new"], tmp_path / "report",
                           max_images=50)
    (comparison,) = results["catalog_comparison"]
    assert (comparison["old"], comparison["new"]) == ("fine-0", "fine-1")
    assert comparison["images"] == records[1]["images"]["test"] == records[0]["images"]["test"]
    assert comparison["new_accuracy"] == records[1]["summary"]["test_accuracy"]["mean"]


@pytest.mark.parametrize("field, value", [("encoder_onnx_sha256", "0" * 64), ("encoder_precision", "int8"),
                                          ("dataset", "folder:/elsewhere"),
                                          ("seed", 9)])
def test_a_store_of_another_job_is_refused_and_nothing_is_written(server, photo_store, tmp_path, field, value):
    old = make_old_store(photo_store, tmp_path / "old", **{field: value})
    out = tmp_path / "new"
    job = EmbedJob("corpus", ENCODER, out, server.config.grpc_url, limit=LIMIT, reuse=old,
                   client=ClientOptions(server.config.grpc_url))
    with pytest.raises(StoreError, match=f"cannot reuse .*another job .*{field}: "):
        asyncio.run(run_embed_job(job, progress=False))
    assert not out.exists()


def test_cli_refuses_reuse_of_another_seed_with_one_line(server, photo_store, tmp_path):
    old = make_old_store(photo_store, tmp_path / "old")
    proc = subprocess.run(embed_cli(server, tmp_path / "new", "--reuse", str(old), "--seed", "3"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "cannot reuse" in proc.stderr and "seed:" in proc.stderr
    assert not (tmp_path / "new").exists()


def test_killed_refresh_resumes_to_the_full_store(server, photo_store, tmp_path):
    old = make_old_store(photo_store, tmp_path / "old")
    out = tmp_path / "new"
    command = embed_cli(server, out, "--reuse", str(old))
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "status.npy").exists() and (np.load(out / "status.npy", mmap_mode="r") == 1).sum() >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 0 < Store.open(out).summary()["pending"] < LIMIT, "the refresh was not killed part way"
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    same_files(photo_store, out)


@pytest.mark.slow
def test_refresh_on_ray_reuses_the_old_columns_and_equals_a_full_embed(server, photo_store, tmp_path):
    import ray

    from equiprobe.clients.ray_runner import run_ray_embed

    old = make_old_store(photo_store, tmp_path / "old")
    job = EmbedJob("corpus", ENCODER, tmp_path / "new", server.config.grpc_url, limit=LIMIT, chunk_size=CHUNK,
                   reuse=old, client=ClientOptions(server.config.grpc_url))
    before, crops_before = encoder_statistics(server), encoder_statistics(server, NAMES.onnx)[0]
    try:
        summary = run_ray_embed(job, [server.config.grpc_url], actors=2, progress=False)
    finally:
        ray.shutdown()
    after, crops_after = encoder_statistics(server), encoder_statistics(server, NAMES.onnx)[0]
    # As on one machine: each actor's refresh copies the valid columns and computes only the others.
    assert summary["reused_columns"] == (LIMIT - 1) * (K - 3)
    assert summary["computed_columns"] == (LIMIT - 1) * 3 + K
    assert after[0] - before[0] == LIMIT
    assert crops_after - crops_before == (LIMIT - 1) * 3 + K  # only the rows asked for reach NAME_encoder
    same_files(photo_store, tmp_path / "new")
