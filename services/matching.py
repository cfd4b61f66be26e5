"""What NAME_match does with a deployed index: the served side of matching (issue 24).

Numpy, faiss and ONNX Runtime only: the python-backend model (python_models/match.py) runs it,
and tests run it in-process. A deployed index version is the index directory copied whole
(services/match_index.py: index.faiss, keys.npy, index.json, ...; references.npy), and optionally
the reference-aware probe (probe/match_probe.onnx and probe/match_probe.json).

For a batch of uploads' embeddings [n, D] (and FEATURES [n, F] where the index's references hold
them): one faiss search of all n, L2-normalised (the [embedding, FEATURES] rows projected first where
the index has a copy projection, services/match_index.py), for the k best; the best is a COPY when its cosine
similarity >= the copy threshold; for copies, the probe runs once on (QUERY = the upload's
[embedding, features], REFERENCE = references[best id]) and gives the transformation (argmax of
TRANSFORM_PROBS; for an upload called EDITED, identity left out), its category, EDIT_SCORE
(EDITED_SCORE) and EDITED (>= the probe's edited_threshold). Without a probe, or for an upload that is not a copy: TRANSFORMATION and
CATEGORY "", EDITED false, EDIT_SCORE -1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from .contract import (CATEGORY, COPY, EDIT_SCORE, EDITED, EDITED_SCORE, MATCH_KEYS, MATCH_SIMILARITIES, QUERY,
                       REFERENCE, TRANSFORM_PROBS, TRANSFORMATION)
from .match_index import PROBE_DIR, PROBE_JSON, PROBE_ONNX, REFERENCES, MatchIndex, MatchIndexError

DEFAULT_K = 5
FAISS_DEVICES = ("cpu", "gpu")  # NAME_match's faiss_device parameter: portable cpu, native gpu
NO_SCORE = -1.0  # EDIT_SCORE where there is no probe or no copy


def features_dim(meta: dict) -> int:
    """FEATURES' width in the index's references (0: embeddings only; an index built before references)."""
    return int(meta.get("features_dim") or 0)


def reference_width(meta: dict) -> int:
    return int(meta.get("reference_width") or int(meta["dim"]) + features_dim(meta))


def has_probe(path: Path) -> bool:
    return (Path(path) / PROBE_DIR / PROBE_ONNX).exists() or (Path(path) / PROBE_DIR / PROBE_JSON).exists()


def read_probe_record(path: Path, meta: dict) -> dict:
    """probe/match_probe.json of index directory `path`, checked against the index's metadata
    (MatchIndexError naming the file)."""
    file = Path(path) / PROBE_DIR / PROBE_JSON
    try:
        record = json.loads(file.read_text())
    except FileNotFoundError:
        raise MatchIndexError(f"{file} is missing (the index has {PROBE_DIR}/{PROBE_ONNX}, but not its record)") \
            from None
    except (OSError, ValueError) as exc:
        raise MatchIndexError(f"{file} is unreadable ({exc})") from None
    missing = [f for f in ("classes", "categories", "identity", "width", "copy_threshold", "edited_threshold")
               if f not in record]
    if missing:
        raise MatchIndexError(f"{file} lacks {', '.join(missing)}")
    if int(record["width"]) != reference_width(meta) or int(record.get("features_dim") or 0) != features_dim(meta):
        raise MatchIndexError(f"{file}: the probe reads width {record['width']} (FEATURES {record.get('features_dim')}),"
                              f" the index's references are {reference_width(meta)} wide (FEATURES "
                              f"{features_dim(meta)})")
    if len(record["categories"]) != len(record["classes"]):
        raise MatchIndexError(f"{file}: {len(record['classes'])} classes but {len(record['categories'])} categories")
    return record


class MatchProbe:
    """The reference-aware probe on ONNX Runtime: (QUERY, REFERENCE) [n, W] -> TRANSFORM_PROBS
    [n, C], EDITED_SCORE [n, 1]."""

    def __init__(self, path: Path, meta: dict, threads: Optional[int] = 1):
        from .runtime import ort_session

        self.record = read_probe_record(path, meta)
        onnx = Path(path) / PROBE_DIR / PROBE_ONNX
        if not onnx.is_file():
            raise MatchIndexError(f"{onnx} is missing (the index has {PROBE_DIR}/{PROBE_JSON}, but not the probe)")
        try:
            self.session = ort_session(onnx, threads)
        except Exception as exc:  # onnxruntime raises its own types for a bad file
            raise MatchIndexError(f"{onnx} is corrupt or not an ONNX model ({str(exc).splitlines()[0]})") from None
        names = {i.name for i in self.session.get_inputs()}, {o.name for o in self.session.get_outputs()}
        if names[0] != {QUERY, REFERENCE} or not {TRANSFORM_PROBS, EDITED_SCORE} <= names[1]:
            raise MatchIndexError(f"{onnx}: inputs {sorted(names[0])}, outputs {sorted(names[1])}; the match probe "
                                  f"takes {QUERY}, {REFERENCE} and gives {TRANSFORM_PROBS}, {EDITED_SCORE}")
        self.classes = list(self.record["classes"])
        self.identity = int(self.record["identity"])
        self.categories = list(self.record["categories"])
        self.copy_threshold = float(self.record["copy_threshold"])
        self.edited_threshold = float(self.record["edited_threshold"])

    def named(self, probs: np.ndarray, edited: np.ndarray) -> np.ndarray:
        """The class each answer names: for an upload called EDITED, its most probable edit (identity
        left out: "edited, by identity" would contradict itself, as the distances can call an upload
        edited that the softmax leaves on identity); otherwise its most probable class."""
        probs = np.array(probs, dtype=np.float32, copy=True)
        probs[np.asarray(edited, bool), self.identity] = -np.inf
        return probs.argmax(1)

    def __call__(self, query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, score = self.session.run([TRANSFORM_PROBS, EDITED_SCORE],
                                        {QUERY: np.ascontiguousarray(query, dtype=np.float32),
                                         REFERENCE: np.ascontiguousarray(reference, dtype=np.float32)})
        return probs, score.reshape(-1)


@dataclass
class ServedIndex:
    index: MatchIndex
    k: int
    copy_threshold: float
    probe: Optional[MatchProbe] = None
    searched_on: str = "cpu"  # where faiss searches: "cpu", "gpu N"

    @property
    def features_dim(self) -> int:
        return features_dim(self.index.meta)

    @classmethod
    def load(cls, path: Path, k: int = DEFAULT_K, copy_threshold: Optional[float] = None,
             threads: int = 1, faiss_device: str = "cpu", gpu: int = 0) -> "ServedIndex":
        """A deployed index version; MatchIndexError (one line naming the file) for anything
        missing or corrupt. `copy_threshold`: None takes the probe's. `faiss_device` "gpu": the
        search runs on GPU `gpu` (faiss-gpu; the probe stays on ONNX Runtime's CPU: one small
        matrix product a batch)."""
        path = Path(path)
        if faiss_device not in FAISS_DEVICES:
            raise MatchIndexError(f"faiss_device {faiss_device!r}: one of {', '.join(FAISS_DEVICES)}")
        index = MatchIndex.open(path)  # references.npy by memory map, checked, where the index has it
        searched_on = index.to_gpu(gpu) if faiss_device == "gpu" else "cpu"
        probe = None
        if has_probe(path):
            if index.references is None:
                raise MatchIndexError(f"{path / REFERENCES} is missing; the probe compares uploads with these "
                                      "references")
            probe = MatchProbe(path, index.meta, threads)
            if index.reference_width != int(probe.record["width"]):
                raise MatchIndexError(f"{path / PROBE_DIR / PROBE_JSON}: the probe reads width {probe.record['width']},"
                                      f" {path / REFERENCES} is {index.reference_width} wide")
        if copy_threshold is None:
            if probe is None:
                raise MatchIndexError(f"{path}: no copy threshold given and no {PROBE_DIR}/{PROBE_JSON} to take one "
                                      "from")
            copy_threshold = probe.copy_threshold
        return cls(index, int(k), float(copy_threshold), probe, searched_on)

    def match(self, embeddings: np.ndarray, features: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
        """The outputs of NAME_match for [n, D] embeddings (and [n, F] FEATURES), all searched at once."""
        embeddings = np.asarray(embeddings, dtype=np.float32).reshape(len(embeddings), -1)
        n = len(embeddings)
        if self.features_dim:  # the upload [embedding, FEATURES]: what a projected index searches with
            embeddings = np.concatenate([embeddings, np.asarray(features, np.float32).reshape(n, -1)], 1)
        sims, ids, keys = self.index.search(embeddings, self.k)
        if sims.shape[1] < self.k:  # fewer known images than k
            pad = self.k - sims.shape[1]
            sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            keys = np.concatenate([keys.astype(object), np.full((n, pad), "", object)], 1)
        sims = np.where(ids >= 0, sims, -np.inf).astype(np.float32)
        copy = (ids[:, 0] >= 0) & (sims[:, 0] >= np.float32(self.copy_threshold))
        edited = np.zeros(n, bool)
        score = np.full(n, NO_SCORE, np.float32)
        transformation, category = np.full(n, b"", object), np.full(n, b"", object)
        if self.probe is not None and copy.any():
            rows = np.flatnonzero(copy)
            query = embeddings[rows]
            probs, edit_score = self.probe(query, self.index.reference(ids[rows, 0]))
            score[rows] = edit_score
            edited[rows] = edit_score >= np.float32(self.probe.edited_threshold)
            top = self.probe.named(probs, edited[rows])
            transformation[rows] = [self.probe.classes[t].encode() for t in top]
            category[rows] = [self.probe.categories[t].encode() for t in top]
        return {MATCH_KEYS: np.array([[str(key).encode() for key in row] for row in keys], dtype=object),
                MATCH_SIMILARITIES: sims, COPY: copy[:, None], EDITED: edited[:, None],
                TRANSFORMATION: transformation[:, None], CATEGORY: category[:, None], EDIT_SCORE: score[:, None]}
