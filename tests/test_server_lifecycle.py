"""Starting and stopping the real server: readiness, clean shutdown, load failures."""

import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from equiprobe.services.server import ServerError, TritonServer, free_port, loopback_config

EQUIPROBE = str(Path(sys.executable).parent / "equiprobe")


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def broken_repo(tmp_path: Path, good_repo: Path) -> Path:
    repo = tmp_path / "broken_repo"
    shutil.copytree(good_repo, repo)
    model = repo / "broken" / "1"
    model.mkdir(parents=True)
    (model / "model.py").write_text("raise ImportError('no module named magic_weights')\n")
    (repo / "broken" / "config.pbtxt").write_text(
        'backend: "python"\nmax_batch_size: 1\n'
        'input { name: "X" data_type: TYPE_FP32 dims: [1] }\n'
        'output { name: "Y" data_type: TYPE_FP32 dims: [1] }\n')
    return repo


def test_handle_stops_server_and_stubs_without_leftovers(repo):
    server = TritonServer(loopback_config(repo)).start()
    pids = server.group_pids()
    assert len(pids) >= 3  # tritonserver plus one python stub per python-backend model
    assert server.shared_memory_files()
    server.stop()
    assert server.group_pids() == [] and server.shared_memory_files() == []
    assert all(not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text() for pid in pids)


def test_handle_reports_the_failing_model_in_one_line(tmp_path, repo):
    with pytest.raises(ServerError) as info:
        TritonServer(loopback_config(broken_repo(tmp_path, repo))).start()
    message = str(info.value)
    assert "model 'broken' (version 1) failed to load" in message and "magic_weights" in message
    assert "\n" not in message


def test_serve_command_runs_until_sigterm_and_leaves_nothing(repo, tmp_path):
    grpc, http, metrics = free_port(), free_port(), free_port()
    proc = subprocess.Popen([EQUIPROBE, "serve", "--repo", str(repo), "--grpc-port", str(grpc),
                             "--http-port", str(http), "--metrics-port", str(metrics)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 90
    ready = False
    while time.monotonic() < deadline and proc.poll() is None and not ready:
        try:
            ready = urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1).status == 200
        except OSError:
            time.sleep(0.2)
    assert ready, proc.communicate(timeout=30)[0][-2000:]
    assert processes_mentioning(f"--grpc-port={grpc}")
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-2000:]
    assert "stopped" in output
    assert processes_mentioning(f"--grpc-port={grpc}") == []
    assert list(Path("/dev/shm").glob(f"equiprobe_{proc.pid}_*")) == []


def test_serve_command_exits_nonzero_naming_the_broken_model(tmp_path, repo):
    proc = subprocess.run([EQUIPROBE, "serve", "--repo", str(broken_repo(tmp_path, repo)),
                           "--grpc-port", str(free_port()), "--http-port", str(free_port()),
                           "--metrics-port", str(free_port())],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    # The server's log streams first; serve's verdict is the last line, one line, no traceback.
    verdict = proc.stderr.strip().splitlines()[-1]
    assert verdict.startswith("error: model 'broken' (version 1) failed to load")
    assert "magic_weights" in verdict and "Traceback" not in proc.stderr
