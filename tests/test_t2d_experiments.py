"""Every Transforms-2D experiment end to end at the tiny profile (results.json, the figure), the CLI's
flags, and the transfer finding itself (seeded, at a small size)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from equiprobe.trainer.t2d.experiments import EXPERIMENTS, TRANSFER_TARGETS, Context, run_experiment, run_sets
from equiprobe.trainer.t2d.profiles import PROFILES, Profile, get_profile
from equiprobe.trainer.t2d.transforms2d import NAMES

EQUIPROBE = str(Path(sys.executable).parent / "equiprobe")


def check_figure(path: Path) -> None:
    image = np.asarray(Image.open(path).convert("L"))
    assert image.shape[0] > 200 and image.std() > 5  # drawn, not blank


@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n != "transfer"])  # transfer: through the CLI below
def test_every_experiment_runs_end_to_end_at_the_tiny_profile(name, tmp_path):
    results = run_experiment(name, Context(get_profile("tiny")), tmp_path, "tiny")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["experiment"] == name and saved["profile"] == "tiny" and len(saved["runs"]) == 1
    assert saved["settings"]["epochs"] == 1 and saved["seconds_per_run"] > 0
    check_figure(tmp_path / f"{name}.png")
    summary = results["summary"]
    if name in ("subsets", "single"):
        matrix = np.asarray(summary["matrix"]["mean"])
        assert matrix.shape == (len(NAMES), len(NAMES)) and ((0 <= matrix) & (matrix <= 1)).all()
    if name == "single":
        assert np.asarray(summary["distance_ratio"]["mean"]).shape == (len(NAMES), len(NAMES))
    if name == "subsets":
        run = saved["runs"][0]
        assert [len(s) for s in run["subsets"]] == list(range(1, 9)) and run["subsets"][-1] == run["order"]
    if name == "classes":
        assert np.asarray(summary["matrix"]["mean"]).shape == (4, 4)
    if name == "irrelevant":
        assert set(summary) == {"no objects", "irrelevant objects", "untrained"}
    if name in ("relevance", "availability"):
        points = len(get_profile("tiny").alphas if name == "relevance" else get_profile("tiny").betas)
        assert len(summary["object_accuracy"]["mean"]) == points


def test_run_sets_are_disjoint_and_seeded():
    p = PROFILES["full"]
    a, b = run_sets(p, 0), run_sets(p, 0)
    assert a == b and a != run_sets(p, 1)
    assert len(a.o1) == len(a.o2) == 30 and not set(a.o1) & set(a.o2)
    assert sorted(a.order) == sorted(NAMES) and not set(a.t(1, 3)) & set(a.t(2, 3))
    with pytest.raises(ValueError, match="disjoint"):
        run_sets(replace(p, objects_per_set=31), 0)


def test_quick_sizes_the_multi_model_experiments_and_flags_still_win():
    from equiprobe.trainer.t2d.profiles import QUICK_PER_EXPERIMENT

    assert get_profile("quick", "transfer").train == PROFILES["quick"].train
    for name, sizes in QUICK_PER_EXPERIMENT.items():
        profile = get_profile("quick", name)
        assert all(getattr(profile, k) == v for k, v in sizes.items()), name
        assert profile.train < PROFILES["quick"].train  # the point: 4 or 8 models per run
    assert get_profile("quick", "subsets", train=123).train == 123
    assert get_profile("full", "subsets") == PROFILES["full"]


def test_the_cli_takes_every_profile_field_as_a_flag_and_runs_transfer(tmp_path):
    help_text = subprocess.run([EQUIPROBE, "t2d", "experiment", "--help"], capture_output=True, text=True,
                               env={"COLUMNS": "200", "PATH": ""}).stdout
    for f in fields(Profile):
        assert "--" + f.name.replace("_", "-") in help_text, f.name
    proc = subprocess.run([EQUIPROBE, "t2d", "experiment", "transfer", "--out", str(tmp_path), "--profile", "tiny",
                           "--epochs", "2", "--runs", "2", "--quiet"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["settings"]["epochs"] == 2 and len(saved["runs"]) == 2 and out["profile"] == "tiny"
    assert set(out["summary"]) == set(TRANSFER_TARGETS)
    assert all(0 <= r["accuracy"][n] <= 1 for r in saved["runs"] for n in TRANSFER_TARGETS)
    assert saved["runs"][0]["O1"] != saved["runs"][1]["O1"]  # each run draws its own sets
    check_figure(tmp_path / "transfer.png")
    bad = subprocess.run([EQUIPROBE, "t2d", "experiment", "twirl", "--out", str(tmp_path / "x"), "--profile", "tiny"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown experiment 'twirl'" in bad.stderr
    bad = subprocess.run([EQUIPROBE, "t2d", "experiment", "transfer", "--out", str(tmp_path / "x"), "--quick",
                          "--arch", "alexnet"], capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown architecture 'alexnet'" in bad.stderr


def test_transfer_shows_d_transforms_above_d_objects(tmp_path):
    """The paper's finding at a CPU-test size: a model trained on (O1, T1) transfers better to new objects
    under its own transformations (D_transforms) than to its own objects under new ones (D_objects).
    Seeded (run seed 3: T1 blur, rotate, hflip; T2 translate, colour, scale). At this small size the gap
    depends on which categories land in T2 (in the quick profile's runs too, see docs/transforms2d.md), so the
    margin asserted is well below the one this seed gives (0.62 vs 0.28 here)."""
    profile = get_profile("quick", objects_per_set=10, train=2000, val=200, epochs=6, target_train=600,
                          target_test=300, runs=1)
    run = run_experiment("transfer", Context(profile, seed=3), tmp_path, "test")["runs"][0]
    accuracy = run["accuracy"]
    assert set(run["T2"]) == {"translate", "scale", "colour"} and set(run["T1"]) == {"blur", "rotate", "hflip"}
    assert accuracy["D_transforms"] > accuracy["D_objects"] + 0.15, accuracy
    assert accuracy["D_all"] > accuracy["D_none"] + 0.3, accuracy


def test_the_readout_learns_from_an_untrained_networks_tiny_features():
    """An untrained network's penultimate features are ~1e-3: without standardizing them, the new
    last layer stayed at chance (0.10) on Fashion-MNIST; with it, it reads the class."""
    import torch

    from equiprobe.trainer.t2d import fmnist
    from equiprobe.trainer.t2d.models import build
    from equiprobe.trainer.t2d.training import features, finetune_last_layer

    images, labels = fmnist.fashion_mnist("test")
    torch.manual_seed(0)
    f = features(build("small-cnn", 10), fmnist.to_canvas(images[:1200], 32))
    assert f.std(0).mean() < 0.01  # the scale that broke it
    result = finetune_last_layer(f[:800], labels[:800], f[800:], labels[800:1200], 10, epochs=25, lr=1e-3,
                                 batch_size=128, seed=0)
    assert result["accuracy"] > 0.35, result
