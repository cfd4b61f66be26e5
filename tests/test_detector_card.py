"""Detector card on toy cases whose answers were worked out by hand (in the comments)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from equiprobe.trainer.detector_card import detector_card, format_card, operating_threshold, plot_roc

CATS = ["blur", "crop", "color"]


def _set(originals, manipulated):
    scores = np.array(list(originals) + list(manipulated), dtype=float)
    is_manip = np.array([False] * len(originals) + [True] * len(manipulated))
    return scores, is_manip


def _card(scores, is_manip, threshold, true=None, pred=None):
    n = len(scores)
    true = ["blur"] * n if true is None else true
    pred = ["blur"] * n if pred is None else pred
    return detector_card(scores, is_manip, true, pred, threshold, CATS)


# Originals 0.1 0.2 0.3 0.9, manipulated 0.4 0.8 0.95 0.99.
# Pairs (manipulated > original): 0.4 and 0.8 beat 3 originals each (not 0.9), 0.95 and 0.99 beat all 4
# -> 14/16 = 0.875. Ranked descending: M M O M M O O O, so the ROC is
# (0,0) (0,.25) (0,.5) (.25,.5) (.25,.75) (.25,1) (.5,1) (.75,1) (1,1).
TOY = _set([0.1, 0.2, 0.3, 0.9], [0.4, 0.8, 0.95, 0.99])


def test_toy_auc_and_roc():
    card = _card(*TOY, threshold=0.95)
    assert card["auc"] == 0.875
    points = list(zip(card["roc"]["fpr"], card["roc"]["tpr"]))
    # roc_curve may drop collinear points, but never the corners, and keeps the order.
    staircase = [(0, 0), (0, .25), (0, .5), (.25, .5), (.25, .75), (.25, 1), (.5, 1), (.75, 1), (1, 1)]
    assert set(points) <= set(staircase) and points == sorted(points)
    assert {(0, 0), (0, .5), (.25, .5), (.25, 1), (1, 1)} <= set(points)
    assert card["tpr_at_fpr_0.01"] == 0.5  # best TPR with FPR 0
    assert card["tpr_at_fpr_0.05"] == 0.5
    assert card["counts"] == {"originals": 4, "manipulated": 4}


def _harrell_davis(originals, level):
    """By hand: the Beta((n+1) level, (n+1)(1-level))-weighted mean of the sorted logits, back to a probability."""
    from scipy.stats import beta

    x = np.sort(np.asarray(originals, float))
    n = len(x)
    weights = [beta.cdf((i + 1) / n, (n + 1) * level, (n + 1) * (1 - level)) -
               beta.cdf(i / n, (n + 1) * level, (n + 1) * (1 - level)) for i in range(n)]
    return float(np.float32(1 / (1 + np.exp(-np.dot(weights, np.log(x / (1 - x)))))))


def test_toy_thresholds():
    # The 0.75 quantile of the originals 0.1 0.2 0.3 0.9, estimated from all four (mostly the top two):
    # 0.695, between the third and the fourth; it flags the original 0.9 (validation FPR 0.25).
    threshold = operating_threshold(*TOY, target_fpr=0.25)
    assert threshold == pytest.approx(_harrell_davis([0.1, 0.2, 0.3, 0.9], 0.75)) and 0.3 < threshold < 0.9
    assert threshold == float(np.float32(threshold))  # what the served model compares in float32
    # The 0.95 quantile of four originals lies close to the highest.
    assert 0.8 < operating_threshold(*TOY, target_fpr=0.05) < 0.9
    card = _card(*TOY, threshold=0.4)
    assert card["at_threshold"] == {"fpr": 0.25, "tpr": 1.0, "identity_recall": 0.75, "precision": 0.8}
    card = _card(*TOY, threshold=0.95)
    assert card["at_threshold"] == {"fpr": 0.0, "tpr": 0.5, "identity_recall": 1.0, "precision": 1.0}


def test_perfect_separation():
    scores, is_manip = _set([0.1, 0.2], [0.8, 0.9])
    # Two originals say little about their 0.95 quantile: the estimate stays within their range.
    assert 0.1 < operating_threshold(scores, is_manip, 0.05) < 0.2
    card = _card(scores, is_manip, 0.8)
    assert card["auc"] == 1.0
    assert card["tpr_at_fpr_0.01"] == 1.0 and card["tpr_at_fpr_0.05"] == 1.0
    assert card["at_threshold"]["fpr"] == 0.0 and card["at_threshold"]["tpr"] == 1.0


def test_threshold_from_validation_applied_to_test():
    threshold = 0.4  # as if chosen on a validation set
    # Test: originals 0.45 and 0.6 are >= 0.4 (2/5); manipulated 0.4 and 0.9 are (2/3), 0.39 is missed.
    # AUC: 0.4 and 0.39 beat 0.05 0.2 0.35 (3 each), 0.9 beats all 5 -> 11/15.
    test = _set([0.05, 0.45, 0.6, 0.2, 0.35], [0.4, 0.39, 0.9])
    card = _card(*test, threshold=threshold)
    assert card["threshold"] == 0.4
    assert card["auc"] == pytest.approx(11 / 15, abs=1e-12)
    assert card["at_threshold"]["fpr"] == 0.4
    assert card["at_threshold"]["tpr"] == pytest.approx(2 / 3, abs=1e-12)
    assert card["at_threshold"]["identity_recall"] == 0.6
    assert card["at_threshold"]["precision"] == 0.5


def test_ties_count_as_false_positives():
    scores, is_manip = _set([0.5, 0.5, 0.1, 0.2], [0.5, 0.7])
    card = _card(scores, is_manip, 0.5)  # an original scoring exactly the threshold is flagged
    assert card["at_threshold"]["fpr"] == 0.5 and card["at_threshold"]["tpr"] == 1.0
    # Originals all tied: every quantile is their score, and all of them are flagged.
    tied, manipulated = _set([0.5] * 4, [0.7])
    threshold = operating_threshold(tied, manipulated, 0.25)
    assert threshold == float(np.float32(0.5)) and _card(tied, manipulated, threshold)["at_threshold"]["fpr"] == 1.0


def test_target_zero_goes_above_every_original():
    scores, is_manip = _set([0.9, 0.9], [0.1, 0.95])
    threshold = operating_threshold(scores, is_manip, 0.0)
    assert 0.9 < threshold < 0.95 and _card(scores, is_manip, threshold)["at_threshold"]["fpr"] == 0.0


def test_a_quantile_not_a_count():
    # 20 originals 0.00 .. 0.95 (0 and 1 are clipped for the logit): the 0.95 quantile lies between
    # the two highest, not at the highest that a budget of one false positive would allow.
    scores, is_manip = _set([i / 20 for i in range(20)], [])
    assert 0.9 < operating_threshold(scores, is_manip, 0.05) < 0.95


def test_no_originals_raises():
    scores, is_manip = _set([], [0.3, 0.6])
    with pytest.raises(ValueError, match="at least one original"):
        operating_threshold(scores, is_manip)


def test_per_category_and_top_category():
    # Originals 0.1, 0.6; manipulated (true, predicted, score):
    # blur/blur/0.9  blur/crop/0.3  crop/crop/0.8  crop/blur/0.7  crop/crop/0.2. Threshold 0.5.
    scores, is_manip = _set([0.1, 0.6], [0.9, 0.3, 0.8, 0.7, 0.2])
    true = ["none", "none", "blur", "blur", "crop", "crop", "crop"]
    pred = ["blur", "crop", "blur", "crop", "crop", "blur", "crop"]
    card = _card(scores, is_manip, 0.5, true, pred)
    assert card["per_category"] == {
        "blur": {"n": 2, "detected": 0.5, "named": 0.5},  # 0.9 detected, 0.3 not; named 1 of 2
        "crop": {"n": 3, "detected": pytest.approx(2 / 3), "named": pytest.approx(2 / 3)},  # 0.8 0.7 / crop crop
        "color": {"n": 0, "detected": None, "named": None},
    }
    assert card["top_category_accuracy"] == 0.6  # right on rows 1, 3, 5 of 5
    assert card["at_threshold"]["precision"] == 0.75  # flagged 0.9 0.8 0.7 (manip) + 0.6 (original)
    # The same labels as indices into CATS, with -1 on originals, give the same card.
    idx = {"blur": 0, "crop": 1, "none": -1}
    same = _card(scores, is_manip, 0.5, [idx[c] for c in true], [idx[c] for c in pred])
    assert same["per_category"] == card["per_category"]
    assert same["top_category_accuracy"] == 0.6


def test_card_is_json_and_roc_is_downsampled():
    rng = np.random.default_rng(0)
    scores, is_manip = _set(rng.random(1000), rng.random(1000) + 0.2)
    card = _card(scores, is_manip, 0.5)
    assert len(card["roc"]["fpr"]) <= 200 and len(card["roc"]["tpr"]) == len(card["roc"]["fpr"])
    assert (card["roc"]["fpr"][0], card["roc"]["tpr"][0]) == (0.0, 0.0)
    assert (card["roc"]["fpr"][-1], card["roc"]["tpr"][-1]) == (1.0, 1.0)
    assert json.loads(json.dumps(card)) == card


def test_single_class_test_set_has_no_auc():
    scores, is_manip = _set([0.1, 0.7], [])
    card = _card(scores, is_manip, 0.5)
    assert card["auc"] is None and card["tpr_at_fpr_0.05"] is None
    assert card["at_threshold"] == {"fpr": 0.5, "tpr": None, "identity_recall": 0.5, "precision": 0.0}
    assert card["top_category_accuracy"] is None
    json.dumps(card)


def test_format_card():
    lines = format_card(_card(*TOY, threshold=0.4))
    assert lines[0] == "AUC 0.875  TPR@1% 0.500  TPR@5% 0.500"
    assert lines[1] == "threshold 0.400: FPR 0.250 TPR 1.000 identity recall 0.750 precision 0.800"
    assert lines[2] == "top category accuracy 1.000 (4 originals, 4 manipulated)"
    assert lines[3] == "per category detected/named: blur=1.00/1.00 crop=n/a/n/a color=n/a/n/a"


def test_plot_roc_writes_png(tmp_path):
    cards = {"a": _card(*TOY, threshold=0.4), "b": _card(*_set([0.1, 0.2], [0.8, 0.9]), threshold=0.8)}
    out = plot_roc(cards, tmp_path / "sub" / "roc.png", "toy")
    assert out == tmp_path / "sub" / "roc.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
