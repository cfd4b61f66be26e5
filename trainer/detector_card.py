"""Detector card: pick an operating threshold on validation data, then describe the detector on test data.

Score convention: MANIPULATION_SCORE >= threshold means "manipulated". The threshold is chosen on validation
data only, so the test FPR reported by the card is an honest estimate of what the deployed threshold does.
Every value in a card is a plain Python float/int/list/None so the card goes straight into json.dumps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")  # cards are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

MAX_ROC_POINTS = 200  # enough for a smooth plot, small enough for a JSON report
TPR_AT = (0.01, 0.05)


def _split(scores, manipulated) -> tuple[np.ndarray, np.ndarray]:
    scores, manipulated = np.asarray(scores, dtype=float), np.asarray(manipulated, dtype=bool)
    if scores.shape != manipulated.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and manipulated {manipulated.shape} must be equal-length 1-D")
    return scores, manipulated


def operating_threshold(scores, manipulated, target_fpr: float = 0.05) -> float:
    """The threshold that flags `target_fpr` of new originals, estimated from validation scores: the
    Harrell-Davis estimate of the originals' (1 - target_fpr) quantile (a Beta-weighted average of
    every order statistic), taken on the logit scale of scores in [0, 1] and rounded to float32,
    the precision the served model compares in. An original scoring exactly t counts as flagged.

    The rule it replaces, the smallest observed score whose validation FPR is within budget, sits
    just above the (n - b)-th of n originals (b = floor(target n) false positives allowed); the
    share of new originals above that order statistic is Beta(b + 1, n - b), mean (b + 1) / (n + 1):
    0.073 for target 0.05 and 40 originals, a bias of up to 1 / (n + 1). The Harrell-Davis estimate
    is centred on the target, and of the rules simulated (empirical, conformal order statistic,
    interpolated quantile, Gaussian fit) the nonparametric one with the smallest spread: sd of the
    new-source FPR 0.030 at 40 originals and 0.018 at 120, against 0.040 and 0.021 before
    (`fpr_interval` gives the interval). A conservative upper confidence bound was not chosen: the
    promise is two-sided, and with 40 originals even zero false positives bounds the FPR only at
    0.072. With few originals no rule pins the FPR; more originals per validation source (more
    crops of each) do. target_fpr 0: just above every original. Raises ValueError when there are
    no originals, because then the FPR is undefined.
    """
    from scipy.stats import beta

    scores, manipulated = _split(scores, manipulated)
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    originals = np.sort(scores[~manipulated])
    if originals.size == 0:
        raise ValueError("operating_threshold needs at least one original (manipulated == False) to measure FPR")
    if target_fpr == 0.0:
        return float(np.nextafter(np.float32(originals[-1]), np.float32(np.inf)))
    probabilities = originals.min() >= 0.0 and originals.max() <= 1.0
    values = _logit(originals) if probabilities else originals
    n, level = originals.size, 1.0 - target_fpr
    weights = np.diff(beta.cdf(np.arange(n + 1) / n, (n + 1) * level, (n + 1) * (1 - level)))
    quantile = float(weights @ values)
    threshold = float(np.float32(1.0 / (1.0 + np.exp(-quantile)) if probabilities else quantile))
    return threshold


def fpr_interval(originals: int, target_fpr: float, level: float = 0.9) -> Optional[list[float]]:
    """Where the FPR on new sources of a threshold at the (1 - target) quantile of `originals`
    validation originals lands with probability `level`: the share of new originals above the
    (1 - target)(n + 1)-th order statistic is Beta(target (n + 1), (1 - target)(n + 1))."""
    from scipy.stats import beta

    if originals < 1 or not 0.0 < target_fpr < 1.0:
        return None
    dist = beta(target_fpr * (originals + 1), (1 - target_fpr) * (originals + 1))
    return [float(dist.ppf((1 - level) / 2)), float(dist.ppf((1 + level) / 2))]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def _ratio(num, den) -> float | None:
    return None if den == 0 else float(num) / float(den)


def _downsample(fpr: np.ndarray, tpr: np.ndarray) -> tuple[list[float], list[float]]:
    # Evenly spaced indices keep both end points (0,0) and (1,1).
    idx = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), MAX_ROC_POINTS)).round().astype(int))
    return [float(v) for v in fpr[idx]], [float(v) for v in tpr[idx]]


def _roc_summary(scores: np.ndarray, manipulated: np.ndarray) -> dict:
    if manipulated.all() or not manipulated.any():  # AUC and ROC are undefined with one class
        return {"auc": None, "roc": {"fpr": [], "tpr": []}, **{f"tpr_at_fpr_{t:g}": None for t in TPR_AT}}
    fpr, tpr, _ = roc_curve(manipulated, scores)
    down_fpr, down_tpr = _downsample(fpr, tpr)
    # Standard reading of TPR@FPR: the best TPR among ROC points whose FPR is within the target (from the full
    # curve, not the downsampled one); (0, 0) is always on the curve, so the max exists.
    at = {f"tpr_at_fpr_{t:g}": float(tpr[fpr <= t + 1e-12].max()) for t in TPR_AT}
    return {"auc": float(roc_auc_score(manipulated, scores)), "roc": {"fpr": down_fpr, "tpr": down_tpr}, **at}


def _names(values, categories: list[str]) -> np.ndarray:
    # Categories may come as names or as indices into `categories`; compare as names either way.
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return np.asarray(categories, dtype=object)[values]
    return values.astype(str).astype(object)


def detector_card(scores, manipulated, true_category, predicted_category, threshold: float,
                  categories: list[str]) -> dict:
    """Test-set description of a detector at a fixed (validation-chosen) threshold."""
    scores, manipulated = _split(scores, manipulated)
    flagged = scores >= threshold
    n_orig, n_manip = int((~manipulated).sum()), int(manipulated.sum())
    tp, fp = int((flagged & manipulated).sum()), int((flagged & ~manipulated).sum())
    # Only manipulated rows have a meaningful category; originals may carry any placeholder (e.g. -1).
    true_c = _names(np.asarray(true_category)[manipulated], categories)
    pred_c = _names(np.asarray(predicted_category)[manipulated], categories)
    hit = flagged[manipulated]
    per_category = {}
    for c in categories:
        rows = true_c == c
        per_category[c] = {"n": int(rows.sum()), "detected": _ratio(hit[rows].sum(), rows.sum()),
                           "named": _ratio((pred_c[rows] == c).sum(), rows.sum())}
    return {
        **_roc_summary(scores, manipulated),
        "threshold": float(threshold),
        "at_threshold": {"fpr": _ratio(fp, n_orig), "tpr": _ratio(tp, n_manip),
                         "identity_recall": _ratio(n_orig - fp, n_orig), "precision": _ratio(tp, tp + fp)},
        "per_category": per_category,
        "top_category_accuracy": _ratio((true_c == pred_c).sum(), n_manip),
        "counts": {"originals": n_orig, "manipulated": n_manip},
    }


def plot_roc(cards: dict[str, dict], out_png: Path, title: str) -> Path:
    """One ROC curve per card, the chance diagonal, FPR 1%/5% guides and each card's operating point."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, label="chance")
    for t in TPR_AT:
        ax.axvline(t, color="grey", ls=":", lw=0.8)
    for name, card in cards.items():
        auc = "n/a" if card["auc"] is None else f"{card['auc']:.2f}"
        (line,) = ax.plot(card["roc"]["fpr"], card["roc"]["tpr"], lw=1.5, label=f"{name} AUC {auc}")
        op = card["at_threshold"]
        if op["fpr"] is not None and op["tpr"] is not None:
            ax.plot([op["fpr"]], [op["tpr"]], "o", color=line.get_color(), ms=6)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate (originals)",
           ylabel="true-positive rate (manipulated)", title=title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def format_card(card: dict) -> list[str]:
    """A few human-readable lines; per-category recall as name=detected/named."""
    from equiprobe.clients.scoring import format_threshold

    op, counts = card["at_threshold"], card["counts"]
    per_cat = " ".join(f"{c}={_fmt(v['detected'], 2)}/{_fmt(v['named'], 2)}" for c, v in card["per_category"].items())
    lines = [
        f"AUC {_fmt(card['auc'])}  TPR@1% {_fmt(card['tpr_at_fpr_0.01'])}  TPR@5% {_fmt(card['tpr_at_fpr_0.05'])}",
        f"threshold {format_threshold(card['threshold'])}: FPR {_fmt(op['fpr'])} TPR {_fmt(op['tpr'])} "
        f"identity recall {_fmt(op['identity_recall'])} precision {_fmt(op['precision'])}",
        f"top category accuracy {_fmt(card['top_category_accuracy'])} "
        f"({counts['originals']} originals, {counts['manipulated']} manipulated)",
        f"per category detected/named: {per_cat}",
    ]
    if card.get("calibration"):  # train's card (trainer/detector_scores.card_for)
        from .calibration import Calibration

        rule, raw = card["threshold_rule"], card["raw"]
        interval = rule.get("fpr_interval_90")
        spread = f", 90% of new-source FPRs in [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
        of_sources = f" of {rule['validation_sources']} sources" if rule.get("validation_sources") else ""
        lines += [f"score: {Calibration.from_dict(card['calibration']).describe()}",
                  f"threshold chosen for FPR {card['target_fpr']:g} on {rule['validation_originals']} validation "
                  f"originals{of_sources} (validation FPR {_fmt(rule['validation_fpr'])}{spread}); raw {raw['score']}: "
                  f"AUC {_fmt(raw['auc'])}, the same threshold at {format_threshold(raw['threshold'])}"]
    return lines
