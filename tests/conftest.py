"""Shared fixtures: real photos, a built portable repository, and one real Triton server."""

from __future__ import annotations

import inspect
from contextlib import contextmanager
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from equiprobe.clients.photos import encode, package_photos
from equiprobe.services.model_config import read_config
from equiprobe.services.repository import build_repo
from equiprobe.services.server import TritonServer, loopback_config

ENCODER = "squeezenet1_1"


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    return package_photos()


@pytest.fixture(scope="session")
def jpegs(photos) -> dict[str, bytes]:
    return {name: encode(image) for name, image in photos.items()}


@pytest.fixture(scope="session")
def repo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model_repository")
    build_repo(ENCODER, path, "portable")
    return path


def copy_models(repo: Path, out: Path, *ensembles: str) -> Path:
    """The ensembles and every model their steps use (recursively), copied from `repo`: a server
    that starts quickly, whatever steps the ensembles have."""
    todo, seen = list(ensembles), set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        config = read_config(repo / model / "config.pbtxt")
        todo += [step.model_name for step in config.ensemble_scheduling.step]
        if "encoder_model" in config.parameters:  # NAME_versions calls NAME_encoder (BLS), not as a step
            todo.append(config.parameters["encoder_model"].string_value)
        shutil.copytree(repo / model, out / model)
    return out


@pytest.fixture(scope="session")
def server(repo):
    """The real tritonserver binary on loopback ports, started once per test session."""
    with TritonServer(loopback_config(repo)) as running:
        yield running


LIMIT, CHUNK = 16, 2


def embed_bin() -> str:
    return str(Path(sys.executable).parent / "equiprobe")


def embed_cli(server, out: Path, *extra: str) -> list[str]:
    return [embed_bin(), "embed", "--dataset", "corpus", "--encoder", ENCODER,
            "--out", str(out), "--url", server.config.grpc_url, "--limit", str(LIMIT), "--chunk-size", str(CHUNK),
            "--quiet", *extra]


@pytest.fixture(scope="session")
def photo_store(server, tmp_path_factory) -> Path:
    """16 built-in photos embedded 31x by the real server, in one uninterrupted run."""
    out = tmp_path_factory.mktemp("stores") / "reference"
    proc = subprocess.run(embed_cli(server, out), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


SERVER_FIXTURES = {"server", "detector_server", "secure"}  # every fixture that starts a tritonserver
STARTS_SERVER = re.compile(r"with (TritonServer|DeploymentCommand)\(|\.start\b|\[EQUIPROBE, \"serve\"")


def pytest_collection_modifyitems(config, items):
    """Mark `server` every test that starts a Triton server, itself or through a fixture (make test-fast)."""
    for item in items:
        source = inspect.getsource(item.function) if hasattr(item, "function") else ""
        if SERVER_FIXTURES & set(item.fixturenames) or STARTS_SERVER.search(source):
            item.add_marker(pytest.mark.server)


def explicit_server_fixture(repo_fixture: str, *startup_models: str):
    """A module-scoped fixture: tritonserver in explicit model control on the repository that the
    fixture `repo_fixture` gives, `startup_models` loaded (tests then load and switch the rest)."""
    @pytest.fixture(scope="module")
    def running_server(request):
        config = loopback_config(request.getfixturevalue(repo_fixture), model_control_mode="explicit",
                                 startup_models=tuple(startup_models))
        with TritonServer(config) as running:
            yield running
    return running_server


def grpc_client_fixture(server_fixture: str):
    """A module-scoped fixture: a tritonclient gRPC client of the server fixture `server_fixture`."""
    @pytest.fixture(scope="module")
    def client(request):
        import tritonclient.grpc as grpcclient

        c = grpcclient.InferenceServerClient(request.getfixturevalue(server_fixture).config.grpc_url)
        yield c
        c.close()
    return client


@contextmanager
def requests_flowing(url: str, ask):
    """A thread that keeps sending `ask(client)` (its own gRPC client of the server at `url`) until
    the block ends: yields (answers, failures), the failures' messages (a deploy under load wants none)."""
    import threading

    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    stop, answers, failures = threading.Event(), [], []

    def keep_asking():
        own = grpcclient.InferenceServerClient(url)
        while not stop.is_set():
            try:
                answers.append(ask(own))
            except InferenceServerException as exc:
                failures.append(exc.message())
        own.close()

    worker = threading.Thread(target=keep_asking)
    worker.start()
    try:
        yield answers, failures
    finally:
        stop.set()
        worker.join()
