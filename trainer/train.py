"""`equiprobe train`: probes over seeds on one store; the probe and its metrics saved together.

Saved in OUT: `probe.pt` (the state dict of the seed with the best validation accuracy or, with
`--ensemble`, of every seed's probe averaged, trainer.probes.SeedEnsemble; it takes raw
embeddings), `probe.json` (kind, embedding dim, class names, catalog version, encoder and its
ONNX hash, task, hyperparameters, "deployable", and metrics per seed with their mean and std);
for the fine task also `scores.npz` (the detector's outputs on validation and test sources) and
probe.json's "detector" card (threshold for 5% FPR chosen on validation, figures on test).
The baselines (trainer.baselines: logreg, knn) write the same record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from equiprobe.clients.store import Store
from equiprobe.services.transforms import get_catalog

from .data import ProbeData, Task
from .probe_record import ProbeRecord
from .detector_scores import card_for, save_scores
from .probe_export import IDENTITY
from .probes import ProbeConfig, SeedEnsemble, config_dict, fit, predict


def version_families(manifest: dict) -> list[Optional[str]]:
    """Each stored version's family ("noise", "style" or None); neural-style rows are style."""
    transforms = get_catalog(manifest["catalog"]).transforms
    return [transforms[k].family if k < len(transforms) else "style" for k in range(len(manifest["rows"]))]


def test_metrics(data: ProbeData, predicted: np.ndarray, truth: np.ndarray, versions: np.ndarray) -> dict:
    """Test accuracy overall and per stored version. Multitask: the transformation head's
    figures, plus the semantic head's accuracy; semantic: per-version figures say how much each
    manipulation costs the semantic label."""
    m = data.store.manifest
    correct = predicted == truth
    extra = {}
    if correct.ndim == 2:  # multitask: (transformation, semantic)
        extra = {"semantic_accuracy": float(correct[:, 1].mean())}
        correct = correct[:, 0]
    per_version = {m["rows"][k]: float(correct[versions == k].mean()) for k in np.unique(versions)}
    metrics = {"test_accuracy": float(correct.mean()), **extra, "per_version_accuracy": per_version}
    spec = data.task.spec
    if spec.held_out_families or spec.per_style:
        families, splits = version_families(m), m["row_splits"]
    if spec.held_out_families:
        held_out = np.array([s == "test" for s in splits])
        for family in spec.held_out_families:
            in_family = np.array([f == family for f in families])
            chosen = np.isin(versions, np.flatnonzero(in_family & held_out))
            metrics[f"held_out_{family}_accuracy"] = float(correct[chosen].mean()) if chosen.any() else None
    if spec.per_style:
        metrics["per_style_accuracy"] = {
            m["rows"][k]: {"accuracy": per_version[m["rows"][k]], "seen": splits[k] == "train"}
            for k in range(len(families)) if families[k] == "style" and m["rows"][k] in per_version}
    return metrics


def summarize(runs: list[dict]) -> dict:
    """Mean and std over seeds of every scalar metric."""
    summary = {}
    for key, value in runs[0].items():
        if isinstance(value, float):
            values = [r[key] for r in runs]
            summary[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return summary


def semantic_only(data: ProbeData, config: ProbeConfig, seed: int, statistics) -> float:
    """Test accuracy of a semantic-only probe on the same examples and split as a multitask probe."""
    task = Task.from_store(data.store, "semantic")
    same = ProbeData(data.store, task, data.train_rows, data.val_rows, data.test_rows, data.image_labels)
    predicted, truth, _ = predict(fit(same, config, seed, statistics=statistics).model, same, "test")
    return float((predicted == truth).mean())


def train_probes(store_path: Path, task_name: str, config: ProbeConfig, seeds: list[int], out: Path,
                 progress: bool = True, split_by: str = "store", also: Sequence[Path] = ()) -> dict:
    """`also`: other stores of the same encoder and sources whose versions are classes of the task
    (a fine store for the detect task: its strong edits); their training sources join the
    training part. Validation (early stopping, calibration, threshold) and test stay store_path's."""
    store = Store.open(store_path)
    task = Task.from_store(store, task_name)
    data = ProbeData.from_store(store, task, split_by, features=config.features)
    data.also = tuple(data.aligned(Store.open(path), split_by) for path in also)
    runs, best, members = [], None, []
    statistics = data.feature_statistics()  # one pass over the store, shared by every seed
    from rich.progress import Progress

    with Progress(disable=not progress) as bar:
        job = bar.add_task(f"{config.kind} probe, {task_name} task", total=len(seeds) * config.max_epochs)
        for seed in seeds:
            done = bar.tasks[0].completed
            result = fit(data, config, seed, statistics=statistics, progress=lambda epoch, h: bar.update(
                job, completed=done + epoch + 1,
                description=f"seed {seed} epoch {epoch} val {config.stop_on} {h[f'val_{config.stop_on}']:.3f}"))
            bar.update(job, completed=done + config.max_epochs)
            metrics = test_metrics(data, *predict(result.model, data, "test"))
            if task.spec.semantic_only:  # the study's claim: the semantic head loses nothing
                metrics["semantic_only_accuracy"] = semantic_only(data, config, seed, statistics)
                metrics["semantic_accuracy_change"] = metrics["semantic_accuracy"] - metrics["semantic_only_accuracy"]
            runs.append({"seed": seed, "val_accuracy": result.val_accuracy, f"val_{config.stop_on}": result.val_score,
                         "epochs": result.epochs, "best_epoch": result.best_epoch, **metrics})
            if config.ensemble:
                members.append(result.model)
            if best is None or result.val_score > best.val_score:
                best = result
    # probe.pt takes raw embeddings: the seed of best validation score (config.stop_on), or every seed averaged
    saved = SeedEnsemble(members) if config.ensemble else best.model
    record = probe_record(store_path, data, split_by, runs, kind=config.kind, config=config_dict(config),
                          seeds=seeds, saved_seed=None if config.ensemble else best.seed, deployable=True)
    if data.also:  # what else trained it: kept with the record (probe.json's extra keys)
        record.extra["also"] = [{"store": str(d.store.path), "train_images": len(d.train_rows),
                                 "versions": len(d.task.train_versions)} for d in data.also]
    out.mkdir(parents=True, exist_ok=True)
    if task.spec.detector and IDENTITY in task.classes:  # the detector's figures, threshold on validation
        record.detector = card_for(save_scores(saved, data, out))
    torch.save(saved.cpu().state_dict(), out / "probe.pt")
    record.write(out)
    return record.as_dict()


def probe_record(store_path: Path, data: ProbeData, split_by: str, runs: list[dict], **fitted) -> ProbeRecord:
    """What every probe's probe.json says of its store, task, split and metrics; `fitted`: the
    probe's own fields (kind, config, seeds, saved_seed, deployable, selection)."""
    m = data.store.manifest
    return ProbeRecord(
        task=data.task.name, dim=data.dim, classes=data.task.classes,
        features_dim=data.store.features_dim if "features" in data.inputs else None,
        heads=[{"name": name, "classes": classes} for name, classes in data.task.heads], split=split_by,
        catalog=m["catalog"], catalog_version=m["catalog_version"], rows=m["rows"], encoder=m["encoder"],
        encoder_onnx_sha256=m["encoder_onnx_sha256"], store=str(store_path),
        images={"train": len(data.train_rows), "val": len(data.val_rows), "test": len(data.test_rows)},
        summary=summarize(runs), runs=runs, **fitted)
