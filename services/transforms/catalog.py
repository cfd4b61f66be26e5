"""Catalogs: ordered transformations, a version, and the host-side inputs they need."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from nvidia.dali import types

from ..contract import PARAMS
from . import detect, fine, general, groups
from .spec import Transform, fingerprint, parse_version, sample_params, upload_quality

# DALI type and rank of every host-rendered auxiliary input a transformation may ask for.
AUX_TYPES = {
    "MOTION_KERNEL": (types.FLOAT, 2), "DISK_KERNEL": (types.FLOAT, 2), "PERSPECTIVE": (types.FLOAT, 2),
    "TEXT": (types.UINT8, 3), "ICON": (types.UINT8, 3), "STYLE_REF": (types.UINT8, 3),
}
# Their shapes as served tensors (-1: varies with the drawn parameters).
AUX_DIMS = {
    "MOTION_KERNEL": (-1, -1), "DISK_KERNEL": (-1, -1), "PERSPECTIVE": (3, 3),
    "TEXT": (-1, -1, 4), "ICON": (-1, -1, 4), "STYLE_REF": (224, 224, 3),
}


@dataclass(frozen=True)
class Catalog:
    """Transformations in output order. `classes` are the task's labels: for the fine-grained
    task each transformation is its own class; for the generalization task a transformation's
    class is its category."""

    name: str
    version: str
    transforms: tuple[Transform, ...]
    classes: tuple[str, ...] = ()
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # finite groups among the rows

    def __post_init__(self):
        repeated = sorted(i for i, n in Counter(t.id for t in self.transforms).items() if n > 1)
        if repeated:
            raise ValueError(f"catalog {self.name}: transform ids {repeated} are declared more than once "
                             f"({', '.join(t.name for t in self.transforms if t.id in repeated)}); every row's id "
                             "is written in the catalog and must be its own")
        if parse_version(self.version)[0] != self.name:
            raise ValueError(f"catalog {self.name}: version {self.version!r} names another catalog")
        if not self.classes:
            object.__setattr__(self, "classes", tuple(t.name for t in self.transforms))
        # With a class per row (fine, detect, groups) a category is a label of the row, not a class.
        per_row = self.classes == tuple(t.name for t in self.transforms)
        unknown = {t.category for t in self.transforms} - set(self.classes) if not per_row else set()
        if unknown:
            raise ValueError(f"catalog {self.name}: categories {unknown} are not classes")

    @property
    def class_names(self) -> list[str]:
        """One name per output row (transformation)."""
        return [t.name for t in self.transforms]

    @property
    def labels(self) -> np.ndarray:
        """The task's class index of every output row."""
        if self.classes == tuple(self.class_names):
            return np.arange(len(self.transforms))
        return np.array([self.classes.index(t.category) for t in self.transforms])

    @property
    def fingerprints(self) -> list[str]:
        """One per output row: equal fingerprints across catalog versions mean the same column."""
        return [fingerprint(t) for t in self.transforms]

    @property
    def width(self) -> int:
        """Length of every parameter row (the longest parameter list, zero-padded). At least 1: a
        catalog without parameters (groups) still sends PARAMS, and Triton has no zero-size dims."""
        return max(1, max(len(t.params) for t in self.transforms))

    @property
    def aux_inputs(self) -> list[tuple[str, str, int]]:
        """(pipeline input name, the transformation's own name for it, transformation index).
        Each transformation gets inputs of its own, so two styles can feed two references."""
        return [(f"{local}_{t.id}", local, k) for k, t in enumerate(self.transforms) for local, _ in t.aux]

    @property
    def params_width(self) -> int:
        """PARAMS columns: the parameters, then the upload JPEG quality (0: the version as made)."""
        return self.width + 1

    def params(self, key: str, seed: int, uploads: bool = False) -> np.ndarray:
        """float32 [K, params_width]: every transformation's drawn parameters for one image, and the
        quality each version is re-encoded at as an upload (with `uploads`; else 0)."""
        drawn = np.stack([sample_params(t, key, seed, self.width) for t in self.transforms])
        quality = [[upload_quality(t, key, seed) if uploads else 0] for t in self.transforms]
        return np.concatenate([drawn, np.array(quality, np.float32)], axis=1)

    def host_inputs(self, key: str, seed: int, uploads: bool = False) -> dict[str, np.ndarray]:
        """PARAMS and every auxiliary input for one image, all from (key, transform id, seed)."""
        params = self.params(key, seed, uploads)
        inputs = {PARAMS: params}
        for k, t in enumerate(self.transforms):
            for local, render in t.aux:
                inputs[f"{local}_{t.id}"] = np.ascontiguousarray(render(params[k]))
        return inputs

    def describe(self, row: np.ndarray, k: int) -> str:
        t = self.transforms[k]
        return ", ".join(f"{p.name}={row[i]:.3g}" for i, p in enumerate(t.params))


def _apart(*catalogs: Catalog) -> dict[str, Catalog]:
    """The catalogs by name; no id in two of them (an id seeds its row's parameters)."""
    owners: dict[int, str] = {}
    for catalog in catalogs:
        for t in catalog.transforms:
            if owners.setdefault(t.id, catalog.name) != catalog.name:
                raise ValueError(f"transform id {t.id} ({catalog.name} {t.name}) is also in catalog {owners[t.id]}")
    return {c.name: c for c in catalogs}


CATALOGS = _apart(
    Catalog("fine", fine.VERSION, fine.TRANSFORMS),
    Catalog("general", general.VERSION, general.TRANSFORMS, general.CLASSES),
    Catalog("groups", groups.VERSION, groups.TRANSFORMS, groups=groups.GROUPS),
    Catalog("detect", detect.VERSION, detect.TRANSFORMS),
)


def get_catalog(name: str) -> Catalog:
    try:
        return CATALOGS[name]
    except KeyError:
        raise ValueError(f"unknown catalog '{name}'; known: {', '.join(CATALOGS)}") from None
