"""The report's PNG plots (matplotlib, no display): one function per figure, data in, file out."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def grouped_bars(path: Path, title: str, ylabel: str, categories: list[str], series: dict[str, list[float]],
                 ylim: tuple[float, float] | None = (0, 1), colours: list[str] | None = None) -> Path:
    """One group of bars per category, one bar per series (probe, metric, ...)."""
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(min(16, max(8, 0.3 * len(categories) * max(len(series), 1) + 2)), 4.5))
    x = np.arange(len(categories))
    for i, (name, values) in enumerate(series.items()):
        values = [np.nan if v is None else v for v in values]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name,
               color=colours if colours and len(series) == 1 else None)
    ax.set_xticks(x, categories, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def confusion(path: Path, title: str, matrix: np.ndarray, classes: list[str]) -> Path:
    """Row-normalized confusion matrix: row = true class, column = predicted class."""
    counts = np.asarray(matrix, float)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = max(5, 0.28 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    return _save(fig, path)


def seen_unseen_bars(path: Path, title: str, styles: dict[str, dict]) -> Path:
    """Per-style accuracy, seen styles in one colour and held-out ones in another."""
    names = sorted(styles, key=lambda n: (not styles[n]["seen"], n))
    colours = ["tab:blue" if styles[n]["seen"] else "tab:orange" for n in names]
    path = grouped_bars(path, title + "  (blue: seen in training, orange: held out)", "accuracy", names,
                        {"accuracy": [styles[n]["accuracy"] for n in names]}, colours=colours)
    return path
