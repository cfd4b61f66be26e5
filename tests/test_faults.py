"""Faults survived, nothing lost: real servers and real processes killed, a real disk filled.

    - the server SIGKILLed in the middle of `embed`, a new one started on the same ports
    - one python-backend stub of the server SIGKILLed
    - the store's filesystem full (a small tmpfs where this test may mount one; a file size limit)
    - `deploy` SIGKILLed while it writes into a model repository
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from equiprobe.clients.aio import AsyncTritonClient, ClientOptions, RequestError
from equiprobe.clients.embedding import as_image_input
from equiprobe.clients.store import DONE, FAILED, PENDING, Store
from equiprobe.services.contract import ExpansionNames
from equiprobe.services.contract import ModelNames
from equiprobe.services.contract import DetectorNames, EMBEDDING, EMBEDDINGS, GATE, IMAGE, SEED, TRANSFORM_PROBS
from equiprobe.services.model_config import read_config
from equiprobe.services.server import TritonServer, loopback_config

from .conftest import CHUNK, ENCODER, LIMIT, copy_models, embed_bin, embed_cli
from .test_bulk_embed import same_files

EMBED31 = ExpansionNames(ENCODER, "fine").embed
BASE, DETECTOR = ModelNames(ENCODER), DetectorNames(ENCODER)


@pytest.fixture(scope="module")
def embed31_repo(repo, tmp_path_factory) -> Path:
    """NAME_embed31 and every step it uses: what `embed --catalog fine` needs, quick to start."""
    return copy_models(repo, tmp_path_factory.mktemp("embed31_repo"), EMBED31)


def committed(out: Path) -> int:
    status = out / "status.npy"
    return int((np.load(status, mmap_mode="r") != PENDING).sum()) if status.exists() else 0


def wait_for(condition, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"the process ended first: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def kill_server(server: TritonServer) -> None:
    """SIGKILL the tritonserver process (its stubs notice and exit), then reap what is left."""
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    server.stop()  # the process group's leftovers and the killed server's shared memory


# -- 1. the server killed in the middle of a job ----------------------------------------------------

def test_a_server_killed_mid_job_is_ridden_through_or_named_and_the_store_ends_byte_identical(
        embed31_repo, photo_store, tmp_path):
    config = loopback_config(embed31_repo)
    out = tmp_path / "store"
    server = TritonServer(config).start()
    try:
        # A retry limit shorter than a restart: the job stops, names the outage and how to resume.
        job = subprocess.Popen(embed_cli(server, out, "--retry-for", "2"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        wait_for(lambda: committed(out) >= CHUNK, job)
        kill_server(server)
        killed = time.monotonic()
        _, stderr = job.communicate(timeout=120)
        assert job.returncode == 1 and time.monotonic() - killed < 60
        message = stderr.strip().splitlines()[-1]
        assert "Traceback" not in stderr and "never retrieved" not in stderr, stderr[-3000:]
        assert message.startswith(f"error: {EMBED31}: UNAVAILABLE after") and "retry limit: 2 s" in message
        assert "run the same command again to resume" in message
        stopped_at = committed(out)
        assert 0 < stopped_at < LIMIT

        # The default retry limit (60 s) outlasts a restart: the job rides through it.
        server = TritonServer(config).start()
        job = subprocess.Popen(embed_cli(server, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: committed(out) >= stopped_at + CHUNK, job)
        kill_server(server)
        killed = time.monotonic()
        time.sleep(1.0)
        assert job.poll() is None, "the job gave up while the server was down"
        assert committed(out) < LIMIT
        server = TritonServer(config).start()
        outage_s = time.monotonic() - killed
        stdout, stderr = job.communicate(timeout=300)
        assert job.returncode == 0, stderr[-3000:]
        served = grpcclient.InferenceServerClient(config.grpc_url)
        after_restart = served.get_inference_statistics(EMBED31).model_stats[0].inference_count
        served.close()
    finally:
        server.stop()
    assert outage_s > 2 and after_restart > 0  # longer than the first limit; the new server did the rest
    assert json.loads(stdout)["done"] == LIMIT
    same_files(photo_store, out)


# -- 2. one python-backend stub killed --------------------------------------------------------------

def stub_of(server: TritonServer, model: str) -> int:
    """The pid of `model`'s python-backend stub (its command line names the model's model.py)."""
    for pid in server.group_pids():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0].endswith(b"triton_python_backend_stub") and f"/{model}/".encode() in argv[1]:
            return pid
    raise AssertionError(f"no stub for {model}")


def embed31_inputs(data: bytes) -> list:
    seed = grpcclient.InferInput(SEED, [1, 1], "INT64")
    seed.set_data_from_numpy(np.array([[0]], np.int64))
    return [as_image_input(data), seed]


def timed(call):
    start = time.monotonic()
    try:
        return call(), time.monotonic() - start
    except Exception as exc:  # noqa: BLE001 - the error is what is measured
        return exc, time.monotonic() - start


def test_a_killed_stub_fails_requests_fast_and_clearly_and_a_reload_recovers(embed31_repo, jpegs, tmp_path):
    """Measured on Triton 2.51: the python backend does not restart a killed stub, and the model
    stays READY (so do the server's health endpoints); every request that reaches the model fails
    in about a second with INTERNAL "Stub process '<model>_0_0' is not healthy.", never hangs.
    Unloading and loading the model (explicit model control) starts a new stub."""
    encoder = BASE.onnx  # the one encoder model, which NAME_embed31 reaches through NAME_versions
    config = loopback_config(embed31_repo, model_control_mode="explicit")
    timeout_s = 20.0
    with TritonServer(config) as server:
        client = grpcclient.InferenceServerClient(config.grpc_url)
        image = jpegs["astronaut"]
        client.infer(EMBED31, embed31_inputs(image), client_timeout=timeout_s)
        victim = stub_of(server, encoder)
        os.kill(victim, signal.SIGKILL)

        failed, took = timed(lambda: client.infer(EMBED31, embed31_inputs(image), client_timeout=timeout_s))
        assert isinstance(failed, InferenceServerException) and took < 5, (failed, took)
        assert str(failed.status()) == "StatusCode.INTERNAL"
        assert f"Stub process '{encoder}_0_0' is not healthy" in failed.message()
        assert server.is_ready() and client.is_model_ready(encoder) and client.is_model_ready(EMBED31)

        async def through_the_job_client():
            options = ClientOptions(config.grpc_url, timeout_s=timeout_s)
            async with AsyncTritonClient(options) as aio:
                try:
                    await aio.infer(EMBED31, {IMAGE: np.frombuffer(image, np.uint8).reshape(1, -1),
                                              SEED: np.array([[0]], np.int64)}, [EMBEDDINGS])
                except RequestError as exc:
                    return exc, aio.attempts
            return None, aio.attempts
        (error, attempts), took = timed(lambda: asyncio.run(through_the_job_client()))
        assert isinstance(error, RequestError) and error.status == "StatusCode.INTERNAL" and attempts == 1
        assert "is not healthy" in str(error) and took < 5

        # `embed` against it stops at once with that error and how to resume, not after its retries.
        job, took = timed(lambda: subprocess.run(
            [embed_bin(), "embed", "--dataset", "corpus", "--encoder", ENCODER, "--out", str(tmp_path / "store"),
             "--url", config.grpc_url, "--limit", "2", "--quiet", "--timeout", str(timeout_s)],
            capture_output=True, text=True, timeout=120))
        assert job.returncode == 1 and "is not healthy" in job.stderr and "resume" in job.stderr, job.stderr[-2000:]
        assert took < 60

        client.unload_model(encoder)  # unloads the ensemble that uses it too
        deadline = time.monotonic() + 60
        while client.is_model_ready(encoder) and time.monotonic() < deadline:
            time.sleep(0.1)
        client.load_model(encoder)  # and loads it back
        deadline = time.monotonic() + 60
        while not client.is_model_ready(EMBED31) and time.monotonic() < deadline:
            time.sleep(0.1)
        out = client.infer(EMBED31, embed31_inputs(image), client_timeout=timeout_s)
        assert out.as_numpy(EMBEDDINGS).shape[1] == 31
        assert stub_of(server, encoder) != victim
        client.close()


# -- 3. the store's disk full --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(jpegs, tmp_path_factory) -> Path:
    """Six images, the fifth not a picture (its row fails, so the error log has something to write)."""
    root = tmp_path_factory.mktemp("folder")
    names = ["astronaut", "chelsea", "coffee", "rocket", None, "retina"]
    for i, name in enumerate(names):
        path = root / f"{i}_{name or 'broken'}.jpg"
        path.write_bytes(jpegs[name] if name else b"this is not a picture, whatever its name says")
    return root


def folder_cli(server, folder: Path, out: Path) -> list[str]:
    return [embed_bin(), "embed", "--dataset", f"folder:{folder}", "--encoder", ENCODER, "--out", str(out),
            "--url", server.config.grpc_url, "--chunk-size", str(CHUNK), "--quiet"]


@pytest.fixture(scope="module")
def folder_store(server, folder, tmp_path_factory) -> Path:
    """The uninterrupted run the interrupted ones must equal."""
    out = tmp_path_factory.mktemp("folder_store") / "reference"
    proc = subprocess.run(folder_cli(server, folder, out), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(Store.open(out).status()) == [DONE] * 4 + [FAILED, DONE]
    return out


def can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True)
    if probe.returncode != 0:
        return False
    subprocess.run(["umount", str(where)], check=True)
    return True


@contextlib.contextmanager
def tmpfs(where: Path, size: int):
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(disk: Path) -> Path:
    """Write a file until the filesystem is full."""
    filler = disk / "filler"
    block = b"\0" * 4096
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return filler


def test_a_full_disk_stops_the_job_with_a_clear_error_and_a_rerun_resumes_byte_identical(
        server, folder, folder_store, tmp_path):
    disk = tmp_path / "disk"
    if not can_mount_tmpfs(disk):
        pytest.skip("mounting a small tmpfs needs root (the file size limit test runs anyway)")
    size = Store.size_of(Store.open(folder_store).manifest)
    out = disk / "store"
    with tmpfs(disk, 64 * 1024):
        # Too small for the store: refused at creation, and nothing half-made stays.
        proc = subprocess.run(folder_cli(server, folder, out), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert f"error: no disk space to create the store ({size / 1e6:.1f} MB) in {out}" in proc.stderr
        assert "No space left on device" in proc.stderr
        assert list(out.iterdir()) == []

        # Room for the store, then the disk fills while the job runs: its blocks were reserved when
        # it was created, so rows keep landing (no SIGBUS); the failed row's error log cannot be written.
        subprocess.run(["mount", "-o", f"remount,size={size + 256 * 1024}", str(disk)], check=True)
        job = subprocess.Popen(folder_cli(server, folder, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        wait_for(lambda: (out / "manifest.json").exists(), job)
        filler = fill(disk)
        _, stderr = job.communicate(timeout=300)
        assert job.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
        assert f"error: no disk space to commit {CHUNK} rows in {out}: No space left on device" in stderr
        assert "run the same command again" in stderr
        # How many chunks landed before the disk filled depends on timing; never a half chunk,
        # a failure recorded without its log, or a row after a pending one.
        status = list(Store.open(out).status())
        done = status.count(DONE)
        assert status == [DONE] * done + [PENDING] * (len(status) - done) and done < len(status), status
        assert done % CHUNK == 0, status
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in folder_store.iterdir())

        # Space again: the same command resumes and ends where an uninterrupted run ends.
        filler.unlink()
        proc = subprocess.run(folder_cli(server, folder, out), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        same_files(folder_store, out)


LIMITED = """
import os, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes raise EFBIG
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_a_file_size_limit_refuses_the_store_at_creation_and_a_rerun_resumes_byte_identical(
        server, folder, folder_store, tmp_path):
    out = tmp_path / "store"
    limit = 64 * 1024  # below embeddings.npy
    proc = subprocess.run([sys.executable, "-c", LIMITED, str(limit), *folder_cli(server, folder, out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "error: no disk space to create the store" in proc.stderr and "File too large" in proc.stderr
    assert list(out.iterdir()) == []
    proc = subprocess.run(folder_cli(server, folder, out), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    same_files(folder_store, out)


# -- 4. deploy killed --------------------------------------------------------------------------------

DEPLOY_WORKER = """
import sys
from pathlib import Path
from equiprobe.trainer.deploy import deploy
deploy([Path(sys.argv[2])], Path(sys.argv[1]))  # a first deploy elsewhere: every import, a first export
print("ready", flush=True)
for line in sys.stdin:
    repo, probe = line.split()
    deploy([Path(probe)], Path(repo))
    print("done", flush=True)
"""


class DeployWorker:
    """`deploy` in its own process, warmed up (a deploy costs ~10 s cold, ~1 s warm), waiting
    for the repository to deploy into: killed while it writes there."""

    def __init__(self, base: Path, probe: Path, scratch: Path):
        shutil.copytree(base, scratch)
        self.process = subprocess.Popen([sys.executable, "-c", DEPLOY_WORKER, str(scratch), str(probe)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.ready = False
        self.window_s = 0.0  # from its first change in the repository to the end, when not killed

    def deploy(self, repo: Path, probe: Path, kill_after_s: float | None) -> bool:
        """Deploy; SIGKILL the process `kill_after_s` after its first change in the repository
        (None: let it finish). True if it was killed before it finished."""
        if not self.ready:
            assert self.process.stdout.readline() == "ready\n", self.process.stderr.read()[-2000:]
            self.ready = True
        before = snapshot(repo)
        self.process.stdin.write(f"{repo} {probe}\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + 120
        while snapshot(repo) == before:
            assert self.process.poll() is None, self.process.stderr.read()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.0005)
        changed = time.monotonic()
        if kill_after_s is None:
            assert self.process.stdout.readline() == "done\n", self.process.stderr.read()[-2000:]
            self.window_s = time.monotonic() - changed
            return False
        time.sleep(kill_after_s)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        return self.process.stdout.read() != "done\n"

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


def snapshot(repo: Path) -> set:
    """Every entry of the repository and of its model directories, with its change time."""
    entries = set()
    try:
        for top in os.scandir(repo):
            entries.add((top.name, top.stat(follow_symlinks=False).st_mtime_ns))
            if top.is_dir(follow_symlinks=False):
                entries |= {(f"{top.name}/{e.name}", e.stat(follow_symlinks=False).st_mtime_ns)
                            for e in os.scandir(top)}
    except FileNotFoundError:  # renamed or removed while it was read: changing
        return {("changing", time.monotonic_ns())}
    return entries


def state_of(repo: Path) -> tuple:
    """(selected probe version, deploy events) of a repository, after checking it is whole: every
    model loads as Triton would read it, every version complete, probe and detector agree."""
    import onnxruntime as ort

    from equiprobe.services.contract import DetectorNames

    names = DetectorNames(ENCODER)
    for model_dir in repo.iterdir():
        assert not model_dir.name.startswith("."), f"{model_dir} would be taken for a model"
        # Triton stats every entry of a model directory: one link that leads nowhere fails the model.
        dangling = [e.name for e in model_dir.iterdir() if not e.exists()]
        assert not dangling, f"{model_dir.name}: {dangling} lead nowhere"
        config = read_config(model_dir / "config.pbtxt")  # follows the selection's links
        assert config.name == model_dir.name
        for step in config.ensemble_scheduling.step:
            assert (repo / step.model_name / "config.pbtxt").is_file(), f"{model_dir.name} needs {step.model_name}"
        for output in config.output:
            if output.label_filename:
                assert (model_dir / output.label_filename).read_text().strip()
    probe_dir, detector_dir = repo / names.probe, repo / names.detector
    if not probe_dir.exists():
        assert not detector_dir.exists()
        return None, 0
    for version in (p for p in probe_dir.iterdir() if p.name.isdigit()):
        assert sorted(f.name for f in version.iterdir()) == ["deployed.json", "model.onnx", "model.py"], version
        assert json.loads((version / "deployed.json").read_text())["version"] == int(version.name)
        ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    selected = list(read_config(probe_dir / "config.pbtxt").version_policy.specific.versions)
    events = json.loads((probe_dir / "deploy_history.json").read_text())["events"]
    assert len(selected) == 1 and events[-1]["version"] == selected[0]
    if detector_dir.exists():  # absent only after a first deploy killed between its two renames
        parameters = read_config(detector_dir / "config.pbtxt").parameters
        assert parameters["probe_version"].string_value == str(selected[0])
    return selected[0], len(events)


@pytest.fixture(scope="module")
def deploy_probes(repo, tmp_path_factory) -> list[Path]:
    """Two small fine probes (a synthetic store's), recorded as made for the repository's encoder."""
    import torch

    from equiprobe.services.repository import read_manifest
    from equiprobe.trainer.probes import ProbeConfig
    from equiprobe.trainer.train import train_probes

    from .test_trainer import synthetic_store

    root = tmp_path_factory.mktemp("deploy_probes")
    store = synthetic_store(root / "store", "fine", images=40, dim=512,
                            split=lambda r: ("test", "validation", "train", "train")[r % 4])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        probes = []
        for seed in (0, 1):
            train_probes(store, "fine", ProbeConfig(kind="linear", batch_size=256, max_epochs=3), [seed],
                         root / f"probe{seed}", progress=False)
            record = root / f"probe{seed}" / "probe.json"
            record.write_text(json.dumps({**json.loads(record.read_text()), "encoder": ENCODER,
                                          "encoder_onnx_sha256": read_manifest(repo, ENCODER)["onnx_sha256"]}))
            probes.append(root / f"probe{seed}")
    finally:
        torch.set_num_threads(threads)
    return probes


def test_deploy_killed_at_any_moment_leaves_the_old_or_the_new_version(repo, deploy_probes, jpegs, tmp_path):
    base = copy_models(repo, tmp_path / "base", BASE.embed)
    target = tmp_path / "repo"
    shutil.copytree(base, target)
    rng = random.Random(11)
    # When to SIGKILL, after the deploy's first write in the repository: a first deploy at once;
    # later ones at fractions of the time a deploy spends writing (measured on the one before:
    # a few ms); None: no kill (one warm worker does all of those).
    plan = [0.0, None, None, 0.2, 0.5, 0.8, None]
    finisher = DeployWorker(base, deploy_probes[0], tmp_path / "scratch")
    spawned = iter(range(len(plan)))
    killers = [DeployWorker(base, deploy_probes[0], tmp_path / f"scratch{next(spawned)}")]
    outcomes = []
    try:
        for i, step in enumerate(plan):
            before = state_of(target)
            versions = [int(p.name) for p in target.glob(f"{DETECTOR.probe}/[0-9]*")]
            new = (max(versions, default=0) + 1, before[1] + 1)
            if step is None:
                killed = finisher.deploy(target, deploy_probes[i % 2], None)
            else:
                worker = killers.pop(0)
                if any(d is not None for d in plan[i + 1:]):  # the next one warms up meanwhile
                    killers.append(DeployWorker(base, deploy_probes[0], tmp_path / f"scratch{next(spawned)}"))
                delay = step * finisher.window_s * rng.uniform(0.8, 1.2)
                killed = worker.deploy(target, deploy_probes[i % 2], delay)
            after = state_of(target)
            assert after in (before, new), (i, before, after)
            assert killed or after == new
            outcomes.append((step, killed, "old" if after == before else "new"))
    finally:
        for worker in (finisher, *killers):
            worker.close()
    assert outcomes[0][1] and outcomes[-1] == (None, False, "new"), outcomes
    print("outcomes:", outcomes, f"writes took {finisher.window_s * 1000:.1f} ms")
    # The repository as the kills left it (their leftovers included) loads in a real server,
    # which serves the selected version.
    selected, _ = state_of(target)
    with TritonServer(loopback_config(target)) as served:
        client = grpcclient.InferenceServerClient(served.config.grpc_url)
        embedding = grpcclient.InferInput(EMBEDDING, [1, 512], "FP32")
        embedding.set_data_from_numpy(np.zeros((1, 512), np.float32))
        assert client.infer(DETECTOR.probe, [embedding]).get_response().model_version == str(selected)
        result = client.infer(DETECTOR.detector, [as_image_input(jpegs["astronaut"])])
        assert result.as_numpy(TRANSFORM_PROBS).shape == (1, 31)
        client.close()


def test_a_repository_deployed_before_selections_is_taken_over_whole(repo, deploy_probes, tmp_path):
    """An older deploy wrote its configs, labels and history as plain files: the next deploy
    moves them into a selection as they are, then switches, and a rollback still finds version 1."""
    from equiprobe.trainer.deploy import deploy, rollback

    target = copy_models(repo, tmp_path / "repo", BASE.embed)
    deploy([deploy_probes[0]], target)
    model_dirs = (target / DETECTOR.probe, target / DETECTOR.detector)
    for entry in [e for d in model_dirs for e in d.iterdir() if e.is_symlink() and e.is_file()]:
        text = entry.read_text()  # as an older deploy left it: plain files
        entry.unlink()
        entry.write_text(text)
    (model_dirs[0] / ".selected").unlink()
    for selection in model_dirs[0].glob(".selection-*"):
        shutil.rmtree(selection)
    assert state_of(target) == (1, 1)
    assert deploy([deploy_probes[1]], target).replaced == 1
    assert state_of(target) == (2, 2) and (target / DETECTOR.detector / "config.pbtxt").is_symlink()
    assert rollback(target).version == 1 and state_of(target) == (1, 3)


def test_with_restart_dead_stubs_a_killed_stub_restarts_the_server_and_requests_succeed_again(repo, jpegs, tmp_path):
    """`equiprobe serve` (restart_dead_stubs): the watchdog sees the unreaped stub and restarts the
    server on the same ports; requests meanwhile fail fast (the stub's INTERNAL, then UNAVAILABLE)."""
    small = copy_models(repo, tmp_path / "repo", BASE.embed)
    config = loopback_config(small, restart_dead_stubs=True)
    image = jpegs["astronaut"]
    with TritonServer(config) as server:
        client = grpcclient.InferenceServerClient(config.grpc_url)
        before = client.infer(BASE.embed, [as_image_input(image)], client_timeout=20).as_numpy(EMBEDDING)
        victim = stub_of(server, GATE)
        os.kill(victim, signal.SIGKILL)
        statuses, deadline = [], time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                after = client.infer(BASE.embed, [as_image_input(image)], client_timeout=10)
                if server.restarts:
                    break
            except InferenceServerException as exc:
                statuses.append((str(exc.status()), exc.message()))
            time.sleep(0.2)
        assert server.restarts == 1 and server.is_ready()
        np.testing.assert_array_equal(after.as_numpy(EMBEDDING), before)
        for status, message in statuses:  # fast, named failures only: never a hang
            assert status == "StatusCode.UNAVAILABLE" or "is not healthy" in message, (status, message)
        assert victim not in server.group_pids() and stub_of(server, GATE) != victim
        assert any('"event": "stub_died"' in line for line in server.log)
        client.close()
