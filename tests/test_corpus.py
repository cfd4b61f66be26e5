import copy
import hashlib
import io
import re

import numpy as np
import pytest
from PIL import Image

from equiprobe.clients import corpus
from equiprobe.clients.corpus import (DEBIAN_PACKAGES, GENERATION, KINDS, RCC, CorpusError, check_corpus, corpus_crop,
                            corpus_dataset, dep5_licence, is_grayscale, kind_of, load_manifest, readme_licences,
                            resolve, source_bytes, source_image, split_of, thumbnail)

FIELDS = ("id", "path", "package", "package_version", "licence", "kind", "width", "height", "sha256", "colour",
          "group")


@pytest.fixture(scope="module")
def manifest():
    return load_manifest()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUIPROBE_CACHE", str(tmp_path))
    corpus._memory.clear()
    yield tmp_path / "corpus"
    corpus._memory.clear()


def test_manifest_is_complete(manifest):
    entries = manifest["entries"]
    for e in entries:
        assert all(e.get(f) not in (None, "") for f in FIELDS), e
        assert e["kind"] in KINDS and e["width"] >= 200 and e["height"] >= 200 and len(e["sha256"]) == 64
        assert e["colour"] or e["reason"].startswith("grayscale")
    assert len({e["id"] for e in entries}) == len(entries)
    colour = [e for e in entries if e["colour"]]
    kinds = [e["kind"] for e in colour]
    assert len(colour) >= 700 and kinds.count("photograph") > 0.7 * len(colour)
    assert kinds.count("screenshot") >= 20 and kinds.count("illustration") >= 100
    assert len({e["group"] for e in colour}) >= 600
    # Near duplicates share a group: stereo pairs, numbered frames, one wallpaper's light and dark variants.
    group = {e["id"]: e["group"] for e in entries}
    for pair in (("opencv-aloel", "opencv-aloer"), ("opencv-rubberwhale1", "opencv-rubberwhale2"),
                 ("opencv-left01", "opencv-left14"), ("plasma-kay", "plasma-kay-dark"),
                 ("opencv-ela-original", "opencv-ela-modified"), ("gnome-grid-d", "gnome-grid-l"),
                 ("gcompris-categorization-colosseum", "gcompris-explore-monuments-colosseum")):
        assert group[pair[0]] == group[pair[1]], pair
    # Only the largest of a wallpaper's sizes, no screenshots or thumbnails.
    paths = [e["path"] for e in entries]
    assert sum("/wallpapers/Altai/" in p for p in paths) == 1
    assert not any("screenshot" in p.lower() or "thumbnail" in p.lower() for p in paths)


def test_every_source_file_is_installed():
    entries = check_corpus()
    assert len(entries) >= 700 and [e["id"] for e in entries] == sorted(e["id"] for e in entries)


# Issue 23's packages of everyday photographs: at least this many colour photographs each (checked by eye).
PHOTOGRAPHS = {"gcompris-qt-data": 250, "scratch": 50, "kalzium-data": 19, "tuxpaint-data": 21,
               "gnome-control-center-data": 13, "lxqt-themes": 11}
FREE = re.compile(r"public domain|CC0|CC-BY(-SA)?[- ][234]\.0|GPL|LGPL|Expat|BSD|Apache", re.I)


def test_new_packages_bring_licensed_photographs(manifest):
    assert set(PHOTOGRAPHS) == set(GENERATION) and set(GENERATION) <= set(DEBIAN_PACKAGES)
    new = [e for e in manifest["entries"] if e["package"] in GENERATION]
    for e in new:
        assert e["licence"].strip() and FREE.search(e["licence"]) and "NC" not in e["licence"], e
        assert e["kind"] in KINDS, e
    for package, count in PHOTOGRAPHS.items():
        assert sum(e["colour"] and e["kind"] == "photograph" for e in new if e["package"] == package) >= count, package
    ids = {e["id"]: e for e in new}
    for name in ("gcompris-erase-gorilla", "gcompris-categorization-fish1", "gcompris-explore-monuments-petra",
                 "gcompris-details-tajmahal-background", "scratch-beach-malibu", "kalzium-becherglas",
                 "tuxpaint-sheep", "gnome-face-cat", "lxqt-after-the-rain"):
        assert ids[name]["kind"] == "photograph" and ids[name]["colour"], name
    # The per-file credits of GCompris's READMEs, also for names given relative to a parent folder.
    assert ids["gcompris-erase-crab"]["licence"] == "CC0-1.0"
    assert ids["gcompris-erase-gorilla"]["licence"] == "CC-BY-SA-4.0"
    assert ids["gcompris-explore-monuments-petra"]["licence"] == "Public Domain"
    assert ids["scratch-beach-malibu"]["licence"] == "CC-BY-SA-3.0"  # "Files: Media/*", from the source root
    # Paintings, drawings and renders are not photographs.
    assert ids["gcompris-details-van-gogh-the-night-cafe-background"]["kind"] == "illustration"
    assert ids["scratch-party-room"]["kind"] == "illustration"
    # Left out: cartoons, cut-out puzzle pieces, flags, colouring pages, theme parts, small avatars.
    paths = [e["path"] for e in new]
    assert not any(re.search(r"/words_sample/|/babyshapes/|/paintings/|/kalzium/data/maps/|/tuxpaint/starters/"
                             r"(?!reef-back|skyline)|/lxqt/themes/|/faces/legacy/", p) for p in paths)


def test_later_packages_never_rename_earlier_groups(manifest):
    """A group is named after its first entry and later packages sort last: adding them keeps every
    earlier source's group, and so its split."""
    generation = {e["id"]: GENERATION.get(e["package"], 0) for e in manifest["entries"]}
    for e in manifest["entries"]:
        assert generation[e["group"]] <= generation[e["id"]], e


def test_resource_file_members_are_the_original_bytes(manifest):
    entry = next(e for e in manifest["entries"] if e["id"] == "gcompris-erase-gorilla")
    assert RCC in entry["path"] and resolve(entry["path"]).endswith("/erase.rcc")
    data = source_bytes(entry["path"])
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP" and hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert Image.open(io.BytesIO(data)).size == (entry["width"], entry["height"])
    credits = readme_licences(resolve(entry["path"]))
    assert credits["/gcompris/src/activities/erase/resource/crab.webp"] == "CC0-1.0"


def test_check_corpus_names_the_missing_package(manifest):
    broken = copy.deepcopy(manifest)
    entry = next(e for e in broken["entries"] if e["colour"] and e["package"] == "mate-backgrounds")
    entry["path"] = "/usr/share/backgrounds/mate/nature/no-such-file.jpg"
    with pytest.raises(CorpusError, match="apt-get install -y mate-backgrounds"):
        check_corpus(broken)


def test_grayscale_is_detected():
    rng = np.random.default_rng(0)
    gray = np.repeat(rng.integers(0, 256, (300, 400, 1), np.uint8), 3, axis=2)
    noisy_gray = np.clip(gray + rng.normal(0, 1, gray.shape), 0, 255).astype(np.uint8)  # chroma noise of a JPEG
    tinted = gray.astype(np.int16) + [18, 0, -18]
    assert is_grayscale(thumbnail(Image.fromarray(gray))) and is_grayscale(thumbnail(Image.fromarray(noisy_gray)))
    assert not is_grayscale(thumbnail(Image.fromarray(np.clip(tinted, 0, 255).astype(np.uint8))))
    buffer = io.BytesIO()
    Image.fromarray(gray).convert("RGB").save(buffer, "JPEG", quality=90)
    assert is_grayscale(thumbnail(Image.open(buffer)))


def test_kind_heuristic_tells_renders_from_texture():
    rng = np.random.default_rng(1)
    flat = np.zeros((400, 600, 3), np.uint8)
    flat[:, :300] = (40, 120, 200)
    flat[100:200, 350:500] = (250, 200, 30)
    textured = np.clip(rng.normal(120, 30, (400, 600, 3)), 0, 255).astype(np.uint8)
    window = np.full((400, 600, 3), 235, np.uint8)  # a dialog: neutral, flat
    window[20:40, 20:300] = 40
    for array, path, kind in ((flat, "/usr/share/backgrounds/x.png", "illustration"),
                              (textured, "/usr/share/backgrounds/x.png", "photograph"),
                              (window, corpus.HTML + "dialog.png", "screenshot")):
        image = Image.fromarray(array)
        assert kind_of(image, thumbnail(image), path) == kind


def test_dep5_licence_prefers_the_stanza_naming_the_file():
    text = ("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
            "Files: *\nCopyright: someone\nLicense: GPL-2+\n\n"
            "Files: 16.04/Bridge.jpg\n 16.04/Other.jpg\nCopyright: photographer\nLicense: CC-BY-SA-4.0\n\n"
            "Files: nature/*.jpg\nLicense: CC0-1.0\n")
    assert dep5_licence(text, "/usr/share/backgrounds/Other.jpg") == "CC-BY-SA-4.0"
    assert dep5_licence(text, "/usr/share/backgrounds/mate/nature/Aqua.jpg") == "CC0-1.0"
    assert dep5_licence(text, "/usr/share/backgrounds/anything.png") == "GPL-2+"
    media = text + "\nFiles: Help/* Media/*\nLicense: CC-BY-SA-3.0\n"  # a folder's glob covers its subfolders
    assert dep5_licence(media, "Media/Backgrounds/Nature/lake.jpg") == "CC-BY-SA-3.0"
    assert dep5_licence(media, "/usr/share/x/Media/Backgrounds/Nature/lake.jpg") == "GPL-2+"  # installed: tail only


def test_crops_are_deterministic_and_varied(cache):
    entries = {e["id"]: e for e in check_corpus()}
    picked = [entries[i] for i in ("skimage-astronaut", "plasma-altai", "opencv-aloel", "mate-ladybird",
                                   "gcompris-erase-gorilla")]
    first = [corpus_crop(e, j) for e in picked for j in range(6)]  # cold: builds the disk cache
    assert len(list(cache.iterdir())) == len(picked)
    corpus._memory.clear()
    assert [corpus_crop(e, j) for e in picked for j in range(6)] == first  # warm: read back from disk
    assert len(set(first)) == len(first)
    sizes = [Image.open(io.BytesIO(b)).size for b in first]
    assert all(224 <= min(s) <= 384 for s in sizes) and all(b[:2] == b"\xff\xd8" for b in first)
    ratios = [w / h for w, h in sizes]
    assert min(ratios) < 0.8 and max(ratios) > 1.25 and len({min(s) for s in sizes}) > 10
    big = source_image(entries["plasma-altai"])
    assert big.dtype == np.uint8 and big.shape[2] == 3 and max(big.shape) == corpus.MAX_SIDE


def test_dataset_order_splits_and_labels(cache):
    dataset = corpus_dataset(crops_per_source=3)
    entries = check_corpus()
    n = len(entries)
    assert dataset.spec == "corpus" and dataset.label_names == list(KINDS) and len(dataset) == 3 * n
    first = [dataset.record(i) for i in range(n)]
    assert {r.key.split("/")[1] for r in first} == {e["id"] for e in entries}  # any prefix covers every source
    r = dataset.record(n + 5)
    assert r.key == f"corpus/{entries[5]['id']}/0001" and r.source == entries[5]["group"]
    assert r.label == KINDS.index(entries[5]["kind"])
    sides: dict[str, set] = {}
    for r in first:
        sides.setdefault(r.source, set()).add(r.split)
    assert all(len(s) == 1 for s in sides.values())  # no source group on two sides
    groups = {e["group"] for e in entries}
    shares = {s: sum(split_of(g) == s for g in groups) / len(groups) for s in ("train", "validation", "test")}
    assert 0.5 < shares["train"] < 0.7 and 0.08 < shares["validation"] < 0.22 and 0.17 < shares["test"] < 0.33
