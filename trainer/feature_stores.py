"""Baseline feature stores: the very images, versions and splits of an embedding store, with
features that owe nothing to a trained encoder.

    pixels          every version box-averaged to 16x16 RGB, flattened (768 values, 0..255, HWC
                    order): what a probe can read off raw pixels
    random-encoder  the source store's encoder architecture with random weights (fixed torch seed),
                    fed as the served encoder is fed: what the architecture alone gives

Each image is re-read from the dataset named in the source store's manifest (rows keyed by
index.npy, the bytes checked against the stored image key) and expanded in-process by the
same DALI pipeline the server runs, with the same catalog and seed. A version's parameters are
a pure function of (image bytes, transform id, seed), so the versions are the server's (the
drawn parameters are checked against the source's params.npy). The new store has the source's
format, rows, keys, labels, splits and params (random-encoder stores are float32); rows that failed in the source stay failed, and
rows still pending there stay pending. `equiprobe train` works on it unchanged.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from equiprobe.clients.datasets import Record, open_dataset
from equiprobe.clients.embed_job import TOOL_VERSION
from equiprobe.clients.runner import Outcome, StoreSink, run
from equiprobe.clients.store import DONE, FAILED, PENDING, SPLITS, Store, StoreError
from equiprobe.services.transforms import get_catalog
from equiprobe.services.transforms.assets import CANVAS
from equiprobe.services.transforms.expand import Expander, serialize_expand
from equiprobe.services.transforms.spec import image_key

FEATURES = ("pixels", "random-encoder")
PIXEL_GRID = 16
SPLIT_NAMES = {code: name for name, code in SPLITS.items()}


class Featurizer(Protocol):
    name: str  # the store's "encoder"
    dim: int
    weights_sha256: str
    preprocess: Optional[object]  # the encoder's Preprocess for the expansion, None: catalog canvases
    dtype: Optional[str]  # the store's dtype; None: the source store's

    def __call__(self, versions: np.ndarray) -> np.ndarray:
        """uint8 versions [B, K, ...] -> float32 features [B, K, dim]."""


def downsample(images: np.ndarray, size: int = PIXEL_GRID) -> np.ndarray:
    """Box averages of uint8 [..., H, W, 3] images whose sides are multiples of `size`: float32 [..., size, size, 3]."""
    *lead, h, w, c = images.shape
    if h % size or w % size:
        raise ValueError(f"{h}x{w} images do not divide into {size}x{size} boxes")
    boxes = images.reshape(*lead, size, h // size, size, w // size, c)
    return boxes.mean(axis=(-4, -2), dtype=np.float32)


@dataclass
class PixelFeatures:
    """Every version on the catalog's 224x224 canvas, averaged over 14x14 boxes (area
    downsampling, exact because 224 = 16 x 14), flattened in HWC order."""

    name: str = f"pixels{PIXEL_GRID}"
    dim: int = PIXEL_GRID * PIXEL_GRID * 3
    weights_sha256: str = ""
    preprocess: None = None
    dtype: None = None  # box averages of 0..255 values: float16 rounds them by at most 0.0625

    def __call__(self, versions: np.ndarray) -> np.ndarray:
        assert versions.shape[-3:-1] == (CANVAS, CANVAS)
        return downsample(versions).reshape(*versions.shape[:2], self.dim)


class RandomEncoderFeatures:
    """The encoder architecture with random weights, run in torch on the CPU. The expansion
    resizes and crops each version for the encoder (uint8, its channel order); here the
    normalization the served K-version ONNX model does, then the network."""

    def __init__(self, encoder: str, seed: int = 0, batch_size: int = 64):
        import torch

        from equiprobe.services.encoders import get_encoder

        spec = get_encoder(encoder)
        torch.manual_seed(seed)  # the random weights are a function of the seed
        network = spec.build(random_weights=True)
        if not isinstance(network, torch.nn.Module):
            raise ValueError(f"encoder {encoder!r} is an ONNX graph without a random-weight torch variant")
        self.network, self.batch_size, self.preprocess = network.eval(), batch_size, spec.preprocess
        self.name, self.dim = f"{encoder}-random", spec.dim
        # Default initializations shrink activations layer by layer: many features end below
        # float16's normal range, so these stores are float32 whatever the source's dtype.
        self.dtype = "float32"
        self.weights_sha256 = weights_sha256(network)
        pre = spec.preprocess
        self.mean = torch.tensor(pre.mean, dtype=torch.float32)
        self.std = torch.tensor(pre.std, dtype=torch.float32)

    def __call__(self, versions: np.ndarray) -> np.ndarray:
        import torch

        b, k = versions.shape[:2]
        crops = torch.from_numpy(np.ascontiguousarray(versions.reshape(b * k, *versions.shape[2:])))
        out = np.empty((b * k, self.dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(crops), self.batch_size):
                x = (crops[start:start + self.batch_size].float() - self.mean) / self.std  # HWC, channels last
                if self.preprocess.layout == "CHW":
                    x = x.permute(0, 3, 1, 2).contiguous()
                out[start:start + len(x)] = self.network(x).reshape(len(x), -1).numpy()
        return out.reshape(b, k, self.dim)


def weights_sha256(network) -> str:
    """SHA-256 over the state dict (names and values in order): the random weights' identity."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def make_featurizer(features: str, source_manifest: dict, seed: int = 0, batch_size: int = 64) -> Featurizer:
    if features == "pixels":
        return PixelFeatures()
    if features == "random-encoder":
        return RandomEncoderFeatures(source_manifest["encoder"], seed, batch_size)
    raise ValueError(f"unknown features {features!r}; use {' or '.join(FEATURES)}")


def baseline_manifest(source: Store, featurizer: Featurizer, features: str, seed: int) -> dict:
    m = source.manifest
    return {**m, "encoder": featurizer.name, "encoder_onnx_sha256": featurizer.weights_sha256,
            "dim": featurizer.dim, "dtype": featurizer.dtype or m["dtype"], "tool_version": TOOL_VERSION,
            "features_dim": 0, "feature_layout": [],  # a baseline is its featurizer's output alone
            "baseline": {"features": features, "source_store": str(source.path), "source_encoder": m["encoder"],
                         "source_encoder_onnx_sha256": m["encoder_onnx_sha256"],
                         "weights_seed": seed if features == "random-encoder" else None}}


def check_source(source: Store) -> None:
    m = source.manifest
    catalog = get_catalog(m["catalog"])
    if m["catalog_version"] != catalog.version:
        raise StoreError(f"{source.path} was expanded with catalog {m['catalog_version']}, this code has "
                         f"{catalog.version}; its versions cannot be reproduced")
    if len(m["rows"]) != len(catalog.transforms):
        raise StoreError(f"{source.path} has {len(m['rows']) - len(catalog.transforms)} rows from style networks "
                         "after the catalog's; baseline stores reproduce catalog rows only")
    if "baseline" in m:
        raise StoreError(f"{source.path} is itself a baseline store ({m['encoder']}); use the embedding store it "
                         f"was made from ({m['baseline']['source_store']})")


def build_baseline_store(source_path: Path, features: str, out: Path, seed: int = 0, chunk_size: int = 8,
                         batch_size: int = 64, progress: bool = True) -> Store:
    """Write (or resume) the baseline store of `features` over the images of the store at `source_path`."""
    source = Store.open(source_path)
    check_source(source)
    m = source.manifest
    featurizer = make_featurizer(features, m, seed, batch_size)
    rows = RowSource(source, open_dataset(m["dataset"]))  # before anything is written: a missing dataset leaves no store
    sink = StoreSink(out, baseline_manifest(source, featurizer, features, seed))
    mapper = FeatureMapper(featurizer, rows, chunk_size)
    # Rows still pending in the source stay pending here; the expansion and features run on this
    # machine's cores, one chunk at a time.
    asyncio.run(run(rows.record, mapper, sink, chunk_size=chunk_size, progress=progress, in_flight=1,
                    rows=np.flatnonzero(source.status() != PENDING), label=f"{featurizer.name} features"))
    return Store.open(out)


class FeatureMapper:
    """The clients' mapper, with local features: each image of a chunk expanded in-process by the
    server's DALI pipeline (same catalog, seed and uploads; the drawn parameters checked against
    the source store's), the versions fed to the featurizer. A row that failed in the source
    fails again with the source's reason."""

    def __init__(self, featurizer: Featurizer, rows: "RowSource", chunk_size: int):
        m = rows.source.manifest
        catalog = get_catalog(m["catalog"])
        self.featurizer, self.rows, self.seed, self.uploads = featurizer, rows, m["seed"], m.get("uploads") == "jpeg"
        with tempfile.TemporaryDirectory() as tmp:
            pipeline = serialize_expand(catalog, Path(tmp) / "expand.dali", "cpu", chunk_size, 2,
                                        featurizer.preprocess)
            self.expander = Expander(pipeline, catalog, chunk_size, 2)

    async def map(self, items) -> list[Outcome]:
        rows, status = self.rows, self.rows.status
        outcomes = {r: Outcome(reason=rows.failure_reason(r)) for r, _ in items if status[r] == FAILED}
        done = [r for r, _ in items if status[r] == DONE]
        if done:
            encoded = [rows.image_bytes(r) for r in done]
            try:
                versions, params = self.expander.expand(encoded, [rows.image_keys[r] for r in done], self.seed,
                                                        self.uploads)
            except Exception as exc:  # the server expanded these images; this pipeline is the same one
                raise StoreError(f"rows {done[0]}..{done[-1]} could not be expanded here: "
                                 f"{str(exc).splitlines()[0]}") from None
            embeddings = self.featurizer(versions)
            for i, r in enumerate(done):
                if not np.array_equal(params[i], rows.params[r]):
                    raise StoreError(f"row {r} ({rows.keys[r]}): the drawn parameters differ from the source "
                                     "store's; it was expanded with another catalog or seed")
                outcomes[r] = Outcome(embeddings[i], params[i], str(rows.image_keys[r]))
        return [outcomes[r] for r, _ in items]


class RowSource:
    """The source store's description of each row, and its image re-read from the dataset."""

    def __init__(self, source: Store, dataset):
        self.source, self.dataset = source, dataset
        self.keys = np.asarray(source.array("keys"))
        self.sources = source.sources()
        self.image_keys = np.asarray(source.array("image_keys"))
        self.labels = np.asarray(source.array("labels"))
        self.split = np.asarray(source.array("split"))
        self.index = np.asarray(source.array("index"))
        self.params = source.array("params")
        self.status = source.status()
        self.errors = {e["row"]: e["reason"] for e in source.errors()}

    def record(self, row: int) -> Record:
        """The row as the source store describes it (its bytes: `image_bytes`, checked)."""
        return Record(int(self.index[row]), str(self.keys[row]), int(self.labels[row]),
                      SPLIT_NAMES[int(self.split[row])], lambda: self.image_bytes(row).tobytes(),
                      str(self.sources[row]))

    def failure_reason(self, row: int) -> str:
        return self.errors.get(row, "failed in the source store")

    def image_bytes(self, row: int) -> np.ndarray:
        index = int(self.index[row])
        if index >= len(self.dataset):
            raise StoreError(f"row {row}: dataset {self.dataset.spec} has {len(self.dataset)} images, the source "
                             f"store names image {index}")
        try:
            data = self.dataset.record(index).load()
        except OSError as exc:
            raise StoreError(f"row {row} ({self.keys[row]}) cannot be re-read: {exc}") from None
        if image_key(data) != self.image_keys[row]:
            raise StoreError(f"row {row} ({self.keys[row]}): the dataset's bytes are not the ones the source store "
                             f"embedded (image key {image_key(data)}, stored {self.image_keys[row]}); the dataset "
                             "changed")
        return np.frombuffer(data, np.uint8)
