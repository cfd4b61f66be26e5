"""`equiprobe report`: tables equal the probes' records, confusion matrices count the test examples,
invariance sections per store, Table 1 over several encoders, plots written."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from equiprobe.trainer.baselines import BaselineConfig, train_baseline
from equiprobe.trainer.probes import ProbeConfig
from equiprobe.trainer.report import build_report
from equiprobe.trainer.train import train_probes

from .test_trainer import synthetic_store

EQUIPROBE = str(Path(sys.executable).parent / "equiprobe")
SMALL = ProbeConfig(kind="mlp", hidden=64, max_epochs=15, patience=4, batch_size=256)


def test_report_tables_match_the_probe_records(tmp_path):
    fine = synthetic_store(tmp_path / "fine", "fine", semantic=3)
    general = synthetic_store(tmp_path / "general", "general")
    probes = {
        "fine_mlp": train_probes(fine, "fine", SMALL, [0, 1], tmp_path / "fine_mlp", progress=False),
        "general_mlp": train_probes(general, "general", SMALL, [0], tmp_path / "general_mlp", progress=False),
        "fine_knn": train_baseline(fine, "fine", BaselineConfig(kind="knn"), tmp_path / "fine_knn", progress=False),
        "multitask": train_probes(fine, "multitask", SMALL, [0], tmp_path / "multitask", progress=False),
    }
    out = tmp_path / "report"
    results = build_report([fine, general], [tmp_path / name for name in probes], out, max_images=100)

    rows = {(r["encoder"], r["probe"]): r for r in results["table1"]}
    mlp = rows[("synthetic", "mlp")]
    assert mlp["fine"] == probes["fine_mlp"]["summary"]["test_accuracy"]
    assert mlp["general"] == probes["general_mlp"]["summary"]["test_accuracy"]
    assert mlp["held_out_style"] == probes["general_mlp"]["summary"]["held_out_style_accuracy"]
    assert rows[("synthetic", "knn")]["fine"] == probes["fine_knn"]["summary"]["test_accuracy"]
    assert results["multitask"][0]["semantic_only_accuracy"] == probes["multitask"]["summary"]["semantic_only_accuracy"]

    sections = {Path(p["dir"]).name: p for p in results["probes"]}
    confusion = np.array(sections["fine_mlp"]["confusion"]["matrix"])
    assert confusion.shape == (31, 31) and confusion.sum() == probes["fine_mlp"]["images"]["test"] * 31
    # The saved probe is the best-validation seed: its confusion diagonal is that seed's test accuracy.
    saved = next(r for r in probes["fine_mlp"]["runs"] if r["seed"] == probes["fine_mlp"]["saved_seed"])
    assert np.trace(confusion) / confusion.sum() == saved["test_accuracy"]
    assert "confusion" not in sections["fine_knn"]  # no weights to run
    assert set(sections["general_mlp"]["per_style_accuracy"]) == set(probes["general_mlp"]["runs"][0]["per_style_accuracy"])
    assert len(sections["fine_mlp"]["softmax_geed"]["per_transformation"]) == 30

    # The detector card: computed from the saved probe's predictions on test sources.
    from sklearn.metrics import roc_auc_score

    from equiprobe.trainer.detector_scores import load_scores

    card, test = sections["fine_mlp"]["detector_card"], load_scores(tmp_path / "fine_mlp")["test"]
    images = probes["fine_mlp"]["images"]["test"]
    assert card["counts"] == {"originals": images, "manipulated": 30 * images} and len(test["score"]) == 31 * images
    assert card["auc"] == roc_auc_score(test["manipulated"], test["score"])
    assert card == probes["fine_mlp"]["detector"]  # the same card as probe.json's
    assert "detector_roc.png" in results["plots"] and "## Detector card" in (out / "report.md").read_text()

    store = results["stores"][0]
    assert len(store["latent_geed"]["per_transformation"]) == 30 and "overall" in store["copy_detection"]

    markdown = (out / "report.md").read_text()
    assert f"| synthetic | mlp | {mlp['fine']['mean']:.3f} +- {mlp['fine']['std']:.3f} |" in markdown
    assert "Table 2" in markdown and "semantic-only" in markdown and "G-EED" in markdown
    assert json.loads((out / "results.json").read_text())["table1"] == results["table1"]
    for name in results["plots"]:
        image = Image.open(out / name)
        assert image.size[0] > 400 and np.asarray(image).std() > 0  # a drawn figure, not a blank canvas
        assert f"({name})" in markdown
    assert {"accuracy_per_transformation.png", "confusion_synthetic_mlp_fine.png", "per_style_synthetic_mlp.png",
            "geed_synthetic_fine.png", "copy_detection_synthetic_general.png"} <= set(results["plots"])


def test_report_on_a_real_store_through_the_cli(photo_store, tmp_path):
    probe = tmp_path / "probe"
    train_probes(photo_store, "fine", ProbeConfig(kind="linear", max_epochs=10), [0], probe, progress=False)
    proc = subprocess.run([EQUIPROBE, "report", "--store", str(photo_store), "--probes", str(probe), "--out",
                           str(tmp_path / "report")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    geed = results["stores"][0]["latent_geed"]["per_transformation"]
    # A real encoder is far from invariant to inverting colours, and barely moved by a mild vignette.
    assert geed["invert"]["euclidean"] > geed["vignette"]["euclidean"] > 0
    missing = subprocess.run([EQUIPROBE, "report", "--store", str(tmp_path / "nowhere"), "--out",
                              str(tmp_path / "r2")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "nowhere" in missing.stderr and "Traceback" not in missing.stderr


def test_report_compares_detectors_of_two_catalog_versions_on_the_same_images(tmp_path):
    old = synthetic_store(tmp_path / "old", "fine")
    new = synthetic_store(tmp_path / "new", "fine", noise=0.3)  # same images; the "new catalog" separates better
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["catalog_version"] = "fine-0"
    (old / "manifest.json").write_text(json.dumps(manifest))
    config = ProbeConfig(kind="linear", max_epochs=10)
    records = [train_probes(path, "fine", config, [0], tmp_path / f"probe_{path.name}", progress=False)
               for path in (old, new)]
    results = build_report([new], [tmp_path / "probe_old", tmp_path / "probe_new"], tmp_path / "report", max_images=50)
    (comparison,) = results["catalog_comparison"]
    assert (comparison["old"], comparison["new"]) == ("fine-0", "fine-1")
    assert comparison["images"] == records[0]["images"]["test"] and comparison["examples"] == comparison["images"] * 31
    # Every test example is common here, so each side's accuracy is its own probe's test accuracy.
    assert comparison["old_accuracy"] == records[0]["summary"]["test_accuracy"]["mean"]
    assert comparison["new_accuracy"] == records[1]["summary"]["test_accuracy"]["mean"]
    assert "fine-0 vs fine-1" in (tmp_path / "report" / "report.md").read_text()


def test_catalog_versions_are_ordered_as_numbers_when_detectors_are_compared():
    from equiprobe.trainer.report import compare_versions

    probes = [{"encoder": "e", "task": "fine", "kind": "linear", "catalog_version": v, "dir": v}
              for v in ("fine-10", "fine-2", "fine-9")]
    outcomes = {v: {("img", "blur"): v == "fine-10"} for v in ("fine-10", "fine-2", "fine-9")}
    (comparison,) = compare_versions(probes, outcomes)
    assert (comparison["old"], comparison["new"]) == ("fine-9", "fine-10")  # as text, fine-9 sorts last
    assert (comparison["old_accuracy"], comparison["new_accuracy"]) == (0.0, 1.0)
