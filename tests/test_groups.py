"""The groups catalog: exact rotations and a flip of the canvas, served as NAME_embed_groups."""

import json
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from equiprobe.clients.datasets import open_dataset
from equiprobe.clients.photos import encode
from equiprobe.clients.store import Store
from equiprobe.services.encoders import get_encoder
from equiprobe.services.contract import ExpansionNames
from equiprobe.services.transforms import get_catalog, image_key
from equiprobe.services.transforms.expand import Expander, serialize_expand
from equiprobe.services.transforms.groups import GROUPS
from equiprobe.trainer.cli import app

from .conftest import ENCODER, embed_cli
from .test_expansion_service import in_process, infer  # noqa: F401 (in_process is a fixture)

GROUPS_CATALOG = get_catalog("groups")
NUMPY = {"identity": lambda a: a, "rot90": lambda a: np.rot90(a, 1), "rot180": lambda a: np.rot90(a, 2),
         "rot270": lambda a: np.rot90(a, 3), "hflip": np.fliplr}


def test_catalog_rows_classes_and_groups():
    cat = GROUPS_CATALOG
    assert cat.version == "groups-1"
    assert cat.class_names == ["identity", "rot90", "rot180", "rot270", "hflip"]
    assert list(cat.labels) == [0, 1, 2, 3, 4] and cat.classes == tuple(cat.class_names)
    assert all(t.category in cat.classes and not t.params for t in cat.transforms)
    assert cat.width == 1  # no parameters, but PARAMS keeps a non-empty row for Triton
    assert not (cat.params("any", 0) != 0).any() and cat.aux_inputs == []
    for members in GROUPS.values():
        assert members[0] == "identity" and set(members) <= set(cat.class_names)


@pytest.mark.parametrize("batch", [1, 3])
def test_dali_versions_are_exactly_the_numpy_rotations_and_flip(photos, tmp_path, batch):
    # chelsea is not square: the canvas crop comes first, then the exact permutations.
    data = [encode(photos[n]) for n in ("chelsea", "astronaut", "rocket")][:batch]
    path = serialize_expand(GROUPS_CATALOG, tmp_path / "groups.dali", "cpu", batch, 2)
    versions, params = Expander(path, GROUPS_CATALOG, batch, 2).expand(
        [np.frombuffer(d, np.uint8) for d in data], [image_key(d) for d in data], seed=0)
    assert versions.shape == (batch, 5, 224, 224, 3) and versions.dtype == np.uint8
    assert params.shape == (batch, 5, GROUPS_CATALOG.params_width) and not params.any()
    for i in range(batch):
        canvas = versions[i, 0]
        for k, name in enumerate(GROUPS_CATALOG.class_names):
            np.testing.assert_array_equal(versions[i, k], NUMPY[name](canvas), err_msg=name)
            if name != "identity":  # a real photo is not symmetric, so the check can fail
                assert not np.array_equal(versions[i, k], canvas), name


def test_native_groups_pipeline_serializes_for_the_gpu(tmp_path):
    path = serialize_expand(GROUPS_CATALOG, tmp_path / "groups.dali", "gpu", 8, 2)
    assert path.stat().st_size > 0


def test_transforms_list_shows_the_groups_catalog():
    result = CliRunner().invoke(app, ["transforms", "list", "--catalog", "groups"])
    assert result.exit_code == 0, result.output
    assert "groups-1" in result.output and all(n in result.output for n in GROUPS_CATALOG.class_names)


def test_served_groups_embeddings_match_embed31_identity_and_in_process(server, jpegs, in_process):  # noqa: F811
    model = ExpansionNames(ENCODER, "groups").embed
    assert model == ExpansionNames(ENCODER, "groups").embed
    data = jpegs["chelsea"]
    embeddings, params, key = infer(server, model, data, seed=3)
    assert embeddings.shape == (5, get_encoder(ENCODER).dim) and key == image_key(data)
    np.testing.assert_array_equal(params, np.zeros((5, GROUPS_CATALOG.params_width), np.float32))
    fine, _, _ = infer(server, ExpansionNames(ENCODER, "fine").embed, data, seed=3)
    np.testing.assert_allclose(embeddings[0], fine[0], rtol=1e-5, atol=1e-4)
    expected, _ = in_process("groups", data, 3)
    np.testing.assert_allclose(embeddings, expected, rtol=1e-5, atol=1e-4)
    # Rotating the photo moves its embedding (squeezenet is not rotation invariant).
    distance = np.linalg.norm(embeddings[1:4] - embeddings[0], axis=1)
    assert (distance > 0.05 * np.linalg.norm(embeddings[0])).all()


def test_embed_writes_a_groups_store(server, tmp_path):
    out = tmp_path / "groups_store"
    proc = subprocess.run(embed_cli(server, out, "--catalog", "groups", "--limit", "3"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["rows_per_image"] == 5
    store = Store.open(out)
    m = store.manifest
    assert m["catalog"] == "groups" and m["catalog_version"] == "groups-1"
    assert m["rows"] == m["classes"] == GROUPS_CATALOG.class_names and m["row_labels"] == [0, 1, 2, 3, 4]
    assert m["params_width"] == 2 and m["row_splits"] == ["both"] * 5 and m["uploads"] == "none"
    assert store.complete and store.summary()["done"] == 3
    embeddings = store.array("embeddings")
    assert embeddings.shape == (3, 5, 512) and embeddings.dtype == np.float16
    photos = open_dataset("corpus")
    for row in range(3):
        served, _, _ = infer(server, ExpansionNames(ENCODER, "groups").embed, photos.record(row).load())
        np.testing.assert_array_equal(embeddings[row], served.astype(np.float16))
