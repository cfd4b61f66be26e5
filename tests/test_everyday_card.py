"""The everyday-edits card (trainer/everyday_card.py): the edits, the card's arithmetic, and its
wiring into the report, with a stand-in scorer (no Triton server: the served path is the same
Scorer the reference card uses, tested in test_detector.py)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from equiprobe.clients.scoring import Score
from equiprobe.services.transforms import CATALOGS
from equiprobe.trainer import everyday_card as ec
from equiprobe.trainer.everyday_card import EDIT_NAMES, EDITS, apply_edit, get_edit, summarize


@pytest.fixture(scope="module")
def canvases() -> list[tuple[str, np.ndarray]]:
    from skimage import data
    from skimage.transform import resize

    return [(name, (resize(getattr(data, name)()[..., :3], (224, 224), anti_aliasing=True) * 255).round()
             .astype(np.uint8)) for name in ("astronaut", "coffee")]


@pytest.mark.parametrize("name", EDIT_NAMES)
def test_each_edit_changes_the_image_keeps_shape_and_dtype_and_is_seeded(name, canvases):
    edit = get_edit(name)
    for key, rgb in canvases:
        before = rgb.copy()
        out = apply_edit(edit, rgb, key, seed=0)
        assert out.shape == rgb.shape and out.dtype == np.uint8
        assert np.array_equal(rgb, before)  # the input is left alone
        assert np.abs(out.astype(int) - rgb).mean() > 0.2, "no visible change: not an edit"
        assert np.array_equal(out, apply_edit(edit, rgb, key, seed=0))  # deterministic per (seed, edit, image)
    key, rgb = canvases[0]
    draws = {apply_edit(edit, rgb, key, seed=s).tobytes() for s in range(6)}
    assert len(draws) > 1, "the seed draws no parameters"


def test_no_edit_is_a_training_row_and_the_same_operations_are_looked_up_in_the_catalogs():
    rows = {t.name for catalog in CATALOGS.values() for t in catalog.transforms}
    assert not set(EDIT_NAMES) & rows  # every catalog of the day, the detection catalog included
    assert len(EDITS) >= 16 and {e.group for e in EDITS} == {"artifact", "plausible"}
    assert all(e.library and e.description and e.kind for e in EDITS)
    assert {"fine.sharpen", "detect.unsharp_mask"} <= set(ec.trained_rows(get_edit("unsharp_halo")))
    assert "fine.jpeg" in ec.trained_rows(get_edit("dct_requantize"))
    novel = [e.name for e in EDITS if not ec.trained_rows(e)]
    assert {"median_filter", "tv_smoothing", "chroma_noise", "swirl"} <= set(novel)


def test_dct_requantize_is_jpegs_lossy_step(canvases):
    """Against Pillow's libjpeg at the same quality: much closer to it than either is to the original."""
    from PIL import Image

    rgb = canvases[0][1]
    quality = int(ec.edit_rng("dct_requantize", "k", 0).integers(15, 41))
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality, subsampling=2)
    libjpeg = np.asarray(Image.open(buffer).convert("RGB")).astype(int)
    ours = apply_edit(get_edit("dct_requantize"), rgb, "k", 0).astype(int)
    assert np.abs(ours - libjpeg).mean() < 0.5 * np.abs(libjpeg - rgb).mean()


def test_summarize_gives_auc_tpr_and_group_means_on_synthetic_scores():
    originals = [0.1, 0.2, 0.3, 0.4]
    edited = {"median_filter": [0.5, 0.6, 0.7, 0.8],  # every version above every original: AUC 1
              "gamma_curve": [0.1, 0.2, 0.3, 0.4],  # the same scores: AUC 0.5 (ties count half)
              "sepia_tone": [0.0, 0.05, 0.2, 0.35]}  # one tie
    card = summarize(originals, edited, threshold=0.35)
    e = card["edits"]
    assert e["median_filter"]["auc"] == 1.0 and e["median_filter"]["tpr"] == 1.0
    assert e["gamma_curve"]["auc"] == 0.5 and e["gamma_curve"]["tpr"] == 0.25
    pairs = [(s > o) + 0.5 * (s == o) for s in edited["sepia_tone"] for o in originals]
    assert e["sepia_tone"]["auc"] == pytest.approx(np.mean(pairs))  # 4.5 / 16
    assert card["originals"] == {"n": 4, "fpr": 0.25, "mean_score": pytest.approx(0.25)}
    g = card["groups"]
    assert g["artifact"] == {"edits": 1, "auc": 1.0, "tpr": 1.0}
    assert g["plausible"]["auc"] == pytest.approx((0.5 + 4.5 / 16) / 2)
    assert g["all"]["edits"] == 3 and g["all"]["auc"] == pytest.approx((1 + 0.5 + 4.5 / 16) / 3)
    assert g["novel"] == {"edits": 1, "auc": 1.0, "tpr": 1.0} and e["median_filter"]["novel"]
    assert e["gamma_curve"]["novel"] == (not ec.trained_rows(get_edit("gamma_curve")))  # the catalogs of the day
    assert "gamma_curve" in ec.cannot_see(card) and "median_filter" not in ec.cannot_see(card)
    json.dumps(card)


class FakeScorer:
    """Scores an upload by its decoded pixels' mean (stands in for the served detector)."""

    def __init__(self, url, encoder, top=1):
        self.threshold = 0.5

    def check(self):
        pass

    def score(self, data: bytes) -> Score:
        from PIL import Image

        value = float(np.asarray(Image.open(io.BytesIO(data))).mean() / 255)
        return Score(value, value >= self.threshold, self.threshold, [("gaussian_blur", 0.9)], [("blur", 0.9)])

    def close(self):
        pass


def test_the_card_scores_every_original_and_edit_and_reaches_the_report(canvases, monkeypatch, tmp_path):
    import equiprobe.clients.scoring as scoring
    from equiprobe.trainer.report import build_report

    monkeypatch.setattr(scoring, "Scorer", FakeScorer)
    monkeypatch.setattr(ec, "test_canvases", lambda store, images: canvases[:images])
    card = ec.everyday_card("127.0.0.1:1", "squeezenet1_1", tmp_path, images=2, workers=2, progress=False)
    assert card["images"] == 2 and card["uploads"] == 2 * (1 + len(EDITS))
    assert set(card["edits"]) == set(EDIT_NAMES) and all(e["n"] == 2 for e in card["edits"].values())
    assert card["originals"]["n"] == 2 and card["upload_quality"] == [60, 95]
    assert card["edits"]["gamma_curve"]["top_transformation"] == {"name": "gaussian_blur", "share": 1.0}
    assert json.loads(json.dumps(card)) == card
    lines = ec.format_everyday(card)
    assert len(lines) == len(EDITS) + 3 and "artifact AUC" in lines[-1]

    results = build_report([], [], tmp_path / "report", everyday_cards={"squeezenet1_1_detector": card})
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Everyday-edits card (made with scikit-image, never trained on)" in md
    assert "| swirl | plausible |" in md and ("cannot see" in md or "Every edit here" in md)
    assert results["everyday_cards"]["squeezenet1_1_detector"]["images"] == 2
    assert any(p.startswith("everyday_") for p in results["plots"])
    assert (tmp_path / "report" / next(p for p in results["plots"] if p.startswith("everyday_"))).stat().st_size


def test_rotating_edits_make_every_edit_equally_often_and_none_twice_for_one_image():
    count = 4
    picked = [ec.rotating_edits(i, count) for i in range(len(EDITS))]  # len(EDITS) images: each edit `count` times
    assert all(len(set(edits)) == count for edits in picked)
    made = [e.name for edits in picked for e in edits]
    assert {made.count(name) for name in EDIT_NAMES} == {count}
    assert set(ec.rotating_edits(3, 100)) == set(EDITS)  # more than there are: each once
