"""`equiprobe bench train`: on one store, side by side in one run, the torch linear probe against
scikit-learn's logistic regression (time to train and test accuracy), the MLP probe, and how many
store rows per second the memory-mapped reader delivers.

Every figure is measured here, now, on the same store and split; ratios compare runs of this
process only.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from equiprobe.clients.store import Store
from equiprobe.trainer.baselines import BaselineConfig, train_baseline
from equiprobe.trainer.data import ProbeData, Task
from equiprobe.trainer.probes import ProbeConfig
from equiprobe.trainer.train import train_probes


def read_rate(store_path: Path, task: str, batch_size: int = 4096) -> dict:
    """One pass over the training examples, as the probes read them (shuffled, by memory map)."""
    store = Store.open(store_path)
    data = ProbeData.from_store(store, Task.from_store(store, task))
    t0 = time.perf_counter()
    rows = 0
    for x, _, _ in data.batches("train", batch_size, shuffle_seed=0):
        rows += len(x)
    elapsed = time.perf_counter() - t0
    return {"examples": rows, "seconds": elapsed, "examples_per_s": rows / elapsed,
            "mb_per_s": rows * data.dim * np.dtype(store.manifest["dtype"]).itemsize / elapsed / 1e6}


def run_train_bench(store_path: Path, task: str = "fine", probe: Optional[ProbeConfig] = None,
                    baseline: Optional[BaselineConfig] = None) -> dict:
    """`probe` sets the torch probes but their kind (linear, then mlp); `baseline` the logistic
    regression's (its kind is logreg). Default: the dataclasses' defaults."""
    probe, baseline = probe or ProbeConfig(), replace(baseline or BaselineConfig(), kind="logreg")
    results = {"read": read_rate(store_path, task)}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "torch linear": lambda out: train_probes(store_path, task, replace(probe, kind="linear"), [0], out,
                                                     progress=False),
            "sklearn logreg": lambda out: train_baseline(store_path, task, baseline, out, progress=False),
            "torch mlp": lambda out: train_probes(store_path, task, replace(probe, kind="mlp"), [0], out,
                                                  progress=False),
        }
        for name, run in runs.items():
            t0 = time.perf_counter()
            record = run(Path(tmp) / name.replace(" ", "_"))
            results[name] = {"seconds": time.perf_counter() - t0,
                             "test_accuracy": record["summary"]["test_accuracy"]["mean"],
                             "detail": record.get("selection") or {"epochs": record["runs"][0]["epochs"]}}
    results["logreg_time_over_torch_linear"] = results["sklearn logreg"]["seconds"] / results["torch linear"]["seconds"]
    results["accuracy_torch_linear_minus_logreg"] = (results["torch linear"]["test_accuracy"]
                                                      - results["sklearn logreg"]["test_accuracy"])
    return results
