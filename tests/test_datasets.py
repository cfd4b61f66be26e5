import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from equiprobe.clients.datasets import DatasetError, open_dataset
from equiprobe.clients.photos import encode


def test_corpus_crops_are_split_by_source():
    corpus = open_dataset("corpus")
    sources = {corpus.record(i).source for i in range(corpus.count)}
    assert len(sources) >= 200 and corpus.label_names == ["photograph", "screenshot", "illustration"]
    sides: dict[str, set] = {}
    for i in range(0, corpus.count, 7):
        r = corpus.record(i)
        sides.setdefault(r.source, set()).add(r.split)
    assert all(len(s) == 1 for s in sides.values())  # no source on two sides
    assert {next(iter(s)) for s in sides.values()} == {"train", "validation", "test"}
    data = [corpus.record(i).load() for i in range(12)]
    assert len(set(data)) == 12 and corpus.record(5).load() == data[5]  # distinct, deterministic
    assert min(min(Image.open(io.BytesIO(d)).size) for d in data) >= 224  # shorter side: a whole canvas


def test_fashion_mnist_from_the_debian_package():
    fashion = open_dataset("fashion-mnist")
    assert len(fashion) == 70_000 and len(fashion.label_names) == 10
    splits = [fashion.record(i).split for i in range(70)]
    assert splits.count("test") == 10 and splits.count("train") == 60
    image = Image.open(io.BytesIO(fashion.record(0).load()))
    assert image.size == (28, 28)
    labels = {fashion.record(i).label for i in range(200)}
    assert labels <= set(range(10)) and len(labels) > 5


def test_folder_list_and_tar_sources(tmp_path, photos):
    for split in ("train", "test"):
        for cls, name in (("cat", "chelsea"), ("rocket", "rocket")):
            (tmp_path / "tree" / split / cls).mkdir(parents=True)
            (tmp_path / "tree" / split / cls / f"{name}.jpg").write_bytes(encode(photos[name]))
    (tmp_path / "tree" / "train" / "cat" / "readme.txt").write_text("not an image")
    folder = open_dataset(f"folder:{tmp_path / 'tree'}")
    assert len(folder) == 4 and folder.label_names == ["cat", "rocket"]
    assert [folder.record(i).split for i in range(4)] == ["train", "train", "test", "test"]
    assert folder.record(1).label == 1 and folder.record(1).load()[:2] == b"\xff\xd8"
    assert folder.record(0).source == folder.record(0).key  # an image directly in its class folder
    # CLASS/SOURCE/IMAGE: the folder below the class names the source of every image in it.
    (tmp_path / "tree" / "train" / "cat" / "shoot1").mkdir()
    for crop in range(2):
        (tmp_path / "tree" / "train" / "cat" / "shoot1" / f"{crop}.jpg").write_bytes(encode(photos["chelsea"][crop:]))
    nested = open_dataset(f"folder:{tmp_path / 'tree'}")
    assert [nested.record(i).source for i in range(len(nested)) if "shoot1" in nested.record(i).key] == ["cat/shoot1"] * 2

    (tmp_path / "list.csv").write_text("path,label,source\ntree/train/cat/chelsea.jpg,cat,cat-photo\n"
                                       "tree/test/rocket/rocket.jpg,\n")
    listed = open_dataset(f"list:{tmp_path / 'list.csv'}")
    assert len(listed) == 2 and listed.label_names == ["cat"]
    assert listed.record(0).label == 0 and listed.record(1).label == -1
    assert listed.record(0).source == "cat-photo" and listed.record(1).source == listed.record(1).key

    for shard in range(2):
        with tarfile.open(tmp_path / f"shard-{shard}.tar", "w") as tar:
            for j, name in enumerate(("astronaut", "coins")):
                for suffix, payload in (("jpg", encode(photos[name])), ("cls", str(j).encode())):
                    info = tarfile.TarInfo(f"s{shard}_{name}.{suffix}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    shards = open_dataset(f"tar:{tmp_path}/shard-*.tar")
    assert len(shards) == 4 and shards.label_names == ["0", "1"]
    assert shards.record(3).load() == encode(photos["coins"])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(shards.record(0).load()))).shape, (512, 512, 3))


@pytest.mark.parametrize("spec", ["nope", "folder:/definitely/missing", "list:/missing.csv", "tar:/missing/*.tar"])
def test_bad_dataset_specs_say_what_is_wrong(spec):
    with pytest.raises(DatasetError):
        open_dataset(spec)
