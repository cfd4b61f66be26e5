"""The detector's score as a calibrated probability, and the operating threshold on it.

Raw score. The fine probe's log-odds that a version was edited,

    r = log P(edited) / P(identity) = logsumexp_{k != identity} z_k - z_identity

(z: the probe's logits; computed from the logits, so it never saturates as float32 1 - P(identity)
does). 1 - P(identity) = sigmoid(r) is the score the detector served before, and stays in the
card for research ("raw"). It is no probability that an upload was edited: the probe was trained
on 30 edited versions per original (the fine catalog's 30:1), and its 31-way softmax puts most
images close to 1, so its 5%-FPR threshold sat at 0.9998.

Calibration. MANIPULATION_SCORE = P(edited | upload) for an upload that is a priori as likely to
be edited as not (PRIOR = 0.5): 0.5 means "as likely edited as original", 0.9 nine to one. It is
fitted on validation sources only, with weights that give the originals and the edited versions
equal total weight (the prior), and Platt's targets ((N+ + 1) / (N+ + 2) and 1 / (N- + 2), which
keep a fit on a few dozen originals from promising 0 or 1). For a base rate pi of edited uploads
other than 1/2, the posterior odds are p / (1 - p) * pi / (1 - pi).

Two maps of r are fitted and compared by their (prior-weighted) log loss in K-fold
cross-validation over the validation sources (grouped by source, so no source is on both sides);
isotonic is kept only where it beats Platt by more than one standard error over sources (the
one-standard-error rule: a few dozen originals rarely justify more than two numbers):
  platt     p = sigmoid(a r + b), a > 0: two numbers;
  isotonic  centred isotonic regression (Oron and Flournoy 2017): the pool-adjacent-violators fit,
            its blocks' (weighted mean r, value) joined by straight lines, strictly increasing
            between its first and last knot (a plain isotonic fit is a staircase, whose flat steps
            would tie originals at the threshold), and blended with ISOTONIC_BLEND of sigmoid(r)
            so that it also increases beyond them (flat ends would tie originals with edited
            versions there and change the ranking). The ONNX graph computes it as a sum of
            clamped ramps.
Both are strictly increasing in r, so the ranking (AUC, ROC) is the probe's own.

Operating threshold (trainer.detector_card.operating_threshold): chosen on the validation
originals' calibrated scores, never on test data; see that function for the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

PRIOR = 0.5  # P(edited) before looking at the upload, that MANIPULATION_SCORE is the posterior for
KINDS = ("platt", "isotonic", "none")
FOLDS = 5  # cross-validation over validation sources, to choose platt or isotonic
PROBABILITY_FLOOR = 1e-6  # log loss of a prediction of exactly 0 or 1
ISOTONIC_BLEND = 1e-3  # share of sigmoid(r) in the isotonic map: increasing beyond its end knots
SCORE_NAME = "P(edited | upload), equal prior of edited and original"
RAW_NAME = "1 - P(identity)"


class CalibrationError(ValueError):
    """Validation scores a calibration cannot be fitted on; the message says why in one line."""


def _sigmoid(x):
    x = np.asarray(x, np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def _logit(p):
    p = np.clip(np.asarray(p, np.float64), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return np.log(p) - np.log1p(-p)


def raw_log_odds(logits, identity: int):
    """r = log P(edited) / P(identity) from the fine probe's logits [B, C] (torch), as [B, 1]."""
    import torch

    others = torch.cat([logits[:, :identity], logits[:, identity + 1:]], dim=1)
    return torch.logsumexp(others, dim=1, keepdim=True) - logits[:, identity:identity + 1]


@dataclass
class Calibration:
    """An increasing map from the raw log-odds r to MANIPULATION_SCORE. kind "none": the old score,
    1 - P(identity) (a probe deployed without validation scores)."""

    kind: str = "platt"
    a: float = 1.0  # platt: p = sigmoid(a r + b)
    b: float = 0.0
    knots_r: list[float] = field(default_factory=list)  # isotonic: p at knots_r, linear between (then the blend)
    knots_p: list[float] = field(default_factory=list)
    prior: Optional[float] = PRIOR  # None for "none": the training catalog's 30:1 is built in
    fitted_on: dict = field(default_factory=dict)  # {"originals", "edited", "sources"} of the validation part
    cross_validated_log_loss: dict = field(default_factory=dict)  # {"platt", "isotonic", "raw"}, prior-weighted

    def __post_init__(self):
        if self.kind not in KINDS:
            raise CalibrationError(f"unknown calibration {self.kind!r}; one of {', '.join(KINDS)}")

    def probability(self, r) -> np.ndarray:
        """MANIPULATION_SCORE for raw log-odds r (float64; the served model computes it in float32)."""
        r = np.asarray(r, np.float64)
        if self.kind == "isotonic":
            return (1 - ISOTONIC_BLEND) * np.interp(r, self.knots_r, self.knots_p) + ISOTONIC_BLEND * _sigmoid(r)
        return _sigmoid(self.a * r + self.b)

    def raw_threshold(self, threshold: float) -> float:
        """The raw score 1 - P(identity) at which the calibrated score reaches `threshold` (research)."""
        if self.kind == "isotonic":  # strictly increasing: bisection on r
            low, high = -60.0, 60.0
            for _ in range(200):
                middle = (low + high) / 2
                low, high = (middle, high) if self.probability(middle) < threshold else (low, middle)
            r_t = high
        else:
            r_t = (float(_logit(threshold)) - self.b) / self.a
        return float(_sigmoid(r_t))

    def describe(self) -> str:
        if self.kind == "none":
            return f"uncalibrated: {RAW_NAME}"
        how = (f"Platt, sigmoid({self.a:.4g} r {'+' if self.b >= 0 else '-'} {abs(self.b):.4g})" if self.kind == "platt"
               else f"centred isotonic, {len(self.knots_r)} knots")
        return f"{SCORE_NAME} ({how} of r = log P(edited)/P(identity))"

    def as_dict(self) -> dict:
        out = {"kind": self.kind, "score": RAW_NAME if self.kind == "none" else SCORE_NAME, "prior": self.prior}
        if self.kind == "platt":
            out.update(a=float(self.a), b=float(self.b))
        elif self.kind == "isotonic":
            out.update(knots_r=[float(v) for v in self.knots_r], knots_p=[float(v) for v in self.knots_p])
        if self.fitted_on:
            out["fitted_on"] = self.fitted_on
        if self.cross_validated_log_loss:
            out["cross_validated_log_loss"] = self.cross_validated_log_loss
        return out

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "Calibration":
        if not values:
            return cls(kind="none", prior=None)
        return cls(kind=values["kind"], a=float(values.get("a", 1.0)), b=float(values.get("b", 0.0)),
                   knots_r=list(values.get("knots_r", [])), knots_p=list(values.get("knots_p", [])),
                   prior=values.get("prior"), fitted_on=dict(values.get("fitted_on", {})),
                   cross_validated_log_loss=dict(values.get("cross_validated_log_loss", {})))

    def module(self, identity: Optional[int]):
        """The torch module logits [B, C] -> MANIPULATION_SCORE [B, 1] that the ONNX probe is exported from;
        identity None: the module takes the log-odds r [B, 1] itself (a score combined before calibration)."""
        import torch
        from torch import nn

        kind, a, b = self.kind, float(self.a), float(self.b)
        knots_r = torch.tensor(self.knots_r, dtype=torch.float32)
        knots_p = torch.tensor(self.knots_p, dtype=torch.float32)

        class Calibrate(nn.Module):
            def __init__(self):
                super().__init__()
                if kind == "isotonic":  # p = p0 + sum_j slope_j * min(max(r - r_j, 0), r_{j+1} - r_j)
                    widths = knots_r[1:] - knots_r[:-1]
                    self.register_buffer("starts", knots_r[:-1].reshape(1, -1))
                    self.register_buffer("widths", widths.reshape(1, -1))
                    self.register_buffer("slopes", ((knots_p[1:] - knots_p[:-1]) / widths).reshape(-1, 1))
                    self.p0 = float(knots_p[0])

            def forward(self, logits: torch.Tensor) -> torch.Tensor:
                if identity is None:
                    r = logits
                    if kind == "none":  # 1 - P(identity) = sigmoid(r)
                        return torch.sigmoid(r)
                elif kind == "none":
                    return 1.0 - torch.softmax(logits, dim=1)[:, identity:identity + 1]
                else:
                    r = raw_log_odds(logits, identity)
                if kind == "platt":
                    return torch.sigmoid(r * a + b)
                ramps = torch.minimum(torch.relu(r - self.starts), self.widths)
                return (1 - ISOTONIC_BLEND) * (self.p0 + ramps @ self.slopes) + ISOTONIC_BLEND * torch.sigmoid(r)

        return Calibrate().eval()


# -- fitting ------------------------------------------------------------------------------------

def prior_weights(edited: np.ndarray, prior: float = PRIOR) -> np.ndarray:
    """Per-example weights that give the edited versions `prior` and the originals 1 - prior of
    the total weight (mean weight 1)."""
    edited = np.asarray(edited, bool)
    n1, n0 = int(edited.sum()), int((~edited).sum())
    if not n0 or not n1:
        raise CalibrationError(f"a calibration needs originals and edited versions; the validation part has "
                               f"{n0} originals and {n1} edited versions")
    n = n0 + n1
    return np.where(edited, prior * n / n1, (1 - prior) * n / n0)


def _platt_targets(edited: np.ndarray) -> np.ndarray:
    n1, n0 = int(edited.sum()), int((~edited).sum())
    return np.where(edited, (n1 + 1) / (n1 + 2), 1 / (n0 + 2))


def weighted_log_loss(p, edited, weights) -> float:
    p = np.clip(np.asarray(p, np.float64), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    edited = np.asarray(edited, bool)
    return float((weights * _example_loss(p, edited)).sum() / weights.sum())


def fit_platt(r, edited, prior: float = PRIOR) -> tuple[float, float]:
    """(a, b) of p = sigmoid(a r + b) minimizing the prior-weighted log loss against Platt's targets
    (Newton's method on standardized r; a is kept positive)."""
    r, edited = np.asarray(r, np.float64), np.asarray(edited, bool)
    w, t = prior_weights(edited, prior), _platt_targets(edited)
    mu, sd = float(r.mean()), float(r.std()) or 1.0
    x = np.stack([(r - mu) / sd, np.ones_like(r)], axis=1)

    def loss(theta):
        z = x @ theta
        return float((w * (np.logaddexp(0, z) - t * z)).sum())

    theta = np.zeros(2)
    current = loss(theta)
    for _ in range(100):
        p = _sigmoid(x @ theta)
        gradient = x.T @ (w * (p - t))
        hessian = x.T @ (x * (w * p * (1 - p))[:, None]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-6 and loss(theta - scale * step) > current:
            scale /= 2
        theta, previous = theta - scale * step, current
        current = loss(theta)
        if abs(previous - current) <= 1e-12 * max(1.0, abs(current)):
            break
    a, b = float(theta[0] / sd), float(theta[1] - theta[0] * mu / sd)
    if a < 1e-6:  # a score that does not separate on validation: nearly flat, still increasing
        a, b = 1e-6, float(theta[1]) - 1e-6 * mu
    return a, b


def fit_isotonic(r, edited, prior: float = PRIOR) -> tuple[list[float], list[float]]:
    """Centred isotonic regression of Platt's targets on r, prior-weighted: knots (r, p)."""
    from sklearn.isotonic import IsotonicRegression

    r, edited = np.asarray(r, np.float64), np.asarray(edited, bool)
    w, t = prior_weights(edited, prior), _platt_targets(edited)
    fitted = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(r, t, sample_weight=w).predict(r)
    order = np.argsort(r, kind="stable")
    r, w, fitted = r[order], w[order], fitted[order]
    starts = np.flatnonzero(np.r_[True, np.diff(fitted) > 1e-12])  # blocks of equal fitted value
    ends = np.r_[starts[1:], len(r)]
    knots_r = [float(np.average(r[s:e], weights=w[s:e])) for s, e in zip(starts, ends)]
    knots_p = [float(fitted[s]) for s in starts]
    if len(knots_r) == 1:  # one block (a score that does not separate): two knots, as the ramps need
        knots_r, knots_p = [knots_r[0] - 1.0, knots_r[0] + 1.0], [knots_p[0], knots_p[0]]
    return knots_r, knots_p


def source_folds(groups: np.ndarray, folds: int) -> list[np.ndarray]:
    """Each fold's held-out mask: whole groups (sources), assigned in a fixed shuffled order."""
    unique = np.unique(groups)
    order = np.random.default_rng(0).permutation(len(unique))
    fold_of = dict(zip(unique[order], np.arange(len(unique)) % folds))
    assignment = np.array([fold_of[g] for g in groups])
    return [assignment == k for k in range(folds)]


def cross_validated_log_loss(r, edited, groups, prior: float = PRIOR, folds: int = FOLDS) -> Optional[dict]:
    """Prior-weighted log loss of each map (and of the raw sigmoid(r)) on held-out validation
    sources, fitted on the others; None where there are too few sources for it."""
    r, edited, groups = np.asarray(r, np.float64), np.asarray(edited, bool), np.asarray(groups)
    folds = min(folds, len(np.unique(groups)))
    if folds < 2:
        return None
    held = {"platt": np.empty(len(r)), "isotonic": np.empty(len(r))}
    for mask in source_folds(groups, folds):
        train = ~mask
        if edited[train].all() or not edited[train].any():
            return None
        a, b = fit_platt(r[train], edited[train], prior)
        held["platt"][mask] = _sigmoid(a * r[mask] + b)
        knots = fit_isotonic(r[train], edited[train], prior)
        held["isotonic"][mask] = Calibration("isotonic", knots_r=knots[0], knots_p=knots[1]).probability(r[mask])
    w = prior_weights(edited, prior)
    losses = {kind: weighted_log_loss(p, edited, w) for kind, p in held.items()}
    # The isotonic map's gain per source, and its standard error (sources are the independent units).
    gain = w * (_example_loss(held["platt"], edited) - _example_loss(held["isotonic"], edited))
    sources, index = np.unique(groups, return_inverse=True)
    per_source, weight = np.bincount(index, gain), np.bincount(index, w)
    mean = per_source.sum() / weight.sum()
    se = float(np.sqrt(len(sources) / (len(sources) - 1) * ((per_source - mean * weight) ** 2).sum()) / weight.sum())
    return {**losses, "raw": weighted_log_loss(_sigmoid(r), edited, w), "isotonic_gain": float(mean),
            "isotonic_gain_se": se, "folds": folds}


def _example_loss(p, edited) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return -np.where(edited, np.log(p), np.log1p(-p))


def fit_calibration(r, edited, groups=None, prior: float = PRIOR, kind: Optional[str] = None) -> Calibration:
    """The calibration of the raw log-odds r, fitted on validation examples (edited: the label;
    groups: each example's source, for the cross-validation that picks platt or isotonic).
    kind forces a map; by default isotonic only where its cross-validated log loss is lower than
    Platt's by more than one standard error over sources (Platt without groups)."""
    r, edited = np.asarray(r, np.float64), np.asarray(edited, bool)
    if not np.isfinite(r).all():
        raise CalibrationError("validation log-odds are not all finite")
    prior_weights(edited, prior)  # raises without both classes
    cv = cross_validated_log_loss(r, edited, groups, prior) if groups is not None else None
    if kind is None:  # the one-standard-error rule: the two-number map unless isotonic is clearly better
        kind = "isotonic" if cv and cv["isotonic_gain"] > cv["isotonic_gain_se"] else "platt"
    fitted_on = {"originals": int((~edited).sum()), "edited": int(edited.sum())}
    if groups is not None:
        fitted_on["sources"] = int(len(np.unique(groups)))
    if kind == "platt":
        a, b = fit_platt(r, edited, prior)
        return Calibration("platt", a=a, b=b, prior=prior, fitted_on=fitted_on, cross_validated_log_loss=cv or {})
    knots_r, knots_p = fit_isotonic(r, edited, prior)
    return Calibration("isotonic", knots_r=knots_r, knots_p=knots_p, prior=prior, fitted_on=fitted_on,
                       cross_validated_log_loss=cv or {})


def calibration_quality(p, edited, prior: float = PRIOR, bins: int = 10) -> dict:
    """How well scores p read as P(edited) under `prior`: weighted log loss, Brier score, and the
    expected calibration error over equal-width bins (|mean p - edited share| weighted by bin weight)."""
    p, edited = np.asarray(p, np.float64), np.asarray(edited, bool)
    w = prior_weights(edited, prior)
    which = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for k in range(bins):
        in_bin = which == k
        if in_bin.any():
            share = w[in_bin].sum() / w.sum()
            ece += share * abs(np.average(p[in_bin], weights=w[in_bin]) - np.average(edited[in_bin], weights=w[in_bin]))
    return {"log_loss": weighted_log_loss(p, edited, w),
            "brier": float((w * (p - edited) ** 2).sum() / w.sum()), "ece": float(ece)}
