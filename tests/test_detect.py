"""The detection catalog (services/transforms/detect.py) and its task: every fine kind from mild to
strong plus everyday edits, one class per row, served as the detector in the fine probe's place."""

import json

import numpy as np
import pytest

from equiprobe.clients.photos import encode
from equiprobe.services.transforms import detect, fine, get_catalog, image_key
from equiprobe.services.transforms.expand import Expander, serialize_expand

DETECT, FINE, GENERAL = get_catalog("detect"), get_catalog("fine"), get_catalog("general")
# The new kinds (not fine rows at other strengths) and chains of two edits.
EVERYDAY = {"desaturate", "sepia", "warm_filter", "cool_filter", "low_contrast", "gamma", "jpeg_recompress", "resample",
            "crop_zoom_mild", "rotate_crop", "watermark", "logo", "patches", "warm_then_jpeg",
            "resample_then_sharpen", "gamma_then_crop", "unsharp_mask"}


def test_one_class_per_row_with_written_ids_and_the_general_categories():
    k = len(DETECT.transforms)
    assert DETECT.version == "detect-2" and 40 <= k <= 48  # every image is embedded K times
    assert DETECT.transforms[0].name == "identity" and [t.id for t in DETECT.transforms] == list(range(300, 300 + k))
    assert DETECT.classes == tuple(DETECT.class_names) and DETECT.labels.tolist() == list(range(k))
    assert len(set(DETECT.class_names)) == k
    assert {t.category for t in DETECT.transforms} == set(GENERAL.classes)  # all ten, and only those
    assert {t.name for t in DETECT.transforms if t.family == detect.EVERYDAY} == EVERYDAY


def test_every_fine_kind_keeps_its_function_category_and_reaches_its_strong_end():
    """A row named as a fine kind runs the fine DALI function, and its ranges hold the fine ranges:
    the study's strong edits stay in training, the milder ones are added."""
    rows = {t.name: t for t in DETECT.transforms}
    milder = 0
    for f in FINE.transforms:
        t = rows[f.name]
        assert t.apply is f.apply and t.category == f.category and [a for a, _ in t.aux] == [a for a, _ in f.aux]
        assert [p.name for p in t.params] == [p.name for p in f.params], f.name
        for p, q in zip(t.params, f.params):
            assert p.integer == q.integer and p.low <= q.low and p.high >= q.high, (f.name, p, q)
        milder += any(p.low < q.low or p.high > q.high for p, q in zip(t.params, f.params))
    assert milder >= 25  # all but identity, invert, sphere, perspective (corners drawn one by one) and few more


def test_the_chains_compose_two_edits_with_their_parameters_in_order():
    rows = {t.name: t for t in DETECT.transforms}
    gamma, crop = rows["gamma"], rows["crop_zoom_mild"]
    assert [p.name for p in rows["gamma_then_crop"].params] == [p.name for p in gamma.params + crop.params]
    assert [p.name for p in rows["warm_then_jpeg"].params] == [p.name for p in
                                                                rows["warm_filter"].params + rows["jpeg"].params]


@pytest.fixture(scope="module")
def expanded(photos, tmp_path_factory):
    path = serialize_expand(DETECT, tmp_path_factory.mktemp("detect") / "detect.dali", "cpu", 2, 2)
    data = [encode(photos[n]) for n in ("chelsea", "coffee")]
    return Expander(path, DETECT, 2, 2).expand([np.frombuffer(d, np.uint8) for d in data],
                                              [image_key(d) for d in data], seed=0)


def test_every_row_changes_every_image(expanded):
    versions, params = expanded
    k = len(DETECT.transforms)
    assert versions.shape == (2, k, 224, 224, 3) and params.shape == (2, k, DETECT.params_width)
    assert versions[0, 0].std() > 10  # the identity is the photo
    for i in range(2):
        for j, t in enumerate(DETECT.transforms[1:], start=1):
            # Mild overlays touch only part of the canvas; everything else changes much of it.
            assert np.abs(versions[i, j].astype(int) - versions[i, 0]).mean() > 0.1, (t.name, i)


def test_the_detect_task_reads_detect_stores_and_makes_a_detector():
    from equiprobe.trainer.probe_export import category_of
    from equiprobe.trainer.tasks import get_task

    spec = get_task("detect")
    assert spec.catalog == "detect" and [(h.name, h.source) for h in spec.heads] == [("detect", "rows")]
    assert spec.detector and spec.detector_part and spec.per_transformation_plot and not spec.held_out
    assert category_of(DETECT.class_names) == [t.category for t in DETECT.transforms]
    assert category_of(FINE.class_names) == [t.category for t in FINE.transforms]
    # A name in both catalogs has one category, whichever catalog the probe was trained on.
    shared = set(DETECT.class_names) & set(FINE.class_names)
    assert len(shared) == 31 and all(t.category == fine.TRANSFORMS[FINE.class_names.index(t.name)].category
                                      for t in DETECT.transforms if t.name in shared)


def test_a_detect_probe_trains_with_its_detector_card_and_deploys_in_the_fine_probes_place(tmp_path):
    """Trained on a detect store, the probe is the one deploy takes as the detector's (with at most
    one general probe), is checked against the served detect catalog version, and exports."""
    from dataclasses import replace

    from equiprobe.services.repository import ServedEncoder
    from equiprobe.trainer.deploy import DeployError, check_probe, pick_probes
    from equiprobe.trainer.probe_export import export_probes, read_probe
    from equiprobe.trainer.probes import ProbeConfig
    from equiprobe.trainer.train import train_probes

    from .test_trainer import synthetic_store

    sources = ("train", "train", "validation", "test")
    path = synthetic_store(tmp_path / "s", "detect", images=160, source=lambda r: f"photo{r // 2}",
                           split=lambda r: sources[(r // 2) % 4])
    record = train_probes(path, "detect", ProbeConfig(kind="mlp", hidden=64, max_epochs=20, patience=5,
                                                      batch_size=256), [0], tmp_path / "p", progress=False)
    assert record["summary"]["test_accuracy"]["mean"] > 0.5  # chance is 1/48
    saved = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert saved["task"] == "detect" and saved["catalog_version"] == "detect-2" and saved["detector"]
    assert (tmp_path / "p" / "scores.npz").is_file()

    probe = read_probe(tmp_path / "p")
    picked, general = pick_probes([probe])
    assert picked is probe and general is None
    fine_probe = replace(probe, saved=replace(probe.saved, task="fine"))
    with pytest.raises(DeployError, match=r"deploy takes one fine \(or detect\) probe"):
        pick_probes([probe, fine_probe])
    served = ServedEncoder(tmp_path, "synthetic", 32, "0" * 64, "portable",
                           {"fine": "fine-1", "general": "general-1", "groups": "groups-1", "detect": "detect-2"},
                           None)
    check_probe(probe.record, "p", probe.task, served)
    served.catalog_versions["detect"] = "detect-3"
    with pytest.raises(DeployError, match="trained for detect catalog version 'detect-2', but repository .* "
                                          "serves 'detect-3'"):
        check_probe(probe.record, "p", probe.task, served)
    exported = export_probes(probe, None, tmp_path / "model.onnx", 0.5)
    assert exported.category_source == "fine probe" and (tmp_path / "model.onnx").is_file()
