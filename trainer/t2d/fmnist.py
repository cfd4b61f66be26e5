"""The irrelevant-feature datasets (the paper's section 3.2, there on CIFAR-10): small Transforms-2D
objects pasted onto Fashion-MNIST (Debian's dataset-fashion-mnist; a user's own images work the same
way through `paste`).

A Fashion-MNIST image (28 x 28, gray) is padded to the canvas (32 x 32) and made RGB; with
probability beta (availability) an object is pasted at a uniformly random position, its side
`object_side` of the canvas; with probability alpha (relevance, the correlation) the object is the
label's own (object label mod K), else one of the K drawn uniformly. The pasted object is rendered by
transforms2d.render (scale and translation), so the object pixels match the rest of Transforms-2D.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import prototypes as protos
from .transforms2d import BASE_FRACTION, identity_values, render


def fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, 28, 28] and labels [N] of the train (60,000) or test (10,000) split."""
    from equiprobe.clients.datasets import FASHION_MNIST, _idx, fashion_mnist_dataset

    fashion_mnist_dataset()  # raises DatasetError naming the Debian package when it is missing
    prefix = {"train": "train", "test": "t10k"}[split]
    return (_idx(FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz"),
            _idx(FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))


def pasted_objects(count: int) -> list[int]:
    """The K objects pasted (prototype indices): a fixed draw from the paper-sized set."""
    order = np.random.default_rng(10).permutation(protos.OBJECT_SETS["paper"])
    return sorted(int(o) for o in order[:count])


def to_canvas(gray: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, size, size, 3]: centred on a black canvas (cropped if larger), replicated to RGB."""
    n, h, w = gray.shape
    out = np.zeros((n, size, size), np.uint8)
    top, left = (size - h) // 2, (size - w) // 2
    src = gray[:, max(0, -top):max(0, -top) + min(h, size), max(0, -left):max(0, -left) + min(w, size)]
    out[:, max(0, top):max(0, top) + src.shape[1], max(0, left):max(0, left) + src.shape[2]] = src
    return np.repeat(out[..., None], 3, -1)


@dataclass
class Pasted:
    images: np.ndarray  # uint8 [N, S, S, 3]
    labels: np.ndarray  # [N] the Fashion-MNIST class
    objects: np.ndarray  # [N] which of the K objects (-1: none)


def paste(canvas: np.ndarray, labels: np.ndarray, *, alpha: float, beta: float, objects: int, side: float,
          seed: int, batch_size: int = 1024) -> Pasted:
    """Objects pasted onto `canvas` (uint8 [N, S, S, 3]), drawn with default_rng(seed)."""
    if not (0 <= alpha <= 1 and 0 <= beta <= 1):
        raise ValueError("alpha and beta are probabilities in [0, 1]")
    if not 0 < side <= 1:
        raise ValueError("--object-side is a share of the canvas side in (0, 1]")
    n, size = len(canvas), canvas.shape[1]
    rng = np.random.default_rng(seed)
    present = rng.random(n) < beta
    correlated = rng.random(n) < alpha
    which = np.where(correlated, labels % objects, rng.integers(0, objects, n))
    which = np.where(present, which, -1)
    shift = rng.uniform(-(1 - side) / 2, (1 - side) / 2, (n, 2))
    bank = protos.prototypes(2 * size)[pasted_objects(objects)]
    out = np.empty_like(canvas)
    for s in range(0, n, batch_size):
        part = slice(s, s + batch_size)
        w = which[part]
        layer = np.where((w >= 0)[:, None, None, None], bank[np.maximum(w, 0)], 0.0).astype(np.float32)
        values = identity_values(len(w))
        values["scale"] = np.full((len(w), 1), side / BASE_FRACTION)
        values["translate"] = shift[part]
        out[part] = render(layer, canvas[part], values, size)
    return Pasted(out, labels.copy(), which)
