"""Concatenated encoders: stores joined (store concat), a probe trained on the join, served as
one A+B_detector that runs both encoders on the same upload."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from equiprobe.clients.concat import concat_stores
from equiprobe.clients.embedding import as_image_input
from equiprobe.clients.store import Store, StoreError

from equiprobe.services.repository import build_repo, read_manifest
from equiprobe.services.server import TritonServer, loopback_config
from equiprobe.trainer.deploy import deploy
from equiprobe.trainer.probes import ProbeConfig
from equiprobe.trainer.train import train_probes
from equiprobe.services.contract import DetectorNames, EMBEDDING, MANIPULATED, MANIPULATION_SCORE, ModelNames, TRANSFORM_PROBS

from .conftest import ENCODER, embed_bin
from .test_detector import edit_record, one_torch_thread, softmax_of, torch_probe
from .test_trainer import synthetic_store

OTHER = "open_nsfw"
COMPOSITE = f"{ENCODER}+{OTHER}"
DIMS = (512, 1024)


def test_concat_joins_rows_and_refuses_other_images(tmp_path):
    a = synthetic_store(tmp_path / "a", "fine", images=12, dim=8)
    b = synthetic_store(tmp_path / "b", "fine", images=12, dim=4, noise=0.1)
    joined = concat_stores([a, b], tmp_path / "ab")
    m = joined.manifest
    assert m["dim"] == 12 and m["encoder"] == "synthetic+synthetic" and [p["dim"] for p in m["parts"]] == [8, 4]
    np.testing.assert_array_equal(joined.array("embeddings")[:, :, :8], Store.open(a).array("embeddings"))
    np.testing.assert_array_equal(joined.array("embeddings")[:, :, 8:], Store.open(b).array("embeddings"))
    assert joined.complete and list(joined.sources()) == list(Store.open(a).sources())
    other = synthetic_store(tmp_path / "c", "fine", images=10, dim=4)
    with pytest.raises(StoreError, match="not the same images"):
        concat_stores([a, other], tmp_path / "ac")


@pytest.fixture(scope="module")
def composite_repo(repo, tmp_path_factory):
    """The session repository plus open_nsfw's NAME_embed (no expansion: the detector needs none)."""
    path = tmp_path_factory.mktemp("composite") / "repo"
    shutil.copytree(repo, path)
    build_repo(OTHER, path, catalogs=())
    return path


@pytest.fixture(scope="module")
def composite_probe(composite_repo, tmp_path_factory):
    root = tmp_path_factory.mktemp("composite_probe")
    parts = [synthetic_store(root / f"s{i}", "fine", images=40, dim=d) for i, d in enumerate(DIMS)]
    proc = subprocess.run([embed_bin(), "store", "concat", "--out", str(root / "joined"), *map(str, parts)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["dim"] == sum(DIMS)
    with one_torch_thread():
        train_probes(root / "joined", "fine", ProbeConfig(kind="mlp", hidden=64, max_epochs=5), [0], root / "probe",
                     progress=False)
    shas = [read_manifest(composite_repo, e)["onnx_sha256"] for e in (ENCODER, OTHER)]
    edit_record(root / "probe", encoder=COMPOSITE, encoder_onnx_sha256="+".join(shas))
    return root / "probe"


def test_a_composite_detector_runs_both_encoders_and_concatenates(composite_repo, composite_probe, jpegs):
    result = deploy([composite_probe], composite_repo)
    assert result.names.detector == DetectorNames(COMPOSITE).detector and result.meta["dim"] == sum(DIMS)
    config = loopback_config(composite_repo, model_control_mode="explicit",
                             startup_models=(result.names.detector, ModelNames(ENCODER).embed, ModelNames(OTHER).embed))
    reference = torch_probe(composite_probe)
    with TritonServer(config) as server:
        client = grpcclient.InferenceServerClient(server.config.grpc_url)
        for name in ("astronaut", "coffee"):
            data = as_image_input(jpegs[name])
            out = client.infer(result.names.detector, [data])
            parts = [client.infer(ModelNames(e).embed, [as_image_input(jpegs[name])]).as_numpy(EMBEDDING)[0]
                     for e in (ENCODER, OTHER)]
            joined = np.concatenate(parts)
            np.testing.assert_allclose(out.as_numpy(EMBEDDING)[0], joined, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(out.as_numpy(TRANSFORM_PROBS)[0], softmax_of(reference, joined[None])[0],
                                       atol=1e-5)
            assert out.as_numpy(MANIPULATED)[0, 0] == (out.as_numpy(MANIPULATION_SCORE)[0, 0]
                                                          >= result.meta["threshold"])
        client.close()
