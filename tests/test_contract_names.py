"""Model names are built and parsed by services/contract.py alone (issue 25): encoder_of parses back
every name the name classes build, composites included, and no other module builds a model name
with an f-string, a concatenation or a suffix of its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from equiprobe.services.contract import (CATALOG_SUFFIX, COMPOSITE, GATE, ROLES, DetectorNames, ExpansionNames,
                                         MatchNames, ModelNames, compose, encoder_models, encoder_of, parts_of)

ROOT = Path(__file__).resolve().parents[1]
ENCODERS = ("squeezenet1_1", "efficientnet_lite2", "clip_vit_b_32", "resnet50", "x_embed", "y_detector", "z_match",
            "squeezenet1_1+efficientnet_lite2", "a+b_c+d")


@pytest.mark.parametrize("encoder", ENCODERS)
def test_encoder_of_round_trips_every_name_the_classes_build(encoder):
    names, detector, match = ModelNames(encoder), DetectorNames(encoder), MatchNames(encoder)
    expected = {names.preprocess: "preprocess", names.onnx: "encoder", names.versions: "versions",
                names.embed: "embed", detector.probe: "probe", detector.detector: "detector",
                match.match: "match", match.matcher: "matcher"}
    for catalog, suffix in CATALOG_SUFFIX.items():
        expansion = ExpansionNames(encoder, catalog)
        expected |= {expansion.embed: "embed" + suffix, expansion.expand: "expand" + suffix,
                     expansion.style_resize: "style_resize", expansion.versions: "versions", expansion.onnx: "encoder"}
    assert set(expected) == set(encoder_models(encoder))
    assert len(set(encoder_models(encoder))) == len(encoder_models(encoder)) == len(ROLES)
    for model, role in expected.items():
        assert encoder_of(model) == (encoder, role), model


def test_shared_models_belong_to_no_encoder():
    for model in (GATE, *(ExpansionNames("e", c).inputs for c in CATALOG_SUFFIX), ExpansionNames.style("mosaic")):
        assert encoder_of(model) == (None, model)


@pytest.mark.parametrize("model", ["", "embed", "_embed", "squeezenet1_1", "squeezenet1_1_embed32", "a+_detector",
                                   "+b_detector", "style_"])
def test_encoder_of_refuses_what_no_rule_builds(model):
    with pytest.raises(ValueError):
        encoder_of(model)


def test_the_composite_rule():
    assert COMPOSITE == "+" and compose(["a", "b_1"]) == "a+b_1" and compose(["a"]) == "a"
    assert parts_of("a+b_1") == ["a", "b_1"] and parts_of("a") == ["a"]
    assert encoder_of(DetectorNames(compose(["a", "b"])).detector) == ("a+b", "detector")


# -- no model names outside the contract ---------------------------------------------------------

_ROLES = "|".join(sorted(ROLES, key=len, reverse=True))
BUILT = re.compile(r"\{[^{}\n]*\}_(?:" + _ROLES + r")\b")  # f"{encoder}_detector", f"{e}_embed31"
SUFFIX = re.compile(r"[\"'*]_(?:" + _ROLES + r")\b")  # "_embed" joined or stripped, endswith("_probe"), "*_match/"
CONTRACT = ROOT / "services" / "contract.py"


def name_sites(path: Path) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
            if BUILT.search(line) or SUFFIX.search(line)]


def test_the_scan_finds_what_it_looks_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('a = f"{encoder}_detector"\nb = f"{e}_embed31"\nc = name.endswith("_encoder")\n'
                      'd = name[:-len("_embed")]\ne = f"*_probe/{HISTORY}"\nf = name + "_matcher"\n'
                      'g = f"{side}_encoder_ms"\nh = "NAME_embed"\ni = ModelNames(encoder).embed\n')
    found = [line for line in sample.read_text().splitlines() if BUILT.search(line) or SUFFIX.search(line)]
    assert [line[0] for line in found] == list("abcdef")


def test_no_model_names_are_built_outside_the_contract():
    sites = [site for layer in ("services", "clients", "trainer") for path in sorted((ROOT / layer).rglob("*.py"))
             if path != CONTRACT for site in name_sites(path)]
    assert not sites, "model names built outside services/contract.py (use its names classes):\n" + "\n".join(sites)
