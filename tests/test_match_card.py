"""`equiprobe index card` on the synthetic stores of tests/test_match_probe.py: an index of half
the images (the other half's test images are new photos), a probe trained on the other store."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from equiprobe.clients.index_build import build_index
from equiprobe.trainer.cli import app
from equiprobe.trainer.match_card import store_match_card

from .test_match_probe import world  # noqa: F401  (the module's stores and probe)


@pytest.fixture(scope="module")
def half(world, tmp_path_factory):  # noqa: F811
    root, fine, detect, *_ = world
    out = tmp_path_factory.mktemp("card") / "ix"
    build_index([fine], out, shard="0/2", progress=False)
    shutil.copytree(root / "ix" / "probe", out / "probe")  # the full index's probe and thresholds
    return out, detect


def test_the_card_finds_copies_names_edits_and_keeps_new_photos_out(half):
    index, detect = half
    card = store_match_card(index, detect)
    assert card["copies"]["images"] > 5 and card["new_photos"]["images"] > 5
    assert card["recall@1"] > 0.9 and card["reupload_recall@1"] == 1.0
    assert card["category_accuracy"] > 0.8 and card["edited_auc"] > 0.9
    assert card["new_photos_matched"] <= 0.1
    assert set(card["per_edit"]) == {"hue_shift", "grayscale", "sharpen", "gaussian_blur", "jpeg", "crop_zoom",
                                     "text_overlay"}
    # micro-AP below 1 exactly when some new photo outranks a copy or a copy was missed
    assert 0 < card["micro_ap"] <= 1


def test_the_cli_writes_json_and_a_plot(half, tmp_path):
    index, detect = half
    result = CliRunner().invoke(app, ["index", "card", "--index", str(index), "--store", str(detect),
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "recall@1" in result.output
    card = json.loads((tmp_path / "match_card.json").read_text())
    assert (tmp_path / "match_card.png").stat().st_size > 1000
    assert card["recall@1"] == pytest.approx(store_match_card(index, detect)["recall@1"])


def test_a_store_whose_test_images_are_in_no_index_is_refused(world, tmp_path):  # noqa: F811
    root, fine, detect, *_ = world
    build_index([fine], tmp_path / "ix", shard="0/300", progress=False)
    shutil.copytree(root / "ix" / "probe", tmp_path / "ix" / "probe")
    with pytest.raises(ValueError, match="none of its test images"):
        store_match_card(tmp_path / "ix", detect)



def test_report_carries_the_match_card(half, tmp_path):
    index, detect = half
    result = CliRunner().invoke(app, ["report", "--store", str(detect), "--index", str(index), "--out", str(tmp_path),
                                      "--max-images", "50"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "report.md").read_text()
    assert "## Matching against known images" in text and "recall@1" in text
    assert json.loads((tmp_path / "results.json").read_text())["match_cards"]["store"]["recall@1"] > 0.9
    assert (tmp_path / "match_card.png").exists()
