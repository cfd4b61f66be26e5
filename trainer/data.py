"""Probe data from a store: (image, version) examples read by memory map, in batches.

An example is one version k of one image r: its embedding emb[r, k] and the task's labels:
the label of version k (fine: the transformation; general: its category), the image's semantic
label (semantic), or both (multitask: one column each). Splits are by source (the photograph
or group an image was made from), so every version of an image, and every image of a source,
is on one side: train, validation (early stopping) and test come from the store's split where
it has one, else from a hash of the source (test 20%, validation 10% of the rest). With
split="hash" the unit is the image instead (for semantic tasks whose classes are the sources).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np

from equiprobe.clients.store import DONE, SPLITS, Store

from .tasks import TaskSpec, get_task

VALIDATION_FRACTION = 0.1
TEST_FRACTION = 0.2  # only where the store has no split


def unit_hash(key: str, salt: str) -> float:
    digest = hashlib.blake2b(f"{salt}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2 ** 64


@dataclass
class Task:
    """Which versions are examples in training and in test, and what each example's labels are.

    `heads` lists (head name, class names): one head for fine, general and semantic, two for
    multitask (transformation, then semantic). What each task reads is declared in trainer.tasks."""

    name: str
    classes: list[str]
    version_labels: np.ndarray  # [K] label of each stored version
    train_versions: np.ndarray  # version indices used for training (and validation)
    test_versions: np.ndarray  # version indices used in test
    heads: tuple[tuple[str, list[str]], ...] = ()

    def __post_init__(self):
        if not self.heads:
            self.heads = ((self.name, self.classes),)

    @classmethod
    def from_store(cls, store: Store, name: str) -> "Task":
        spec = get_task(name)
        m = store.manifest
        k = len(m["rows"])
        names = list(m.get("label_names") or [])
        if spec.semantic and not names:
            raise ValueError(f"the {name} task needs semantic labels; {store.path} was embedded from "
                             f"{m['dataset']}, which has none")
        if spec.catalog is not None and m["catalog"] != spec.catalog:
            raise ValueError(f"{spec.title} needs a store of the {spec.catalog} catalog; {store.path} has "
                             f"{m['catalog']}")
        heads = tuple((h.name, names if h.semantic else list(m[h.source])) for h in spec.heads)
        source = next((h.source for h in spec.heads if not h.semantic), None)  # the versions' labels
        labels = (np.zeros(k, np.int64) if source is None else np.arange(k) if source == "rows"
                  else np.array(m["row_labels"]))
        train = np.flatnonzero([s == "train" for s in m["row_splits"]]) if spec.held_out else np.arange(k)
        return cls(name, heads[0][1], labels, train, np.arange(k), heads=heads)

    @property
    def spec(self) -> TaskSpec:
        return get_task(self.name)

    @property
    def semantic(self) -> bool:
        return self.spec.semantic


RESIDENT_BYTES = 1 << 30  # a part's examples kept in memory up to this (float32)
RESIDENT_CHUNK = 256  # images read from the store at a time to fill them


@dataclass
class ProbeData:
    store: Store
    task: Task
    train_rows: np.ndarray
    val_rows: np.ndarray
    test_rows: np.ndarray
    image_labels: Optional[np.ndarray] = None  # [N] semantic label of every image (semantic tasks)
    # The store's columns an example reads, concatenated in this order: "embeddings", then
    # "features" for a probe that also reads the early blocks (the served probe's input order).
    inputs: tuple[str, ...] = ("embeddings",)
    # Other stores' training examples, labelled in this task's classes (ProbeData.aligned): the
    # training part reads them too; validation and test stay this store's.
    also: tuple["ProbeData", ...] = ()
    # Each part's examples, read once (ProbeData.resident): a probe reads every training example
    # each epoch and every validation example after it.
    _resident: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_store(cls, store: Store, task: Task, split_by: str = "store", features: bool = False) -> "ProbeData":
        """split_by "store": the store's split by source where it has one (else a hash of the
        source); "hash": by a hash of the image key, 80/20 (images of one source on both sides).
        features: examples are the embedding and the FEATURES of each version, concatenated."""
        if split_by not in ("store", "hash"):
            raise ValueError(f"unknown split {split_by!r}; use store or hash")
        if features and not store.features_dim:
            raise ValueError(f"{store.path} holds no FEATURES (encoder {store.manifest['encoder']} taps no early "
                             "blocks, or the store was embedded before FEATURES existed); train without --features")
        status = np.asarray(store.array("status"))
        split = np.asarray(store.array("split"))
        rows = np.flatnonzero(status == DONE)  # failed rows have no embeddings
        units = np.asarray(store.array("keys")) if split_by == "hash" else store.sources()
        if split_by == "hash" or split[rows].min(initial=0) < 0:
            test = np.array([unit_hash(u, "test") < TEST_FRACTION for u in units[rows]], bool)
        else:
            test = split[rows] == SPLITS["test"]
        train = rows[~test]
        if split_by == "store" and (split[train] == SPLITS["validation"]).any():
            val = split[train] == SPLITS["validation"]
        else:
            val = np.array([unit_hash(u, "validation") < VALIDATION_FRACTION for u in units[train]], bool)
        if not val.any() and len(train) > 1:
            val[-1] = True  # tiny stores: at least one validation image
        data = cls(store, task, train[~val], train[val], rows[test],
                   inputs=("embeddings", "features") if features else ("embeddings",))
        if not len(data.train_rows) or not len(data.test_rows):
            raise ValueError(f"{store.path}: {len(data.train_rows)} training and {len(data.test_rows)} test images; "
                             "both sides need at least one")
        if task.semantic:
            data.image_labels = np.asarray(store.array("labels")).astype(np.int64)
            unseen = set(data.image_labels[data.test_rows]) - set(data.image_labels[data.train_rows])
            if unseen:
                names = [task.heads[-1][1][i] for i in sorted(unseen)]
                raise ValueError(f"{store.path}: test images have semantic labels never seen in training "
                                 f"({', '.join(names[:5])}); the store's split holds whole classes out, so "
                                 "use --split hash")
        return data

    @property
    def dim(self) -> int:
        """The width of an example: the embedding's, plus FEATURES' where the probe reads them."""
        return sum(self.input_dims)

    @property
    def input_dims(self) -> list[int]:
        return [int(self.store.manifest["dim"]) if name == "embeddings" else self.store.features_dim
                for name in self.inputs]

    def examples(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """(image rows, version indices) of every example of a part."""
        rows, versions = self.part(part)
        return np.repeat(rows, len(versions)), np.tile(versions, len(rows))

    def part(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """(image rows, version indices) a part reads: its images, each in these versions."""
        rows = {"train": self.train_rows, "val": self.val_rows, "test": self.test_rows}[part]
        return rows, self.task.test_versions if part == "test" else self.task.train_versions

    def batches(self, part: str, batch_size: int, shuffle_seed: int | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(embeddings float32 [b, D], labels int64 [b] (multitask: [b, 2]), version indices [b]),
        read by memory map. The training part also reads `also`'s (each version index is its own
        store's), shuffled together."""
        pools = [self, *self.also] if part == "train" else [self]
        examples = [d.examples(part) for d in pools]
        starts = np.cumsum([0, *(len(rows) for rows, _ in examples)])
        order = np.arange(starts[-1])
        if shuffle_seed is not None:
            np.random.default_rng(shuffle_seed).shuffle(order)
        for start in range(0, len(order), batch_size):
            pick = order[start:start + batch_size]
            if len(pools) == 1:
                yield self._gather(part, *examples[0], pick)
                continue
            which = np.searchsorted(starts, pick, side="right") - 1
            got = [(at, d._gather(part, *examples[i], pick[at] - starts[i]))
                   for i, d in enumerate(pools) if len(at := np.flatnonzero(which == i))]
            restore = np.empty(len(pick), np.int64)
            restore[np.concatenate([at for at, _ in got])] = np.arange(len(pick))
            yield tuple(np.concatenate([g[k] for _, g in got])[restore] for k in range(3))

    def _gather(self, part: str, rows: np.ndarray, versions: np.ndarray, pick: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Examples `pick` of a part whose examples are (rows, versions): inputs, labels, versions."""
        resident = self.resident(part)
        if resident is not None:  # example i is image i // K's version i % K (examples' order)
            return (resident[pick // resident.shape[1], pick % resident.shape[1]],
                    self.labels(rows[pick], versions[pick]), versions[pick])
        # Sorted gathers read the memory map front to back; the batch order is restored after.
        sort = np.argsort(rows[pick], kind="stable")
        chunk = np.empty((len(pick), self.dim), np.float32)
        edges = np.cumsum([0, *self.input_dims])
        for name, lo, hi in zip(self.inputs, edges[:-1], edges[1:]):
            chunk[sort, lo:hi] = self.store.array(name)[rows[pick][sort], versions[pick][sort]]
        return chunk, self.labels(rows[pick], versions[pick]), versions[pick]

    def aligned(self, store: Store, split_by: str = "store") -> "ProbeData":
        """Another store of the same encoder, its versions labelled with this task's classes by row
        name (a fine store's strong edits as detect classes), to join this data's training part
        (`also`). Its training sources must not be this data's validation or test sources."""
        classes, rows = self.task.classes, list(store.manifest["rows"])
        if len(self.task.heads) != 1 or self.task.heads[0][1] != list(self.store.manifest["rows"]):
            raise ValueError(f"the {self.task.name} task's classes are not its store's versions: "
                             "only a task of one class per version can read another store")
        unknown = [r for r in rows if r not in classes]
        if unknown:
            raise ValueError(f"{store.path}: versions {', '.join(unknown[:5])} are not classes of the "
                             f"{self.task.name} task ({self.store.path})")
        for key in ("encoder", "dim"):
            if store.manifest[key] != self.store.manifest[key]:
                raise ValueError(f"{store.path}: {key} {store.manifest[key]}, not {self.store.manifest[key]} "
                                 f"as {self.store.path}")
        task = Task(self.task.name, classes, np.array([classes.index(r) for r in rows]), np.arange(len(rows)),
                    np.arange(len(rows)), heads=self.task.heads)
        other = ProbeData.from_store(store, task, split_by, features="features" in self.inputs)
        if other.input_dims != self.input_dims:
            raise ValueError(f"{store.path}: inputs {other.input_dims} wide, not {self.input_dims}")
        held = set(self.store.sources()[np.r_[self.val_rows, self.test_rows]])
        leaked = sorted(held & set(store.sources()[other.train_rows]))
        if leaked:
            raise ValueError(f"{store.path}: its training sources {', '.join(map(str, leaked[:3]))} are validation "
                             f"or test sources of {self.store.path}; split both by the same sources")
        return other

    def resident(self, part: str) -> Optional[np.ndarray]:
        """A part's examples as float32 [images, versions, D], read from the store once, where they
        take at most RESIDENT_BYTES; None above (batches then read the memory map every time)."""
        if part not in self._resident:
            rows, versions = self.part(part)
            kept = None
            if len(rows) * len(versions) * self.dim * 4 <= RESIDENT_BYTES:
                kept = np.empty((len(rows), len(versions), self.dim), np.float32)
                edges = np.cumsum([0, *self.input_dims])
                for name, lo, hi in zip(self.inputs, edges[:-1], edges[1:]):
                    column = self.store.array(name)
                    for start in range(0, len(rows), RESIDENT_CHUNK):  # sorted rows: the map read front to back
                        kept[start:start + RESIDENT_CHUNK, :, lo:hi] = column[rows[start:start + RESIDENT_CHUNK]][:, versions]
            self._resident[part] = kept
        return self._resident[part]

    def labels(self, rows: np.ndarray, versions: np.ndarray) -> np.ndarray:
        """Labels [b], or [b, heads] for a task of several heads, in the task's head order."""
        columns = [self.image_labels[rows] if head.semantic else self.task.version_labels[versions].astype(np.int64)
                   for head in self.task.spec.heads]
        return columns[0] if len(columns) == 1 else np.stack(columns, axis=1)

    def feature_statistics(self, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of the training embeddings, streamed (never all in memory)."""
        total, total_sq, count = np.zeros(self.dim), np.zeros(self.dim), 0
        for x, _, _ in self.batches("train", batch_size):
            total += x.sum(0)
            total_sq += (x.astype(np.float64) ** 2).sum(0)
            count += len(x)
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-12))
        return mean.astype(np.float32), np.maximum(std, 1e-6).astype(np.float32)
