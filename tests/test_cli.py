"""The CLI package (trainer/cli/): the client commands load without torch, DALI or ONNX; every
probe and baseline config field is an option; list-valued options take several values at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields

import pytest
import typer
from typer.testing import CliRunner

from equiprobe.trainer.cli import app, expand_repeated
from equiprobe.trainer.configs import BaselineConfig, ProbeConfig

from .test_trainer import synthetic_store

HEAVY = ("torch", "nvidia.dali", "onnx", "onnxruntime", "timm", "open_clip", "sklearn", "faiss", "ray", "matplotlib")

REFUSING = f"""
import contextlib, io, sys

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if any(name == h or name.startswith(h + ".") for h in {HEAVY!r}):
            raise ImportError(f"refused: {{name}}")
        return None

sys.meta_path.insert(0, Refuse())
from equiprobe.trainer.cli import main
for args in sys.argv[1:]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(args.split())
        except SystemExit as exc:
            assert exc.code in (0, None), (args, exc.code)
    print("=== " + args)
    print(out.getvalue())
loaded = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in {HEAVY!r}))
print("=== loaded"); print(loaded)
"""


def test_client_commands_need_no_torch_dali_or_onnx():
    helps = ["--help", "embed --help", "score --help", "store --help", "store info --help"]
    proc = subprocess.run([sys.executable, "-c", REFUSING, *helps], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    sections = dict(part.split("\n", 1) for part in proc.stdout.split("=== ")[1:])
    assert "embed" in sections["--help"] and "score" in sections["--help"] and "store" in sections["--help"]
    for option in ("--dataset", "--encoder", "--out", "--url", "--catalog", "--api-key", "--header"):
        assert option in sections["embed --help"]
    for option in ("--url", "--encoder", "--top", "--json", "--tls"):
        assert option in sections["score --help"]
    for command in ("info", "concat", "merge"):
        assert command in sections["store --help"]
    assert "path" in sections["store info --help"] and "Store directory" in sections["store info --help"]
    assert sections["loaded"].strip() == "[]"


def leaf(*names: str):
    command = typer.main.get_command(app)
    for name in names:
        command = command.commands[name]
    return command


def parsed(args: list[str]) -> dict:
    """The parameters click parses for `args` after main()'s rewrite (the command is not run)."""
    args = expand_repeated(typer.main.get_command(app), args)
    command, i = typer.main.get_command(app), 0
    while hasattr(command, "commands"):
        command, i = command.commands[args[i]], i + 1
    return command.make_context("equiprobe", args[i:]).params


@pytest.mark.parametrize("command, option, values, required", [
    (("report",), "--probes", ["a", "b", "c"], ["--store", "s", "--out", "o"]),
    (("report",), "--store", ["s1", "s2"], ["--out", "o"]),
    (("deploy",), "--probe", ["p1", "p2"], []),
    (("embed",), "--url", ["h1:1", "h2:2"], ["--dataset", "corpus", "--encoder", "e", "--out", "o", "--ray"]),
    (("embed",), "--header", ["a=1", "b=2"], ["--dataset", "corpus", "--encoder", "e", "--out", "o"]),
    (("build-repo",), "--style-net", ["a=x.onnx", "b=y.onnx"], ["--encoder", "e"]),
    (("train",), "--c-grid", ["0.5", "2"], ["--store", "s", "--out", "o"]),
    (("train",), "--k-grid", ["3", "7"], ["--store", "s", "--out", "o"]),
    (("bench", "train"), "--c-grid", ["0.5", "2"], ["--store", "s"]),
])
def test_repeated_options_take_several_values_either_way(command, option, values, required):
    repeated = [w for v in values for w in (option, v)]
    at_once = [option, *values]
    first, second = parsed([*command, *repeated, *required]), parsed([*command, *at_once, *required])
    name = next(p.name for p in leaf(*command).params if option in p.opts)
    assert first == second and len(first[name]) == len(values)
    assert parsed([*command, *required, *at_once]) == first  # at the end of the line, too


def test_every_list_option_is_found_and_other_words_are_left_alone():
    repeatable = {(name, opt) for name, cmd in typer.main.get_command(app).commands.items()
                  for sub in (cmd.commands.values() if hasattr(cmd, "commands") else [cmd])
                  for p in sub.params if p.param_type_name == "option" and p.multiple for opt in p.opts}
    assert {("report", "--store"), ("report", "--probes"), ("deploy", "--probe"), ("embed", "--url"),
            ("embed", "--header"), ("build-repo", "--style-net"), ("train", "--c-grid"),
            ("train", "--k-grid")} <= repeatable
    # --url of score is one value: its positional files stay files
    args = ["score", "--url", "h:1", "a.jpg", "b.jpg"]
    assert expand_repeated(typer.main.get_command(app), args) == args
    assert expand_repeated(typer.main.get_command(app), ["report", "--probes=a", "b", "--", "--probes", "x", "y"]) \
        == ["report", "--probes=a", "b", "--", "--probes", "x", "y"]


@pytest.mark.parametrize("command", [("train",), ("bench", "train"), ("demo",)])
def test_every_config_field_is_an_option(command):
    options = {o for p in leaf(*command).params for o in p.opts}
    probe = {f"--{f.name.replace('_', '-')}" for f in fields(ProbeConfig) if f.name != "kind"}
    if command == ("demo",):  # the study's probes stop on accuracy; the detector's is its own option
        probe = probe - {"--stop-on"} | {"--detector-stop-on"}
    assert probe <= options
    if command != ("demo",):  # the demo trains no baselines
        renamed = {"seed": "baseline-seed", "batch-size": "baseline-batch-size"}
        baseline = {"--" + renamed.get(n, n) for n in (f.name.replace("_", "-") for f in fields(BaselineConfig))
                    if n != "kind"}
        assert baseline <= options
    defaults = {p.name: p.default for p in leaf(*command).params}
    if command != ("demo",):  # defaults read from the dataclasses
        assert defaults["probe_fields__patience"] == ProbeConfig.patience
        assert tuple(defaults["baseline_fields__c_grid"]) == BaselineConfig.c_grid


def test_demo_gives_the_detector_its_own_hidden_width_and_the_study_probes_theirs(monkeypatch):
    import equiprobe.trainer.demo as demo
    from equiprobe.trainer.configs import DETECTOR_ALSO_FINE, DETECTOR_ENSEMBLE, DETECTOR_HIDDEN, DETECTOR_STOP_ON

    calls = []
    monkeypatch.setattr(demo, "run_demo", lambda *args: calls.append(args))
    runner = CliRunner()
    assert runner.invoke(app, ["demo", "--workdir", "w"]).exit_code == 0
    assert runner.invoke(app, ["demo", "--workdir", "w", "--hidden", "64", "--detector-hidden", "32",
                               "--detector-best-seed", "--detector-stop-on", "accuracy",
                               "--detector-detect-only"]).exit_code == 0
    (workdir, probe, *_, hidden, averaged, stop_on, also_fine), (_, probe2, *_, hidden2, averaged2, stop_on2,
                                                                 also_fine2) = calls
    assert workdir == "w" and probe.hidden == ProbeConfig.hidden and hidden == DETECTOR_HIDDEN != ProbeConfig.hidden
    assert averaged is DETECTOR_ENSEMBLE is True and not probe.ensemble  # the study's probes keep their best seed
    assert (stop_on, also_fine) == (DETECTOR_STOP_ON, DETECTOR_ALSO_FINE) == ("auc", True)
    assert probe.stop_on == "accuracy"  # the study's probes stop on accuracy
    assert (probe2.hidden, hidden2, averaged2, stop_on2, also_fine2) == (64, 32, False, "accuracy", False)


def test_train_writes_the_given_probe_and_baseline_config(tmp_path):
    store = synthetic_store(tmp_path / "s", "fine", images=24)
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--store", str(store), "--out", str(tmp_path / "mlp"), "--seeds", "1",
                                 "--hidden", "64", "--dropout", "0.1", "--patience", "2", "--weight-decay", "1e-4",
                                 "--max-epochs", "3", "--batch-size", "128", "--lr", "0.002", "--quiet"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "mlp" / "probe.json").read_text())["config"]
    assert config == {"kind": "mlp", "hidden": 64, "dropout": 0.1, "lr": 0.002, "weight_decay": 1e-4,
                      "batch_size": 128, "max_epochs": 3, "patience": 2, "features": False, "ensemble": False,
                      "stop_on": "accuracy"}
    result = runner.invoke(app, ["train", "--store", str(store), "--out", str(tmp_path / "also"), "--seeds", "1",
                                 "--hidden", "8", "--max-epochs", "1", "--stop-on", "auc", "--also", str(store), "--quiet"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "also" / "probe.json").read_text())
    assert saved["config"]["stop_on"] == "auc" and "val_auc" in saved["runs"][0]
    assert saved["also"] == [{"store": str(store), "train_images": saved["images"]["train"], "versions": 31}]
    result = runner.invoke(app, ["train", "--store", str(store), "--out", str(tmp_path / "both"), "--seeds", "2",
                                 "--hidden", "16", "--max-epochs", "2", "--ensemble"])
    assert result.exit_code == 0, result.output
    assert f"saved {tmp_path / 'both' / 'probe.pt'} (seeds 0, 1 averaged)" in " ".join(result.output.split())
    assert json.loads((tmp_path / "both" / "probe.json").read_text())["config"]["ensemble"] is True
    result = runner.invoke(app, ["train", "--store", str(store), "--out", str(tmp_path / "logreg"), "--probe",
                                 "logreg", "--c-grid", "0.1", "--c-grid", "1", "--max-iter", "50",
                                 "--baseline-seed", "3", "--baseline-batch-size", "256", "--max-examples", "500",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "logreg" / "probe.json").read_text())["config"]
    assert config["c_grid"] == [0.1, 1.0] and config["max_iter"] == 50 and config["seed"] == 3
    assert config["batch_size"] == 256 and config["max_examples"] == 500
    assert config["k_grid"] == list(BaselineConfig.k_grid)
