"""Training a model on uint8 images, reading its penultimate features, fine-tuning a new last layer.

Images are kept as uint8 [N, S, S, 3] and standardized per batch ((x / 255 - 0.5) / 0.25); Adam
throughout. The GPU is used when torch sees one. Fine-tuning the last layer trains a fresh linear
layer on the frozen network's penultimate features (computed once, in eval mode, then standardized),
which is what training the last layer alone computes when the data are not augmented.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from .models import Net, build


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_input(images: np.ndarray, at: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).to(at).permute(0, 3, 1, 2).float()
    return (x / 255.0 - 0.5) / 0.25


@dataclass
class TrainResult:
    model: Net
    history: list[dict]
    seconds: float
    images_per_second: float


def train_model(arch: str, images: np.ndarray, labels: np.ndarray, classes: int, *, epochs: int, batch_size: int,
                lr: float, weight_decay: float, seed: int, val: Optional[tuple[np.ndarray, np.ndarray]] = None,
                progress: Optional[Callable[[int], None]] = None) -> TrainResult:
    """Adam, cross-entropy, shuffled batches for `epochs` epochs; the final weights."""
    torch.manual_seed(seed)
    at = device()
    model = build(arch, classes).to(at)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    y_all = torch.from_numpy(labels.astype(np.int64))
    rng = np.random.default_rng(seed)
    history, start, seen = [], time.perf_counter(), 0
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(images))
        losses = []
        for s in range(0, len(order), batch_size):
            pick = np.sort(order[s:s + batch_size])
            if len(pick) < 2:  # batch norm needs two samples
                continue
            x, y = to_input(images[pick], at), y_all[pick].to(at)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            seen += len(pick)
            if progress:
                progress(len(pick))
        entry = {"epoch": epoch, "loss": float(np.mean(losses)) if losses else float("nan")}
        if val is not None and len(val[0]):
            entry["val_accuracy"] = accuracy(model, *val)
        history.append(entry)
    seconds = time.perf_counter() - start
    return TrainResult(model, history, seconds, seen / max(seconds, 1e-9))


@torch.no_grad()
def features(model: Net, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """float32 [N, D]: penultimate representations in eval mode."""
    model.eval()
    at = next(model.parameters()).device
    out = [model.features(to_input(images[s:s + batch_size], at)).cpu().numpy()
           for s in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.dim), np.float32)


@torch.no_grad()
def accuracy(model: Net, images: np.ndarray, labels: np.ndarray, batch_size: int = 512) -> float:
    model.eval()
    at = next(model.parameters()).device
    correct = 0
    for s in range(0, len(images), batch_size):
        correct += int((model(to_input(images[s:s + batch_size], at)).argmax(1).cpu().numpy()
                        == labels[s:s + batch_size]).sum())
    return correct / max(len(images), 1)


def finetune_last_layer(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                        classes: int, *, epochs: int, lr: float, batch_size: int, seed: int) -> dict:
    """A new linear layer on frozen features, Adam for `epochs` epochs; its test accuracy.

    Features are standardized with the training split's per-dimension mean and spread first: still
    a linear readout (the layer could absorb the map), but one Adam can fit in a few hundred steps
    whatever the features' scale (an untrained network's are ~1e-3, and a plain layer stayed at
    chance on them)."""
    torch.manual_seed(seed)
    at = device()
    mean, spread = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = ((train_x - mean) / spread).astype(np.float32), ((test_x - mean) / spread).astype(np.float32)
    layer = nn.Linear(train_x.shape[1], classes).to(at)
    optimizer = torch.optim.Adam(layer.parameters(), lr=lr)
    x, y = torch.from_numpy(train_x).to(at), torch.from_numpy(train_y.astype(np.int64)).to(at)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator).to(at)
        for s in range(0, len(order), batch_size):
            pick = order[s:s + batch_size]
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(layer(x[pick]), y[pick]).backward()
            optimizer.step()
    with torch.no_grad():
        predicted = layer(torch.from_numpy(test_x).to(at)).argmax(1).cpu().numpy()
    return {"accuracy": float((predicted == test_y).mean()), "chance": 1.0 / classes}


def distance_ratio(feats: np.ndarray, labels: np.ndarray, pairs: int = 20_000, seed: int = 0) -> float:
    """Mean L2 distance between representations of different classes over that within a class,
    estimated on `pairs` random pairs of each kind (seeded)."""
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(feats), (2, pairs * 4))
    same = labels[i] == labels[j]
    within = same & (i != j)
    d = np.linalg.norm(feats[i] - feats[j], axis=1)
    if not within.any() or same.all():
        return float("nan")
    return float(d[~same][:pairs].mean() / d[within][:pairs].mean())
