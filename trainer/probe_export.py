"""Trained probes as one ONNX model, the detector's last step:

    EMBEDDING FP32 [B, D] -> TRANSFORM_PROBS    FP32 [B, C]   softmax of the fine probe (C = 31)
                             CATEGORY_PROBS     FP32 [B, 10]  softmax of the general probe, or, without
                                                              one, TRANSFORM_PROBS summed per category
                             MANIPULATION_SCORE FP32 [B, 1]   P(edited), equal prior: the fine probe's
                                                              log P(edited)/P(identity) calibrated on
                                                              validation sources (trainer/calibration.py)
                             MANIPULATED        BOOL [B, 1]   MANIPULATION_SCORE >= the deployed threshold
                                                              (chosen on validation sources for a target FPR)
                             EMBEDDING_OUT      FP32 [B, D]   the input, passed through

A probe of a composite encoder "A+B" (trained on a joined store, clients/concat.py) takes one
input per part, EMBEDDING_0 [B, DA] and EMBEDDING_1 [B, DB], and concatenates them first, as the
store did; EMBEDDING_OUT is the concatenation. A probe trained with --features also takes each
part's FEATURES (FEATURES, or FEATURES_0 and FEATURES_1) after the embeddings, in a store's
column order (services/contract.probe_inputs); EMBEDDING_OUT is still the embeddings alone.

The pass-through is for the detector ensemble: Triton (2.51) prunes the steps behind an ensemble
output a request did not ask for, even when a later step consumes that tensor, so an EMBEDDING
taken straight from the encoder would deadlock requests that ask only for the scores. Taken from
the probe's last step instead, every output subset works.

A probe directory is what `equiprobe train` (or a deployable baseline) writes: probe.pt, the
state dict of a `trainer.probes.Probe` (standardization buffers and a linear or MLP head), and
probe.json (task, dim, classes, catalog version, encoder and its ONNX hash). The ten categories
are the general catalog's classes; every fine transformation's `category` is one of them, and a
user's neural style network (a `neural_style_*` row) counts as style.

The export runs torch's exporter as services/export.py does (dynamic batch axis, its default
opset) and is checked against torch with ONNX Runtime before anything is deployed.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from equiprobe.services.contract import (DETECTOR_OUTPUTS as OUTPUTS, EMBEDDING, EMBEDDING_OUT, ProbeInput,
                                        probe_inputs)

from .probe_record import ProbeRecord, ProbeRecordError
from .tasks import IDENTITY, TASKS

# Probabilities are at most 1; float32 kernels summing in another order differ by a few ulps.
PARITY_TOLERANCE = 1e-5


class ProbeError(ValueError):
    """A probe directory that cannot be deployed; the message says why in one line."""


@dataclass
class SavedProbe:
    path: Path
    saved: ProbeRecord  # probe.json

    @property
    def record(self) -> dict:
        """probe.json's content, as deploy checks and records it."""
        return self.saved.as_dict()

    @property
    def task(self) -> str:
        return self.saved.task

    @property
    def dim(self) -> int:
        return int(self.saved.dim)

    @property
    def classes(self) -> list[str]:
        return list(self.saved.classes)

    def describe(self) -> str:
        return f"{self.saved.kind} {self.task} probe {self.path}"

    def load(self):
        """The trained torch Probe, in eval mode (trainer.probes.load_probe)."""
        from .probes import load_probe

        try:
            probe, _ = load_probe(self.path)
        except RuntimeError as exc:  # probe.pt's tensors are not the shapes probe.json describes
            raise ProbeError(f"{self.path}/probe.pt does not match probe.json: {str(exc).splitlines()[0]}") from None
        return probe


def read_probe(path: Path) -> SavedProbe:
    """probe.json read and checked for what deployment needs; probe.pt is loaded later."""
    path = Path(path)
    try:
        record = ProbeRecord.read(path)
    except ProbeRecordError as exc:
        raise ProbeError(str(exc)) from None
    if record.deployable is False or not (path / "probe.pt").is_file():
        raise ProbeError(f"{path} holds no deployable probe.pt (a {record.kind} probe)")
    spec = TASKS.get(record.task)
    if spec is None or not spec.detector_part:
        raise ProbeError(f"{path} is a {record.task} probe; the detector takes a fine (or detect) probe and "
                         "optionally a general one")
    return SavedProbe(path, record)


def category_of(fine_classes: list[str]) -> list[str]:
    """The general-catalog category of every fine class: a row of a detector task's catalog (fine,
    or detect, whose rows of a fine kind keep its name and category)."""
    from equiprobe.services.transforms import get_catalog

    by_name = {t.name: t.category for spec in TASKS.values() if spec.detector
               for t in get_catalog(spec.catalog).transforms}
    categories = []
    for name in fine_classes:
        category = by_name.get(name) or ("style" if name.startswith("neural_style_") else None)
        if category is None:
            raise ProbeError(f"fine class {name!r} is not in the fine or detect catalog")
        categories.append(category)
    return categories


def category_names() -> list[str]:
    from equiprobe.services.transforms import get_catalog

    return list(get_catalog("general").classes)


def detector_head(fine, general, fine_classes: list[str], threshold: float = 0.5, embedding_parts: int = 0,
                  calibration=None):
    """The torch module the ONNX model is exported from (and checked against). MANIPULATION_SCORE
    is `calibration` (trainer.calibration.Calibration) of the fine probe's logits; without one, the
    raw 1 - P(identity)."""
    import torch
    from torch import nn

    from .calibration import Calibration

    names = category_names()
    membership = np.zeros((len(fine_classes), len(names)), np.float32)
    for k, category in enumerate(category_of(fine_classes)):
        membership[k, names.index(category)] = 1.0
    identity = fine_classes.index(IDENTITY)

    class DetectorHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.fine, self.general = fine, general
            self.register_buffer("membership", torch.from_numpy(membership))
            self.calibrate = (calibration or Calibration(kind="none", prior=None)).module(identity)

        def forward(self, *parts: torch.Tensor):
            embeddings = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            if embedding_parts:  # the inputs after them are FEATURES: passed to the probes, not passed through
                passed = parts[0] if embedding_parts == 1 else torch.cat(parts[:embedding_parts], dim=1)
            else:
                passed = embeddings
            logits = self.fine(embeddings)
            transforms = torch.softmax(logits, dim=1)
            if self.general is not None:
                categories = torch.softmax(self.general(embeddings), dim=1)
            else:  # P(category) = sum of its transformations' probabilities
                categories = transforms @ self.membership
            score = self.calibrate(logits)  # MANIPULATION_SCORE: the calibrated P(edited)
            return transforms, categories, score, score >= threshold, passed

    return DetectorHead().eval()


@dataclass
class ProbeExport:
    path: Path
    max_abs_diff: float  # ONNX Runtime against torch, over every output
    category_source: str  # "general probe" or "fine probe"


def export_probes(fine: SavedProbe, general: Optional[SavedProbe], out: Path, threshold: float,
                  inputs: Optional[list[ProbeInput]] = None, check_batch: int = 16,
                  calibration=None) -> ProbeExport:
    """Write the probe model to `out` and check it with ONNX Runtime; raises ProbeError on a mismatch.
    `calibration` (trainer.calibration.Calibration) is baked in: MANIPULATION_SCORE is the calibrated
    P(edited), and `threshold` applies to it."""
    import onnx
    import torch

    from equiprobe.services.runtime import ort_session

    if IDENTITY not in fine.classes:
        raise ProbeError(f"{fine.path}: the fine probe has no {IDENTITY!r} class to score manipulation against")
    fine_model = fine.load()
    inputs = inputs or probe_inputs([fine.dim])
    head = detector_head(fine_model, general.load() if general else None, fine.classes, threshold,
                         embedding_parts=sum(i.source == EMBEDDING for i in inputs), calibration=calibration)
    batch = torch.export.Dim("batch", min=1, max=4096)
    # Embeddings as the encoder gives them: around the training mean, at the training scale.
    rng = np.random.default_rng(0)
    mean, std = fine_model.mean.numpy(), fine_model.std.numpy()
    x = (mean + std * rng.normal(size=(check_batch, fine.dim))).astype(np.float32)
    part_dims = [i.dim for i in inputs]
    if sum(part_dims) != fine.dim:
        raise ProbeError(f"{fine.path}: the encoder parts give {sum(part_dims)} dims, the probe takes {fine.dim}")
    xs = np.split(x, np.cumsum(part_dims)[:-1], axis=1)
    names = [i.name for i in inputs]
    # The exporter prints its progress to stdout even with verbose=False; keep CLI output clean.
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        torch.onnx.export(head, tuple(torch.from_numpy(p[:2]) for p in xs), str(out), input_names=names,
                          output_names=[*OUTPUTS, EMBEDDING_OUT], dynamic_shapes=(tuple({0: batch} for _ in xs),),  # forward(*parts)
                          external_data=False, dynamo=True, verbose=False)
        reference = [t.numpy() for t in head(*(torch.from_numpy(p) for p in xs))]
    onnx.checker.check_model(str(out))
    served = ort_session(out).run([*OUTPUTS, EMBEDDING_OUT], dict(zip(names, xs)))
    diff = max(float(np.abs(s.astype(np.float32) - r.astype(np.float32)).max()) if s.shape == r.shape else np.inf
               for s, r in zip(served, reference))
    if not diff <= PARITY_TOLERANCE:
        raise ProbeError(f"the exported probe model differs from torch by {diff:.3g} (tolerance "
                         f"{PARITY_TOLERANCE:g}); nothing was deployed")
    return ProbeExport(Path(out), diff, "general probe" if general else "fine probe")
