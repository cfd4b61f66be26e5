"""Dataset sources for bulk embedding, addressed by a SPEC string:

    corpus           crops of the built-in corpus (photographs, screenshots and illustrations that
                     Debian and Python packages ship; clients/corpus_manifest.json), split by source
    fashion-mnist    Debian's dataset-fashion-mnist (70,000 labelled product photos)
    folder:PATH      a flat folder of images (no labels), or an ImageFolder tree: class
                     sub-folders are labels; PATH/train and PATH/test sub-trees, if present, give
                     the split (each flat or with classes); a folder below the class folder
                     (CLASS/SOURCE/IMAGE) names the images' source (else each image is its own)
    list:FILE        a file list or CSV: path[,label[,source]] per line, paths relative to FILE
    tar:GLOB         webdataset-style tar shards: members sharing a basename form a sample
                     (an image of any accepted format and an optional .cls or .txt label)

Image files are those with a suffix of a format the server accepts (`equiprobe formats`).

Every dataset has a fixed order, so "image i" means the same everywhere (shards, resumes).
Records load lazily: nothing is read until a worker asks for the bytes.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import tarfile
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from equiprobe.services.uploads import IMAGE_SUFFIXES

from .records import Dataset, DatasetError, Record  # noqa: F401  (the dataset API lives here)

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                   "ankle boot")


# -- the built-in corpus (clients/corpus.py) ----------------------------------------------------

def corpus() -> Dataset:
    from .corpus import corpus_dataset

    return corpus_dataset()


# -- fashion-mnist --------------------------------------------------------------------------------

@lru_cache(maxsize=4)  # images and labels of both splits
def _idx(path: Path) -> np.ndarray:
    with gzip.open(path) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def fashion_mnist_dataset(root: Path = FASHION_MNIST) -> Dataset:
    """60,000 train and 10,000 test images, interleaved 6:1 so that any prefix has both."""
    files = {s: (root / f"{p}-images-idx3-ubyte.gz", root / f"{p}-labels-idx1-ubyte.gz")
             for s, p in (("train", "train"), ("test", "t10k"))}
    if not all(f.exists() for pair in files.values() for f in pair):
        raise DatasetError(f"fashion-mnist is not installed under {root}; install Debian's package: "
                           f"apt-get install dataset-fashion-mnist (make setup does this where it can)")

    def record(i: int) -> Record:
        split, j = ("test", i // 7) if i % 7 == 6 else ("train", (i // 7) * 6 + i % 7)
        images, labels = (_idx(f) for f in files[split])
        return Record(i, f"fashion-mnist/{split}/{j:05d}", int(labels[j]), split, lambda: _png(images[j]))
    return Dataset("fashion-mnist", list(FASHION_CLASSES), 70_000, record)


# -- user data ----------------------------------------------------------------------------------

def _file_record(i: int, path: Path, root: Path, label: int, split: Optional[str], source: str = "") -> Record:
    return Record(i, str(path.relative_to(root)) if path.is_relative_to(root) else str(path), label, split,
                  path.read_bytes, source)


def _folder_source(path: Path, class_dir: Path) -> str:
    """CLASS/SOURCE/.../IMAGE: the folder right below the class folder is the source."""
    parts = path.relative_to(class_dir).parts
    return f"{class_dir.name}/{parts[0]}" if len(parts) > 1 else ""


def _images(folder: Path, recursive: bool) -> list[Path]:
    paths = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_dataset(root: Path) -> Dataset:
    """ROOT/IMAGE (flat, no labels), ROOT/CLASS/IMAGE, or either under ROOT/train and ROOT/test."""
    if not root.is_dir():
        raise DatasetError(f"folder {root} does not exist")
    trees = [(s, root / s) for s in ("train", "test") if (root / s).is_dir()] or [(None, root)]
    classes = sorted({d.name for _, tree in trees for d in tree.iterdir() if d.is_dir() and _images(d, True)})
    items = []
    for split, tree in trees:
        loose = _images(tree, recursive=False)
        if loose and classes:
            raise DatasetError(f"{tree} mixes images ({loose[0].name}, ...) with class sub-folders "
                               f"({', '.join(classes[:3])}); put every image in a class folder, or none")
        items += [(path, -1, split, "") for path in loose]
        items += [(path, classes.index(cls), split, _folder_source(path, tree / cls)) for cls in classes
                  if (tree / cls).is_dir() for path in _images(tree / cls, recursive=True)]
    if not items:
        raise DatasetError(f"{root} holds no image files ({', '.join(IMAGE_SUFFIXES)}), directly or in "
                           "class sub-folders")
    return Dataset(f"folder:{root}", classes, len(items), lambda i: _file_record(i, items[i][0], root, *items[i][1:]))


def list_dataset(file: Path) -> Dataset:
    if not file.is_file():
        raise DatasetError(f"list file {file} does not exist")
    rows = [r for r in csv.reader(file.read_text().splitlines()) if r and not r[0].startswith("#")]
    if rows and rows[0][0].strip().lower() == "path":
        rows = rows[1:]  # a CSV header
    names = sorted({r[1].strip() for r in rows if len(r) > 1 and r[1].strip()})
    items = [((file.parent / r[0].strip()), names.index(r[1].strip()) if len(r) > 1 and r[1].strip() else -1,
              r[2].strip() if len(r) > 2 else "") for r in rows]
    return Dataset(f"list:{file}", names, len(items),
                   lambda i: _file_record(i, items[i][0], file.parent, items[i][1], None, items[i][2]))


def tar_dataset(pattern: str) -> Dataset:
    shards = sorted(glob.glob(pattern))
    if not shards:
        raise DatasetError(f"no tar shards match {pattern}")
    samples: list[tuple[str, str, int, int, Optional[str]]] = []  # shard, key, offset, size, label text
    for shard in shards:
        try:
            with tarfile.open(shard) as tar:
                members = {}
                for m in tar.getmembers():
                    if m.isfile():
                        stem, _, ext = m.name.rpartition(".")
                        members.setdefault(stem, {})[ext.lower()] = m
                for stem in sorted(members):
                    parts = members[stem]
                    image = next((parts[e] for e in sorted(parts) if "." + e in IMAGE_SUFFIXES), None)
                    if image is None:
                        continue
                    label_member = parts.get("cls") or parts.get("txt")
                    label = tar.extractfile(label_member).read().decode().strip() if label_member else None
                    samples.append((shard, stem, image.offset_data, image.size, label))
        except tarfile.TarError as exc:
            raise DatasetError(f"tar shard {shard} cannot be read: {exc}") from None
    names = sorted({s[4] for s in samples if s[4] is not None})

    def record(i: int) -> Record:
        shard, stem, offset, size, label = samples[i]

        def load() -> bytes:
            with open(shard, "rb") as f:
                f.seek(offset)
                return f.read(size)
        return Record(i, f"{Path(shard).name}/{stem}", names.index(label) if label is not None else -1, None, load)
    return Dataset(f"tar:{pattern}", names, len(samples), record)


def open_dataset(spec: str) -> Dataset:
    kind, _, arg = spec.partition(":")
    if spec == "corpus":
        return corpus()
    if spec == "fashion-mnist":
        return fashion_mnist_dataset()
    if kind == "folder" and arg:
        return folder_dataset(Path(arg))
    if kind == "list" and arg:
        return list_dataset(Path(arg))
    if kind == "tar" and arg:
        return tar_dataset(arg)
    raise DatasetError(f"unknown dataset {spec!r}; use corpus, fashion-mnist, folder:PATH, list:FILE or tar:GLOB")
