"""A client-only install (`pip install 'equiprobe[client]'`, what deploy/Dockerfile.client runs)
has neither torch nor DALI nor ONNX, and its `equiprobe embed`, `score` and `store` work against
the real server: what they write and print is what the full install's commands write and print.

The image's install step is replayed in a clean virtualenv (no system site packages, the
variables test_server_image.py strips, what the Dockerfile COPYs as its sources), once per module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from equiprobe.clients.connection import Connection
from equiprobe.clients.embedding import as_image_input
from equiprobe.clients.scoring import Scorer
from equiprobe.clients.store import Store
from equiprobe.services.contract import EMBEDDINGS, SEED, UPLOADS, DetectorNames, ExpansionNames, ModelNames
from equiprobe.services.server import TritonServer, loopback_config
from equiprobe.services.contract import MANIPULATION_SCORE

from .conftest import ENCODER, copy_models, embed_bin
from .test_server_image import clean_env, copy_sources

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile.client"
INSTALL_LIMIT_S = 180
# What the client extra must not pull in: the modules, and the distributions that hold them.
ABSENT_MODULES = ("torch", "nvidia.dali", "onnx", "onnxruntime", "torchvision", "onnxscript", "timm", "open_clip",
                  "sklearn", "skimage", "faiss", "ray", "matplotlib", "pandas", "pyarrow")
ABSENT_DISTRIBUTIONS = {"torch", "torchvision", "nvidia-dali-cuda130", "onnx", "onnxruntime", "onnxruntime-gpu",
                        "onnxscript", "timm", "open-clip-torch", "scikit-learn", "scikit-image", "faiss-cpu",
                        "faiss-gpu-cu12", "ray", "matplotlib", "pandas", "pyarrow"}
IMAGES = ("astronaut", "chelsea")


class ClientVenv:
    def __init__(self, root: Path, seconds: float):
        self.root, self.seconds = root, seconds
        self.python, self.equiprobe = root / "venv" / "bin" / "python", root / "venv" / "bin" / "equiprobe"
        self.env, self.cwd = clean_env(root / "venv"), root / "cwd"

    def run(self, *args, timeout: float = 300) -> subprocess.CompletedProcess:
        """The client install's console script, in a directory with nothing importable in it."""
        return subprocess.run([str(self.equiprobe), *map(str, args)], env=self.env, cwd=self.cwd,
                              capture_output=True, text=True, timeout=timeout)


def dockerfile_sources() -> list[str]:
    return [source for line in DOCKERFILE.read_text().splitlines() if line.startswith("COPY ")
            for source in line.split()[1:-1]]


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> ClientVenv:
    """The Dockerfile's sources copied, and `pip install '.[client]'` of them in a fresh virtualenv."""
    root = tmp_path_factory.mktemp("client_install")
    src = root / "src"
    copy_sources(dockerfile_sources(), src)
    install = DOCKERFILE.read_text().split("RUN pip install", 1)[1].split("\n", 1)[0]
    assert "'.[client]'" in install, f"Dockerfile.client installs {install.strip()!r}, not the client extra"
    (root / "cwd").mkdir()
    env = clean_env(root / "venv")
    started = time.monotonic()
    for command in ([sys.executable, "-m", "venv", root / "venv"],
                    [root / "venv" / "bin" / "python", "-m", "pip", "install", "--quiet", f"{src}[client]"]):
        proc = subprocess.run([str(c) for c in command], env=env, cwd=root / "cwd", capture_output=True, text=True,
                              timeout=INSTALL_LIMIT_S + 120)
        assert proc.returncode == 0, f"{command} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    venv = ClientVenv(root, time.monotonic() - started)
    print(f"client install: {venv.seconds:.1f} s")
    return venv


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, jpegs) -> Path:
    path = tmp_path_factory.mktemp("client_images")
    for name in IMAGES:
        (path / f"{name}.jpg").write_bytes(jpegs[name])
    return path


# -- what the client install has, and has not -------------------------------------------------

def test_the_client_install_is_quick_and_has_neither_torch_nor_dali_nor_onnx(client_venv):
    assert client_venv.seconds < INSTALL_LIMIT_S
    probe = ("import importlib, json, sys\nout = {}\nfor m in sys.argv[1:]:\n    try:\n"
             "        importlib.import_module(m)\n        out[m] = 'imported'\n"
             "    except ImportError as exc:\n        out[m] = type(exc).__name__\nprint(json.dumps(out))")
    modules = [*ABSENT_MODULES, "equiprobe.trainer.cli", "tritonclient.grpc", "PIL"]
    proc = subprocess.run([str(client_venv.python), "-I", "-c", probe, *modules], env=client_venv.env,
                          cwd=client_venv.cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    assert {m: found[m] for m in ABSENT_MODULES} == {m: "ModuleNotFoundError" for m in ABSENT_MODULES}
    assert found["equiprobe.trainer.cli"] == found["tritonclient.grpc"] == found["PIL"] == "imported"
    frozen = subprocess.run([str(client_venv.python), "-m", "pip", "list", "--format=freeze"], env=client_venv.env,
                            cwd=client_venv.cwd, capture_output=True, text=True, timeout=120).stdout
    installed = {line.split("==")[0].lower().replace("_", "-") for line in frozen.split()}
    assert {"equiprobe", "tritonclient", "numpy", "typer", "rich", "pillow"} <= installed
    assert not installed & ABSENT_DISTRIBUTIONS
    assert "numpy==1.26.4" in frozen.split()


@pytest.mark.parametrize("args", [["--help"], ["embed", "--help"], ["score", "--help"], ["store", "info", "--help"],
                                  ["store", "merge", "--help"]])
def test_the_client_commands_load(client_venv, args):
    proc = client_venv.run(*args)
    assert proc.returncode == 0 and "Usage: equiprobe" in proc.stdout, proc.stderr[-3000:]


# -- embed and store against the real server ----------------------------------------------------

def full_embed(server, dataset: str, out: Path) -> None:
    """The same job run by this (the full) install's console script."""
    proc = subprocess.run([embed_bin(), "embed", "--dataset", dataset, "--encoder", ENCODER, "--out", str(out),
                           "--url", server.config.grpc_url, "--quiet"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def assert_same_store(a: Path, b: Path) -> None:
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) and "embeddings.npy" in files
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs between {a} and {b}"


def test_client_embed_writes_the_store_the_full_install_writes(client_venv, server, image_dir, tmp_path):
    """`embed --dataset tar:GLOB` (the Kubernetes job's), 2 images x 31 versions, store by store
    byte for byte; then the embeddings themselves against the server's own NAME_embed31 answers."""
    shard = tmp_path / "shard-0000.tar"
    with tarfile.open(shard, "w") as tar:
        for name in IMAGES:
            tar.add(image_dir / f"{name}.jpg", arcname=f"{name}.jpg")
    dataset = f"tar:{tmp_path}/shard-*.tar"
    out = tmp_path / "client_store"
    proc = client_venv.run("embed", "--dataset", dataset, "--encoder", ENCODER, "--out", out,
                           "--url", server.config.grpc_url, "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["done"] == len(IMAGES) and summary["failed"] == summary["pending"] == 0
    full_embed(server, dataset, tmp_path / "full_store")
    assert_same_store(out, tmp_path / "full_store")

    store = Store.open(out)
    embeddings = store.array("embeddings")
    assert embeddings.shape == (len(IMAGES), summary["rows_per_image"], int(store.manifest["dim"]))
    assert np.isfinite(embeddings).all() and np.abs(embeddings).max() > 0
    # Each image's rows are what the server's NAME_embed31 answers for its bytes, as the job asks
    # (seed 0, every version re-encoded as an upload: the fine catalog's default), in float16.
    assert store.manifest["uploads"] == "jpeg" and store.manifest["seed"] == 0
    keys = [str(key).rsplit("/", 1)[-1] for key in store.array("keys")]  # SHARD/STEM
    client = grpcclient.InferenceServerClient(server.config.grpc_url)
    try:
        for name in IMAGES:
            row = keys.index(name)
            inputs = [as_image_input((image_dir / f"{name}.jpg").read_bytes()),
                      grpcclient.InferInput(SEED, [1, 1], "INT64"), grpcclient.InferInput(UPLOADS, [1, 1], "BOOL")]
            inputs[1].set_data_from_numpy(np.array([[0]], np.int64))
            inputs[2].set_data_from_numpy(np.array([[True]]))
            direct = client.infer(ExpansionNames(ENCODER, "fine").embed, inputs,
                                  outputs=[grpcclient.InferRequestedOutput(EMBEDDINGS)]).as_numpy(EMBEDDINGS)[0]
            np.testing.assert_array_equal(embeddings[row], direct.astype(np.float16))
    finally:
        client.close()

    info = client_venv.run("store", "info", out)
    assert info.returncode == 0, info.stderr[-3000:]
    assert f"{len(IMAGES)} done, 0 failed, 0 pending of {len(IMAGES)} (complete)" in info.stdout
    assert ENCODER in info.stdout and store.manifest["catalog_version"] in info.stdout


def test_client_shards_merge_into_the_unsharded_store(client_venv, server, image_dir, tmp_path):
    """The Kubernetes pattern (embed-job.yaml then merge-job.yaml) entirely in the client install."""
    dataset, url = f"folder:{image_dir}", server.config.grpc_url
    shards = [tmp_path / f"shard-{i}" for i in range(2)]
    for i, shard in enumerate(shards):
        proc = client_venv.run("embed", "--dataset", dataset, "--encoder", ENCODER, "--out", shard, "--url", url,
                               "--shard", f"{i}/2", "--quiet")
        assert proc.returncode == 0, proc.stderr[-3000:]
    merged = client_venv.run("store", "merge", "--out", tmp_path / "merged", *shards)
    assert merged.returncode == 0, merged.stderr[-3000:]
    full_embed(server, dataset, tmp_path / "full")
    assert_same_store(tmp_path / "merged", tmp_path / "full")


def test_client_embed_of_the_builtin_corpus_says_what_is_missing(client_venv, server, tmp_path):
    """The built-in corpus has images that scikit-image, scikit-learn and matplotlib ship
    (clients/corpus_manifest.json 'python:' entries), which a client-only install lacks: one line
    names them and the command that installs them."""
    proc = client_venv.run("embed", "--dataset", "corpus", "--encoder", ENCODER, "--out", tmp_path / "s",
                           "--url", server.config.grpc_url, "--limit", "2", "--quiet")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert proc.stderr.startswith("error: corpus images are missing") and "pip install" in proc.stderr
    assert "matplotlib" in proc.stderr and "scikit-image" in proc.stderr


# -- score against a deployed detector ----------------------------------------------------------

@pytest.fixture(scope="module")
def detector_server(repo, tmp_path_factory):
    """A linear fine probe trained (in the full install) on a synthetic store of the served encoder's
    dim, deployed next to a copy of the session repository's NAME_embed, served in explicit mode."""
    import torch

    from equiprobe.trainer.deploy import deploy, served_encoder
    from equiprobe.trainer.probes import ProbeConfig
    from equiprobe.trainer.train import train_probes

    from .test_trainer import synthetic_store

    root = tmp_path_factory.mktemp("client_detector")
    served = served_encoder(repo, ENCODER)
    store = synthetic_store(root / "store", "fine", images=40, dim=served.dim)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # beside a running server, see test_detector.one_torch_thread
    try:
        train_probes(store, "fine", ProbeConfig(kind="linear", batch_size=256, max_epochs=5), [0], root / "probe",
                     progress=False)
    finally:
        torch.set_num_threads(threads)
    record = root / "probe" / "probe.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "encoder": ENCODER,
                                  "encoder_onnx_sha256": served.onnx_sha256}))
    deployed = copy_models(repo, root / "repo", ModelNames(ENCODER).embed)
    assert deploy([root / "probe"], deployed).version == 1
    config = loopback_config(deployed, model_control_mode="explicit",
                             startup_models=(DetectorNames(ENCODER).detector, ModelNames(ENCODER).embed))
    with TritonServer(config) as running:
        yield running


def test_client_score_prints_what_the_full_install_scores(client_venv, detector_server, image_dir, tmp_path):
    """`score --json` of two photos and one file that is no image: one JSON line each, equal to the
    full install's Scorer in this process, and its score the detector's own MANIPULATION_SCORE."""
    url = detector_server.config.grpc_url
    bad = tmp_path / "not_an_image.jpg"
    bad.write_bytes(b"not an image at all")
    files = [image_dir / f"{name}.jpg" for name in IMAGES] + [bad]
    proc = client_venv.run("score", "--url", url, "--encoder", ENCODER, "--json", *files)
    assert proc.returncode == 1, proc.stderr[-3000:]  # one file failed, the others were scored
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(f) for f in files]
    assert "not an image file" in lines[-1]["error"]

    scorer = Scorer(Connection(url, False, None, None), ENCODER)
    client = grpcclient.InferenceServerClient(url)
    try:
        for path, line in zip(files[:-1], lines):
            expected = scorer.score(path.read_bytes()).as_dict()
            assert line == json.loads(json.dumps({"file": str(path), **expected}))
            direct = client.infer(DetectorNames(ENCODER).detector, [as_image_input(path.read_bytes())],
                                  outputs=[grpcclient.InferRequestedOutput(MANIPULATION_SCORE)])
            assert line["manipulation_score"] == pytest.approx(float(direct.as_numpy(MANIPULATION_SCORE)[0, 0]),
                                                               abs=1e-6)
            assert 0.0 <= line["manipulation_score"] <= 1.0 and len(line["transformations"]) == 3
    finally:
        scorer.close()
        client.close()


def test_client_score_without_a_detector_says_so(client_venv, server, image_dir):
    proc = client_venv.run("score", "--url", server.config.grpc_url, "--encoder", ENCODER, image_dir / "astronaut.jpg")
    assert proc.returncode == 1
    assert f"error: model '{DetectorNames(ENCODER).detector}' is not loaded" in proc.stderr
    assert "Traceback" not in proc.stderr
