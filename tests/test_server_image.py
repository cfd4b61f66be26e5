"""The server image (deploy/Dockerfile.server) has what the repository's python models import, and
the Deployment's command line (deploy/k8s/triton.yaml) serves TLS, keys, probes and metrics.

No Docker engine here: the image's install steps are replayed in a clean virtualenv on the
container's Python version (3.10, when this machine has it), and its wheels are resolved for the
container's platform (CPython 3.10, glibc 2.35) without installing them. The Deployment's flags are
run on the tritonserver binary of the pytriton wheel, which is the same server core (2.51).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from equiprobe.services.repository import build_repo
from equiprobe.services.security import GRPC_HEADER_PREFIX
from equiprobe.services.server import TritonServer, _pytriton_root, _python_backend_ready, loopback_config
from tests.conftest import ENCODER

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile.server"
# nvcr.io/nvidia/tritonserver:24.10-py3 is Ubuntu 22.04: CPython 3.10, glibc 2.35.
CONTAINER_PYTHON, CONTAINER_GLIBC = (3, 10), (2, 35)
# What no python model may need: the heavy base dependencies the image leaves out (modules, and
# the distributions that hold them).
HEAVY = {"torch", "torchvision", "timm", "open_clip", "ray", "pandas", "pyarrow", "onnx", "onnxscript", "tritonclient",
         "typer", "rich"}
HEAVY_DISTRIBUTIONS = (HEAVY - {"open_clip"}) | {"open-clip-torch"}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, DEPLOY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def server_extra() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["server"]


def normalized(requirements: list[str]) -> list[str]:
    from packaging.requirements import Requirement

    return sorted(str(Requirement(line)) for line in requirements)


def for_container(requirements: list[str]) -> list[str]:
    """The requirements whose markers hold in the container, without the markers."""
    from packaging.requirements import Requirement

    version = ".".join(map(str, CONTAINER_PYTHON))
    environment = {"python_version": version, "python_full_version": f"{version}.12", "sys_platform": "linux",
                   "platform_machine": "x86_64", "implementation_name": "cpython", "os_name": "posix"}
    kept = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            requirement.marker = None
            kept.append(str(requirement))
    return kept


# -- the server extra: one list, read back from the installed metadata ----------------------------

def test_the_server_extra_is_read_back_from_the_installed_metadata(monkeypatch):
    script = load_script("extra_requirements")
    monkeypatch.setattr(script.metadata, "requires", lambda name: [
        "numpy==1.26.4",  # a base dependency: not the extra's
        'numpy==1.26.4; extra == "server"',
        'pillow==13.0.0; python_version >= "3.11" and extra == "server"',
        'pillow==12.3.0; python_version < "3.11" and extra == "server"',
        'onnxruntime==1.32.0; extra == "cpu"',
        'faiss-cpu==1.15.1; extra == "servers"',
    ])
    assert script.extra_requirements("equiprobe", "server") == [
        "numpy==1.26.4", 'pillow==13.0.0; python_version >= "3.11"', 'pillow==12.3.0; python_version < "3.11"']
    with pytest.raises(SystemExit, match="no requirements in an extra named 'gpu'"):
        script.extra_requirements("equiprobe", "gpu")


def resolve_for_container(requirements: list[str], tmp_path: Path) -> dict[str, str]:
    """pip resolves `requirements` and everything they pull in as binary wheels for CPython 3.10 on
    glibc <= 2.35, from the package index, without installing: distribution -> wheel file name."""
    platforms = ["manylinux2014_x86_64"] + [f"manylinux_2_{minor}_x86_64" for minor in range(17, CONTAINER_GLIBC[1] + 1)]
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--only-binary=:all:", "--python-version", ".".join(map(str, CONTAINER_PYTHON)),
               "--implementation", "cp", "--abi", "cp" + "".join(map(str, CONTAINER_PYTHON)),
               *[option for p in platforms for option in ("--platform", p)],
               "--target", str(tmp_path / "target"), "--report", str(tmp_path / "report.json"), *requirements]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"no wheels for the container's Python for all of {requirements}:\n{proc.stderr[-3000:]}"
    return {item["metadata"]["name"].lower().replace("_", "-"): item["download_info"]["url"].rsplit("/", 1)[-1]
            for item in json.loads((tmp_path / "report.json").read_text())["install"]}


def assert_pinned_wheels(requirements: list[str], wheels: dict[str, str]) -> None:
    print("\n".join(sorted(wheels.values())))
    for line in requirements:
        name, version = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
        wheel = wheels[name.lower().replace("_", "-")]
        assert f"-{version}-" in wheel and wheel.endswith(".whl"), (line, wheel)


def test_every_server_requirement_has_a_wheel_for_the_containers_python_and_platform(tmp_path):
    requirements = for_container(server_extra())
    assert_pinned_wheels(requirements, resolve_for_container(requirements, tmp_path))


def test_the_images_faiss_gpu_has_a_wheel_for_the_container_with_numpy_1(tmp_path):
    """The pins Dockerfile.server installs beyond the extra (faiss-gpu in place of faiss-cpu)."""
    pins = re.findall(r'pip install --only-binary=:all: "([A-Za-z0-9_.-]+==[^"]+)"', DOCKERFILE.read_text())
    assert any(p.startswith("faiss-gpu-cu12==") for p in pins), pins
    wheels = resolve_for_container(pins + ["numpy<2"], tmp_path)
    assert_pinned_wheels(pins, wheels)
    assert wheels["numpy"].startswith("numpy-1.")


# -- every python model of both flavours imports only what the image installs --------------------

def container_python() -> str:
    """This machine's interpreter of the container's Python version, else the one running the tests."""
    want = ".".join(map(str, CONTAINER_PYTHON))
    pyenv = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() if shutil.which("pyenv") else ""
    candidates = [shutil.which(f"python{want}"), f"/usr/bin/python{want}",
                  *sorted(glob.glob(f"{pyenv or os.path.expanduser('~/.pyenv')}/versions/{want}.*/bin/python{want}"))]
    for candidate in (c for c in candidates if c and Path(c).is_file()):
        proc = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip() == want:
            return candidate
    print(f"note: no Python {want} here; the clean virtualenv uses Python {sys.version.split()[0]}")
    return sys.executable


def image_sources() -> list[str]:
    """What Dockerfile.server COPYs from the repository (the virtualenv gets the same)."""
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    return sources


def copy_sources(sources, src: Path) -> None:
    """A Dockerfile's COPY sources from this checkout into `src`, as the image build sees them."""
    for source in sources:
        target = src / source
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / source, target)


def clean_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    return env


def run(command: list, env: dict, cwd: Path, timeout: float = 900) -> str:
    proc = subprocess.run([str(c) for c in command], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, command))} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def python_model_configs(repo: Path) -> dict[str, dict]:
    """Each python model's config as Triton hands it to initialize(): the ModelConfig as JSON."""
    configs = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), mc.ModelConfig())
        if config.backend == "python":
            configs[config.name] = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return configs


def check_models(python: Path, paths: list[Path], env: dict, cwd: Path, configs: dict | None = None,
                 image: Path | None = None) -> dict:
    command = [python, DEPLOY / "check_python_models.py", *paths]
    if configs is not None:
        (cwd / "configs.json").write_text(json.dumps(configs))
        command += ["--configs", cwd / "configs.json"]
    if image is not None:
        command += ["--image", image]
    proc = subprocess.run([str(c) for c in command], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    failures = [f"{r['model']} ({r.get('stage')}): " + (f"needs module {r['missing']!r}, which the server image does "
                                                       f"not install" if r.get("missing") else r.get("error", ""))
                for r in lines if "model" in r and not r["ok"]]
    assert proc.returncode == 0 and not failures, "\n".join(failures) or proc.stderr[-3000:]
    (summary,) = [r["summary"] for r in lines if "summary" in r]
    return {**summary, "models": [r["model"] for r in lines if "model" in r],
            "executed": [r["model"] for r in lines if r.get("executed")]}


@pytest.mark.slow
def test_every_python_model_imports_only_what_the_server_image_installs(tmp_path, repo, jpegs):
    """The image's install steps in a clean virtualenv (no system site packages): this package with
    --no-deps, then only its `server` extra. Both flavours' repositories rendered; every model.py
    under them imported and initialized there, with a stand-in for triton_python_backend_utils, and
    every model that takes an encoded IMAGE runs one request with a photo (CATALOG_inputs renders
    text, icons and style references then, from the data other packages ship)."""
    python = container_python()
    venv, src = tmp_path / "venv", tmp_path / "src"
    copy_sources(image_sources(), src)
    env = clean_env(venv)
    started = time.monotonic()
    run([python, "-m", "venv", venv], env, tmp_path)
    vpython = venv / "bin" / "python"
    run([vpython, "-m", "pip", "install", "--quiet", "--no-deps", src], env, tmp_path)
    requirements = run([vpython, src / "deploy" / "extra_requirements.py", "equiprobe", "server"], env, tmp_path)
    (tmp_path / "server-requirements.txt").write_text(requirements)
    run([vpython, "-m", "pip", "install", "--quiet", "--only-binary=:all:", "-r", tmp_path / "server-requirements.txt"],
        env, tmp_path)
    installed = time.monotonic() - started
    # One source: what the metadata gives back is pyproject.toml's extra, markers and all.
    assert normalized(requirements.splitlines()) == normalized(server_extra())
    frozen = run([vpython, "-m", "pip", "list", "--format=freeze"], env, tmp_path)
    assert "numpy==1." in frozen and not HEAVY_DISTRIBUTIONS & {line.split("==")[0].lower() for line in frozen.split()}

    # The image build's own check (sources, import only), then both rendered repositories.
    sources = sorted((src / "services" / "python_models").glob("*.py"))
    check_models(vpython, sources, env, tmp_path)
    native = tmp_path / "native"
    build_repo(ENCODER, native, flavour="native", random_weights=True)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(next(iter(jpegs.values())))
    takes_an_image = load_script("check_python_models").takes_an_image
    checked = {}
    for flavour, path in (("native", native), ("portable", repo)):
        configs = python_model_configs(path)
        assert configs, f"the {flavour} repository has no python models"
        result = check_models(vpython, [path], env, tmp_path, configs, photo)
        assert sorted(result["models"]) == sorted(configs)
        assert sorted(result["executed"]) == sorted(n for n, c in configs.items() if takes_an_image(c))
        assert not HEAVY & set(result["third_party_modules"]), result["third_party_modules"]
        checked[flavour] = result
    elapsed = time.monotonic() - started
    print(f"clean virtualenv on Python {checked['native']['python']}: installed in {installed:.0f} s, "
          f"all checks in {elapsed:.0f} s; models: {checked}")


# -- the Deployment's command line on the real server ---------------------------------------------

IDENTITY_CONFIG = """name: "identity"
backend: "python"
max_batch_size: 8
input [{ name: "IN", data_type: TYPE_FP32, dims: [2] }]
output [{ name: "OUT", data_type: TYPE_FP32, dims: [2] }]
instance_group [{ kind: KIND_CPU, count: 1 }]
"""
IDENTITY_MODEL = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUT", pb_utils.get_input_tensor_by_name(r, "IN").as_numpy())])
                for r in requests]
"""


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a self-signed certificate")
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


class DeploymentCommand(TritonServer):
    """The Deployment's tritonserver flags, plus the two the pytriton wheel's server needs here."""

    def __init__(self, args: list[str], config):
        super().__init__(config)
        self.args = args

    def command(self) -> list[str]:
        root = _pytriton_root()
        return [str(root / "bin" / "tritonserver"), *self.args, f"--backend-directory={_python_backend_ready(root)}",
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}"]


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_deployment_command_line_serves_tls_keys_probes_and_metrics(tmp_path):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    (deployment, _) = yaml.safe_load_all((DEPLOY / "k8s" / "triton.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    repo = tmp_path / "models"
    (repo / "identity" / "1").mkdir(parents=True)
    (repo / "identity" / "config.pbtxt").write_text(IDENTITY_CONFIG)
    (repo / "identity" / "1" / "model.py").write_text(IDENTITY_MODEL)
    cert, key = self_signed_certificate(tmp_path)
    keys = {"EQUIPROBE_ADMIN_KEY": "admin" * 8, "EQUIPROBE_API_KEY": "api" * 12, "EQUIPROBE_HTTP_LOCK_KEY": "lock" * 8}
    config = loopback_config(repo, startup_timeout_s=90)
    local = {"model-repository": repo, "grpc-address": "127.0.0.1", "http-address": "127.0.0.1",
             "metrics-address": "127.0.0.1", "grpc-port": config.grpc_port, "http-port": config.http_port,
             "metrics-port": config.metrics_port, "grpc-server-cert": cert, "grpc-server-key": key}
    args, headers = [], {}
    for arg in container["args"][1:]:
        name = arg[2:].split("=", 1)[0]
        arg = f"--{name}={local[name]}" if name in local else arg
        for var in re.findall(r"\$\((\w+)\)", arg):
            header = re.search(r":([\w-]+)=\$\(" + var + r"\)", arg).group(1)
            headers[var] = {GRPC_HEADER_PREFIX + header: keys[var]}
            arg = arg.replace(f"$({var})", keys[var])
        args.append(arg)
    api, admin = headers["EQUIPROBE_API_KEY"], headers["EQUIPROBE_ADMIN_KEY"]
    probes = {p: container[f"{p}Probe"]["httpGet"]["path"] for p in ("readiness", "liveness", "startup")}
    http = f"http://127.0.0.1:{config.http_port}"
    with DeploymentCommand(args, config):
        # The kubelet's probes: plain HTTP, no key. Every other HTTP API is locked.
        for probe, path in probes.items():
            assert http_status(http + path) == 200, probe
        assert http_status(f"{http}/v2/models/identity") == 403
        # gRPC only with TLS, inference only with the API key, model control only with the admin key.
        client = grpcclient.InferenceServerClient(config.grpc_url, ssl=True, root_certificates=str(cert))
        tensor = grpcclient.InferInput("IN", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.array([[1.5, -2.0]], np.float32))
        result = client.infer("identity", [tensor], headers=api)
        assert result.as_numpy("OUT").tolist() == [[1.5, -2.0]]
        with pytest.raises(InferenceServerException, match="restricted"):
            client.infer("identity", [tensor])
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_repository_index(headers=api)
        assert [m.name for m in client.get_model_repository_index(headers=admin).models] == ["identity"]
        plain = grpcclient.InferenceServerClient(config.grpc_url)
        with pytest.raises(InferenceServerException):
            plain.is_server_live(client_timeout=5)
        # The series the prometheus-adapter rule reads, per model.
        with urllib.request.urlopen(f"http://127.0.0.1:{config.metrics_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
    (adapter,) = yaml.safe_load_all((DEPLOY / "k8s" / "prometheus-adapter-rules.yaml").read_text())
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    series = set(re.findall(r"(nv_\w+)\{", rule["seriesQuery"] + rule["metricsQuery"]))
    assert series == {"nv_inference_queue_duration_us", "nv_inference_request_success"}
    for name in series:
        assert re.search("^" + name + r'\{[^}]*model="identity"[^}]*\} \d', metrics, re.M), name
    assert re.search(r'^nv_inference_request_success\{[^}]*model="identity"[^}]*\} 1$', metrics, re.M)
