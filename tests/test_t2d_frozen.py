"""`equiprobe t2d frozen` against the real Triton server (squeezenet1_1, tiny sizes): the four transfer
datasets embedded into stores, linear-probe accuracies and per-category latent G-EED."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from equiprobe.clients.store import Store
from equiprobe.trainer.t2d.experiments import TRANSFER_TARGETS
from equiprobe.trainer.t2d.transforms2d import NAMES

from .conftest import ENCODER

EQUIPROBE = str(Path(sys.executable).parent / "equiprobe")


def test_frozen_embeds_the_transfer_datasets_and_reports_accuracies_and_geed(server, tmp_path):
    out = tmp_path / "frozen"
    proc = subprocess.run([EQUIPROBE, "t2d", "frozen", "--encoder", ENCODER, "--url", server.config.grpc_url,
                           "--out", str(out), "--train", "30", "--test", "15", "--geed-images", "12",
                           "--objects-per-set", "3", "--max-epochs", "40", "--quiet"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    results = json.loads((out / "frozen.json").read_text())
    assert printed["accuracy"] == results["accuracy"] and set(results["accuracy"]) == set(TRANSFER_TARGETS)
    for name in TRANSFER_TARGETS:
        store = Store.open(out / "stores" / name)
        assert store.complete and store.manifest["count"] == 45 and store.manifest["encoder"] == ENCODER
        assert store.manifest["uploads"] == "none" and len(store.manifest["label_names"]) == 3
        probe = results["probes"][name]
        assert probe["test_images"] == 15 and probe["train_images"] + probe["val_images"] == 30
        assert 0 <= probe["accuracy"] <= 1
    # Three objects on fixed transformations: a pretrained encoder tells them apart well above chance.
    assert results["accuracy"]["D_all"] > 0.5
    geed = results["geed"]["per_category"]
    assert set(geed) == set(NAMES) and all(g["images"] == 12 for g in geed.values())
    assert all(np.isfinite(g["euclidean"]) and g["euclidean"] > 0 and 0 < g["cosine"] for g in geed.values())
    assert all(g["euclidean"] < 2 for g in geed.values()) and results["geed"]["normalizer"]["euclidean"] > 0
    geed_store = Store.open(out / "stores" / "geed")
    assert geed_store.manifest["count"] == 12 * (len(NAMES) + 1)
