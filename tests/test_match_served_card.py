"""The served match card's figures from per-upload rows (trainer/match_served_card.summarize)."""

import pytest

from equiprobe.trainer.match_served_card import expected_categories, summarize


def row(key, edit, top, sim, copy, category=None, score=-1.0, edited=False, copy_query=True):
    return {"key": key, "edit": edit, "copy_query": copy_query, "top": top, "similarity": sim, "copy": copy,
            "edited": edited, "category": category, "score": score}


def test_figures_by_edit_group_and_new_photos():
    rows = [row("a", "original", ["a", "b"], 0.99, True, score=0.1),
            row("b", "original", ["b", "a"], 0.98, True, score=0.2),
            row("a", "blur", ["a", "b"], 0.9, True, "blur", 0.9, True),
            row("b", "blur", ["a", "b"], 0.8, True, "blur", 0.8, True),  # the wrong original first
            row("a", "gamma", ["a"], 0.95, True, "tone", 0.7, True),
            row("b", "gamma", ["b"], 0.6, False, None, -1.0),  # right, below the copy threshold
            row("n", "original", ["a"], 0.5, False, copy_query=False),
            row("n", "blur", ["b"], 0.85, True, copy_query=False)]
    card = summarize(rows, {"blur": {"blur"}, "gamma": set()}, {"blur": "artifact", "gamma": "plausible"})
    assert card["all_edits"]["recall@1"] == pytest.approx(3 / 4)
    assert card["per_edit"]["blur"]["recall@10"] == 1.0
    assert card["per_edit"]["gamma"]["copy"] == 0.5
    assert card["per_edit"]["blur"]["category_accuracy"] == 1.0
    assert card["per_edit"]["gamma"]["category_accuracy"] is None  # novel: no row says what is right
    assert card["all_edits"]["edited_auc"] == 1.0  # matched edits 0.9, 0.7 over re-uploads 0.1, 0.2
    assert card["reuploads"] == {"recall@1": 1.0, "copy": 1.0, "called_edited": 0.0}
    assert card["new_photos_matched"] == 0.0 and card["new_photos_matched_any_version"] == 0.5
    # best results ranked: 0.99 a ok, 0.98 b ok, 0.95 ok, 0.9 ok, 0.85 new (wrong), 0.8 wrong, 0.6 ok, 0.5 new
    assert card["micro_ap"] == pytest.approx((1 + 1 + 1 + 1 + 5 / 7) / 6)


def test_expected_categories_come_from_the_probes_rows():
    found = expected_categories(["identity", "gamma", "jpeg"], ["identity", "tone", "resolution"])
    assert found["gamma_curve"] == {"tone"}
    assert found["dct_requantize"] == {"resolution"}
    assert found["swirl"] == set()
