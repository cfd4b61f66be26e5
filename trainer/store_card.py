"""A trained detector's card on another store of the same encoder: the detector trained on the
detection catalog (`detect`, edits from mild to strong and everyday ones) judged on the study's
strong edits (a `fine` store), as the served model would score them.

The probe's own calibration and threshold (chosen on its validation sources) are used unchanged,
and only the other store's TEST sources are read: the corpus splits by source, so the detector
never trained on them, whichever catalog made their versions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from equiprobe.clients.store import Store

from .calibration import Calibration
from .data import ProbeData, Task
from .detector_card import detector_card
from .probe_export import IDENTITY, category_names, category_of, detector_head
from .probe_record import ProbeRecord
from .probes import load_probe


class StoreCardError(ValueError):
    """A store the probe cannot be judged on (another encoder, no FEATURES, no identity row)."""


@torch.no_grad()
def card_on_store(probe_dir: Path, store_path: Path, batch_size: int = 4096) -> dict:
    record = ProbeRecord.read(probe_dir)
    store = Store.open(store_path)
    m = store.manifest
    if (m["encoder"], m["encoder_onnx_sha256"]) != (record.encoder, record.encoder_onnx_sha256):
        raise StoreCardError(f"{store_path} was embedded by {m['encoder']} ({m['encoder_onnx_sha256'][:12]}), "
                             f"the probe {probe_dir} by {record.encoder} ({record.encoder_onnx_sha256[:12]})")
    if record.detector is None:
        raise StoreCardError(f"{probe_dir} has no detector card (threshold and calibration): train it with a "
                             "detector task")
    features = bool(record.features_dim)
    if features and store.features_dim != record.features_dim:
        raise StoreCardError(f"{store_path} holds {store.features_dim} FEATURES, the probe reads {record.features_dim}")
    data = ProbeData.from_store(store, Task.from_store(store, m["catalog"]), features=features)
    if IDENTITY not in data.task.classes:
        raise StoreCardError(f"{store_path}'s catalog {m['catalog']} has no {IDENTITY} row")
    model, _ = load_probe(probe_dir)
    calibration = Calibration.from_dict(record.detector.get("calibration"))
    head = detector_head(model.cpu().eval(), None, record.classes, calibration=calibration)
    categories = category_names()
    true_category = np.array([categories.index(c) for c in category_of(data.task.classes)])
    identity = data.task.classes.index(IDENTITY)
    scores, manipulated, truth, predicted = [], [], [], []
    for x, labels, _ in data.batches("test", batch_size):
        _, category_probs, score, _, _ = head(torch.from_numpy(x))
        scores.append(score[:, 0].numpy())
        manipulated.append(labels != identity)
        truth.append(true_category[labels])
        predicted.append(category_probs.argmax(1).numpy())
    card = detector_card(np.concatenate(scores), np.concatenate(manipulated), np.concatenate(truth),
                         np.concatenate(predicted), float(record.detector["threshold"]), categories)
    return {"store": str(store_path), "catalog": m["catalog"], "catalog_version": m["catalog_version"],
            "test_images": len(data.test_rows), "target_fpr": record.detector.get("target_fpr"), **card}
