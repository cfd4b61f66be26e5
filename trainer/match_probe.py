"""The reference-aware probe: given an upload and the known image it matched, what was done to it?

The index (services/match_index.py) finds the known image an upload is a copy of; this probe
then names the edit from the pair (QUERY, REFERENCE): the upload's [embedding, FEATURES] and the
matched image's reference from the index's references.npy, both W = dim + features_dim wide.
`equiprobe index train-probe --index INDEX --store STORE` trains it (trainer/match_probe_train.py)
and writes, atomically, INDEX/probe/:

    match_probe.onnx   QUERY FP32 [-1, W], REFERENCE FP32 [-1, W]
                         -> TRANSFORM_PROBS FP32 [-1, C]  softmax over STORE's classes (identity included)
                            EDITED_SCORE    FP32 [-1, 1]  calibrated P(edited), equal prior, of
                                                          r = log P(not identity) / P(identity)
    match_probe.json   {"format": 1, "classes", "categories", "identity", "width", "features_dim",
                        "encoder", "encoder_onnx_sha256", "catalog", "catalog_version",
                        "copy_threshold" (cosine), "copy_target_fpr", "edited_threshold" (on
                        EDITED_SCORE), "edited_target_fpr", "calibration", "validation", "store",
                        "trained_at", ...}
    match_probe.pt     the torch weights the graph was exported from (research, parity checks)

This module is light (numpy; ONNX Runtime where a probe is run): the CLI reads MatchProbeConfig's
defaults from it, and `score_pairs` / `name_edit` / `match_uploads` run a written probe in-process,
the reference the served results are compared with.

Why the index must not come from STORE itself: the probe learns from pairs (version k of an
image in STORE, the index's reference of the same key). Were the reference STORE's own identity
version, every (identity, identity) pair would differ by exactly zero, and a fresh re-upload of
the original, which never does, would look edited when served. A store draws each version's
upload JPEG quality from (seed, transform id, key), and catalogs have distinct identity ids, so
the identity versions of one key in two stores of other catalogs (or seeds) are independent
re-encodings. `check_independent` refuses an index built from STORE (same path, or same catalog
and seed) and one whose references equal STORE's identity versions (stores embedded without
uploads).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

FORMAT = 1
IDENTITY = "identity"
# The ONNX graph's tensor names (the same strings as services/contract.py's QUERY, REFERENCE,
# TRANSFORM_PROBS and EDITED_SCORE, which NAME_match reads).
QUERY, REFERENCE = "QUERY", "REFERENCE"
TRANSFORM_PROBS, EDITED_SCORE = "TRANSFORM_PROBS", "EDITED_SCORE"
OUTPUTS = (TRANSFORM_PROBS, EDITED_SCORE)
# Identity pairs whose reference equals the query's identity version exactly: above this share
# the encodings are not independent (the stores were embedded without uploads).
MAX_IDENTICAL_SHARE = 0.5
SCHEDULES = ("onecycle", "constant")
# What the probe reads of a pair (query q, reference o), each W wide: q - o sees an edit's change
# times the photo's own activation level, the log ratio log((q+ + f) / (o+ + f)) the change alone
# (trainer/match_probe_train.MatchProbe.pair).
PAIR_INPUTS = {"difference": ("query", "reference", "difference"),
               "ratio": ("reference", "log_ratio"),
               "both": ("query", "reference", "difference", "log_ratio")}


class MatchProbeError(ValueError):
    """A probe that cannot be trained or used as asked; the message says why in one line."""


@dataclass(frozen=True)
class MatchProbeConfig:
    """`equiprobe index train-probe`'s settings (one CLI option per field)."""

    hidden: int = 512  # width of the one hidden layer
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 0.0
    # "onecycle": the learning rate rises to lr and anneals to ~0 over exactly `epochs` (the
    # epoch of best validation accuracy is kept); "constant": Adam at lr, stopped `patience`
    # epochs after the best. On the demo's validation sources onecycle over 20 epochs matched
    # constant's accuracy (60 at most, ~35 run) in about half the time (docs/match.md). The fifth
    # session's probe: --schedule constant --epochs 60 --pair-inputs difference --category-weight 0.
    schedule: str = "onecycle"
    epochs: int = 20
    patience: int = 8  # "constant" only: epochs without a better validation accuracy before stopping
    batch_size: int = 1024
    seed: int = 0
    # On the demo's validation sources (3 seeds each, docs/match.md): "ratio" named the category
    # of scikit-image edits best, and trains fastest (2 W inputs, against 3 W and 4 W).
    pair_inputs: str = "ratio"
    # The loss adds category_weight x the cross-entropy of the category (the log of the summed
    # probabilities of its classes): a wrong class of the right category costs less. The card
    # judges the category, and edits from another implementation land between sibling rows.
    category_weight: float = 1.0
    # Probes trained with seeds seed, seed + 1, ... and exported as one, their class probabilities
    # averaged: on the demo's validation sources the seed alone moved the category named for
    # scikit-image edits by up to 0.03; seeds averaged were better than each (docs/match.md). Each
    # member is one more training run (~40 s on the demo's stores on a 2-core AVX2 machine): a third
    # added 0.0002 to the validation accuracy (0.8310 -> 0.8312) and 0.0013 to its category.
    members: int = 2
    copy_target_fpr: float = 0.01  # share of new photos (in no index) the copy threshold lets through
    edited_target_fpr: float = 0.05  # share of re-uploaded originals called edited
    max_copy_queries: int = 20_000  # validation versions searched for the copy threshold, at most
    # Every Nth catalog row (identity apart) is held out of a second, auxiliary probe, whose
    # validation pairs teach the edited score how far edits it never saw move an upload from its
    # original (trainer/edit_evidence.py); 0: the probe's log-odds alone, no second fit.
    heldout_every: int = 3
    # Its epochs (0: --epochs): it only weighs three inputs of the edited score, so a shorter
    # schedule serves (13 s less on the demo's stores).
    auxiliary_epochs: int = 10

    def __post_init__(self):
        for name in ("copy_target_fpr", "edited_target_fpr"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise MatchProbeError(f"{name} must be in (0, 1), not {getattr(self, name)}")
        if self.heldout_every < 0 or self.heldout_every == 1:
            raise MatchProbeError("heldout_every must be 0 (off) or at least 2, not "
                                  f"{self.heldout_every}")
        if self.auxiliary_epochs < 0:
            raise MatchProbeError(f"auxiliary_epochs must be 0 (as --epochs) or more, not {self.auxiliary_epochs}")
        if self.hidden < 1 or self.batch_size < 1 or self.epochs < 1 or self.members < 1:
            raise MatchProbeError("hidden, batch_size, epochs and members must be positive")
        if self.schedule not in SCHEDULES:
            raise MatchProbeError(f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        if self.pair_inputs not in PAIR_INPUTS:
            raise MatchProbeError(f"pair_inputs must be one of {', '.join(PAIR_INPUTS)}, not {self.pair_inputs!r}")
        if self.category_weight < 0:
            raise MatchProbeError(f"category_weight must be 0 or more, not {self.category_weight}")


CONFIG_HELP = {
    "hidden": "Width of the probe's hidden layer.",
    "dropout": "Dropout after the hidden layer.",
    "lr": "Adam's learning rate.",
    "weight_decay": "Adam's weight decay.",
    "schedule": "onecycle: the learning rate rises to --lr and anneals over exactly --epochs; constant: --lr "
                "throughout, stopped --patience epochs after the best (the best validation epoch is kept either way).",
    "epochs": "Training epochs (at most, with --schedule constant).",
    "patience": "With --schedule constant: epochs without a better validation accuracy before stopping.",
    "pair_inputs": "What the probe reads of (upload q, original o): ratio: o and log((q+ + f) / (o+ + f)) (x+: negatives "
                   "as 0; f: 0.05 x the column's mean size); difference: q, o and q - o; both: all four.",
    "category_weight": "Weight of the category's cross-entropy (its classes' summed probability) added to the class's.",
    "batch_size": "Pairs per training step.",
    "seed": "Seed of the weights, the batch order and the copy-threshold queries.",
    "members": "Probes trained with seeds --seed, --seed + 1, ... and served as one, their class probabilities "
               "averaged (each one more training run).",
    "copy_target_fpr": "Share of new photos (in no index) that the copy threshold may call copies, on validation.",
    "edited_target_fpr": "Share of re-uploaded originals that the edited threshold may call edited, on validation.",
    "max_copy_queries": "Validation versions searched for the copy threshold, at most.",
    "heldout_every": "Hold every Nth catalog row out of an auxiliary probe whose validation pairs weigh the probe's "
                     "log-odds against the upload's distance from its original in the edited score (0: log-odds "
                     "alone).",
    "auxiliary_epochs": "Epochs of that auxiliary probe (0: --epochs).",
}


# -- which stores may train against which index ------------------------------------------------

def check_independent(index_meta: dict, store_path: Path, store_manifest: dict, index_name: str = "the index") -> None:
    """Refuse an index built from STORE itself (its path, or its catalog and seed): its references
    would be STORE's own identity versions (one line)."""
    path = str(Path(store_path).resolve())
    catalog, seed = store_manifest.get("catalog"), store_manifest.get("seed")
    for entry in index_meta.get("stores") or []:
        if entry.get("path") == path:
            raise MatchProbeError(f"{index_name} was built from {path} itself; train the probe on another store of "
                                  "the same images (another catalog or seed), whose identity versions are "
                                  "independent encodings of the references")
        if entry.get("catalog") != catalog:
            continue
        other_seed = entry.get("seed")
        if other_seed is None:  # an index written before stores' seeds were recorded
            try:
                other_seed = json.loads((Path(entry["path"]) / "manifest.json").read_text()).get("seed")
            except (OSError, ValueError):
                other_seed = None
        if other_seed is None or other_seed == seed:
            raise MatchProbeError(f"{index_name} was built from store {entry.get('path')} of the same catalog "
                                  f"({catalog}) and {'seed ' + str(seed) if other_seed is not None else 'an unknown seed'}"
                                  " as the training store: their identity versions are the same encodings; use "
                                  "a store of another catalog or seed")


def identical_share(queries: np.ndarray, references: np.ndarray) -> float:
    """Share of rows where a query (an identity version) equals its reference exactly, in float16."""
    if not len(queries):
        return 0.0
    q, o = np.asarray(queries, np.float16), np.asarray(references, np.float16)
    return float((q == o).all(axis=1).mean())


# -- thresholds -----------------------------------------------------------------------------------

def copy_threshold(non_copies: np.ndarray, target_fpr: float) -> float:
    """The lowest float32 similarity at which at most `target_fpr` of `non_copies` (each query's
    best similarity among images other than its own) reach it (>= counts as a copy)."""
    values = np.sort(np.asarray(non_copies, np.float32))[::-1]
    if not len(values):
        raise MatchProbeError("no non-copy similarities to set the copy threshold on (an index of one image?)")
    allowed = int(np.floor(target_fpr * len(values)))
    return float(np.nextafter(values[allowed], np.float32(np.inf)))


def leave_one_out(sims: np.ndarray, ids: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(best similarity among images other than the query's own, valid) from a top-k search: what
    the query would have matched were its own image in no index (a new photo)."""
    other = (ids != owners[:, None]) & (ids >= 0)
    first = np.argmax(other, axis=1)
    valid = other.any(axis=1)
    return np.take_along_axis(sims, first[:, None], 1)[:, 0], valid


# -- reading and running a written probe ----------------------------------------------------------

def read_record(index_path: Path) -> Optional[dict]:
    """INDEX/probe/match_probe.json, or None where the index has no probe."""
    from equiprobe.services.match_index import PROBE_DIR, PROBE_JSON

    file = Path(index_path) / PROBE_DIR / PROBE_JSON
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise MatchProbeError(f"{file} is unreadable ({exc})") from None


def load_probe(index, threads: Optional[int] = None):
    """The index's probe as NAME_match runs it (services/matching.MatchProbe), also checked for
    this code's format and the index's encoder."""
    from equiprobe.services.match_index import PROBE_DIR, MatchIndexError
    from equiprobe.services.matching import MatchProbe

    record = read_record(index.path)
    if record is None:
        raise MatchProbeError(f"{index.path} has no probe ({PROBE_DIR}/); train one with `equiprobe index train-probe`")
    if record.get("format") != FORMAT:
        raise MatchProbeError(f"{index.path / PROBE_DIR}: probe format {record.get('format')!r}, this code reads {FORMAT}")
    for field in ("encoder", "encoder_onnx_sha256"):
        if record.get(field) != index.meta.get(field):
            raise MatchProbeError(f"{field} differs: the probe has {record.get(field)!r}, index {index.path} "
                                  f"{index.meta.get(field)!r}")
    try:
        return MatchProbe(index.path, index.meta, threads)
    except MatchIndexError as exc:
        raise MatchProbeError(str(exc)) from None


def score_pairs(index, probe, queries: np.ndarray, reference_ids: Sequence[int]) -> dict:
    """The probe on (queries [m, W], the index's references of `reference_ids` [m]), in-process
    as NAME_match runs it: {"transform_probs" [m, C], "edited_score" [m], "edited" [m] (score >=
    edited_threshold)}. `probe` None: the index's own (load_probe)."""
    probe = probe or load_probe(index)
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    width = int(probe.record["width"])
    if queries.shape[1] != width:
        raise MatchProbeError(f"queries are {queries.shape[1]} wide, the probe takes {width} "
                              f"(embedding {index.dim} + FEATURES {probe.record['features_dim']})")
    probs, score = probe(queries, index.reference(np.asarray(reference_ids, np.int64)))
    return {"transform_probs": probs, "edited_score": score, "edited": score >= np.float32(probe.edited_threshold)}


def name_edit(index, probe, queries: np.ndarray, reference_ids: Sequence[int]) -> list[dict]:
    """Per pair: {"transformation", "category", "probability", "edited_score", "edited"}."""
    probe = probe or load_probe(index)
    scored = score_pairs(index, probe, queries, reference_ids)
    best = probe.named(scored["transform_probs"], scored["edited"])  # what NAME_match names
    return [{"transformation": probe.classes[b], "category": probe.categories[b],
             "probability": float(scored["transform_probs"][i, b]), "edited_score": float(scored["edited_score"][i]),
             "edited": bool(scored["edited"][i])} for i, b in enumerate(best)]


def match_uploads(index, probe, queries: np.ndarray, k: int = 5) -> list[dict]:
    """What NAME_match answers, in-process (services/matching.ServedIndex, the code it runs): uploads
    [m, W] (embedding, then FEATURES). Per upload: {"keys", "similarities", "copy", "edited",
    "transformation", "category", "edit_score" (-1 for a non-copy)}."""
    from equiprobe.services.contract import (CATEGORY, COPY, EDIT_SCORE, EDITED, MATCH_KEYS, MATCH_SIMILARITIES,
                                            TRANSFORMATION)
    from equiprobe.services.matching import ServedIndex

    probe = probe or load_probe(index)
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    served = ServedIndex(index, k, probe.copy_threshold, probe).match(queries[:, :index.dim], queries[:, index.dim:])
    text = lambda value: value.decode() if isinstance(value, bytes) else str(value)  # noqa: E731
    return [{"keys": [text(key) for key in served[MATCH_KEYS][i]],
             "similarities": [float(x) for x in served[MATCH_SIMILARITIES][i]], "copy": bool(served[COPY][i, 0]),
             "edited": bool(served[EDITED][i, 0]), "transformation": text(served[TRANSFORMATION][i, 0]),
             "category": text(served[CATEGORY][i, 0]), "edit_score": float(served[EDIT_SCORE][i, 0])}
            for i in range(len(queries))]


def describe(record: Optional[dict]) -> str:
    """One line for `index info`."""
    if not record:
        return "none (equiprobe index train-probe)"
    val = record.get("validation") or {}
    probe, base = val.get("probe") or {}, val.get("baseline") or {}
    line = (f"{len(record['classes'])} classes ({record['catalog']}), W {record['width']}; copy threshold "
            f"{record['copy_threshold']:.4f} (cosine, FPR {record['copy_target_fpr']:g}), edited threshold "
            f"{record['edited_threshold']:.4f} (FPR {record['edited_target_fpr']:g})")
    if probe.get("accuracy") is not None:
        line += f"; validation accuracy {probe['accuracy']:.3f}"
        if base.get("accuracy") is not None:
            line += f" (nearest stored version {base['accuracy']:.3f})"
    return line + f"; trained {record.get('trained_at')} on {record.get('store')}"
