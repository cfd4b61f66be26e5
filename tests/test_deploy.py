"""The Kubernetes manifests agree with each other and with the CLI they call."""

import re
import shlex
from pathlib import Path

import yaml
from typer.testing import CliRunner

from trainer.cli import app

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
