"""Each experiment's figure as a PNG, laid out as in the paper: bars for transfer (Figure 2) and the
irrelevant-feature conditions (Figure 3), heatmaps of the train x target accuracies for subsets,
classes and single (Figures 8, 5, 6; single adds the distance ratios), curves over alpha and beta
for relevance and availability (Figure 4). Error bars and the numbers printed are mean +- std over runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(results: dict) -> str:
    s = results["settings"]
    return (f"{results['experiment']} ({results['figure']} layout): {s['arch']}, profile {results['profile']}, "
            f"{len(results['runs'])} run(s)")


def bars(ax, names, means, stds, chance=None, ylabel="test accuracy"):
    colours = ["#4c72b0", "#55a868", "#c44e52", "#8172b2", "#ccb974", "#64b5cd"]
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color=colours[:len(names)])
    for i, (m, s) in enumerate(zip(means, stds)):
        ax.text(i, m + s + 0.01, f"{m:.3f}", ha="center", va="bottom", fontsize=8)
    if chance is not None:
        ax.axhline(chance, color="gray", ls="--", lw=1, label="chance")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)


def heatmap(ax, matrix, rows, columns, title, fmt="{:.2f}", vmin=0.0, vmax=1.0):
    matrix = np.asarray(matrix, np.float64)
    image = ax.imshow(matrix, cmap="viridis", vmin=vmin, vmax=vmax)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, fmt.format(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] < (vmin + vmax) / 2 else "black")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel("target dataset (fine-tuned and tested)")
    ax.set_ylabel("trained on")
    ax.set_title(title, fontsize=9)
    return image


def plot(name: str, results: dict, path: Path) -> None:
    plt = _plt()
    summary, runs = results["summary"], results["runs"]
    if name == "transfer":
        fig, ax = plt.subplots(figsize=(6, 4))
        names = list(summary)
        bars(ax, names, [summary[n]["mean"] for n in names], [summary[n]["std"] for n in names],
             chance=1.0 / results["settings"]["objects_per_set"])
    elif name in ("subsets", "classes", "single"):
        labels = ([f"T{i + 1}" for i in range(len(runs[0]["subsets"]))] if name == "subsets"
                  else runs[0]["datasets"] if name == "classes" else runs[0]["categories"])
        panels = 2 if name == "single" else 1
        fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.8))
        axes = np.atleast_1d(axes)
        heatmap(axes[0], summary["matrix"]["mean"], labels, labels, "test accuracy after last-layer fine-tuning")
        if name == "single":
            ratio = np.asarray(summary["distance_ratio"]["mean"])
            heatmap(axes[1], ratio, labels, labels, "between / within-class L2 distance (penultimate)",
                    vmin=1.0, vmax=max(1.5, float(np.nanmax(ratio))))
    elif name == "irrelevant":
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        names = list(summary)
        for ax, measure, title in ((axes[0], "object_accuracy", "object read out (irrelevant feature)"),
                                   (axes[1], "fmnist_accuracy", "Fashion-MNIST label")):
            bars(ax, names, [summary[n][measure]["mean"] for n in names], [summary[n][measure]["std"] for n in names],
                 chance=1.0 / (results["settings"]["fmnist_objects"] if measure == "object_accuracy" else 10))
            ax.set_title(title, fontsize=9)
    elif name in ("relevance", "availability"):
        x = runs[0]["alphas" if name == "relevance" else "betas"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for measure, label in (("object_accuracy", "object read out"), ("fmnist_accuracy", "Fashion-MNIST label")):
            ax.errorbar(x, summary[measure]["mean"], yerr=summary[measure]["std"], marker="o", capsize=3, label=label)
        ax.axhline(1.0 / results["settings"]["fmnist_objects"], color="gray", ls="--", lw=1, label="object chance")
        ax.set_xlabel("alpha (correlation of object and label)" if name == "relevance"
                      else "beta (share of training images with an object)")
        ax.set_ylabel("test accuracy (last layer fine-tuned)")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
    else:
        raise ValueError(f"no figure for {name!r}")
    fig.suptitle(_title(results), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
