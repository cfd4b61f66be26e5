"""Start and stop the real `tritonserver` binary that ships inside the nvidia-pytriton wheel.

Only the binary and its python backend are used; pytriton's Python API is not. The start-up
recipe (stub copy, PATH, LD_LIBRARY_PATH, backend directory, loopback binding) is the one
measured in ENVIRONMENT.md. `TritonServer` is a context manager for tests, benchmarks and the
demo; `equiprobe serve` runs it in the foreground.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional


class ServerError(RuntimeError):
    """The server could not be started, or a model in the repository failed to load."""


def _pytriton_root() -> Path:
    # find_spec, not import: pytriton's own package imports need dependencies we do not install.
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "nvidia-pytriton is not installed; run `make setup` "
            "(it installs the wheel with --no-deps for its tritonserver binary)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "tritonserver"


def _python_backend_ready(root: Path) -> Path:
    """Copy the python-backend stub built for this interpreter next to the backend, once."""
    backend_dir = root / "backends" / "python"
    stub = backend_dir / "triton_python_backend_stub"
    if not stub.exists():
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        source = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not source.exists():
            raise ServerError(f"pytriton ships no python-backend stub for Python {version}")
        shutil.copy2(source, stub)
    return root / "backends"


def server_environment() -> dict[str, str]:
    """Environment for tritonserver and the python-backend stubs it spawns."""
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    # The stub runs `python3` from PATH to find packages: it must be this environment's.
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    libdirs = [sysconfig.get_config_var("LIBDIR") or ""]
    libs = _pytriton_root().parent.parent / "nvidia_pytriton.libs"
    if libs.exists():
        libdirs.append(str(libs))
    # Without the interpreter's own libdir the stub loads the system libpython and misbehaves.
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [d for d in libdirs if d] + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    )
    return env


MODEL_CONTROL_MODES = ("none", "explicit", "poll")


@dataclass
class ServerConfig:
    repo: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    # "none" loads everything at start and never changes; "explicit" loads `startup_models` at
    # start (every model by default) and then what clients ask for with load_model (how
    # `equiprobe deploy --url` switches versions); "poll" rescans the repository every
    # `repository_poll_secs` and loads what changed.
    model_control_mode: str = "none"
    startup_models: tuple[str, ...] = ("*",)
    repository_poll_secs: int = 5
    log_verbose: int = 0
    startup_timeout_s: float = 120.0
    # Exposure (services/security.py): gRPC TLS, keys on Triton's restricted protocols. A host
    # that is not loopback refuses to start without TLS (or insecure), and with model control
    # explicit/poll without an admin key.
    tls_cert: Optional[Path] = None
    tls_key: Optional[Path] = None
    insecure: bool = False
    admin_key: Optional[str] = field(default=None, repr=False)
    api_key: Optional[str] = field(default=None, repr=False)
    metrics_host: Optional[str] = None  # default: host
    # Triton 2.51 never restarts a python-backend stub that died (killed, out of memory): the model
    # stays READY and fails every request. With this on, a dead stub restarts the whole server
    # (clients see UNAVAILABLE for the few seconds it takes, which they retry).
    restart_dead_stubs: bool = False
    # More tritonserver flags.
    extra_args: tuple[str, ...] = ()

    def check(self) -> None:
        """Raise a ServerError if this configuration must not start (one line saying why)."""
        from .security import ExposureError, check_exposure

        try:
            check_exposure(self.host, self.model_control_mode, self.tls_cert, self.tls_key, self.insecure,
                           self.admin_key, self.api_key)
        except ExposureError as exc:
            raise ServerError(str(exc)) from None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"


# Triton logs one line per model that fails, e.g.
#   E1123 ... model_lifecycle.cc:654] "failed to load 'bad' version 1: Invalid argument: ..."
_LOAD_FAILURE = re.compile(r"failed to load '([^']+)' version (\d+): (.*?)\"?$")


def load_failures(log_lines: list[str]) -> list[str]:
    """One readable line per model that failed to load, taken from the server log."""
    failures = []
    for line in log_lines:
        match = _LOAD_FAILURE.search(line)
        if match:
            name, version, reason = match.groups()
            # Python tracebacks arrive escaped ("\\n\\nAt:\\n ..."): keep the message, drop the frames.
            reason = reason.split("\\n")[0].strip()
            failures.append(f"model '{name}' (version {version}) failed to load: {reason}")
    return failures


class TritonServer:
    """The real Triton server on loopback, as a context manager.

    It is started in its own process group so that stop() can reach every python-backend stub
    it spawned, and it is given a shared-memory prefix of its own so that leftovers can be
    found and removed even after a hard kill.
    """

    def __init__(self, config: ServerConfig, echo: Optional[Callable[[str], None]] = None):
        self.config = config
        self.echo = echo
        self.process: Optional[subprocess.Popen] = None
        self.log: collections.deque[str] = collections.deque(maxlen=5000)
        self.shm_prefix = f"equiprobe_{os.getpid()}_{id(self) & 0xFFFF:x}_"
        self._reader: Optional[threading.Thread] = None
        self._watchdog: Optional[threading.Thread] = None
        self._closing = threading.Event()
        self.restarting = False  # true while the watchdog replaces a server whose stub died
        self.restarts = 0

    # -- lifecycle -------------------------------------------------------------------------
    def command(self) -> list[str]:
        from .security import exposure_args

        root = _pytriton_root()
        c = self.config
        return [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={Path(c.repo).resolve()}",
            f"--backend-directory={_python_backend_ready(root)}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--grpc-address={c.host}", f"--grpc-port={c.grpc_port}",
            f"--http-address={c.host}", f"--http-port={c.http_port}",
            f"--metrics-address={c.metrics_host or c.host}", f"--metrics-port={c.metrics_port}",
            f"--model-control-mode={c.model_control_mode}",
            *([f"--load-model={m}" for m in c.startup_models] if c.model_control_mode == "explicit" else []),
            *([f"--repository-poll-secs={c.repository_poll_secs}"] if c.model_control_mode == "poll" else []),
            f"--log-verbose={c.log_verbose}",
            "--exit-on-error=true",
            *exposure_args(c.host, c.tls_cert, c.tls_key, c.admin_key, c.api_key),
            *c.extra_args,
        ]

    def start(self) -> "TritonServer":
        if not Path(self.config.repo).is_dir():
            raise ServerError(f"model repository {self.config.repo} does not exist")
        if self.config.model_control_mode not in MODEL_CONTROL_MODES:
            raise ServerError(f"unknown model control mode {self.config.model_control_mode!r}; "
                              f"use {', '.join(MODEL_CONTROL_MODES)}")
        self.config.check()
        self._closing.clear()
        self._launch()
        if self.config.restart_dead_stubs and self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch_stubs, daemon=True)
            self._watchdog.start()
        return self

    def _launch(self) -> None:
        self.process = subprocess.Popen(
            self.command(), env=server_environment(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        try:
            self.wait_ready(self.config.startup_timeout_s)
        except BaseException:
            self._terminate()
            raise

    def dead_stubs(self) -> list[int]:
        """Children of the server that died and were not reaped: python-backend stubs killed under
        it (Triton reaps the stubs it stops itself, on unload or shutdown)."""
        if self.process is None:
            return []
        return [pid for pid, state, parent, _ in _processes() if state == "Z" and parent == self.process.pid]

    def _watch_stubs(self, every_s: float = 0.5) -> None:
        seen: set[int] = set()
        while not self._closing.wait(every_s):
            if self.process is None or self.process.poll() is not None:
                continue  # the server itself died: whoever runs it reports that
            dead = set(self.dead_stubs())
            if not dead & seen:  # dead on two looks in a row: not a stub Triton is about to reap
                seen = dead
                continue
            message = (f'{{"event": "stub_died", "pids": {sorted(dead & seen)}, "action": "restarting '
                       f'tritonserver", "restarts": {self.restarts + 1}}}')
            self.log.append(message)
            if self.echo:
                self.echo(message)
            self.restarting = True
            try:
                # No graceful shutdown: it unloads models while the endpoints still answer
                # (NOT_FOUND to clients); killed, the ports refuse and clients see UNAVAILABLE.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self._terminate()
                if not self._closing.is_set():
                    self._launch()
                    self.restarts += 1
            except ServerError as exc:
                if self.echo:
                    self.echo(f"restart failed: {exc}")
            finally:
                self.restarting = False
                seen = set()

    def _read_log(self) -> None:
        assert self.process and self.process.stdout
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.log.append(line)
            if self.echo:
                self.echo(line)

    def is_ready(self) -> bool:
        # Readiness over HTTP, which TLS and the keys leave plain and open (services/security.py).
        from .security import probe_host

        url = f"http://{probe_host(self.config.host)}:{self.config.http_port}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if self._reader:
                    self._reader.join(timeout=2)
                raise ServerError(self._failure_summary(f"tritonserver exited with code {self.process.returncode}"))
            if self.is_ready():
                return
            time.sleep(0.1)
        raise ServerError(self._failure_summary(f"tritonserver was not ready after {timeout_s:.0f} s"))

    def _failure_summary(self, headline: str) -> str:
        failures = load_failures(list(self.log))
        if failures:
            return "; ".join(failures)
        errors = [line for line in self.log if line.startswith("E") or "error:" in line]
        # The CUDA/NVML lines are expected on a machine without a GPU; they are not the cause.
        errors = [line for line in errors if not re.search(r"CUDA|NVML|DCGM|pinned memory|cuda", line)]
        tail = errors[-1] if errors else (self.log[-1] if self.log else "no output")
        return f"{headline}: {tail}"

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, wait, then SIGKILL the whole process group; remove leftover shared memory."""
        self._closing.set()
        if self._watchdog and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=timeout_s + 10)
            self._watchdog = None
        self._terminate(timeout_s)

    def _terminate(self, timeout_s: float = 20.0) -> None:
        if self.process is None:
            return
        pgid = self.process.pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        # Stubs are in the server's process group; anything still alive there is an orphan.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        if self._reader:
            self._reader.join(timeout=5)
        for leftover in Path("/dev/shm").glob(self.shm_prefix + "*"):
            leftover.unlink(missing_ok=True)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- introspection used by tests ---------------------------------------------------------
    def group_pids(self) -> list[int]:
        """Live processes in the server's process group (server and stubs)."""
        if self.process is None:
            return []
        return [pid for pid, state, _, group in _processes() if group == self.process.pid and state != "Z"]

    def shared_memory_files(self) -> list[Path]:
        return sorted(Path("/dev/shm").glob(self.shm_prefix + "*"))


def _processes():
    """(pid, state, parent pid, process group) of every process, from /proc/PID/stat."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError, ValueError):
            continue
        yield int(stat.parent.name), state, int(parent), int(group)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_config(repo: Path, **overrides) -> ServerConfig:
    """A config on three free loopback ports, for tests, benchmarks and the demo."""
    return ServerConfig(repo=Path(repo), grpc_port=free_port(), http_port=free_port(),
                        metrics_port=free_port(), **overrides)
