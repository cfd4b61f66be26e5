"""Catalogs: ordered transformations, a version, and the host-side inputs they need."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nvidia.dali import types

from . import fine
from .spec import Transform, sample_params

# DALI type and rank of every host-rendered auxiliary input a transformation may ask for.
AUX_TYPES = {
    "MOTION_KERNEL": (types.FLOAT, 2), "DISK_KERNEL": (types.FLOAT, 2), "PERSPECTIVE": (types.FLOAT, 2),
    "TEXT": (types.UINT8, 3), "ICON": (types.UINT8, 3), "STYLE_REF": (types.UINT8, 3),
}


@dataclass(frozen=True)
class Catalog:
    name: str
    version: str
    transforms: tuple[Transform, ...]

    @property
    def class_names(self) -> list[str]:
        return [t.name for t in self.transforms]

    @property
    def width(self) -> int:
        """Length of every parameter row (the longest parameter list, zero-padded)."""
        return max(len(t.params) for t in self.transforms)

    @property
    def aux_names(self) -> list[str]:
        names = [name for t in self.transforms for name, _ in t.aux]
        if len(names) != len(set(names)):
            raise ValueError(f"catalog {self.name}: two transformations render the same auxiliary input")
        return names

    def params(self, key: str, seed: int) -> np.ndarray:
        """float32 [K, width]: every transformation's drawn parameters for one image."""
        return np.stack([sample_params(t, key, seed, self.width) for t in self.transforms])

    def host_inputs(self, key: str, seed: int) -> dict[str, np.ndarray]:
        """PARAMS and every auxiliary input for one image, all from (key, transform id, seed)."""
        params = self.params(key, seed)
        inputs = {"PARAMS": params}
        for k, t in enumerate(self.transforms):
            for name, render in t.aux:
                inputs[name] = np.ascontiguousarray(render(params[k]))
        return inputs

    def describe(self, row: np.ndarray, k: int) -> str:
        t = self.transforms[k]
        return ", ".join(f"{p.name}={row[i]:.3g}" for i, p in enumerate(t.params))


CATALOGS = {"fine": Catalog("fine", fine.VERSION, fine.TRANSFORMS)}


def get_catalog(name: str) -> Catalog:
    try:
        return CATALOGS[name]
    except KeyError:
        raise ValueError(f"unknown catalog '{name}'; known: {', '.join(CATALOGS)}") from None
