"""The detector's outputs for a store's examples, computed as the served model computes them.

A fine probe becomes the detector through `probe_export.detector_head` (manipulation score = a
calibrated P(edited), trainer/calibration.py; categories = transformation probabilities summed per
category); the same module is run here over the validation and test sources of the probe's store.
`equiprobe train` saves them as scores.npz beside the probe, per part (val_*, test_*) and example:
score (the calibrated score, as served), raw_score (1 - P(identity), the score served before),
log_odds (the raw log P(edited) / P(identity) that the calibration maps), manipulated, true and
predicted category, and source (the example's source, numbered within its part); and calibration
(JSON), fitted on the validation part only. deploy bakes that calibration into NAME_probe and
chooses the operating threshold on the validation part; the report's detector card is computed
on the test part.
"""

from __future__ import annotations

from pathlib import Path

import json

import numpy as np
import torch

from .calibration import Calibration, calibration_quality, fit_calibration, raw_log_odds
from .data import ProbeData
from .probe_export import IDENTITY, category_names, category_of, detector_head

SCORES = "scores.npz"
DEFAULT_TARGET_FPR = 0.05
PARTS = ("val", "test")


@torch.no_grad()
def detector_outputs(model, data: ProbeData, part: str, batch_size: int = 4096,
                     calibration: Calibration | None = None) -> dict[str, np.ndarray]:
    """score (calibrated with `calibration`; without one, the raw 1 - P(identity)), raw_score,
    log_odds, manipulated, true and predicted category (indices into category_names()) per example."""
    classes = data.task.classes
    model = model.cpu().eval()
    head = detector_head(model, None, classes, calibration=calibration)
    categories = category_names()
    true_category = np.array([categories.index(c) for c in category_of(classes)])
    identity = classes.index(IDENTITY)
    out: dict[str, list] = {"score": [], "raw_score": [], "log_odds": [], "manipulated": [], "true_category": [],
                            "predicted_category": []}
    for x, labels, _ in data.batches(part, batch_size):
        inputs = torch.from_numpy(x)
        transforms, category_probs, score, _, _ = head(inputs)
        out["score"].append(score[:, 0].numpy())
        out["raw_score"].append((1.0 - transforms[:, identity]).numpy())
        out["log_odds"].append(raw_log_odds(model(inputs), identity)[:, 0].numpy())
        out["manipulated"].append(labels != identity)
        out["true_category"].append(true_category[labels])
        out["predicted_category"].append(category_probs.argmax(1).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def source_numbers(data: ProbeData, part: str) -> np.ndarray:
    """Each example's source, numbered within the part (the calibration's cross-validation groups)."""
    rows, _ = data.examples(part)  # the order data.batches reads them in
    return np.unique(data.store.sources()[rows], return_inverse=True)[1].astype(np.int32)


def save_scores(model, data: ProbeData, out: Path) -> dict:
    """The calibration fitted on the validation part, then both parts scored with it: what
    card_for takes ({"val": ..., "test": ..., "calibration": Calibration}), saved as scores.npz."""
    sources = {part: source_numbers(data, part) for part in PARTS}
    val = detector_outputs(model, data, "val")
    calibration = fit_calibration(val["log_odds"], val["manipulated"], sources["val"])
    parts = {part: {**detector_outputs(model, data, part, calibration=calibration), "source": sources[part]}
             for part in PARTS}
    np.savez(out / SCORES, calibration=np.array(json.dumps(calibration.as_dict())),
             **{f"{part}_{k}": v for part, arrays in parts.items() for k, v in arrays.items()})
    return {**parts, "calibration": calibration}


def load_scores(probe_dir: Path) -> dict:
    """{"val": arrays, "test": arrays, "calibration": Calibration}. A scores.npz saved before
    calibration (its score was 1 - P(identity)) gets a Platt calibration fitted on its validation
    part here, and its scores calibrated with it."""
    path = Path(probe_dir) / SCORES
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the probe was trained before detector scores were saved "
                                "(or is not a fine probe); retrain it with `equiprobe train --task fine`")
    with np.load(path) as z:
        parts = {part: {k[len(part) + 1:]: z[k] for k in z.files if k.startswith(part + "_")} for part in PARTS}
        saved = json.loads(str(z["calibration"])) if "calibration" in z.files else None
    if saved is not None:
        return {**parts, "calibration": Calibration.from_dict(saved)}
    for arrays in parts.values():
        raw = np.clip(arrays["score"].astype(np.float64), 1e-12, 1 - 1e-12)
        arrays["raw_score"], arrays["log_odds"] = arrays["score"], np.log(raw) - np.log1p(-raw)
    calibration = fit_calibration(parts["val"]["log_odds"], parts["val"]["manipulated"], kind="platt")
    for arrays in parts.values():
        arrays["score"] = calibration.probability(arrays["log_odds"]).astype(np.float32)
    return {**parts, "calibration": calibration}


def card_for(parts: dict, target_fpr: float = DEFAULT_TARGET_FPR) -> dict:
    """The threshold chosen on validation sources (on the calibrated score), the card computed on
    test sources; with the calibration, how well it reads as a probability on both parts, and the
    raw score's figures (research)."""
    from sklearn.metrics import roc_auc_score

    from .detector_card import detector_card, fpr_interval, operating_threshold

    val, test = parts["val"], parts["test"]
    calibration = parts.get("calibration") or Calibration.from_dict(None)
    threshold = operating_threshold(val["score"], val["manipulated"], target_fpr)
    card = detector_card(test["score"], test["manipulated"], test["true_category"], test["predicted_category"],
                         threshold, category_names())
    originals = int((~val["manipulated"]).sum())
    sources = int(len(np.unique(val["source"][~val["manipulated"]]))) if "source" in val else None
    # Crops of one source score alike: the sources, not the originals, are the independent draws.
    rule = {"rule": "Harrell-Davis (1 - target) quantile of the validation originals' calibrated scores (logit scale)",
            "validation_originals": originals, "validation_sources": sources,
            "validation_fpr": float((val["score"][~val["manipulated"]] >= threshold).mean()),
            "fpr_interval_90": fpr_interval(min(originals, sources or originals), target_fpr)}
    quality = {name: {"calibrated": calibration_quality(arrays["score"], arrays["manipulated"]),
                      "raw": calibration_quality(arrays["raw_score"], arrays["manipulated"])}
               for name, arrays in (("validation", val), ("test", test))} if calibration.prior else None
    raw = {"score": "1 - P(identity)", "threshold": calibration.raw_threshold(threshold),
           "auc": (float(roc_auc_score(test["manipulated"], test["raw_score"]))
                   if test["manipulated"].any() and not test["manipulated"].all() else None)}
    return {"target_fpr": target_fpr, "threshold": threshold, "threshold_rule": rule,
            "calibration": calibration.as_dict(), "calibration_quality": quality, "raw": raw,
            "validation_auc": validation_auc(parts), **card}


def validation_auc(parts: dict) -> float:
    """What the demo picks encoders by: never test data (the raw log-odds: the probe's own ranking)."""
    from sklearn.metrics import roc_auc_score

    val = parts["val"]
    return float(roc_auc_score(val["manipulated"], val.get("log_odds", val["score"])))
