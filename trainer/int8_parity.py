"""The INT8 encoder's inputs and its detector parity: what `build-repo --precision int8` gates on.

Images are crops of the built-in corpus (clients/corpus.py), cut as `corpus_dataset` cuts them:
calibration and probe training from TRAIN sources, early stopping from VALIDATION sources, and
every parity figure from TEST sources. The detector check expands each image into the fine
catalog's 31 versions in-process (the served NAME_expand31 pipeline, serialized for the CPU,
each version re-encoded as a JPEG upload as `equiprobe embed` stores them), embeds them with
the FP32 and the INT8 graph, trains the detector's fine probe (trainer/probes.py, the study's
MLP) on FP32 embeddings only, and scores the held-out versions both ways: the manipulated-vs-
identity AUC of the detector's score (1 - P(identity), trainer/detector_scores.py) and the
31-way accuracy.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from equiprobe.clients.corpus import check_corpus, corpus_crop, split_of
from equiprobe.services.encoders import EncoderSpec
from equiprobe.services.quantize import Int8Options
from equiprobe.services.repository import Int8Build

PARTS = ("train", "val", "test")
SPLIT_OF_PART = {"train": "train", "val": "validation", "test": "test"}
SEED = 0  # the expansion's parameter draws and the probe's initialization


def corpus_images(split: str, count: int) -> list[bytes]:
    """JPEG bytes of `count` corpus crops of one split's sources: crop j of every source before
    crop j + 1, as corpus_dataset orders them (so a small count still spans the sources)."""
    entries = [e for e in check_corpus() if split_of(e["group"]) == split]
    if not entries:
        raise ValueError(f"the corpus has no {split} sources")
    return [corpus_crop(entries[i % len(entries)], i // len(entries)) for i in range(count)]


def corpus_int8_build(options: Int8Options = Int8Options(), detector: bool = True) -> Int8Build:
    """Calibration crops from TRAIN sources, cosine parity crops from TEST sources, and (with
    `detector`) the detector parity check of this module."""
    sources = {"dataset": "corpus (clients/corpus.py)", "calibration": "train", "parity": "test",
               "detector": "probes trained on train (early stopping on validation), judged on test" if detector
               else "not run"}
    return Int8Build(corpus_images("train", options.calibration_images),
                     corpus_images("test", options.parity_images), options,
                     DetectorParity(options.detector_images) if detector else None, sources)


class ArrayProbeData:
    """The part of trainer.data.ProbeData the probes use, over in-memory embeddings [N, K, D]:
    every version of an image is an example labelled with its version's class (the fine task)."""

    def __init__(self, embeddings: dict[str, np.ndarray]):
        from equiprobe.services.transforms import get_catalog

        from .data import Task

        classes = [t.name for t in get_catalog("fine").transforms]
        k = len(classes)
        self.task = Task("fine", classes, np.arange(k), np.arange(k), np.arange(k))
        self.embeddings = embeddings
        self.val_rows = np.arange(len(embeddings["val"]))

    @property
    def dim(self) -> int:
        return int(self.embeddings["train"].shape[-1])

    def with_test(self, test: np.ndarray) -> "ArrayProbeData":
        return ArrayProbeData({**self.embeddings, "test": test})

    def batches(self, part: str, batch_size: int, shuffle_seed: Optional[int] = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        e = self.embeddings[part]
        x = e.reshape(-1, e.shape[-1]).astype(np.float32)
        versions = np.tile(np.arange(e.shape[1]), e.shape[0])
        order = np.arange(len(x))
        if shuffle_seed is not None:
            np.random.default_rng(shuffle_seed).shuffle(order)
        for start in range(0, len(order), batch_size):
            pick = order[start:start + batch_size]
            yield x[pick], self.task.version_labels[versions[pick]].astype(np.int64), versions[pick]

    def feature_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        x = self.embeddings["train"].reshape(-1, self.dim).astype(np.float64)
        return x.mean(0).astype(np.float32), np.maximum(x.std(0), 1e-6).astype(np.float32)


def expanded_embeddings(spec: EncoderSpec, images: list[bytes], models: list[Path], batch: int = 8
                        ) -> list[np.ndarray]:
    """The fine catalog's versions of each image, as NAME_expand31 makes them for the encoder,
    embedded by each model: one array [N, 31, D] per model. Streamed: only embeddings are kept."""
    from equiprobe.services.contract import PIXELS
    from equiprobe.services.runtime import ort_session
    from equiprobe.services.transforms import get_catalog, image_key
    from equiprobe.services.transforms.expand import Expander, serialize_expand
    from equiprobe.services.uploads import admit

    catalog = get_catalog("fine")
    with tempfile.TemporaryDirectory() as tmp:
        path = serialize_expand(catalog, Path(tmp) / "model.dali", "cpu", batch, 2, pre=spec.preprocess)
        expander = Expander(path, catalog, batch, 2)
    sessions = [ort_session(model, 2) for model in models]
    arrays = [np.frombuffer(admit(data).data, np.uint8) for data in images]
    keys = [image_key(data) for data in images]
    out: list[list[np.ndarray]] = [[] for _ in models]
    for i in range(0, len(arrays), batch):
        versions = expander.expand(arrays[i:i + batch], keys[i:i + batch], SEED, uploads=True)[0]
        crops = versions.reshape(-1, *versions.shape[2:])
        for session, embeddings in zip(sessions, out):
            flat = np.concatenate([session.run(None, {PIXELS: crops[j:j + 32]})[0] for j in range(0, len(crops), 32)])
            embeddings.append(flat.reshape(len(versions), versions.shape[1], -1))
    return [np.concatenate(e) for e in out]


def probe_figures(model, data: ArrayProbeData) -> tuple[float, float]:
    """(manipulated-vs-identity AUC of the detector's score, 31-way accuracy) on data's test part."""
    from sklearn.metrics import roc_auc_score

    from .detector_scores import detector_outputs
    from .probes import predict

    outputs = detector_outputs(model, data, "test")
    predicted, truth, _ = predict(model, data, "test")
    return float(roc_auc_score(outputs["manipulated"], outputs["score"])), float((predicted == truth).mean())


@dataclass
class DetectorParity:
    """The Int8Build's detector check: (spec, FP32 graph, INT8 graph) -> figures."""

    images: tuple[int, int, int] = Int8Options().detector_images  # train, validation, test

    def __call__(self, spec: EncoderSpec, fp32: Path, int8: Path) -> dict:
        from .configs import ProbeConfig
        from .probes import fit

        start = time.perf_counter()
        images = {part: corpus_images(SPLIT_OF_PART[part], count) for part, count in zip(PARTS, self.images)}
        embeddings = {part: expanded_embeddings(spec, images[part], [fp32])[0] for part in ("train", "val")}
        embeddings["test"], int8_test = expanded_embeddings(spec, images["test"], [fp32, int8])
        data = ArrayProbeData(embeddings)
        config = ProbeConfig(kind="mlp", max_epochs=60)
        result = fit(data, config, SEED, statistics=data.feature_statistics())
        auc_fp32, accuracy_fp32 = probe_figures(result.model, data)
        auc_int8, accuracy_int8 = probe_figures(result.model, data.with_test(int8_test))
        k = int8_test.shape[1]
        return {"probe": f"{config.kind} (hidden {config.hidden}), trained on FP32 embeddings, seed {SEED}, "
                         f"{result.epochs} epochs",
                "train_images": self.images[0], "validation_images": self.images[1], "test_images": self.images[2],
                "versions": k, "auc_fp32": auc_fp32, "auc_int8": auc_int8,
                "accuracy_fp32": accuracy_fp32, "accuracy_int8": accuracy_int8,
                "seconds": round(time.perf_counter() - start, 1)}
