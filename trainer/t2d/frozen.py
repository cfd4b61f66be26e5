"""The transfer datasets for a frozen encoder served by Triton: which changes is it invariant to?

For one seed: O1, O2, T1, T2 drawn as in the `transfer` experiment; the four datasets D_all (O1,
T1), D_transforms (O2, T1), D_objects (O1, T2), D_none (O2, T2) written as ImageFolders (train and
test splits; test backgrounds from the corpus's test sources) and bulk-embedded by the server like
any dataset (`run_embed_job`, the groups catalog's identity version, uploads as made: the server
sees exactly the generated pixels); a linear probe (trainer/probes.py, early stopping on a hash-split
validation share of train) per dataset gives the four test accuracies. With no training on
Transforms-2D, they say how well the encoder separates objects under T1 and under T2.

Latent G-EED per category: N base samples (every object of O1 and O2, test backgrounds, no
transformation) and, for each category, the same samples with only that category's drawn
parameters applied (flips always applied); G-EED(c) = E_x d(f(x), f(c x)) / M with M the mean
distance between distinct base images (trainer/invariance.py's distances and pairs), Euclidean
and cosine. 0: invariant; about 1: the change moves an image as far as another image is.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np

from . import backgrounds as bg
from . import generate, prototypes
from .experiments import TRANSFER_TARGETS, run_sets
from .profiles import FrozenConfig, Profile
from .transforms2d import CATEGORIES, NAMES, identity_values, render

IDENTITY = "identity"


def design(config: FrozenConfig) -> tuple[dict, dict]:
    profile = replace(Profile(), objects_per_set=config.objects_per_set, transforms_per_set=config.transforms_per_set)
    sets = run_sets(profile, config.seed)
    t1, t2 = sets.t(1, config.transforms_per_set), sets.t(2, config.transforms_per_set)
    targets = {"D_all": (sets.o1, t1), "D_transforms": (sets.o2, t1), "D_objects": (sets.o1, t2),
               "D_none": (sets.o2, t2)}
    specs = {name: generate.DatasetSpec(objects=tuple(o), transforms=tuple(t), size=config.size,
                                        counts={"train": config.train, "val": 0, "test": config.test},
                                        seed=config.seed * 1000 + 100 + k)
             for k, (name, (o, t)) in enumerate(targets.items())}
    return specs, sets.as_dict(config.transforms_per_set)


def write_geed_set(config: FrozenConfig, objects: tuple[int, ...], out: Path) -> None:
    """out/test/CATEGORY/NNNNN.png: the base samples (identity) and each category's versions."""
    base = generate.DatasetSpec(objects=objects, transforms=NAMES, size=config.size,
                                counts={"train": 0, "val": 0, "test": config.geed_images}, seed=config.seed * 1000 + 99)
    draws = generate.draw(base, "test")
    protos = prototypes.prototypes(generate.prototype_resolution(config.size))[list(objects)][draws.labels]
    bank = bg.bank("test", config.size, base.banks["test"])[draws.backgrounds]
    for name in (IDENTITY, *NAMES):
        values = identity_values(len(draws))
        if name != IDENTITY:
            binary = np.array([p.binary for p in CATEGORIES[name].params])
            values[name] = np.where(binary, 1.0, draws.values[name])  # flips: always flipped
        folder = out / "test" / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(render(protos, bank, values, config.size)):
            (folder / f"{i:05d}.png").write_bytes(generate.png(image))


def embed(dataset: str, encoder: str, url: str, store: Path, config: FrozenConfig, progress: bool) -> Path:
    from equiprobe.clients.embed_job import EmbedJob, run_embed_job

    from equiprobe.clients.aio import ClientOptions

    job = EmbedJob(dataset, encoder, store, url, catalog="groups", uploads="none", dtype="float32",
                   client=ClientOptions(url, max_in_flight=config.max_in_flight))
    summary = asyncio.run(run_embed_job(job, progress=progress))
    if summary.get("failed"):
        raise RuntimeError(f"{summary['failed']} images of {dataset} failed to embed (see {store}/errors.jsonl)")
    return store


def identity_column(store) -> int:
    from equiprobe.trainer.invariance import identity_index

    return identity_index(store.manifest)


def probe_accuracy(store_path: Path, config: FrozenConfig) -> dict:
    """A linear probe on the identity embeddings: train (minus a validation share) -> test accuracy."""
    from equiprobe.clients.store import Store
    from equiprobe.trainer.data import ProbeData, Task
    from equiprobe.trainer.probes import accuracy, fit

    store = Store.open(store_path)
    names = list(store.manifest["label_names"])
    k = identity_column(store)
    task = Task("semantic", names, np.zeros(len(store.manifest["rows"]), np.int64), np.array([k]), np.array([k]),
                heads=(("semantic", names),))
    data = ProbeData.from_store(store, task)
    result = fit(data, config.probe, seed=config.seed)
    return {"accuracy": accuracy(result.model, data, "test"), "val_accuracy": result.val_accuracy,
            "epochs": result.epochs, "chance": 1.0 / len(names), "train_images": int(len(data.train_rows)),
            "val_images": int(len(data.val_rows)), "test_images": int(len(data.test_rows))}


def geed(store_path: Path, seed: int = 0) -> dict:
    """Per category: E_x d(f(x), f(c x)) / M, Euclidean and cosine (rows matched by file name)."""
    from equiprobe.clients.store import DONE, Store
    from equiprobe.trainer.invariance import DISTANCES, distances, distinct_pairs

    store = Store.open(store_path)
    k = identity_column(store)
    keys = np.asarray(store.array("keys"))
    done = np.asarray(store.array("status")) == DONE
    embeddings = np.asarray(store.array("embeddings")[:, k], np.float64)
    by_name: dict[str, dict[str, int]] = {}
    for row, key in enumerate(keys):
        if done[row]:
            category, file = key.split("/")[-2:]
            by_name.setdefault(category, {})[file] = row
    base = by_name[IDENTITY]
    files = sorted(base)
    identity = embeddings[[base[f] for f in files]]
    i, j = distinct_pairs(len(identity), seed=seed)
    d = distances(identity[i], identity[j])
    normalizer = {name: float(d[name].mean()) for name in DISTANCES}
    out = {}
    for category in NAMES:
        common = [f for f in files if f in by_name.get(category, {})]
        a = embeddings[[base[f] for f in common]]
        b = embeddings[[by_name[category][f] for f in common]]
        dist = distances(a, b)
        out[category] = {name: float(dist[name].mean() / normalizer[name]) for name in DISTANCES}
        out[category]["images"] = len(common)
    return {"normalizer": normalizer, "per_category": out}


def run_frozen(encoder: str, url: str, out: Path, config: FrozenConfig, progress: bool = True,
               log: Callable[[str], None] = print) -> dict:
    import time

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs, sets = design(config)
    start, accuracies, probes = time.perf_counter(), {}, {}
    for name in TRANSFER_TARGETS:
        folder = out / "datasets" / name
        if not (folder / "t2d.json").exists():
            if folder.exists():
                raise ValueError(f"{folder} holds an unfinished dataset; remove it and run again")
            generate.write(specs[name], folder, "folder")
        log(f"{name}: embedding {config.train + config.test} images with {encoder}")
        store = embed(f"folder:{folder}", encoder, url, out / "stores" / name, config, progress)
        probes[name] = probe_accuracy(store, config)
        accuracies[name] = probes[name]["accuracy"]
        log(f"{name}: linear probe test accuracy {accuracies[name]:.3f}")
    objects = tuple(sorted({*specs["D_all"].objects, *specs["D_none"].objects}))
    geed_folder = out / "datasets" / "geed"
    if not (geed_folder / "test").exists():
        write_geed_set(config, objects, geed_folder)
    log(f"G-EED: embedding {config.geed_images * (len(NAMES) + 1)} images")
    invariance = geed(embed(f"folder:{geed_folder}", encoder, url, out / "stores" / "geed", config, progress),
                      config.seed)
    results = {"encoder": encoder, "url": url, "config": asdict(config), "sets": sets, "accuracy": accuracies,
               "probes": probes, "geed": invariance, "seconds": time.perf_counter() - start}
    (out / "frozen.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def describe(results: dict) -> list[str]:
    """The results as Markdown table lines."""
    lines = ["| dataset | objects, transformations | linear probe test accuracy |", "| --- | --- | --- |"]
    sets = results["sets"]
    what = {"D_all": "O1, T1", "D_transforms": "O2, T1", "D_objects": "O1, T2", "D_none": "O2, T2"}
    for name in TRANSFER_TARGETS:
        lines.append(f"| {name} | {what[name]} | {results['accuracy'][name]:.3f} |")
    lines += ["", f"T1 = {', '.join(sets['T1'])}; T2 = {', '.join(sets['T2'])}", "",
              "| category | latent G-EED (Euclidean) | latent G-EED (cosine) |", "| --- | --- | --- |"]
    for name, g in results["geed"]["per_category"].items():
        lines.append(f"| {name} | {g['euclidean']:.3f} | {g['cosine']:.3f} |")
    return lines


