"""The match probe's edited score: the probe's log-odds, and how far the upload moved from its original.

The reference-aware probe names the edits it trained on. An edit unlike every training row (a
swirl, a lens distortion, a median filter) can leave its softmax on identity, while the upload
still moved farther from its original than a re-encoding moves it. Matching knows the original,
so that distance is evidence of its own, and it needs no edit to have been seen.

Evidence of one pair (query q, reference o; each [embedding D, FEATURES F]):
  r       log P(edited) / P(identity) from the probe's logits (calibration.raw_log_odds)
  d_emb   log(1 - cos(q_emb, o_emb) + EPS): the embedding's cosine distance
  d_feat  log(rms((q_feat - o_feat) / scale) + EPS): FEATURES' distance, each value divided by
          the training pairs' deviation of the references' FEATURES (the probe's own buffer)
Combined log-odds s = w . evidence + c: a logistic regression on validation pairs (originals and
edited versions weighted equally, as the calibration's prior), kept only where it beats r alone
in cross-validation over validation sources (held-out AUC, pooled); otherwise s = r. The
calibration (trainer/calibration.py) then maps s to EDITED_SCORE. Everything is fitted on the
catalog's versions of validation sources: no other implementation of any edit is involved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from .calibration import FOLDS, raw_log_odds, source_folds
from .match_metrics import auc

EPS = 1e-6  # distances are logged: a re-upload of an identical encoding is 0
PROBE_ONLY, WITH_DISTANCES = "probe", "probe+distances"


class Distances(nn.Module):
    """(query [B, W], reference [B, W]) -> [B, 2 or 1]: log embedding cosine distance, and log
    FEATURES distance where F > 0."""

    def __init__(self, dim: int, scale: torch.Tensor):
        super().__init__()
        self.dim = int(dim)
        self.register_buffer("scale", scale.reshape(1, -1).clone())

    def forward(self, query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        q, o = query[:, :self.dim], reference[:, :self.dim]
        # 1 - cos as half the squared distance of the unit vectors: the difference is taken before
        # squaring, so a re-upload's 1e-4 keeps its digits in float32 (1 - q.o would cancel them,
        # and the log would make torch and ONNX Runtime disagree in the fifth digit).
        diff = q / (q.norm(dim=1, keepdim=True) + EPS) - o / (o.norm(dim=1, keepdim=True) + EPS)
        out = [torch.log(0.5 * (diff * diff).sum(1, keepdim=True) + EPS)]
        if self.scale.shape[1]:
            diff = (query[:, self.dim:] - reference[:, self.dim:]) / self.scale
            out.append(torch.log(torch.sqrt((diff * diff).mean(1, keepdim=True)) + EPS))
        return torch.cat(out, 1)


@dataclass
class EditEvidence:
    """s = weights . [r, distances...] + bias; `chosen` says which (weights [1, 0...], bias 0: r alone)."""

    weights: list[float]
    bias: float = 0.0
    chosen: str = PROBE_ONLY
    inputs: list[str] = field(default_factory=list)
    cross_validated_auc: dict = field(default_factory=dict)
    held_out: dict = field(default_factory=dict)  # the auxiliary probe's held-out rows and its figures

    @classmethod
    def probe_only(cls, inputs: list[str]) -> "EditEvidence":
        return cls([1.0] + [0.0] * (len(inputs) - 1), 0.0, PROBE_ONLY, list(inputs))

    def combine(self, evidence: np.ndarray) -> np.ndarray:
        return np.asarray(evidence, np.float64) @ np.asarray(self.weights, np.float64) + self.bias

    def as_dict(self) -> dict:
        return {"chosen": self.chosen, "inputs": self.inputs, "weights": [float(w) for w in self.weights],
                "bias": float(self.bias), "cross_validated_auc": self.cross_validated_auc, "held_out": self.held_out}

    @classmethod
    def from_dict(cls, values: Optional[dict], inputs: list[str]) -> "EditEvidence":
        if not values:  # a probe written before distances were evidence: r alone
            return cls.probe_only(inputs)
        return cls([float(w) for w in values["weights"]], float(values.get("bias", 0.0)), values.get("chosen", ""),
                   list(values.get("inputs", [])), dict(values.get("cross_validated_auc", {})),
                   dict(values.get("held_out", {})))


class CombinedLogOdds(nn.Module):
    """(logits [B, C], query, reference) -> s [B, 1], what the calibration maps to EDITED_SCORE."""

    def __init__(self, evidence: EditEvidence, identity: int, distances: Distances):
        super().__init__()
        self.identity, self.distances = int(identity), distances
        self.register_buffer("weights", torch.tensor(evidence.weights, dtype=torch.float32).reshape(-1, 1))
        self.bias = float(evidence.bias)

    def forward(self, logits: torch.Tensor, query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        x = torch.cat([raw_log_odds(logits, self.identity), self.distances(query, reference)], 1)
        return x @ self.weights + self.bias


def input_names(features_dim: int) -> list[str]:
    return ["log_odds", "log_embedding_cosine_distance"] + (["log_features_rms_distance"] if features_dim else [])


def _logistic(x: np.ndarray, edited: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    # Classes weighted equally (the calibration's prior); a weak L2 keeps collinear distances tame.
    return LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(x, edited)


def fit_evidence(evidence: np.ndarray, edited: np.ndarray, groups: np.ndarray, features_dim: int,
                 folds: int = FOLDS) -> EditEvidence:
    """Choose and fit the combination on validation pairs: evidence [n, 1 + distances] (r first),
    edited [n] labels, groups [n] sources (no source on both sides of a fold)."""
    x, edited, groups = np.asarray(evidence, np.float64), np.asarray(edited, bool), np.asarray(groups)
    names = input_names(features_dim)
    if x.shape[1] != len(names):
        raise ValueError(f"evidence has {x.shape[1]} columns, expected {len(names)} ({', '.join(names)})")
    folds = min(folds, len(np.unique(groups)))
    alone = EditEvidence.probe_only(names)
    if folds < 2 or edited.all() or not edited.any():
        return alone
    held = np.empty(len(x))
    for mask in source_folds(groups, folds):
        if edited[~mask].all() or not edited[~mask].any():
            return alone
        held[mask] = _logistic(x[~mask], edited[~mask]).decision_function(x[mask])
    scores = {PROBE_ONLY: auc(x[edited, 0], x[~edited, 0]), WITH_DISTANCES: auc(held[edited], held[~edited])}
    if not scores[WITH_DISTANCES] > scores[PROBE_ONLY]:  # r alone is monotone in itself: no fit needed
        out = alone
    else:
        model = _logistic(x, edited)
        out = EditEvidence([float(w) for w in model.coef_[0]], float(model.intercept_[0]), WITH_DISTANCES)
    out.inputs, out.cross_validated_auc = names, {k: float(v) for k, v in scores.items()} | {"folds": folds}
    return out
