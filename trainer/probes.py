"""Linear and MLP probes (the study's: one hidden layer of 2048, dropout 0.2, Adam, batch 1024),
trained with early stopping on the validation images, repeated over seeds.

The multitask probe shares the MLP's hidden layer between two heads (transformation and
semantic label), trained on the sum of both cross-entropies; early stopping watches the mean of
the heads' validation accuracies.

The probe carries the training set's feature standardization as buffers, so the saved model
takes raw embeddings (what the detector will feed it).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from .configs import ProbeConfig
from .data import ProbeData
from .tasks import IDENTITY


class Probe(nn.Module):
    def __init__(self, dim: int, classes: int, config: ProbeConfig, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("std", torch.from_numpy(std))
        if config.kind == "linear":
            self.head = nn.Linear(dim, classes)
        elif config.kind == "mlp":
            self.head = nn.Sequential(nn.Linear(dim, config.hidden), nn.ReLU(), nn.Dropout(config.dropout),
                                      nn.Linear(config.hidden, classes))
        else:
            raise ValueError(f"unknown probe {config.kind!r}; use linear or mlp")

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.head((embeddings - self.mean) / self.std)


class MultiTaskProbe(nn.Module):
    """One shared hidden layer (2048, ReLU, dropout), one linear head per task; returns a tuple of logits."""

    def __init__(self, dim: int, head_classes: list[int], config: ProbeConfig, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        if config.kind != "mlp":
            raise ValueError("the multitask probe shares a hidden layer: use --probe mlp")
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("std", torch.from_numpy(std))
        self.body = nn.Sequential(nn.Linear(dim, config.hidden), nn.ReLU(), nn.Dropout(config.dropout))
        self.heads = nn.ModuleList(nn.Linear(config.hidden, n) for n in head_classes)

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = self.body((embeddings - self.mean) / self.std)
        return tuple(head(hidden) for head in self.heads)


def log_mean_softmax(logits: list[torch.Tensor]) -> torch.Tensor:
    """log of the mean of softmax(l) over `logits` (each [B, C]): logsumexp of the log-softmaxes
    minus log K, so that no probability underflows to log 0. Softmax of it is the mean."""
    logs = torch.stack([torch.log_softmax(each, dim=1) for each in logits])
    return torch.logsumexp(logs, dim=0) - float(np.log(len(logits)))


class SeedEnsemble(nn.Module):
    """Probes of one store and config trained with different seeds, as one model: per head, the
    log of the members' mean class probability (log_mean_softmax), for the same inputs as a member
    (an embedding; a match probe's query and reference). The members share the training
    statistics (trained on the same examples), so `mean` and `std` are the first member's."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one probe")
        self.members = nn.ModuleList(members)

    @property
    def mean(self) -> torch.Tensor:
        return self.members[0].mean

    @property
    def std(self) -> torch.Tensor:
        return self.members[0].std

    def forward(self, *inputs: torch.Tensor):
        outputs = [_as_tuple(member(*inputs)) for member in self.members]
        heads = tuple(log_mean_softmax([out[h] for out in outputs]) for h in range(len(outputs[0])))
        return heads[0] if len(heads) == 1 else heads


def build_probe(data: ProbeData, config: ProbeConfig, mean: np.ndarray, std: np.ndarray) -> nn.Module:
    heads = data.task.heads
    if len(heads) == 1:
        return Probe(data.dim, len(heads[0][1]), config, mean, std)
    return MultiTaskProbe(data.dim, [len(classes) for _, classes in heads], config, mean, std)


def _as_tuple(logits) -> tuple[torch.Tensor, ...]:
    return logits if isinstance(logits, tuple) else (logits,)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def predict_with(classify, data: ProbeData, part: str, batch_size: int = 4096) -> tuple[np.ndarray, ...]:
    """(predicted labels, true labels, version indices) over every example of a part, read in
    batches; `classify` maps a batch of raw embeddings to predicted labels."""
    predicted, truth, versions = [], [], []
    for x, y, v in data.batches(part, batch_size):
        predicted.append(classify(x))
        truth.append(y)
        versions.append(v)
    return np.concatenate(predicted), np.concatenate(truth), np.concatenate(versions)


@torch.no_grad()
def predict(model: nn.Module, data: ProbeData, part: str, batch_size: int = 4096) -> tuple[np.ndarray, ...]:
    """predict_with a torch probe; labels are [n, heads] for a multitask probe, [n] otherwise."""
    model.eval()
    at = next(model.parameters()).device

    def classify(x: np.ndarray) -> np.ndarray:
        heads = [logits.argmax(1).cpu().numpy() for logits in _as_tuple(model(torch.from_numpy(x).to(at)))]
        return heads[0] if len(heads) == 1 else np.stack(heads, axis=1)
    return predict_with(classify, data, part, batch_size)


def accuracy(model: nn.Module, data: ProbeData, part: str) -> float:
    """Share of correct predictions; for a multitask probe, the mean over its heads."""
    predicted, truth, _ = predict(model, data, part)
    return float((predicted == truth).mean())


@torch.no_grad()
def validation_figures(model: nn.Module, data: ProbeData, stop_on: str = "accuracy") -> dict[str, float]:
    """{"val_accuracy"} (the mean over heads), and with stop_on "auc" also {"val_auc"}: the AUC of
    -log P(identity) (the first head's) between edited versions and originals, in one pass."""
    model.eval()
    at = next(model.parameters()).device
    identity = data.task.classes.index(IDENTITY) if stop_on == "auc" else None
    scores = []

    def classify(x: np.ndarray) -> np.ndarray:
        logits = _as_tuple(model(torch.from_numpy(x).to(at)))
        if identity is not None:  # -log P: 1 - P(identity) rounds to 1.0 for the clearly edited
            scores.append(-logits[0].log_softmax(1)[:, identity].cpu().numpy())
        heads = [head.argmax(1).cpu().numpy() for head in logits]
        return heads[0] if len(heads) == 1 else np.stack(heads, axis=1)

    predicted, truth, _ = predict_with(classify, data, "val")
    out = {"val_accuracy": float((predicted == truth).mean())}
    if identity is not None:
        from sklearn.metrics import roc_auc_score

        edited = (truth if truth.ndim == 1 else truth[:, 0]) != identity
        out["val_auc"] = float(roc_auc_score(edited, np.concatenate(scores)))
    return out


@dataclass
class FitResult:
    model: nn.Module
    seed: int
    epochs: int
    best_epoch: int
    val_accuracy: float
    history: list[dict]
    val_score: float  # what early stopping watched (ProbeConfig.stop_on) at best_epoch: the seeds' ranking


def fit(data: ProbeData, config: ProbeConfig, seed: int, progress: Optional[callable] = None,
        statistics: Optional[tuple[np.ndarray, np.ndarray]] = None) -> FitResult:
    """Adam on shuffled batches; keep the weights of the epoch with the best validation accuracy.
    `statistics` (mean, std of the training embeddings) can be passed in to share one pass over
    the store between seeds."""
    torch.manual_seed(seed)
    mean, std = statistics if statistics is not None else data.feature_statistics()
    model = build_probe(data, config, mean, std).to(device())
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    if config.stop_on == "auc" and IDENTITY not in data.task.classes:
        raise ValueError(f"stop_on auc needs an '{IDENTITY}' class; the {data.task.name} task has none")
    watched = f"val_{config.stop_on}"
    best, best_state, best_epoch, history = -1.0, None, 0, []
    for epoch in range(config.max_epochs):
        model.train()
        losses = []
        for x, y, _ in data.batches("train", config.batch_size, shuffle_seed=seed * 100_003 + epoch):
            optimizer.zero_grad()
            logits = _as_tuple(model(torch.from_numpy(x).to(device())))
            y = torch.from_numpy(y).to(device()).reshape(len(x), -1)
            loss = sum(loss_fn(head, y[:, i]) for i, head in enumerate(logits))
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        figures = (validation_figures(model, data, config.stop_on) if len(data.val_rows)
                   else {"val_accuracy": 0.0, watched: 0.0})
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), **figures})
        if progress:
            progress(epoch, history[-1])
        if figures[watched] > best:
            best, best_state, best_epoch = figures[watched], copy.deepcopy(model.state_dict()), epoch
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    return FitResult(model, seed, len(history), best_epoch, history[best_epoch]["val_accuracy"], history, best)


def config_dict(config: ProbeConfig) -> dict:
    return asdict(config)


def load_probe(directory) -> tuple[nn.Module, dict]:
    """A saved probe (probe.pt + probe.json) on the CPU in eval mode, and its record.
    Baselines without weights (knn) have no probe.pt and cannot be loaded."""
    from pathlib import Path

    from .probe_record import ProbeRecord

    directory = Path(directory)
    record = ProbeRecord.read(directory)
    if not (directory / "probe.pt").exists():
        raise ValueError(f"{directory}: a {record.kind} probe has no weights to load")
    fields = {k: v for k, v in (record.config or {}).items() if k in ProbeConfig.__dataclass_fields__}
    config = ProbeConfig(**{**fields, "kind": "linear" if record.kind == "logreg" else record.kind})
    dim = record.dim
    zeros, ones = np.zeros(dim, np.float32), np.ones(dim, np.float32)
    heads = record.head_classes

    def member() -> nn.Module:
        if len(heads) == 1:
            return Probe(dim, len(heads[0]), config, zeros, ones)
        return MultiTaskProbe(dim, [len(h) for h in heads], config, zeros, ones)
    model = SeedEnsemble([member() for _ in record.seeds]) if config.ensemble else member()
    model.load_state_dict(torch.load(directory / "probe.pt", map_location="cpu", weights_only=True))
    return model.eval(), record.as_dict()
