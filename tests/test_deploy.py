"""The Kubernetes manifests agree with each other and with the CLI they call."""

import copy
import re
import shlex
from pathlib import Path

import pydantic
import yaml
from typer.testing import CliRunner

from equiprobe.trainer.cli import app

K8S = Path(__file__).parent.parent / "deploy" / "k8s"


def load(name):
    return list(yaml.safe_load_all((K8S / name).read_text()))


def command_of(job) -> str:
    return job["spec"]["template"]["spec"]["containers"][0]["args"][0]


def test_indexed_embed_job_runs_one_shard_per_index_and_merge_joins_them_all():
    (job,) = load("embed-job.yaml")
    assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
    n = job["spec"]["completions"]
    command = command_of(job)
    assert f"--shard ${{JOB_COMPLETION_INDEX}}/{n}" in command
    out = re.search(r"--out (\S+)", command).group(1)
    (merge,) = load("merge-job.yaml")
    shards = shlex.split(command_of(merge))[5:]
    assert shards == [out.replace("${JOB_COMPLETION_INDEX}", str(i)) for i in range(n)]
    # The embed job talks to the Service the Triton manifest defines, on its gRPC port.
    deployment, service = load("triton.yaml")
    url = re.search(r"--url (\S+)", command).group(1)
    assert url == f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert deployment["spec"]["template"]["metadata"]["labels"] == service["spec"]["selector"]


def test_the_manifests_commands_parse_with_the_cli():
    (job,) = load("embed-job.yaml")
    args = shlex.split(command_of(job).replace("${JOB_COMPLETION_INDEX}", "3"))[1:]
    # --help after the arguments: typer parses them all (unknown options fail) and stops.
    result = CliRunner().invoke(app, args + ["--help"])
    assert result.exit_code == 0, result.output
    (merge,) = load("merge-job.yaml")
    result = CliRunner().invoke(app, shlex.split(command_of(merge))[1:] + ["--help"])
    assert result.exit_code == 0, result.output


# -- the server fleet: schemas, cross-references, and the command line `equiprobe serve` gives --

OLDEST_KUBERNETES = "1.29.0"  # HorizontalPodAutoscaler v2, Indexed Jobs with backoffLimitPerIndex
DOCKERFILE_SERVER = K8S.parent / "Dockerfile.server"


def all_manifests() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def schema_errors(doc: dict) -> list[str]:
    """Errors of one manifest against the Kubernetes JSON schemas (strict: unknown fields are errors),
    bundled by kubernetes-validate for each release and read offline, or, for prometheus-operator's
    ServiceMonitor (a CRD, in no core schema), against the models generated from its CRD schema."""
    import kubernetes_validate

    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        from cloudcoil.models.prometheus_operator import v1 as monitoring

        model = getattr(monitoring, doc["kind"])
        try:
            parsed = model.model_validate(doc)
        except pydantic.ValidationError as exc:
            return [f"{doc['kind']}: {exc}"]
        # Unknown fields are dropped by the model: the round trip must give back the manifest.
        round_trip = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
        return [] if round_trip == doc else [f"{doc['kind']}: fields the CRD schema does not know: "
                                             f"manifest {doc}, as the schema reads it {round_trip}"]
    errors = []
    for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"Kubernetes {version}: {exc.message} at {'/'.join(map(str, exc.path))}")
    return errors


def test_every_manifest_validates_against_the_kubernetes_schemas_offline():
    manifests = all_manifests()
    kinds = {doc["kind"] for _, doc in manifests}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor", "ConfigMap", "Job"} <= kinds
    for name, doc in manifests:
        assert schema_errors(doc) == [], f"{name} {doc['kind']}"
    # The checks catch what they should: a misspelt field in the Deployment, an unknown field and a
    # wrong type in the ServiceMonitor.
    (deployment, _) = load("triton.yaml")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert schema_errors(broken)
    (monitor,) = load("triton-monitoring.yaml")
    broken = copy.deepcopy(monitor)
    broken["spec"]["endpoints"][0]["intervall"] = "15s"
    assert schema_errors(broken)
    assert schema_errors({**monitor, "spec": {"endpoints": [{"port": 8002}]}})


def triton_container() -> dict:
    deployment, _ = load("triton.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


def test_the_server_image_runs_with_probes_tls_and_keys_from_secrets():
    deployment, service = load("triton.yaml")
    pod = deployment["spec"]["template"]["spec"]
    container = triton_container()
    # The image Dockerfile.server builds, as the user it leaves.
    assert f"-t {container['image']} " in DOCKERFILE_SERVER.read_text()
    uid = re.search(r"^USER (\d+)", DOCKERFILE_SERVER.read_text(), re.M).group(1)
    assert pod["securityContext"]["runAsNonRoot"] and str(pod["securityContext"]["runAsUser"]) == uid
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = container["args"]
    assert args[0] == "tritonserver"
    assert int(flag(args, "http-port")) == ports["http"] and int(flag(args, "grpc-port")) == ports["grpc"]
    assert int(flag(args, "metrics-port")) == ports["metrics"]
    # Readiness and liveness over plain HTTP, which serves health without a key.
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    # TLS certificate and key from the kubernetes.io/tls Secret's own key names, mounted read-only.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    (tls,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert {i["key"] for i in tls["secret"]["items"]} == {"tls.crt", "tls.key"}
    assert mounts["tls"]["readOnly"]
    assert flag(args, "grpc-server-cert") == f"{mounts['tls']['mountPath']}/tls.crt"
    assert flag(args, "grpc-server-key") == f"{mounts['tls']['mountPath']}/tls.key"
    assert flag(args, "grpc-use-ssl") == "true"
    # Every key the command line names comes from a Secret through the environment.
    env = {e["name"]: e for e in container["env"]}
    used = set(re.findall(r"\$\((\w+)\)", " ".join(args)))
    assert used == {"EQUIPROBE_ADMIN_KEY", "EQUIPROBE_API_KEY", "EQUIPROBE_HTTP_LOCK_KEY"}
    for name in used:
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "equiprobe-keys", name
    # The Service carries gRPC and metrics, not the health-only HTTP port.
    assert [p["name"] for p in service["spec"]["ports"]] == ["grpc", "metrics"]
    assert service["metadata"]["labels"] == deployment["spec"]["template"]["metadata"]["labels"]


def test_the_server_flags_are_the_ones_equiprobe_serve_passes():
    """The Deployment runs tritonserver itself (the console script needs the client and trainer
    dependencies, which the image leaves out); its flags must be what `equiprobe serve --host
    0.0.0.0 --tls-cert --tls-key --admin-key --api-key` gives tritonserver, less the two that only
    the pytriton wheel's copy of the server needs here."""
    from equiprobe.services.server import ServerConfig, TritonServer

    container = triton_container()
    args = container["args"][1:]
    keys = {"EQUIPROBE_ADMIN_KEY": "a" * 32, "EQUIPROBE_API_KEY": "b" * 32, "EQUIPROBE_HTTP_LOCK_KEY": "LOCKED"}
    given = [re.sub(r"\$\((\w+)\)", lambda m: keys[m.group(1)], a) for a in args]
    config = ServerConfig(
        repo=Path(flag(args, "model-repository")), host=flag(args, "grpc-address"),
        grpc_port=int(flag(args, "grpc-port")), http_port=int(flag(args, "http-port")),
        metrics_port=int(flag(args, "metrics-port")), model_control_mode=flag(args, "model-control-mode"),
        tls_cert=Path(flag(args, "grpc-server-cert")), tls_key=Path(flag(args, "grpc-server-key")),
        admin_key=keys["EQUIPROBE_ADMIN_KEY"], api_key=keys["EQUIPROBE_API_KEY"])
    serve = [a for a in TritonServer(config).command()[1:]
             if not a.startswith(("--backend-directory=", "--backend-config=python,shm-region-prefix-name="))]
    # serve locks plain HTTP with a random key per start; the Deployment with a Secret's.
    serve = [re.sub(r"(equiprobe-locked=)[0-9a-f]{64}$", r"\1LOCKED", a) for a in serve]
    assert sorted(given) == sorted(serve)


def test_the_autoscaler_scales_on_the_queue_time_the_adapter_rule_defines():
    deployment, _ = load("triton.yaml")
    (hpa,) = load("triton-autoscaling.yaml")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (deployment["kind"], deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    (adapter,) = load("prometheus-adapter-rules.yaml")
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    (rule,) = [r for r in rules if r["name"]["as"] == metric["pods"]["metric"]["name"]]
    assert re.search(rule["name"]["matches"], rule["seriesQuery"].split("{")[0])
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    query = rule["metricsQuery"]
    assert "nv_inference_queue_duration_us{<<.LabelMatchers>>}" in query
    assert "nv_inference_request_success{<<.LabelMatchers>>}" in query
    assert query.count("by (<<.GroupBy>>)") == 2


def test_the_service_monitor_scrapes_the_metrics_port_of_the_service():
    _, service = load("triton.yaml")
    (monitor,) = load("triton-monitoring.yaml")
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["endpoints"]
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert port["port"] == int(flag(triton_container()["args"], "metrics-port"))
    assert endpoint["path"] == "/metrics"


def test_the_embed_job_reaches_the_servers_with_tls_and_the_api_key():
    (job,) = load("embed-job.yaml")
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    roots = re.search(r"--root-certificates (\S+)", command_of(job)).group(1)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert str(Path(roots).parent) in mounts
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    server_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in triton_container()["env"]}
    assert env["EQUIPROBE_API_KEY"] == server_env["EQUIPROBE_API_KEY"]
    assert "EQUIPROBE_ADMIN_KEY" not in env  # embedding needs no model control
    # What the schema cannot say: Kubernetes takes backoffLimitPerIndex only with restartPolicy Never.
    if "backoffLimitPerIndex" in job["spec"]:
        assert spec["restartPolicy"] == "Never"


def test_the_init_container_copies_every_int8_calibration_table_into_the_trt_cache(tmp_path):
    """TensorRT reads INT8 tables from trt_engine_cache_path: the init container copies the ones
    build-repo writes (names from the code) into the volume the server mounts there."""
    import subprocess

    from equiprobe.services.contract import ModelNames
    from equiprobe.services.model_config import ServingSpec
    from equiprobe.services.quantize import trt_calibration_table

    deployment, _ = load("triton.yaml")
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]

    def mounts(container):
        return {m["name"]: m["mountPath"] for m in container["volumeMounts"]}

    cache = ServingSpec().trt_cache_path
    assert mounts(init)["trt-cache"] == mounts(triton_container())["trt-cache"] == cache
    assert mounts(init)["models"] == "/models" and init["image"] == triton_container()["image"]
    models, copied = tmp_path / "models", tmp_path / "cache"
    script = init["command"][-1].replace(cache, str(copied)).replace("/models", str(models))
    copied.mkdir()
    (models / "squeezenet1_1_preprocess" / "1").mkdir(parents=True)  # an FP32 repository: nothing to copy
    subprocess.run(["sh", "-c", script], check=True)
    assert list(copied.iterdir()) == []
    tables = {}
    for encoder in ("squeezenet1_1", "open_nsfw"):
        version = models / ModelNames(encoder).onnx / "1"
        version.mkdir(parents=True)
        (version / trt_calibration_table(encoder)).write_bytes(encoder.encode())
        tables[trt_calibration_table(encoder)] = encoder.encode()
    subprocess.run(["sh", "-c", script], check=True)
    assert {p.name: p.read_bytes() for p in copied.iterdir()} == tables
