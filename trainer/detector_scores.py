"""The detector's outputs for a store's examples, computed as the served model computes them.

A fine probe becomes the detector through `probe_export.detector_head` (manipulation score =
1 - P(identity), categories = transformation probabilities summed per category); the same
module is run here over the validation and test sources of the probe's store. `equiprobe train`
saves them as scores.npz beside the probe: deploy chooses the operating threshold on the
validation part, and the report's detector card is computed on the test part.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import ProbeData
from .probe_export import IDENTITY, category_names, category_of, detector_head

SCORES = "scores.npz"
DEFAULT_TARGET_FPR = 0.05
PARTS = ("val", "test")


@torch.no_grad()
def detector_outputs(model, data: ProbeData, part: str, batch_size: int = 4096) -> dict[str, np.ndarray]:
    """score, manipulated, true and predicted category (indices into category_names()) per example."""
    classes = data.task.classes
    head = detector_head(model.cpu().eval(), None, classes)
    categories = category_names()
    true_category = np.array([categories.index(c) for c in category_of(classes)])
    identity = classes.index(IDENTITY)
    out: dict[str, list] = {"score": [], "manipulated": [], "true_category": [], "predicted_category": []}
    for x, labels, _ in data.batches(part, batch_size):
        _, category_probs, score, _, _ = head(torch.from_numpy(x))
        out["score"].append(score[:, 0].numpy())
        out["manipulated"].append(labels != identity)
        out["true_category"].append(true_category[labels])
        out["predicted_category"].append(category_probs.argmax(1).numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def save_scores(model, data: ProbeData, out: Path) -> dict[str, dict[str, np.ndarray]]:
    parts = {part: detector_outputs(model, data, part) for part in PARTS}
    np.savez(out / SCORES, **{f"{part}_{k}": v for part, arrays in parts.items() for k, v in arrays.items()})
    return parts


def load_scores(probe_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    path = Path(probe_dir) / SCORES
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the probe was trained before detector scores were saved "
                                "(or is not a fine probe); retrain it with `equiprobe train --task fine`")
    with np.load(path) as z:
        return {part: {k[len(part) + 1:]: z[k] for k in z.files if k.startswith(part + "_")} for part in PARTS}


def card_for(parts: dict[str, dict[str, np.ndarray]], target_fpr: float = DEFAULT_TARGET_FPR) -> dict:
    """The threshold chosen on validation sources, the card computed on test sources."""
    from .detector_card import detector_card, operating_threshold

    val, test = parts["val"], parts["test"]
    threshold = operating_threshold(val["score"], val["manipulated"], target_fpr)
    card = detector_card(test["score"], test["manipulated"], test["true_category"], test["predicted_category"],
                         threshold, category_names())
    return {"target_fpr": target_fpr, "threshold": threshold, "validation_auc": validation_auc(parts), **card}


def validation_auc(parts: dict[str, dict[str, np.ndarray]]) -> float:
    """What the demo picks encoders by: never test data."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(parts["val"]["manipulated"], parts["val"]["score"]))
