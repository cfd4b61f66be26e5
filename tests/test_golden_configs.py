"""Golden configs (tests/golden/configs): every config.pbtxt of squeezenet1_1's repository, both
flavours, rendered without an export (services/golden_configs.py); and build_repo writes exactly
what that renderer returns."""

import json
from pathlib import Path

import pytest

from equiprobe.services.contract import MANIFEST, ModelNames
from equiprobe.services.golden_configs import CATALOGS, ENCODER, REGENERATE, differences, rendered
from equiprobe.services.model_config import PYTHON_MODELS, ServingSpec
from equiprobe.services.repository import ONNX_SHA256_UNKNOWN, plan_repository

GOLDEN = Path(__file__).parent / "golden" / "configs"


@pytest.fixture(scope="module")
def texts() -> dict[str, str]:
    return rendered()


def test_rendered_configs_equal_the_goldens(texts):
    found = differences(GOLDEN, texts)
    assert not found, ("the rendered configs differ from tests/golden/configs:\n  " + "\n  ".join(found)
                       + f"\nif the change is intended, regenerate them (and review the diff): {REGENERATE}")


def test_goldens_cover_both_flavours_and_every_catalog(texts):
    for flavour in ("portable", "native"):
        models = {path.split("/")[1] for path in texts if path.startswith(f"{flavour}/")}
        assert {"image_gate", f"{ENCODER}_encoder", f"{ENCODER}_embed", f"{ENCODER}_embed31",
                f"{ENCODER}_embed_detect", "detect_inputs"} <= models
    assert "detect" in CATALOGS
    # the one value an export decides is a named placeholder, nothing else differs by machine
    assert all(ONNX_SHA256_UNKNOWN in text for path, text in texts.items() if "_embed" in path.split("/")[1]
               and not path.endswith(f"{ENCODER}_embed/config.pbtxt"))


def test_build_repo_writes_what_the_renderer_returns(repo):
    """The session's portable repository (conftest.py): each config.pbtxt byte for byte, the model
    list and every model.py's source, with the export's sha256 from the manifest."""
    manifest = json.loads((repo / ModelNames(ENCODER).onnx / MANIFEST).read_text())
    families = plan_repository(ENCODER, manifest["flavour"], ServingSpec(**{**manifest["serving"], "preferred_batch_sizes":
                                                                           tuple(manifest["serving"]["preferred_batch_sizes"])}),
                               tuple(manifest["catalogs"]), manifest["onnx_sha256"], precision=manifest["precision"])
    assert manifest["flavour"] == "portable"
    assert [name for family in families for name in family] == manifest["models"]
    planned = {name: model for family in families for name, model in family.items()}
    assert sorted(planned) == sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    for name, model in planned.items():
        assert (repo / name / "config.pbtxt").read_text() == model.text, name
        served = repo / name / "1" / "model.py"
        if model.python_source is None:
            assert not served.exists(), name
        else:
            assert served.read_bytes() == (PYTHON_MODELS / model.python_source).read_bytes(), name
