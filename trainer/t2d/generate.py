"""Transforms-2D datasets: a spec, every sample's draws, the images, and the writer.

A `DatasetSpec` names the objects (classes, in order), which categories each class's samples are
transformed with, the image size, the split sizes and the seed. Every draw of a split comes from
numpy's default_rng([seed, split number]) in a fixed order (labels, backgrounds, then every
category's parameters, allowed or not, so that allowing a category changes no other draw); the
images are rendered from those draws in batches (transforms2d.render), so the same spec gives the
same bytes. `write` stores an ImageFolder (DIR/split/CLASS/NNNNNN.png) or webdataset tar shards
(DIR/split-NNNNN.tar: NNNNNN.png + NNNNNN.cls), both of which `equiprobe embed` reads
(folder:DIR, tar:'DIR/*.tar'), with t2d.json (the spec, the objects' manifest with licences, the
background banks) and samples.jsonl (one line per sample: split, file, class, object, background,
the parameters of the categories applied).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import backgrounds as bg
from . import prototypes as protos
from .transforms2d import CATEGORIES, NAMES, parse_transforms, render

FORMAT = "t2d-1"
SPLITS = bg.SPLITS
FORMATS = ("folder", "tar")


@dataclass(frozen=True)
class DatasetSpec:
    objects: tuple[int, ...]  # prototype indices; class i is objects[i]
    # The categories of each class (one tuple per class), or one tuple for every class.
    transforms: tuple = ()
    size: int = 32
    counts: dict = field(default_factory=lambda: {"train": 50_000, "val": 10_000, "test": 10_000})
    seed: int = 0
    banks: dict = field(default_factory=lambda: dict(bg.DEFAULT_BANK))

    def __post_init__(self):
        if len(self.objects) < 2 or len(set(self.objects)) != len(self.objects):
            raise ValueError("a dataset needs at least two distinct objects")
        if not all(0 <= o < len(protos.CODEPOINTS) for o in self.objects):
            raise ValueError(f"object indices must be in 0..{len(protos.CODEPOINTS) - 1}")
        per_class = self.transforms and not isinstance(self.transforms[0], str)
        sets = self.transforms if per_class else (self.transforms,) * len(self.objects)
        if len(sets) != len(self.objects):
            raise ValueError(f"{len(sets)} transformation sets for {len(self.objects)} classes")
        object.__setattr__(self, "transforms", tuple(parse_transforms(list(s)) for s in sets))
        if self.size < 8:
            raise ValueError(f"--size {self.size}: at least 8 pixels")
        unknown = set(self.counts) - set(SPLITS)
        if unknown or any(int(n) < 0 for n in self.counts.values()):
            raise ValueError(f"split sizes must be >= 0 for {', '.join(SPLITS)}")

    @property
    def classes(self) -> list[str]:
        return [f"{i:03d}-{protos.OBJECTS[o]}" for i, o in enumerate(self.objects)]

    @property
    def allowed(self) -> np.ndarray:
        """bool [classes, categories]: which categories transform each class's samples."""
        return np.array([[n in s for n in NAMES] for s in self.transforms], bool)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["transforms"] = [list(s) for s in self.transforms]
        d["objects"] = list(self.objects)
        return d


@dataclass
class Draws:
    """Everything random about one split's samples."""

    labels: np.ndarray  # [N] class
    backgrounds: np.ndarray  # [N] index into the split's bank
    values: dict[str, np.ndarray]  # category -> [N, P], identity where the class does not allow it

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, part) -> "Draws":
        return Draws(self.labels[part], self.backgrounds[part], {k: v[part] for k, v in self.values.items()})


def draw(spec: DatasetSpec, split: str) -> Draws:
    n = int(spec.counts.get(split, 0))
    rng = np.random.default_rng([spec.seed, SPLITS.index(split)])
    labels = rng.permutation(np.arange(n) % len(spec.objects))  # balanced classes
    backgrounds = rng.integers(0, spec.banks[split], n)
    allowed = spec.allowed[labels]
    values = {}
    for k, (name, category) in enumerate(CATEGORIES.items()):
        drawn = category.draw(rng, n)
        values[name] = np.where(allowed[:, k:k + 1], drawn, category.identity)
    return Draws(labels, backgrounds, values)


def prototype_resolution(size: int) -> int:
    return 2 * size  # the supersampled canvas covers the object at up to 1.67x the base placement


def render_draws(spec: DatasetSpec, split: str, draws: Draws, batch_size: int = 256,
                 progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """uint8 [N, size, size, 3] of the drawn samples (rendered `batch_size` at a time)."""
    prototypes = protos.prototypes(prototype_resolution(spec.size))[list(spec.objects)]
    bank = bg.bank(split, spec.size, spec.banks[split])
    out = np.empty((len(draws), spec.size, spec.size, 3), np.uint8)
    for start in range(0, len(draws), batch_size):
        part = draws.take(slice(start, start + batch_size))
        out[start:start + len(part)] = render(prototypes[part.labels], bank[part.backgrounds], part.values, spec.size)
        if progress:
            progress(len(part))
    return out


def images(spec: DatasetSpec, split: str, batch_size: int = 256,
           progress: Optional[Callable[[int], None]] = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, S, S, 3], labels [N]) of one split, in memory (what the experiments train on)."""
    draws = draw(spec, split)
    return render_draws(spec, split, draws, batch_size, progress), draws.labels


def sample_record(spec: DatasetSpec, split: str, draws: Draws, i: int, file: str) -> dict:
    label = int(draws.labels[i])
    params = {name: {p.name: float(draws.values[name][i, j]) for j, p in enumerate(CATEGORIES[name].params)}
              for name in spec.transforms[label]}
    return {"split": split, "index": i, "file": file, "class": label, "class_name": spec.classes[label],
            "object": protos.OBJECTS[spec.objects[label]], "background": int(draws.backgrounds[i]),
            "transforms": list(spec.transforms[label]), "params": params}


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # no clock, no owner: same bytes every run
    tar.addfile(info, io.BytesIO(data))


def write(spec: DatasetSpec, out: Path, fmt: str = "folder", shard_size: int = 10_000, batch_size: int = 256,
          progress: Optional[Callable[[int], None]] = None) -> dict:
    """Write the dataset under `out`; returns t2d.json's content."""
    from concurrent.futures import ThreadPoolExecutor

    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; use {' or '.join(FORMATS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ValueError(f"{out} is not empty; Transforms-2D writes into a new or empty directory")
    files = {}
    with ThreadPoolExecutor(4) as pool, open(out / "samples.jsonl", "w") as log:
        for split in SPLITS:
            draws = draw(spec, split)
            if not len(draws):
                continue
            tar, shard_files = None, []
            for start in range(0, len(draws), batch_size):
                part = draws.take(slice(start, start + batch_size))
                encoded = pool.map(png, render_draws(spec, split, part, batch_size))
                for i, data in enumerate(encoded, start):
                    label = int(draws.labels[i])
                    if fmt == "folder":
                        name = f"{split}/{spec.classes[label]}/{i:06d}.png"
                        (out / name).parent.mkdir(parents=True, exist_ok=True)
                        (out / name).write_bytes(data)
                    else:
                        if i % shard_size == 0:
                            if tar:
                                tar.close()
                            shard_files.append(f"{split}-{i // shard_size:05d}.tar")
                            tar = tarfile.open(out / shard_files[-1], "w", format=tarfile.USTAR_FORMAT)
                        _tar_add(tar, f"{i:06d}.png", data)
                        _tar_add(tar, f"{i:06d}.cls", spec.classes[label].encode())
                        name = f"{shard_files[-1]}/{i:06d}.png"
                    log.write(json.dumps(sample_record(spec, split, draws, i, name), sort_keys=True) + "\n")
                if progress:
                    progress(len(part))
            if tar:
                tar.close()
            files[split] = shard_files if fmt == "tar" else f"{split}/"
    manifest = {"format": FORMAT, "layout": fmt, "spec": spec.as_dict(), "classes": spec.classes,
                "objects": protos.manifest(list(spec.objects)),
                "categories": {n: {"kind": c.kind, "description": c.description,
                                   "params": [asdict(p) for p in c.params]} for n, c in CATEGORIES.items()},
                "backgrounds": {s: {"count": spec.banks[s], "corpus_split": bg.CORPUS_SPLIT[s],
                                    "sources": len(bg.split_sources(s)), "ids": bg.bank_ids(s, spec.banks[s])}
                                for s in SPLITS},
                "files": files, "samples": "samples.jsonl",
                "embed": "folder:DIR" if fmt == "folder" else "tar:'DIR/*.tar'"}
    (out / "t2d.json").write_text(json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return manifest
