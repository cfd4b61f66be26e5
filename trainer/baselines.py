"""Baselines on the same splits as the probes: scikit-learn logistic regression and a faiss
k-nearest-neighbour vote, both over the probe data of trainer.data (split by source image, the
same fixed validation images), with the torch probes' test metrics and probe.json record.

logreg: the usual linear-probe protocol. Embeddings are standardized with the training
statistics (the very mean and std the torch probes use), LogisticRegression (lbfgs, multinomial
L2) is fitted on the training images for each C of a log grid, C is chosen by validation
accuracy, and the chosen model is tested (not refitted on train + validation: the torch probes
never train on the validation images either). It is saved as a linear `trainer.probes.Probe`
(`probe.pt`), so it deploys like any linear probe.

knn: an exact faiss index (IndexFlatL2) of the standardized training embeddings; a test example
gets the majority label of its k nearest neighbours, k chosen on validation. Standardized
rather than L2-normalized: encoder features are far from centred (squeezenet's are pooled ReLU
outputs, all positive), so raw cosines are dominated by the direction every embedding shares and the
transformations barely move them; standardizing centres and equalizes the dimensions, and it
is the input the linear probes see, so the baselines differ from them only in the classifier.

scikit-learn and faiss need their examples in memory: the training and validation parts are
gathered into arrays of at most `max_examples` examples each (a fixed-seed subsample of the
part when it has more), so stores larger than memory still work. Test examples are streamed
in batches and never capped. Both baselines are deterministic: one run, std 0.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from equiprobe.clients.store import Store

from .configs import BASELINES, C_GRID, K_GRID, BaselineConfig  # noqa: F401 (re-exported here)
from .data import ProbeData, Task
from .probes import Probe, ProbeConfig, predict_with
from .tasks import TASKS, spoken
from .train import probe_record, test_metrics

@dataclass
class Examples:
    """One part's examples in memory, standardized: x float32 [n, D], labels [n], versions [n]."""

    x: np.ndarray
    y: np.ndarray
    versions: np.ndarray


def gather(data: ProbeData, part: str, mean: np.ndarray, std: np.ndarray, max_examples: int, seed: int,
           batch_size: int = 4096) -> Examples:
    """A part's examples, read through ProbeData.batches; a fixed-seed subsample of `max_examples`
    where the part has more (decided before reading, so memory never holds more)."""
    total = len(data.examples(part)[0])
    keep = np.ones(total, bool)
    if total > max_examples:
        keep[:] = False
        keep[np.random.default_rng(seed).choice(total, max_examples, replace=False)] = True
    count = int(keep.sum())
    x = np.empty((count, data.dim), np.float32)
    y, versions = np.empty(count, np.int64), np.empty(count, np.int64)
    start = filled = 0
    for bx, by, bv in data.batches(part, batch_size):
        pick = keep[start:start + len(bx)]
        start += len(bx)
        n = int(pick.sum())
        x[filled:filled + n], y[filled:filled + n], versions[filled:filled + n] = bx[pick], by[pick], bv[pick]
        filled += n
    x -= mean
    x /= std
    return Examples(x, y, versions)


# -- logistic regression ------------------------------------------------------------------------

def fit_logreg(x: np.ndarray, y: np.ndarray, c: float, max_iter: int, start=None):
    """Standardized examples -> a fitted LogisticRegression. Pass x as float64: sklearn's lbfgs
    runs about three times slower on float32. With `start` (a model fitted on the same examples),
    that model goes on from its weights at the new C (warm start) and is returned."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    # lbfgs minimizes the multinomial loss for 3 or more classes (sklearn's only choice since 1.7).
    model = (LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter) if start is None
             else start.set_params(C=c, max_iter=max_iter, warm_start=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded as "converged" instead
        model.fit(x, y)
    return model


def logreg_probe(model, classes: int, mean: np.ndarray, std: np.ndarray) -> Probe:
    """The fitted model as a linear Probe that takes raw embeddings. Classes missing from the
    training subsample get zero weights and a bias that never wins; a two-class fit's single row
    becomes the logit of its second class against zero."""
    import torch

    dim = model.coef_.shape[1]
    weight = np.zeros((classes, dim), np.float32)
    bias = np.full(classes, -1e9, np.float32)
    present = model.classes_.astype(int)
    if model.coef_.shape[0] == 1:
        weight[present[1]], bias[present[1]] = model.coef_[0], model.intercept_[0]
        bias[present[0]] = 0.0
    else:
        weight[present], bias[present] = model.coef_, model.intercept_
    probe = Probe(dim, classes, ProbeConfig(kind="linear"), mean.astype(np.float32), std.astype(np.float32))
    with torch.no_grad():
        probe.head.weight.copy_(torch.from_numpy(weight))
        probe.head.bias.copy_(torch.from_numpy(bias))
    return probe.eval()


# -- k nearest neighbours -----------------------------------------------------------------------

def knn_index(train: Examples):
    import faiss

    index = faiss.IndexFlatL2(train.x.shape[1])  # exact search: deterministic
    index.add(np.ascontiguousarray(train.x))
    return index


def neighbour_labels(index, train: Examples, x: np.ndarray, k: int) -> np.ndarray:
    """Labels [n, k] of each query's k nearest training examples, nearest first."""
    _, found = index.search(np.ascontiguousarray(x, np.float32), k)
    return train.y[found]


def vote(labels: np.ndarray, k: int, classes: int) -> np.ndarray:
    """Majority of the first k neighbours; ties go to the class whose neighbours rank nearer
    (each vote is 1 plus a tie-breaker far below 1 that shrinks with rank)."""
    n = len(labels)
    scores = np.zeros((n, classes))
    for rank in range(k):
        scores[np.arange(n), labels[:, rank]] += 1 + 1e-3 / (rank + 1)
    return scores.argmax(1)


# -- the job --------------------------------------------------------------------------------------

# Below this many training values (examples x dim) the linear algebra runs on one thread: the
# threads' synchronization costs more than they share, and on a busy machine their spinning
# slows lbfgs about tenfold (310 x 512 examples on 2 shared cores: 4 s on one thread, 37-80 s
# with two).
SINGLE_THREAD_BELOW = 1 << 22


def first_best(accuracy: list[float]) -> int:
    """Index of the best validation accuracy; ties go to the first: the smallest C (the most
    regularized) or the smallest k."""
    return int(np.argmax(accuracy))


@dataclass
class Selection:
    """The grid, each value's validation accuracy, and how the chosen value classifies."""

    parameter: str
    grid: tuple
    val_accuracy: list[float]
    classify: Callable[[np.ndarray], np.ndarray]  # standardized embeddings -> labels
    extra: dict

    @property
    def best(self) -> int:
        return first_best(self.val_accuracy)

    def record(self, train: Examples, val: Examples) -> dict:
        return {"parameter": self.parameter, "grid": list(self.grid), "val_accuracy": self.val_accuracy,
                "chosen": self.grid[self.best], "examples": {"train": len(train.y), "val": len(val.y)}, **self.extra}


def select_logreg(train: Examples, val: Examples, config: BaselineConfig, step: Callable[[str], None]) -> Selection:
    x64 = train.x.astype(np.float64)  # one copy for the whole grid
    models, accuracy = [], []
    for c in config.c_grid:
        step(f"logreg C={c:g}")
        models.append(fit_logreg(x64, train.y, c, config.max_iter))
        accuracy.append(float((models[-1].predict(val.x) == val.y).mean()))
    model = models[first_best(accuracy)]
    return Selection("C", config.c_grid, accuracy, model.predict,
                     {"converged": bool(model.n_iter_.max() < config.max_iter), "model": model})


def select_knn(train: Examples, val: Examples, config: BaselineConfig, classes: int,
               step: Callable[[str], None]) -> Selection:
    index = knn_index(train)
    grid = tuple(k for k in config.k_grid if k <= len(train.y)) or (len(train.y),)
    step(f"knn search, k up to {max(grid)}")
    nearest = neighbour_labels(index, train, val.x, max(grid))  # one search serves every k
    accuracy = [float((vote(nearest[:, :k], k, classes) == val.y).mean()) for k in grid]
    k = grid[first_best(accuracy)]

    def classify(x: np.ndarray) -> np.ndarray:
        return vote(neighbour_labels(index, train, x, k), k, classes)
    return Selection("k", grid, accuracy, classify, {})


def train_baseline(store_path: Path, task_name: str, config: BaselineConfig, out: Path, progress: bool = True,
                   split_by: str = "store") -> dict:
    """Fit a baseline on a store; save probe.json (and, for logreg, probe.pt) in OUT."""
    import torch
    from rich.progress import Progress
    from threadpoolctl import threadpool_limits

    store = Store.open(store_path)
    task = Task.from_store(store, task_name)
    if len(task.heads) != 1:
        one_head = [t.name for t in TASKS.values() if len(t.heads) == 1]
        raise ValueError(f"the {config.kind} baseline has one head; use it on the {spoken(one_head)} task, "
                         f"not {task_name}")
    data = ProbeData.from_store(store, task, split_by)
    if not len(data.val_rows):
        raise ValueError(f"{store_path}: no validation images to choose the {config.kind} hyperparameter on")
    classes = len(task.heads[0][1])
    mean, std = data.feature_statistics(config.batch_size)
    with Progress(disable=not progress) as bar:
        job = bar.add_task(f"{config.kind} baseline, {task_name} task: reading", total=None)
        train = gather(data, "train", mean, std, config.max_examples, config.seed, config.batch_size)
        val = gather(data, "val", mean, std, config.max_examples, config.seed + 1, config.batch_size)

        def step(text: str) -> None:
            bar.update(job, description=text)
        with threadpool_limits(1 if train.x.size < SINGLE_THREAD_BELOW else None):
            if config.kind == "logreg":
                selection = select_logreg(train, val, config, step)
            else:
                selection = select_knn(train, val, config, classes, step)
            step(f"{config.kind}: testing")
            # Test examples are streamed in batches, standardized like the training ones.
            predictions = predict_with(lambda x: selection.classify((x - mean) / std), data, "test", config.batch_size)
            metrics = test_metrics(data, *predictions)
    model = selection.extra.pop("model", None)
    runs = [{"seed": config.seed, "val_accuracy": selection.val_accuracy[selection.best], **metrics}]
    record = probe_record(
        store_path, data, split_by, runs, kind=config.kind,
        config={**asdict(config), "c_grid": list(config.c_grid), "k_grid": list(config.k_grid)},
        seeds=[config.seed], saved_seed=config.seed,
        # logreg's probe.pt is a linear Probe (trainer.probes.load_probe reads it as one); knn saves none.
        deployable=model is not None, selection=selection.record(train, val))
    out.mkdir(parents=True, exist_ok=True)
    if model is not None:
        torch.save(logreg_probe(model, classes, mean, std).state_dict(), out / "probe.pt")
    elif (out / "probe.pt").exists():
        (out / "probe.pt").unlink()  # the record says deployable false: no stale probe beside it
    record.write(out)
    return record.as_dict()
