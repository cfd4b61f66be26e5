"""Detector card: pick an operating threshold on validation data, then describe the detector on test data.

Score convention: MANIPULATION_SCORE >= threshold means "manipulated". The threshold is chosen on validation
data only, so the test FPR reported by the card is an honest estimate of what the deployed threshold does.
Every value in a card is a plain Python float/int/list/None so the card goes straight into json.dumps.
"""

from __future__ import annotations

from pathlib import Path

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
    """The smallest validation score t with FPR(t) = #(originals >= t) / #originals <= target_fpr.

    Candidates are observed scores (as sklearn's roc_curve uses), so the threshold is the standard ROC
    operating point: the highest validation TPR among thresholds meeting the FPR budget. An original scoring
    exactly t counts as a false positive, so ties can never push the FPR over budget. If no observed score
    meets the budget (e.g. target 0 and the top score is an original), t is the next float above every score:
    FPR 0, TPR 0. Raises ValueError when there are no originals, because then the FPR is undefined.
    """
    scores, manipulated = _split(scores, manipulated)
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    originals = np.sort(scores[~manipulated])
    if originals.size == 0:
        raise ValueError("operating_threshold needs at least one original (manipulated == False) to measure FPR")
    candidates = np.unique(scores)  # ascending
    false_pos = originals.size - np.searchsorted(originals, candidates, side="left")  # #originals >= candidate
    # Integer budget with a tolerance, so 0.05 * 20 originals allows exactly 1 false positive despite rounding.
    ok = false_pos <= target_fpr * originals.size + 1e-9
    if not ok.any():
        return float(np.nextafter(scores.max(), np.inf))
    return float(candidates[ok][0])


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
    op, counts = card["at_threshold"], card["counts"]
    per_cat = " ".join(f"{c}={_fmt(v['detected'], 2)}/{_fmt(v['named'], 2)}" for c, v in card["per_category"].items())
    return [
        f"AUC {_fmt(card['auc'])}  TPR@1% {_fmt(card['tpr_at_fpr_0.01'])}  TPR@5% {_fmt(card['tpr_at_fpr_0.05'])}",
        f"threshold {card['threshold']:.6f}: FPR {_fmt(op['fpr'])} TPR {_fmt(op['tpr'])} "
        f"identity recall {_fmt(op['identity_recall'])} precision {_fmt(op['precision'])}",
        f"top category accuracy {_fmt(card['top_category_accuracy'])} "
        f"({counts['originals']} originals, {counts['manipulated']} manipulated)",
        f"per category detected/named: {per_cat}",
    ]
