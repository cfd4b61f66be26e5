"""The experiments' registry: what each trains, on what, and what it measures.

Every run r (seed S + r) draws its own object sets O1, O2 (|O| objects each, disjoint, from the
paper-sized set of 61) and transformation sets (a permutation of the 8 categories: T1 its first
|T|, T2 the next |T|). A model is trained on a Transforms-2D dataset (train split; backgrounds of
the corpus's train sources), then for each target dataset its last layer is replaced and fine-tuned
on the target's train split, and tested on the target's test split (backgrounds of the corpus's
test sources, never seen in training). Targets are fresh draws (their own seeds), so even D_all
holds new images.

    transfer      (Figure 2) train on (O1, T1); targets D_all (O1, T1), D_transforms (O2, T1),
                  D_objects (O1, T2), D_none (O2, T2)
    subsets       (Figure 8) nested T_1 in ... in T_8 (the run's category order); train on (O1, T_i),
                  target (O2, T_j) for every i, j
    classes       (Figure 5) D_T1 (O1 with T1), D_T2 (O1 with T2), D_T1+T2 (the first half of the
                  classes with T1, the others with T2), D_T1oT2 (O1 with both); train on each, target
                  the same four constructions on O2
    single        (Figure 6) one model per category, target (O2, that category) for every category;
                  also the between/within-class L2 distance ratio of the penultimate representations
    irrelevant    (Figure 3) Fashion-MNIST with small objects pasted: models trained without objects,
                  with irrelevant objects (alpha 0, beta 1) and an untrained one; how well the object
                  can be read from their representations (last layer fine-tuned to the object),
                  and their Fashion-MNIST accuracy, on test images with random objects
    relevance     (Figure 4) the same measures over the correlation sweep alpha (beta 1)
    availability  (Figure 4) over the availability sweep beta (alpha = the profile's availability_alpha)
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import generate, prototypes
from .profiles import Profile
from .transforms2d import NAMES

TRANSFER_TARGETS = ("D_all", "D_transforms", "D_objects", "D_none")
CLASS_DATASETS = ("D_T1", "D_T2", "D_T1+T2", "D_T1oT2")


@dataclass
class Context:
    profile: Profile
    seed: int = 0
    progress: Optional[Callable[[str, int], Callable[[int], None]]] = None  # (label, total) -> advance
    log: Callable[[str], None] = lambda message: None
    train_rates: list = field(default_factory=list)
    rendered: dict = field(default_factory=dict)  # (spec, split) -> images: targets are rendered once per run

    def bar(self, label: str, total: int) -> Callable[[int], None]:
        return self.progress(label, total) if self.progress else (lambda n: None)


@dataclass(frozen=True)
class RunSets:
    seed: int
    o1: tuple[int, ...]
    o2: tuple[int, ...]
    order: tuple[str, ...]  # the categories in this run's order

    def t(self, which: int, count: int) -> tuple[str, ...]:
        return self.order[(which - 1) * count:which * count]

    def as_dict(self, count: int) -> dict:
        return {"seed": self.seed, "O1": [prototypes.OBJECTS[o] for o in self.o1],
                "O2": [prototypes.OBJECTS[o] for o in self.o2], "T1": list(self.t(1, count)),
                "T2": list(self.t(2, count)), "order": list(self.order)}


def run_sets(profile: Profile, seed: int) -> RunSets:
    k = profile.objects_per_set
    pool = prototypes.OBJECT_SETS["paper"]
    if 2 * k > len(pool):
        raise ValueError(f"--objects-per-set {k}: O1 and O2 are disjoint sets from {len(pool)} objects")
    if 2 * profile.transforms_per_set > len(NAMES):
        raise ValueError(f"--transforms-per-set {profile.transforms_per_set}: T1 and T2 are disjoint, "
                         f"from {len(NAMES)} categories")
    rng = np.random.default_rng([seed, 7])
    objects = rng.permutation(pool)
    order = tuple(NAMES[i] for i in rng.permutation(len(NAMES)))
    return RunSets(seed, tuple(int(o) for o in objects[:k]), tuple(int(o) for o in objects[k:2 * k]), order)


def spec(objects, transforms, profile: Profile, seed: int, target: bool) -> generate.DatasetSpec:
    counts = ({"train": profile.target_train, "val": 0, "test": profile.target_test} if target
              else {"train": profile.train, "val": profile.val, "test": 0})
    return generate.DatasetSpec(objects=tuple(objects), transforms=tuple(transforms), size=profile.size,
                                counts=counts, seed=seed)


def render_split(ctx: Context, s: generate.DatasetSpec, split: str, label: str):
    key = (json.dumps(s.as_dict(), sort_keys=True), split)
    if key not in ctx.rendered:
        ctx.rendered[key] = generate.images(s, split, progress=ctx.bar(f"render {label} {split}",
                                                                        int(s.counts[split])))
    return ctx.rendered[key]


def train_on(ctx: Context, s: generate.DatasetSpec, seed: int, label: str):
    from .training import train_model

    p = ctx.profile
    images, labels = render_split(ctx, s, "train", label)
    val = render_split(ctx, s, "val", label) if s.counts["val"] else None
    bar = ctx.bar(f"train {p.arch} on {label}", p.epochs * len(images))
    result = train_model(p.arch, images, labels, len(s.objects), epochs=p.epochs, batch_size=p.batch_size, lr=p.lr,
                         weight_decay=p.weight_decay, seed=seed, val=val, progress=bar)
    ctx.train_rates.append(result.images_per_second)
    info = {"seconds": result.seconds, "images_per_second": result.images_per_second,
            "final_loss": result.history[-1]["loss"], "val_accuracy": result.history[-1].get("val_accuracy")}
    ctx.log(f"{label}: trained in {result.seconds:.1f} s ({result.images_per_second:.0f} img/s), "
            f"val acc {info['val_accuracy']}")
    return result.model, info


def target_features(ctx: Context, model, s: generate.DatasetSpec, label: str) -> dict:
    from .training import features

    out = {}
    for split in ("train", "test"):
        images, labels = render_split(ctx, s, split, label)
        out[split] = (features(model, images), labels)
    return out


def finetune(ctx: Context, feats: dict, classes: int, seed: int) -> dict:
    from .training import distance_ratio, finetune_last_layer

    p = ctx.profile
    result = finetune_last_layer(*feats["train"], *feats["test"], classes, epochs=p.finetune_epochs,
                                 lr=p.finetune_lr, batch_size=p.batch_size, seed=seed)
    result["distance_ratio"] = distance_ratio(*feats["test"], seed=seed)
    return result


def evaluate(ctx: Context, model, targets: dict[str, generate.DatasetSpec], seed: int) -> dict:
    out = {}
    for name, s in targets.items():
        out[name] = finetune(ctx, target_features(ctx, model, s, name), len(s.objects), seed)
        ctx.log(f"  {name}: {out[name]['accuracy']:.3f}")
    return out


def target_seed(run_seed: int, k: int) -> int:
    return run_seed * 1000 + 100 + k


# -- the Transforms-2D experiments ----------------------------------------------------------------

def transfer(ctx: Context, r: int) -> dict:
    p, seed = ctx.profile, ctx.seed + r
    sets = run_sets(p, seed)
    t1, t2 = sets.t(1, p.transforms_per_set), sets.t(2, p.transforms_per_set)
    model, info = train_on(ctx, spec(sets.o1, t1, p, seed * 1000 + 1, False), seed, "D_train (O1, T1)")
    design = {"D_all": (sets.o1, t1), "D_transforms": (sets.o2, t1), "D_objects": (sets.o1, t2),
              "D_none": (sets.o2, t2)}
    targets = {n: spec(o, t, p, target_seed(seed, k), True) for k, (n, (o, t)) in enumerate(design.items())}
    results = evaluate(ctx, model, targets, seed)
    return {**sets.as_dict(p.transforms_per_set), "train": info,
            "accuracy": {n: results[n]["accuracy"] for n in TRANSFER_TARGETS}, "targets": results}


def subsets(ctx: Context, r: int) -> dict:
    p, seed = ctx.profile, ctx.seed + r
    sets = run_sets(p, seed)
    nested = [sets.order[:i] for i in range(1, len(NAMES) + 1)]
    targets = {f"T{j + 1}": spec(sets.o2, t, p, target_seed(seed, j), True) for j, t in enumerate(nested)}
    matrix, trained = [], []
    for i, t in enumerate(nested):
        model, info = train_on(ctx, spec(sets.o1, t, p, seed * 1000 + 1 + i, False), seed, f"T{i + 1}")
        results = evaluate(ctx, model, targets, seed)
        matrix.append([results[n]["accuracy"] for n in targets])
        trained.append(info)
    return {**sets.as_dict(p.transforms_per_set), "subsets": [list(t) for t in nested], "matrix": matrix,
            "train": trained}


def class_constructions(sets: RunSets, objects, p: Profile) -> dict[str, tuple]:
    t1, t2 = sets.t(1, p.transforms_per_set), sets.t(2, p.transforms_per_set)
    half = len(objects) // 2
    return {"D_T1": (t1,) * len(objects), "D_T2": (t2,) * len(objects),
            "D_T1+T2": (t1,) * half + (t2,) * (len(objects) - half),
            "D_T1oT2": (tuple(t1) + tuple(t2),) * len(objects)}


def classes(ctx: Context, r: int) -> dict:
    p, seed = ctx.profile, ctx.seed + r
    sets = run_sets(p, seed)
    train_sets, target_sets = class_constructions(sets, sets.o1, p), class_constructions(sets, sets.o2, p)
    targets = {n: spec(sets.o2, t, p, target_seed(seed, k), True) for k, (n, t) in enumerate(target_sets.items())}
    matrix, trained = [], []
    for i, (name, transforms) in enumerate(train_sets.items()):
        model, info = train_on(ctx, spec(sets.o1, transforms, p, seed * 1000 + 1 + i, False), seed, name)
        results = evaluate(ctx, model, targets, seed)
        matrix.append([results[n]["accuracy"] for n in CLASS_DATASETS])
        trained.append(info)
    return {**sets.as_dict(p.transforms_per_set), "datasets": list(CLASS_DATASETS), "matrix": matrix,
            "train": trained}


def single(ctx: Context, r: int) -> dict:
    p, seed = ctx.profile, ctx.seed + r
    sets = run_sets(p, seed)
    targets = {n: spec(sets.o2, (n,), p, target_seed(seed, j), True) for j, n in enumerate(NAMES)}
    matrix, ratios, trained = [], [], []
    for i, name in enumerate(NAMES):
        model, info = train_on(ctx, spec(sets.o1, (name,), p, seed * 1000 + 1 + i, False), seed, name)
        results = evaluate(ctx, model, targets, seed)
        matrix.append([results[n]["accuracy"] for n in NAMES])
        ratios.append([results[n]["distance_ratio"] for n in NAMES])
        trained.append(info)
    return {**sets.as_dict(p.transforms_per_set), "categories": list(NAMES), "matrix": matrix,
            "distance_ratio": ratios, "train": trained}


# -- the irrelevant-feature experiments (Fashion-MNIST) -------------------------------------------

def fmnist_sets(ctx: Context, seed: int) -> dict:
    """Train and test canvases (fixed subsets), and the decorrelated object-readout sets."""
    from . import fmnist

    p = ctx.profile
    out = {}
    for split, n in (("train", p.fmnist_train), ("test", p.fmnist_test)):
        images, labels = fmnist.fashion_mnist(split)
        pick = np.sort(np.random.default_rng([seed, 3, len(split)]).choice(len(images), min(n, len(images)),
                                                                           replace=False))
        out[split] = (fmnist.to_canvas(images[pick], p.size), labels[pick])
    # Readout: random objects on every image (alpha 0, beta 1), on images not used to train the model.
    readout_train = fmnist.paste(*out["test"], alpha=0.0, beta=1.0, objects=p.fmnist_objects, side=p.object_side,
                                 seed=seed * 1000 + 7)
    half = len(readout_train.images) // 2
    out["readout"] = {"train": (readout_train.images[:half], readout_train.objects[:half], readout_train.labels[:half]),
                      "test": (readout_train.images[half:], readout_train.objects[half:],
                               readout_train.labels[half:])}
    return out


def fmnist_measure(ctx: Context, model, data: dict, seed: int) -> dict:
    """Object readout (last layer fine-tuned to the object) and Fashion-MNIST accuracy (the model's
    own head, or a fine-tuned one for the untrained network), on the readout test images."""
    from .training import features, finetune_last_layer

    p = ctx.profile
    (train_x, train_o, train_y), (test_x, test_o, test_y) = data["readout"]["train"], data["readout"]["test"]
    f_train, f_test = features(model, train_x), features(model, test_x)
    kw = dict(epochs=p.finetune_epochs, lr=p.finetune_lr, batch_size=p.batch_size, seed=seed)
    objects = finetune_last_layer(f_train, train_o, f_test, test_o, p.fmnist_objects, **kw)
    labels = finetune_last_layer(f_train, train_y, f_test, test_y, 10, **kw)
    return {"object_accuracy": objects["accuracy"], "object_chance": objects["chance"],
            "fmnist_accuracy": labels["accuracy"]}


def train_fmnist(ctx: Context, data: dict, alpha: float, beta: float, seed: int, label: str):
    from . import fmnist
    from .training import train_model

    p = ctx.profile
    pasted = fmnist.paste(*data["train"], alpha=alpha, beta=beta, objects=p.fmnist_objects, side=p.object_side,
                          seed=seed * 1000 + 5)
    bar = ctx.bar(f"train {p.arch} on {label}", p.epochs * len(pasted.images))
    result = train_model(p.arch, pasted.images, pasted.labels, 10, epochs=p.epochs, batch_size=p.batch_size,
                         lr=p.lr, weight_decay=p.weight_decay, seed=seed, progress=bar)
    ctx.train_rates.append(result.images_per_second)
    return result.model


def irrelevant(ctx: Context, r: int) -> dict:
    from .models import build

    p, seed = ctx.profile, ctx.seed + r
    data = fmnist_sets(ctx, seed)
    conditions = {"no objects": train_fmnist(ctx, data, 0.0, 0.0, seed, "no objects"),
                  "irrelevant objects": train_fmnist(ctx, data, 0.0, 1.0, seed, "irrelevant objects")}
    import torch

    torch.manual_seed(seed)
    conditions["untrained"] = build(p.arch, 10)
    return {"seed": seed, "conditions": {n: fmnist_measure(ctx, m, data, seed) for n, m in conditions.items()}}


def relevance(ctx: Context, r: int) -> dict:
    p, seed = ctx.profile, ctx.seed + r
    data = fmnist_sets(ctx, seed)
    return {"seed": seed, "alphas": list(p.alphas),
            "points": [fmnist_measure(ctx, train_fmnist(ctx, data, a, 1.0, seed, f"alpha {a}"), data, seed)
                       for a in p.alphas]}


def availability(ctx: Context, r: int) -> dict:
    p, seed = ctx.profile, ctx.seed + r
    data = fmnist_sets(ctx, seed)
    return {"seed": seed, "betas": list(p.betas), "alpha": p.availability_alpha,
            "points": [fmnist_measure(ctx, train_fmnist(ctx, data, p.availability_alpha, b, seed, f"beta {b}"),
                                      data, seed) for b in p.betas]}


# -- summaries ----------------------------------------------------------------------------------

def mean_std(values) -> dict:
    """Mean and standard deviation over runs (axis 0), elementwise for matrices."""
    a = np.asarray(values, np.float64)
    return {"mean": np.nanmean(a, 0).tolist(), "std": np.nanstd(a, 0).tolist(), "n": int(len(a))}


def summarize_transfer(runs: list[dict]) -> dict:
    return {n: mean_std([r["accuracy"][n] for r in runs]) for n in TRANSFER_TARGETS}


def summarize_matrix(runs: list[dict]) -> dict:
    out = {"matrix": mean_std([r["matrix"] for r in runs])}
    if "distance_ratio" in runs[0]:
        out["distance_ratio"] = mean_std([r["distance_ratio"] for r in runs])
    return out


def summarize_conditions(runs: list[dict]) -> dict:
    names = list(runs[0]["conditions"])
    return {n: {m: mean_std([r["conditions"][n][m] for r in runs]) for m in ("object_accuracy", "fmnist_accuracy")}
            for n in names}


def summarize_sweep(runs: list[dict]) -> dict:
    return {m: mean_std([[pt[m] for pt in r["points"]] for r in runs]) for m in ("object_accuracy", "fmnist_accuracy")}


@dataclass(frozen=True)
class Experiment:
    name: str
    figure: str
    help: str
    run: Callable[[Context, int], dict]
    summarize: Callable[[list[dict]], dict]
    trainings_per_run: int


EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (
    Experiment("transfer", "Figure 2", "train on (O1, T1); fine-tune and test on D_all, D_transforms, D_objects, "
               "D_none", transfer, summarize_transfer, 1),
    Experiment("subsets", "Figure 8", "nested transformation sets T1 in ... in T8, cross-evaluated on new objects",
               subsets, summarize_matrix, len(NAMES)),
    Experiment("classes", "Figure 5", "D_T1, D_T2, D_T1+T2 (per-class transformations) and D_T1oT2, cross-evaluated",
               classes, summarize_matrix, 4),
    Experiment("single", "Figure 6", "one model per category: the transfer matrix and the between/within-class "
               "distance ratio", single, summarize_matrix, len(NAMES)),
    Experiment("irrelevant", "Figure 3", "Fashion-MNIST with pasted objects: is the object readable from models "
               "trained without, and with irrelevant, objects?", irrelevant, summarize_conditions, 2),
    Experiment("relevance", "Figure 4 (left)", "the correlation sweep alpha: object readout and Fashion-MNIST "
               "accuracy", relevance, summarize_sweep, 0),
    Experiment("availability", "Figure 4 (right)", "the availability sweep beta: object readout and Fashion-MNIST "
               "accuracy", availability, summarize_sweep, 0),
)}


def get_experiment(name: str) -> Experiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; use {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def run_experiment(name: str, ctx: Context, out: Path, profile_name: str) -> dict:
    """Every run, the summary, results.json and the figure (NAME.png) under `out`."""
    import torch

    from . import figures
    from .training import device

    experiment = get_experiment(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start, runs = time.perf_counter(), []
    for r in range(ctx.profile.runs):
        ctx.log(f"{name}: run {r + 1}/{ctx.profile.runs} (seed {ctx.seed + r})")
        t = time.perf_counter()
        runs.append({**experiment.run(ctx, r), "seconds": time.perf_counter() - t})
        ctx.rendered.clear()
    results = {"experiment": name, "figure": experiment.figure, "profile": profile_name,
               "settings": asdict(ctx.profile), "seed": ctx.seed, "device": str(device()),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor() or
               platform.machine(), "seconds": time.perf_counter() - start,
               "seconds_per_run": (time.perf_counter() - start) / len(runs),
               "train_images_per_second": float(np.mean(ctx.train_rates)) if ctx.train_rates else None,
               "runs": runs, "summary": experiment.summarize(runs)}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    figure = out / f"{name}.png"
    figures.plot(name, results, figure)
    results["figure_file"] = str(figure)
    return results
