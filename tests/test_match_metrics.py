import numpy as np
import pytest

from equiprobe.trainer.match_metrics import auc, micro_average_precision, recall_at


def test_recall_counts_the_true_key_within_k():
    found = [["a", "b"], ["c", "a"], ["d", "e"]]
    assert recall_at(found, ["a", "a", "a"], 1) == pytest.approx(1 / 3)
    assert recall_at(found, ["a", "a", "a"], 2) == pytest.approx(2 / 3)
    assert recall_at([], [], 1) is None


def test_micro_ap_is_one_when_every_copy_outranks_every_mistake():
    sim = np.array([0.9, 0.8, 0.3, 0.2])
    assert micro_average_precision(sim, np.array([True, True, False, False]), positives=2) == 1.0


def test_micro_ap_penalises_a_confident_non_copy_and_a_missed_original():
    sim = np.array([0.95, 0.9, 0.8])
    correct = np.array([False, True, True])  # a new photo matched something with 0.95
    assert micro_average_precision(sim, correct, positives=2) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # a third copy query whose original was never found: recall stops at 2/3
    assert micro_average_precision(sim, correct, positives=3) == pytest.approx((1 / 2 + 2 / 3) / 3)


def test_auc_orders_groups_and_counts_ties_half():
    assert auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auc([0.5], [0.5]) == 0.5
    assert auc([], [0.1]) is None
