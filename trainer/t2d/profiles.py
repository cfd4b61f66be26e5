"""The experiments' profiles: every hyperparameter, in a module that imports nothing heavy (the CLI
reads the fields to declare one option each).

`full` is the paper's setting (50,000 / 10,000 / 10,000 images, Adam, 50 epochs, the last layer
fine-tuned 25 epochs on each target dataset, resnet18). `quick` is a CPU profile: fewer images,
epochs and runs and the small CNN, sized so that `transfer` finishes in about 6 minutes on 2 quiet
cores; the experiments that train 4 or 8 models per run (QUICK_PER_EXPERIMENT) take half the
images again (and 2 runs for the 8-model ones), so that each stays within about 15 minutes.
`tiny` is the test suite's (seconds; it shows nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from equiprobe.trainer.configs import ProbeConfig


@dataclass(frozen=True)
class Profile:
    arch: str = "resnet18"
    size: int = 32  # image side
    train: int = 50_000  # images of the dataset a model is trained on
    val: int = 10_000
    test: int = 10_000
    target_train: int = 50_000  # images of each target dataset the last layer is fine-tuned on
    target_test: int = 10_000
    epochs: int = 50
    finetune_epochs: int = 25
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    finetune_lr: float = 1e-3
    runs: int = 5
    objects_per_set: int = 30  # |O1| = |O2|
    transforms_per_set: int = 3  # |T1| = |T2|
    fmnist_train: int = 60_000  # Fashion-MNIST images (irrelevant, relevance, availability)
    fmnist_test: int = 10_000
    fmnist_objects: int = 10  # pasted objects (one per Fashion-MNIST class for the correlation)
    object_side: float = 0.3  # pasted object's side, of the canvas side
    alphas: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 0.85, 0.9, 0.95, 1.0)  # relevance: correlation
    betas: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # availability: share of images with an object
    availability_alpha: float = 0.0  # the correlation in the availability sweep


PROFILES = {
    "full": Profile(),
    "quick": Profile(arch="small-cnn", train=16000, val=500, test=1000, target_train=10000, target_test=1000,
                     epochs=10, finetune_epochs=25, batch_size=128, runs=3, fmnist_train=5000, fmnist_test=10000,
                     alphas=(0.0, 0.4, 0.8, 0.9, 1.0), betas=(0.0, 0.4, 0.8, 1.0)),
    "tiny": Profile(arch="small-cnn", size=16, train=120, val=30, test=60, target_train=80, target_test=40, epochs=1,
                    finetune_epochs=2, batch_size=64, runs=1, objects_per_set=4, transforms_per_set=2,
                    fmnist_train=120, fmnist_test=60, fmnist_objects=4, alphas=(0.0, 1.0), betas=(0.0, 1.0)),
}

# quick's settings for the experiments that train several models per run (8 for subsets and single,
# 4 for classes): 8,000 training and 3,000 target images (transfer at these sizes measured D_all
# 0.944, D_transforms 0.707, D_objects 0.560, D_none 0.449: the same ordering, less clearly), and
# 2 runs of the 8-model ones.
QUICK_PER_EXPERIMENT = {"classes": {"train": 8000, "target_train": 3000},
                        "subsets": {"train": 8000, "target_train": 3000, "runs": 2},
                        "single": {"train": 8000, "target_train": 3000, "runs": 2}}


# The frozen encoders' linear probe: small datasets (hundreds of images), so smaller batches and more epochs.
FROZEN_PROBE = ProbeConfig(kind="linear", batch_size=256, max_epochs=200, patience=20)


@dataclass(frozen=True)
class FrozenConfig:
    size: int = 32
    train: int = 1000  # per target dataset
    test: int = 500
    geed_images: int = 100
    objects_per_set: int = 30
    transforms_per_set: int = 3
    seed: int = 0
    max_in_flight: int = 8
    probe: ProbeConfig = FROZEN_PROBE


def get_profile(name: str, experiment: str = "", **overrides) -> Profile:
    """The named profile (quick: with `experiment`'s own sizes), then the user's overrides."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; use {', '.join(PROFILES)}")
    base = PROFILES[name]
    if name == "quick":
        base = replace(base, **QUICK_PER_EXPERIMENT.get(experiment, {}))
    profile = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    for field in ("train", "target_train", "target_test", "epochs", "batch_size", "runs"):
        if getattr(profile, field) < 1:
            raise ValueError(f"--{field.replace('_', '-')} must be at least 1")
    return profile
