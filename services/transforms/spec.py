"""What a transformation is, and how its random parameters are drawn.

Parameters are random within their ranges but a pure function of (image key, transformation
id, dataset seed): the same image, transformation and seed give the same parameters on any
machine, in any batch, so a dataset can be rebuilt bit for bit. The drawn values travel with
the embeddings (the PARAMS output, and the stores).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import numpy as np

Split = Literal["both", "train", "test"]


@dataclass(frozen=True)
class Param:
    name: str
    low: float
    high: float
    integer: bool = False  # drawn uniformly from the integers low..high-1

    def describe(self) -> str:
        kind = "int" if self.integer else "float"
        return f"{self.name}: {kind} in [{self.low:g}, {self.high:g}{')' if self.integer else ']'}"


@dataclass(frozen=True)
class Transform:
    """One transformation: stable id and name, its category, parameter ranges, its DALI code.

    `apply(image, p, aux)` takes the HWC uint8 DataNode on the catalog canvas, this transform's
    per-sample float32 parameter vector node and the auxiliary input nodes, and returns HWC
    uint8 of the same shape. `aux` names host-rendered inputs (blur kernels, glyphs, style
    references): {input name: renderer(params) -> array}, drawn from the same parameters.
    """

    id: int
    name: str
    category: str
    params: tuple[Param, ...]
    apply: Callable = None  # type: ignore[assignment]
    aux: tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...] = ()
    split: Split = "both"  # generalization catalog: seen in training, or held out for test
    family: Optional[str] = None  # e.g. "noise" or "style", for held-out accuracy columns


def parse_version(version: str) -> tuple[str, int]:
    """A catalog version as (catalog name, number): "fine-10" -> ("fine", 10). Versions are
    ordered by this, never as strings ("fine-10" sorts before "fine-2" as text)."""
    name, dash, number = version.rpartition("-")
    if not (dash and name and number.isdigit()):
        raise ValueError(f"catalog version {version!r} is not NAME-NUMBER (as fine-1)")
    return name, int(number)


def image_key(data: bytes) -> str:
    """A content key for encoded image bytes: the server can derive it without a client id."""
    return hashlib.sha256(data).hexdigest()[:16]


def _key_entropy(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def sample_params(transform: Transform, key: str, seed: int, width: int) -> np.ndarray:
    """Draw the transform's parameters for one image; float32 [width], zero-padded."""
    rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, transform.id, _key_entropy(key)]))
    values = np.zeros(width, np.float32)
    for i, p in enumerate(transform.params):
        values[i] = rng.integers(p.low, p.high) if p.integer else rng.uniform(p.low, p.high)
    return values


# Uploads as they arrive: each version re-encoded as a JPEG of a quality drawn in this range,
# as users' uploads are (phones, browsers and sites recompress at about these qualities).
UPLOAD_QUALITY = (60, 95)


def upload_quality(transform: Transform, key: str, seed: int) -> int:
    """The JPEG quality one version of one image is re-encoded at: a pure function, like its parameters."""
    rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, transform.id, _key_entropy(key), 1]))
    return int(rng.integers(UPLOAD_QUALITY[0], UPLOAD_QUALITY[1] + 1))


def _code(function: Callable) -> str:
    """A function's own source and the values its closure captured (a renderer's font list)."""
    captured = inspect.getclosurevars(function).nonlocals
    return inspect.getsource(function) + repr(sorted((k, repr(v)) for k, v in captured.items()))


def fingerprint(transform: Transform) -> str:
    """SHA-256 of everything that decides a transformation's column: id, name, category, parameter
    ranges, split and family, and the code of its DALI function and auxiliary renderers. Equal
    fingerprints: a store's column can be reused by a newer catalog version. Helpers that the code
    calls (ops, assets) are not hashed; a change there needs a new id, as the catalog rules say."""
    described = {
        "id": transform.id, "name": transform.name, "category": transform.category,
        "params": [[p.name, p.low, p.high, p.integer] for p in transform.params],
        "split": transform.split, "family": transform.family,
        "apply": _code(transform.apply), "aux": [[name, _code(render)] for name, render in transform.aux],
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
