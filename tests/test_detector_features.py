"""The detector reading FEATURES: a fine probe trained on the real store's embeddings and early-block
statistics (`train --features`), deployed, and served by a real Triton server whose NAME_detector
feeds NAME_encoder's EMBEDDING and FEATURES to the probe."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from equiprobe.clients.embedding import as_image_input
from equiprobe.services.contract import EMBEDDING, FEATURES, TRANSFORM_PROBS, DetectorNames, ModelNames
from equiprobe.services.model_config import read_config
from equiprobe.services.server import TritonServer, loopback_config
from equiprobe.trainer.deploy import DeployError, deploy
from equiprobe.trainer.probes import ProbeConfig
from equiprobe.trainer.train import train_probes

from .conftest import ENCODER
from .test_detector import base_copy, edit_record, one_torch_thread, softmax_of, torch_probe

NAMES, BASE = DetectorNames(ENCODER), ModelNames(ENCODER)


@pytest.fixture(scope="module")
def features_probe(photo_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("features_probe") / "mlp"
    with one_torch_thread():
        record = train_probes(photo_store, "fine", ProbeConfig(kind="mlp", hidden=128, batch_size=64, max_epochs=15,
                                                               patience=10, features=True), [0], out, progress=False)
    assert record["features_dim"] == 1664 and record["dim"] == 512 + 1664
    return out


def test_the_served_detector_feeds_embedding_and_features_to_the_probe(repo, features_probe, jpegs, tmp_path):
    path = base_copy(repo, tmp_path / "repo")
    result = deploy([features_probe], path)
    assert result.meta["features"] and result.meta["features_dim"] == 1664
    assert [i.name for i in read_config(path / NAMES.probe / "config.pbtxt").input] == [EMBEDDING, FEATURES]
    reference = torch_probe(features_probe)
    config = loopback_config(path, model_control_mode="explicit", startup_models=(NAMES.detector, BASE.embed))
    with TritonServer(config) as server:
        client = grpcclient.InferenceServerClient(server.config.grpc_url)
        try:
            for name in ("astronaut", "chelsea"):
                image = [as_image_input(jpegs[name])]
                out = client.infer(NAMES.detector, image, outputs=[grpcclient.InferRequestedOutput(n)
                                                                   for n in (TRANSFORM_PROBS, EMBEDDING)])
                served = client.infer(BASE.embed, image)
                embedding, features = served.as_numpy(EMBEDDING)[0], served.as_numpy(FEATURES)[0]
                # EMBEDDING is still the encoder's embedding alone; the probe saw both, in the store's order.
                np.testing.assert_allclose(out.as_numpy(EMBEDDING)[0], embedding, rtol=1e-5, atol=1e-5)
                expected = softmax_of(reference, np.concatenate([embedding, features])[None])[0]
                np.testing.assert_allclose(out.as_numpy(TRANSFORM_PROBS)[0], expected, atol=1e-5)
                without = softmax_of(reference, np.concatenate([embedding, np.zeros_like(features)])[None])[0]
                assert np.abs(without - expected).max() > 1e-3  # the features do reach the probe
        finally:
            client.close()


def test_a_probe_for_other_features_is_refused(repo, features_probe, tmp_path):
    probe = tmp_path / "probe"
    shutil.copytree(features_probe, probe)
    edit_record(probe, features_dim=100, dim=512 + 100)
    path = base_copy(repo, tmp_path / "repo")
    with pytest.raises(DeployError, match="FEATURES dim 100.*1664"):
        deploy([probe], path)
    assert not (path / NAMES.probe).exists()
