"""`equiprobe t2d`: the Transforms-2D dataset (generate), the invariance-transfer experiments
(experiment NAME), the same instrument for a frozen served encoder (frozen) and the benchmark (bench).

Top-level imports are typer, rich, the stdlib and the light modules of trainer.t2d (profiles);
torch, matplotlib and the generator are imported in the commands.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console

from equiprobe.trainer.t2d.profiles import FROZEN_PROBE, PROFILES, FrozenConfig, Profile

from .common import config_options, fail, probe_options

t2d_app = typer.Typer(no_args_is_help=True, help="Transforms-2D: synthetic data with known factors of variation, "
                      "and the invariance-transfer experiments.")
console = Console(stderr=True)

PROFILE_HELP = {
    "arch": "resnet18, vgg11, densenet121 or small-cnn.",
    "size": "Image side, pixels.",
    "train": "Images of the dataset a model is trained on.",
    "val": "Validation images of that dataset (accuracy logged per epoch).",
    "test": "Test images of that dataset (unused by the experiments: targets have their own).",
    "target_train": "Images of each target dataset the new last layer is fine-tuned on.",
    "target_test": "Test images of each target dataset.",
    "epochs": "Training epochs (Adam).",
    "finetune_epochs": "Epochs of last-layer fine-tuning on each target dataset.",
    "batch_size": "Batch size (training and fine-tuning).",
    "lr": "Adam learning rate (training).",
    "weight_decay": "Adam weight decay (training).",
    "finetune_lr": "Adam learning rate of the last-layer fine-tuning.",
    "runs": "Independent runs (seeds SEED..SEED+RUNS-1; each draws its own object and transformation sets).",
    "objects_per_set": "|O1| = |O2|: objects (classes) per object set, from the 61 of the paper-sized set.",
    "transforms_per_set": "|T1| = |T2|: categories per transformation set.",
    "fmnist_train": "Fashion-MNIST training images (irrelevant, relevance, availability).",
    "fmnist_test": "Fashion-MNIST test images (half to fit the readouts, half to test them).",
    "fmnist_objects": "Objects pasted onto Fashion-MNIST (the label's own object for the correlation).",
    "object_side": "Pasted object's side, a share of the canvas side.",
    "alphas": "relevance: the correlation sweep. Repeatable.",
    "betas": "availability: the sweep of the share of training images with an object. Repeatable.",
    "availability_alpha": "availability: the correlation of object and label during the sweep.",
}
FROZEN_HELP = {
    "size": "Image side of the generated datasets (the server resizes for the encoder).",
    "train": "Training images per target dataset (a hash-split share of them validates the probe).",
    "test": "Test images per target dataset.",
    "geed_images": "Base images of the G-EED set (each also in every category's version).",
    "objects_per_set": "|O1| = |O2|.",
    "transforms_per_set": "|T1| = |T2|.",
    "seed": "Seed of the sets and datasets.",
    "max_in_flight": "Embedding requests in flight at once.",
}


FROZEN_PROBE_TEXT = ", ".join(f"{f} {getattr(FROZEN_PROBE, f)}" for f in ("lr", "weight_decay", "batch_size",
                                                                        "max_epochs", "patience"))


def bar_factory(enabled: bool):
    """A rich progress display and a function (label, total) -> advance(n) that adds a task to it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console, disable=not enabled, transient=True)

    def add(label: str, total: int) -> Callable[[int], None]:
        task = progress.add_task(label, total=total)
        return lambda n: progress.advance(task, n)
    return progress, add


@t2d_app.command("generate")
def generate_command(
    out: Path = typer.Option(..., help="Directory to write (new or empty)."),
    size: int = typer.Option(32, help="Image side, pixels."),
    train: int = typer.Option(50_000, help="Training images."),
    val: int = typer.Option(10_000, help="Validation images."),
    test: int = typer.Option(10_000, help="Test images."),
    objects: Optional[int] = typer.Option(None, help="The first N objects as classes (default: all 85)."),
    object_set: Optional[str] = typer.Option(None, help="A named object set: all (85), paper (61), o1 (30) or "
                                             "o2 (31, disjoint from o1)."),
    transforms: str = typer.Option("all", help="Comma-separated categories applied to every sample: translate, "
                                   "rotate, scale, hflip, vflip, blur, sharpen, colour; all or none."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same bytes."),
    fmt: str = typer.Option("folder", "--format", help="folder (DIR/split/CLASS/NNNNNN.png) or tar (webdataset "
                            "shards DIR/split-NNNNN.tar)."),
    shard_size: int = typer.Option(10_000, help="tar: samples per shard."),
    batch_size: int = typer.Option(256, help="Samples rendered per batch."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Write a Transforms-2D dataset, with every sample's object, background and parameters recorded."""
    from equiprobe.trainer.t2d import generate, prototypes
    from equiprobe.trainer.t2d.prototypes import PrototypeError
    from equiprobe.trainer.t2d.transforms2d import parse_transforms

    try:
        indices = prototypes.object_indices(objects, object_set)
        spec = generate.DatasetSpec(objects=tuple(indices), transforms=parse_transforms(transforms), size=size,
                                    counts={"train": train, "val": val, "test": test}, seed=seed)
        progress, add = bar_factory(not quiet)
        start = time.perf_counter()
        with progress:
            manifest = generate.write(spec, out, fmt, shard_size, batch_size, add("generating", train + val + test))
        seconds = time.perf_counter() - start
    except (ValueError, PrototypeError, OSError) as exc:
        raise fail(str(exc))
    total = train + val + test
    print(json.dumps({"out": str(out), "format": fmt, "images": total, "classes": len(indices),
                      "transforms": list(spec.transforms[0]), "seconds": round(seconds, 2),
                      "images_per_second": round(total / max(seconds, 1e-9), 1), "embed": manifest["embed"]}))


@t2d_app.command("experiment")
@config_options(Profile, "overrides", helps=PROFILE_HELP, unset="the profile's")
def experiment_command(
    name: str = typer.Argument(..., help="transfer, subsets, classes, single, irrelevant, relevance or availability."),
    out: Path = typer.Option(..., help="Directory for results.json and the figure."),
    quick: bool = typer.Option(False, "--quick", help="The quick CPU profile (same as --profile quick)."),
    profile: str = typer.Option("full", help=f"{', '.join(PROFILES)}: full is the paper's setting (50 epochs, "
                                "25 of last-layer fine-tuning per target); quick a CPU profile; tiny the tests'."),
    seed: int = typer.Option(0, help="Seed of the first run."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's)."),
    quiet: bool = typer.Option(False, help="No progress bars or log lines."),
    overrides: dict = None,
) -> None:
    """Train, fine-tune the last layer on each target dataset, and write results.json and NAME.png."""
    from equiprobe.trainer.t2d.experiments import Context, get_experiment, run_experiment
    from equiprobe.trainer.t2d.profiles import get_profile
    from equiprobe.trainer.t2d.prototypes import PrototypeError

    if quick and profile not in ("full", "quick"):
        raise fail("--quick is --profile quick; give one of them")
    profile_name = "quick" if quick else profile
    try:
        get_experiment(name)
        settings = get_profile(profile_name, name, **overrides)
        from equiprobe.trainer.t2d.models import ARCHS

        if settings.arch not in ARCHS:
            raise ValueError(f"unknown architecture {settings.arch!r}; use {', '.join(ARCHS)}")
    except ValueError as exc:
        raise fail(str(exc))
    import torch

    if threads:
        torch.set_num_threads(threads)
    progress, add = bar_factory(not quiet)
    ctx = Context(settings, seed=seed, progress=add, log=(lambda m: None) if quiet else console.print)
    try:
        with progress:
            results = run_experiment(name, ctx, out, profile_name)
    except (ValueError, PrototypeError) as exc:
        raise fail(str(exc))
    print(json.dumps({"experiment": name, "profile": profile_name, "arch": settings.arch, "device": results["device"],
                      "seconds": round(results["seconds"], 1), "seconds_per_run": round(results["seconds_per_run"], 1),
                      "summary": results["summary"], "results": str(Path(out) / "results.json"),
                      "figure": results["figure_file"]}))


@t2d_app.command("frozen")
@config_options(FrozenConfig, "config_fields", skip=("probe",), helps=FROZEN_HELP)
@probe_options(skip=("kind", "hidden", "dropout"), unset=f"the frozen linear probe's ({FROZEN_PROBE_TEXT})")
def frozen_command(
    encoder: str = typer.Option(..., help="Encoder whose NAME_embed_groups the server has (squeezenet1_1, open_nsfw, ...)."),
    url: str = typer.Option("127.0.0.1:8001", help="Triton gRPC address HOST:PORT."),
    out: Path = typer.Option(..., help="Directory for the datasets, their stores and frozen.json."),
    quiet: bool = typer.Option(False, help="No progress bars."),
    config_fields: dict = None,
    probe_fields: dict = None,
) -> None:
    """The four transfer datasets embedded by a served encoder: linear-probe accuracies and per-category G-EED."""
    from equiprobe.clients.embedding import ServiceError
    from equiprobe.clients.store import StoreError
    from equiprobe.trainer.t2d.frozen import describe, run_frozen
    from equiprobe.trainer.t2d.prototypes import PrototypeError

    try:
        config = FrozenConfig(**config_fields, probe=replace(FROZEN_PROBE, **probe_fields))
        results = run_frozen(encoder, url, out, config, progress=not quiet,
                             log=(lambda m: None) if quiet else console.print)
    except (ValueError, PrototypeError, ServiceError, StoreError, RuntimeError) as exc:
        raise fail(str(exc))
    for line in describe(results):
        console.print(line, highlight=False)
    print(json.dumps({"encoder": encoder, "accuracy": results["accuracy"],
                      "geed": {c: round(g["euclidean"], 4) for c, g in results["geed"]["per_category"].items()},
                      "seconds": round(results["seconds"], 1), "results": str(Path(out) / "frozen.json")}))


@t2d_app.command("bench")
def bench_command(
    images: int = typer.Option(2000, help="Samples generated by each path."),
    size: int = typer.Option(32, help="Image side."),
    transforms: str = typer.Option("all", help="Categories applied (as t2d generate --transforms)."),
    train_images: int = typer.Option(2048, help="Images per training measurement (one epoch)."),
    arch: list[str] = typer.Option(["small-cnn", "resnet18"], help="Architectures whose training images/s is "
                                   "measured. Repeatable."),
    batch_size: int = typer.Option(128, help="Training batch size."),
    seed: int = typer.Option(0, help="Seed of the samples."),
    repeats: int = typer.Option(3, help="Timed repeats of each generation path, alternating; the best is kept."),
) -> None:
    """`t2d generate` images/s against a plain per-image Pillow loop (same samples), and training images/s."""
    from equiprobe.trainer.t2d import bench

    try:
        report = bench.run(images, size, transforms, train_images, arch, batch_size, seed, repeats, log=console.print)
    except ValueError as exc:
        raise fail(str(exc))
    print(json.dumps(report))

