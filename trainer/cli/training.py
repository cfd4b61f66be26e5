"""`equiprobe train` (probes and the logreg / knn baselines) and `equiprobe baseline-store`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from equiprobe.trainer.configs import BASELINES, BaselineConfig, ProbeConfig
from equiprobe.trainer.tasks import TASKS

from .common import baseline_options, fail, probe_options


@baseline_options()
@probe_options()
def train(
    store: Path = typer.Option(..., help="Store written by `equiprobe embed`."),
    task: str = typer.Option("fine", help="; ".join(f"{t.name} ({t.help})" for t in TASKS.values()) + "."),
    probe: str = typer.Option(ProbeConfig.kind, help=f"linear or mlp (one hidden layer of {ProbeConfig.hidden}, "
                              f"dropout {ProbeConfig.dropout}); or the baselines "
                              "logreg (scikit-learn, C chosen on validation) and knn (faiss, k chosen on validation), "
                              "deterministic: one run, --seeds ignored."),
    out: Path = typer.Option(..., help="Directory for probe.pt and probe.json."),
    seeds: int = typer.Option(5, help="Repeats with seeds 0..N-1; metrics are reported as mean and std."),
    split: str = typer.Option("store", help="store: the store's train/test split; hash: by image key (80/20), "
                              "for semantic tasks on stores that hold whole classes out."),
    quiet: bool = typer.Option(False, help="No progress bar."),
    also: Optional[list[Path]] = typer.Option(None, help="Another store (repeatable) of the same encoder and "
                                               "sources whose versions are classes of the task, such as a fine "
                                               "store for --task detect: its training sources join the training "
                                               "part; validation and test stay --store's. mlp and linear only."),
    probe_fields: Optional[dict] = None,
    baseline_fields: Optional[dict] = None,
) -> None:
    """Train a probe that predicts how each stored version was transformed."""
    from equiprobe.clients.store import StoreError
    from equiprobe.trainer.baselines import train_baseline
    from equiprobe.trainer.train import train_probes

    try:
        if probe in BASELINES:
            if also:
                raise ValueError("--also trains mlp and linear probes; the baselines read --store alone")
            record = train_baseline(store, task, BaselineConfig(kind=probe, **baseline_fields), out,
                                    progress=not quiet, split_by=split)
        else:
            config = ProbeConfig(kind=probe, **probe_fields)
            record = train_probes(store, task, config, list(range(seeds)), out, progress=not quiet, split_by=split,
                                  also=also or ())
    except (StoreError, ValueError) as exc:
        raise fail(str(exc))
    for key, value in record["summary"].items():
        print(f"{key}: {value['mean']:.3f} +- {value['std']:.3f}")
    if "selection" in record:
        print(f"{record['selection']['parameter']} = {record['selection']['chosen']:g} (best validation accuracy)")
    which = (f"seed {record['saved_seed']}" if "saved_seed" in record
             else f"seeds {', '.join(map(str, record['seeds']))} averaged")
    saved = f"{out / 'probe.pt'} ({which}) and " if record["deployable"] else ""
    print(f"saved {saved}{out / 'probe.json'}")


def baseline_store(
    store: Path = typer.Option(..., help="Embedding store (equiprobe embed) whose images, versions and splits to reuse."),
    features: str = typer.Option(..., help="pixels (16x16 RGB box averages, 768 values) or random-encoder (the "
                                 "store's encoder architecture with random weights)."),
    out: Path = typer.Option(..., help="Directory of the new store (resumed if it holds the same job)."),
    seed: int = typer.Option(0, help="random-encoder: torch seed of the random weights."),
    batch_size: int = typer.Option(64, help="random-encoder: versions per forward pass."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """A baseline feature store over the same images, versions and splits as an embedding store."""
    from equiprobe.clients.datasets import DatasetError
    from equiprobe.clients.store import StoreError
    from equiprobe.trainer.feature_stores import build_baseline_store

    try:
        built = build_baseline_store(store, features, out, seed=seed, batch_size=batch_size, progress=not quiet)
    except (StoreError, DatasetError, ValueError) as exc:
        raise fail(str(exc))
    summary = built.summary()
    print(f"store {out}: {built.manifest['encoder']} features, dim {built.manifest['dim']}; {summary['done']} done, "
          f"{summary['failed']} failed, {summary['pending']} pending (as in {store})")
