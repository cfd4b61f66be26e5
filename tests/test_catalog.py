"""Catalog rows keep their ids, parameters and fingerprints; versions are ordered as numbers."""

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from equiprobe.services.transforms import CATALOGS, Catalog, parse_version
from equiprobe.services.transforms.catalog import _apart

# Recorded at 9d5edc0, before the ids were written in the catalogs (general's were 100 + position);
# detect's when the catalog was added (detect-1), its row 347 (unsharp_mask) with detect-2.
PINS = json.loads((Path(__file__).parent / "catalog_pins.json").read_text())


@pytest.mark.parametrize("name", sorted(PINS))
def test_every_row_keeps_its_id_parameters_and_fingerprint(name):
    catalog, pinned = CATALOGS[name], PINS[name]
    assert catalog.version == pinned["version"]
    assert [t.id for t in catalog.transforms] == pinned["ids"]
    assert catalog.class_names == pinned["names"] and catalog.labels.tolist() == pinned["labels"]
    assert catalog.fingerprints == pinned["fingerprints"]
    params = catalog.params("pin-key", 7, uploads=True)
    assert hashlib.sha256(params.tobytes()).hexdigest() == pinned["params_sha256"]


def test_a_repeated_id_is_refused_at_construction():
    fine = CATALOGS["fine"]
    rows = fine.transforms + (replace(fine.transforms[5], name="sharpen_again"),)
    with pytest.raises(ValueError, match=r"catalog fine: transform ids \[5\] are declared more than once "
                                         r"\(sharpen, sharpen_again\)"):
        Catalog("fine", fine.version, rows)


def test_an_id_in_two_catalogs_is_refused():
    fine, groups = CATALOGS["fine"], CATALOGS["groups"]
    clash = replace(groups, transforms=(replace(groups.transforms[0], id=0),) + groups.transforms[1:])
    with pytest.raises(ValueError, match="transform id 0 .groups identity. is also in catalog fine"):
        _apart(fine, clash)


def test_catalog_versions_compare_as_numbers():
    assert parse_version("fine-10") > parse_version("fine-2") and "fine-10" < "fine-2"
    assert sorted(["fine-10", "fine-2", "fine-1"], key=parse_version) == ["fine-1", "fine-2", "fine-10"]
    assert parse_version("groups-1") == ("groups", 1)
    with pytest.raises(ValueError, match="'fine' is not NAME-NUMBER"):
        parse_version("fine")
    with pytest.raises(ValueError, match="version 'general-1' names another catalog"):
        Catalog("fine", "general-1", CATALOGS["fine"].transforms)
