"""User-provided fast-neural-style networks as an extra step of the expansion ensemble."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from equiprobe.services.contract import EXPANSION_MANIFEST as MANIFEST, ExpansionNames
from equiprobe.services.pipelines import SerializedPipeline
from equiprobe.services.repository import build_repo
from equiprobe.services.runtime import ort_session
from equiprobe.services.server import TritonServer, loopback_config
from equiprobe.services.transforms import get_catalog, image_key
from equiprobe.services.transforms.expand import Expander
from equiprobe.services.contract import CANVAS, EMBEDDINGS, IMAGE, PIXELS

from .conftest import ENCODER
from .style_nets import tiny_style_network

NAMES = ExpansionNames(ENCODER, "fine")


@pytest.fixture(scope="module")
def styled_repo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("styled")
    nets = {"tiny_a": tiny_style_network(tmp / "a.onnx", seed=1), "tiny_b": tiny_style_network(tmp / "b.onnx", seed=2)}
    repo = tmp / "repo"
    build_repo(ENCODER, repo, catalogs=("fine",), style_nets=nets)
    return repo


def in_process(repo: Path, data: bytes) -> np.ndarray:
    """Every step of the ensemble, from the repository's own files, in this process."""
    catalog = get_catalog("fine")
    expander = Expander(repo / NAMES.expand / "1" / "model.dali", catalog, 1, 2)
    versions, canvas = expander.run(expander.feeds([np.frombuffer(data, np.uint8)], [image_key(data)], 0))
    styled = [ort_session(repo / NAMES.style(n) / "1" / "model.onnx").run(None, {CANVAS: canvas})[0]
              for n in ("tiny_a", "tiny_b")]
    resize = SerializedPipeline(repo / NAMES.style_resize / "1" / "model.dali", 1, 2)
    (extra,) = resize.run({f"STYLED_{j}": list(s) for j, s in enumerate(styled)})
    encoder = ort_session(repo / NAMES.onnx / "1" / "model.onnx")
    # NAME_versions: the catalog's crops, then the style networks' (EXTRA), through the one encoder.
    return encoder.run(None, {PIXELS: np.concatenate([versions[0], extra[0]])})[0]


def test_style_networks_add_rows_served_like_in_process(styled_repo, jpegs):
    manifest = json.loads((styled_repo / NAMES.embed / MANIFEST).read_text())
    assert manifest["rows"][-2:] == ["neural_style_tiny_a", "neural_style_tiny_b"]
    assert len(manifest["rows"]) == 33 and set(manifest["style_nets"]) == {"tiny_a", "tiny_b"}
    data = jpegs["astronaut"]
    with TritonServer(loopback_config(styled_repo)) as server:
        client = grpcclient.InferenceServerClient(server.config.grpc_url)
        image = grpcclient.InferInput(IMAGE, [1, len(data)], "UINT8")
        image.set_data_from_numpy(np.frombuffer(data, np.uint8).reshape(1, -1))
        served = client.infer(NAMES.embed, [image]).as_numpy(EMBEDDINGS)[0]
    assert served.shape == (33, 512)
    np.testing.assert_allclose(served, in_process(styled_repo, data), rtol=1e-5, atol=1e-4)
    # The two networks differ, and each moves the embedding away from the identity version.
    assert np.linalg.norm(served[31] - served[32]) > 1.0
    assert min(np.linalg.norm(served[31] - served[0]), np.linalg.norm(served[32] - served[0])) > 1.0


def test_build_repo_refuses_a_missing_style_network(tmp_path):
    proc = subprocess.run([str(Path(sys.executable).parent / "equiprobe"), "build-repo", "--encoder", ENCODER,
                           "--repo", str(tmp_path / "r"), "--style-net", f"x={tmp_path / 'nope.onnx'}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
