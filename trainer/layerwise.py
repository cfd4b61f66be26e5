"""Layer-wise probing (Alain and Bengio, "Understanding intermediate layers using linear classifier
probes", 2016): how much of the fine task each early block of a frozen encoder holds, against its
final embedding.

For a store with FEATURES (the encoder's tapped blocks, feature_layout in its manifest), one
linear probe per block reads only that block's pooled statistics (its mean and standard deviation
per channel), one reads the final embedding, and one reads everything; each is a standardized
logistic regression (trainer.baselines: C chosen by validation accuracy, fitted along the C grid
from the smallest, each fit warm-started from the last) on the training sources
and is tested on the test sources: 31-way accuracy, and the AUC of 1 - P(identity) for telling
edited versions from originals, the detector's question. The study probes the final embedding
only; this is the same question asked of every depth.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from equiprobe.clients.store import Store

from .baselines import fit_logreg, gather
from .data import ProbeData, Task

C_GRID = (0.01, 0.1, 1.0)  # the usual linear-probe range; the best on validation is kept per block
IDENTITY = "identity"


@dataclass(frozen=True)
class LayerwiseConfig:
    c_grid: tuple[float, ...] = C_GRID
    max_examples: int = 60_000  # training (and validation) examples in memory, a fixed-seed subsample above
    max_iter: int = 60  # per C, along the path (cold fits of 300 at each C: 142 -> 36 s on the demo's fine store)
    seed: int = 0


def column_sets(store: Store) -> list[tuple[str, np.ndarray]]:
    """(name, columns of the probe data's example) per block, then the embedding, then everything."""
    dim, layout = int(store.manifest["dim"]), store.manifest.get("feature_layout") or []
    sets = []
    for block in layout:
        name = f"{block['part']}:{block['block']}" if "part" in block else block["block"]
        sets.append((name, dim + np.r_[block["mean"][0]:block["mean"][1], block["std"][0]:block["std"][1]]))
    sets.append(("embedding", np.arange(dim)))
    sets.append(("all", np.arange(dim + store.features_dim)))
    return sets


def layerwise_table(store_path, config: LayerwiseConfig = LayerwiseConfig(), progress: bool = True) -> dict:
    """{"store", "encoder", "rows": [{"block", "columns", "C", "val_accuracy", "test_accuracy", "test_auc"}]}."""
    from rich.progress import track
    from sklearn.metrics import roc_auc_score

    store = Store.open(store_path)
    data = ProbeData.from_store(store, Task.from_store(store, "fine"), features=True)
    mean, std = data.feature_statistics()
    train, val, test = (gather(data, part, mean, std, config.max_examples if part != "test" else 10 ** 9, config.seed)
                        for part in ("train", "val", "test"))
    identity = data.task.classes.index(IDENTITY)
    rows = []
    for name, columns in track(column_sets(store), description="layer-wise linear probes", disable=not progress):
        best, model, x = None, None, train.x[:, columns].astype(np.float64)
        for c in sorted(config.c_grid):  # a path: each C starts from the last one's weights
            model = fit_logreg(x, train.y, c, config.max_iter, start=model)
            accuracy = float((model.predict(val.x[:, columns]) == val.y).mean())
            if best is None or accuracy > best[1]:
                best = (c, accuracy, copy.deepcopy(model))
        c, val_accuracy, model = best
        probabilities = model.predict_proba(test.x[:, columns])
        p_identity = probabilities[:, list(model.classes_).index(identity)]
        predicted = model.classes_[probabilities.argmax(1)]
        rows.append({"block": name, "columns": int(len(columns)), "C": c, "val_accuracy": val_accuracy,
                     "test_accuracy": float((predicted == test.y).mean()),
                     "test_auc": float(roc_auc_score(test.y != identity, 1 - p_identity))})
    return {"store": str(store.path), "encoder": store.manifest["encoder"], "images": {
        "train": len(data.train_rows), "val": len(data.val_rows), "test": len(data.test_rows)}, "rows": rows}


def plot_layerwise(table: dict, out) -> None:
    """Test accuracy and AUC per block, shallow to deep, then the embedding and everything."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table["rows"]
    names = [r["block"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    ax.bar(x - 0.2, [r["test_accuracy"] for r in rows], 0.4, label="31-way accuracy (test)")
    ax.bar(x + 0.2, [r["test_auc"] for r in rows], 0.4, label="AUC edited vs original (test)")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(f"layer-wise linear probes, {table['encoder']}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
