"""Transforms-2D (trainer/t2d/): prototypes and backgrounds, determinism and recorded parameters of the
generator, what each transformation category changes, the CLI, and the benchmark's reference loop."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from equiprobe.clients.datasets import open_dataset
from equiprobe.trainer.t2d import backgrounds as bg
from equiprobe.trainer.t2d import generate, prototypes
from equiprobe.trainer.t2d.transforms2d import CATEGORIES, NAMES, identity_values, object_layer, parse_transforms, render

EQUIPROBE = str(Path(sys.executable).parent / "equiprobe")
SIZE = 32


def protos(size: int = SIZE) -> np.ndarray:
    return prototypes.prototypes(generate.prototype_resolution(size))


def gray(n: int, size: int = SIZE) -> np.ndarray:
    return np.full((n, size, size, 3), 128, np.uint8)


# -- prototypes and backgrounds ------------------------------------------------------------

def test_prototypes_are_61_plus_distinct_alpha_masked_objects_with_licences():
    p = protos()
    assert len(p) == len(prototypes.CODEPOINTS) >= prototypes.MIN_OBJECTS
    alpha = p[:, 3]
    assert (alpha.max((1, 2)) > 0.99).all() and (alpha.min((1, 2)) == 0).all()  # opaque objects, clear corners
    assert (p[:, :3] <= p[:, 3:] + 1e-6).all()  # premultiplied
    flat = p.reshape(len(p), -1)
    assert len(np.unique(flat.round(3), axis=0)) == len(p)
    entries = prototypes.manifest()
    assert len({e["codepoint"] for e in entries}) == len(entries) == len(p)
    assert {e["licence"] for e in entries} == {"OFL-1.1"}
    assert entries[0]["name"] == "red-apple" and entries[0]["codepoint"] == "U+1F34E"
    sets = prototypes.OBJECT_SETS
    assert len(sets["paper"]) == 61 and not set(sets["o1"]) & set(sets["o2"])
    assert set(sets["o1"]) | set(sets["o2"]) == set(sets["paper"])


def test_a_missing_font_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(prototypes, "FONT", tmp_path / "absent.ttf")
    prototypes._font.cache_clear()
    try:
        with pytest.raises(prototypes.PrototypeError, match="apt-get install -y fonts-noto-color-emoji"):
            prototypes.render_glyph(prototypes.CODEPOINTS[0])
    finally:
        prototypes._font.cache_clear()


def test_backgrounds_are_800_plus_distinct_crops_from_disjoint_sources():
    banks = {s: bg.bank(s, SIZE) for s in bg.SPLITS}
    total = sum(len(b) for b in banks.values())
    assert total >= 800
    every = np.concatenate(list(banks.values())).reshape(total, -1)
    assert len(np.unique(every, axis=0)) == total
    sources = {s: {i.rsplit("/", 1)[0] for i in bg.bank_ids(s, len(banks[s]))} for s in bg.SPLITS}
    assert not sources["train"] & sources["test"] and not sources["train"] & sources["val"]
    assert not sources["val"] & sources["test"]
    assert np.array_equal(bg.build_bank("test", SIZE, 5), banks["test"][:5])  # the cache holds the same crops


# -- the categories ---------------------------------------------------------------------

def one(n: int, **values) -> dict:
    v = identity_values(n)
    v.update({k: np.asarray(x, np.float64).reshape(n, -1) for k, x in values.items()})
    return v


def test_identity_is_the_prototype_centred_and_other_pixels_are_the_background():
    p, b = protos()[:4], bg.bank("train", SIZE)[:4]
    image = render(p, b, one(4), SIZE)
    layer = object_layer(p, one(4), SIZE).numpy()
    clear = layer[:, 3] == 0
    assert clear.mean() > 0.3 and np.array_equal(image[clear], b[clear])
    ys, xs = np.nonzero(layer[0, 3] > 0.5)
    assert abs(ys.mean() - (SIZE - 1) / 2) < 3 and abs(xs.mean() - (SIZE - 1) / 2) < 3


@pytest.mark.parametrize("category,axis", [("hflip", -1), ("vflip", -2)])
def test_a_flip_only_dataset_holds_flips_of_the_prototype_on_the_background(category, axis):
    spec = generate.DatasetSpec(objects=tuple(range(6)), transforms=(category,), size=SIZE,
                                counts={"train": 24, "val": 0, "test": 0}, seed=3)
    draws = generate.draw(spec, "train")
    images = generate.render_draws(spec, "train", draws)
    flipped = draws.values[category][:, 0] == 1
    assert 0 < flipped.sum() < len(flipped)
    assert all(np.array_equal(v, CATEGORIES[c].identity[None].repeat(len(draws), 0))
               for c, v in draws.values.items() if c != category)
    p = protos()[list(spec.objects)][draws.labels]
    mirrored = np.where(flipped[:, None, None, None], np.flip(p, axis), p)
    bank = bg.bank("train", SIZE)[draws.backgrounds]
    np.testing.assert_array_equal(images, render(mirrored, bank, one(len(draws)), SIZE))


def test_translation_shifts_the_object_by_whole_pixels():
    p = protos()[:3]
    base = object_layer(p, one(3), SIZE).numpy()
    moved = object_layer(p, one(3, translate=[[3 / SIZE, -2 / SIZE]] * 3), SIZE).numpy()
    expected = np.roll(base, (-2, 3), axis=(2, 3))
    assert np.abs(moved - expected).max() <= 1e-4


def test_rotation_by_90_degrees_turns_the_object_clockwise_and_scale_changes_its_area():
    p = protos()[:3]
    base = object_layer(p, one(3), SIZE).numpy()
    turned = object_layer(p, one(3, rotate=[90.0] * 3), SIZE).numpy()
    assert np.abs(turned - np.rot90(base, k=-1, axes=(2, 3))).max() <= 1e-4
    half = object_layer(p, one(3, scale=[0.5] * 3), SIZE).numpy()
    np.testing.assert_allclose(half[:, 3].sum((1, 2)) / base[:, 3].sum((1, 2)), 0.25, rtol=0.08)


@pytest.mark.parametrize("category", ["blur", "sharpen", "colour"])
def test_appearance_categories_change_only_the_object(category):
    n = 6
    p, b = protos()[:n], bg.bank("train", SIZE)[:n]
    values = one(n, **{category: CATEGORIES[category].draw(np.random.default_rng(1), n)})
    if category == "blur":
        values["blur"][:] = CATEGORIES["blur"].params[0].high
    if category == "sharpen":
        values["sharpen"][:] = 2.0
    base_layer = object_layer(p, one(n), SIZE).numpy()
    image, base = render(p, b, values, SIZE), render(p, b, one(n), SIZE)
    assert (image != base).any(axis=(1, 2, 3)).all()  # every sample changed
    outside = base_layer[:, 3] == 0
    if category == "blur":  # the object's edge blurs outward by at most the kernel radius
        radius = int(np.ceil(3 * CATEGORIES["blur"].params[0].high * SIZE))
        from scipy.ndimage import binary_dilation

        outside = ~np.stack([binary_dilation(~o, iterations=radius) for o in outside])
    assert outside.any() and np.array_equal(image[outside], b[outside])
    if category != "blur":  # the object keeps its shape
        layer = object_layer(p, values, SIZE).numpy()
        np.testing.assert_array_equal(layer[:, 3], base_layer[:, 3])


def test_allowing_a_category_changes_no_other_draw():
    kw = dict(objects=(0, 1, 2), size=SIZE, counts={"train": 30, "val": 0, "test": 0}, seed=5)
    a = generate.draw(generate.DatasetSpec(transforms=("rotate",), **kw), "train")
    b = generate.draw(generate.DatasetSpec(transforms=("rotate", "colour"), **kw), "train")
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.backgrounds, b.backgrounds)
    assert np.array_equal(a.values["rotate"], b.values["rotate"])
    assert (a.values["colour"] == CATEGORIES["colour"].identity).all() and (b.values["colour"] != 1).any()
    assert np.bincount(a.labels).tolist() == [10, 10, 10]


def test_bad_transform_names_and_specs_are_refused():
    assert parse_transforms("rotate,translate") == ("translate", "rotate")  # registry order
    assert parse_transforms("all") == NAMES and parse_transforms("none") == ()
    with pytest.raises(ValueError, match="unknown transformation 'twirl'"):
        parse_transforms("rotate,twirl")
    with pytest.raises(ValueError, match="two distinct objects"):
        generate.DatasetSpec(objects=(1,))
    with pytest.raises(ValueError, match="--objects must be in 2.."):
        prototypes.object_indices(objects=500)


# -- the generator ------------------------------------------------------------------------

def generate_cli(out: Path, *extra: str) -> dict:
    proc = subprocess.run([EQUIPROBE, "t2d", "generate", "--out", str(out), "--train", "40", "--val", "8",
                           "--test", "12", "--objects", "5", "--quiet", *extra], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generate_is_deterministic_and_readable_by_embed(tmp_path):
    first = generate_cli(tmp_path / "a", "--format", "tar", "--seed", "4", "--shard-size", "16")
    generate_cli(tmp_path / "b", "--format", "tar", "--seed", "4", "--shard-size", "16")
    generate_cli(tmp_path / "c", "--format", "tar", "--seed", "5", "--shard-size", "16")
    a, b, c = (tree_bytes(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and a["train-00000.tar"] != c["train-00000.tar"]
    assert first["images"] == 60 and first["classes"] == 5 and first["transforms"] == list(NAMES)
    shards = open_dataset(f"tar:{tmp_path}/a/*.tar")
    assert len(shards) == 60 and shards.label_names == generate.DatasetSpec(objects=tuple(range(5))).classes
    assert Image.open(io.BytesIO(shards.record(0).load())).size == (SIZE, SIZE)
    proc = subprocess.run([EQUIPROBE, "t2d", "generate", "--out", str(tmp_path / "a")], capture_output=True, text=True)
    assert proc.returncode == 1 and "is not empty" in proc.stderr
    proc = subprocess.run([EQUIPROBE, "t2d", "generate", "--out", str(tmp_path / "d"), "--transforms", "twirl"],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "unknown transformation 'twirl'" in proc.stderr


def test_every_sample_is_recorded_and_re_rendered_from_its_record(tmp_path):
    spec = generate.DatasetSpec(objects=(3, 8, 20, 40), transforms=("translate", "rotate", "colour"), size=SIZE,
                                counts={"train": 20, "val": 4, "test": 8}, seed=9)
    manifest = generate.write(spec, tmp_path / "ds", "folder")
    records = [json.loads(line) for line in (tmp_path / "ds" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 32 and {r["split"] for r in records} == {"train", "val", "test"}
    assert manifest["objects"][1]["name"] == prototypes.OBJECTS[8] and manifest["objects"][1]["licence"] == "OFL-1.1"
    assert manifest["backgrounds"]["train"]["corpus_split"] == "train"
    table = protos()
    for r in records[::5]:
        assert set(r["params"]) == {"translate", "rotate", "colour"} and r["object"] == prototypes.OBJECTS[
            spec.objects[r["class"]]]
        values = one(1, **{c: [[p[q.name] for q in CATEGORIES[c].params]] for c, p in r["params"].items()})
        expected = render(table[[spec.objects[r["class"]]]], bg.bank(r["split"], SIZE)[[r["background"]]], values,
                          SIZE)[0]
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "ds" / r["file"])), expected)
    folder = open_dataset(f"folder:{tmp_path / 'ds'}")  # train and test (embed reads no val split)
    assert len(folder) == 28 and folder.label_names == spec.classes
    split_labels = {(folder.record(i).split, folder.record(i).label) for i in range(len(folder))}
    assert {s for s, _ in split_labels} == {"train", "test"}


# -- the benchmark's reference -------------------------------------------------------------

def test_the_pillow_reference_loop_makes_the_same_samples_roughly():
    from equiprobe.trainer.t2d import bench

    spec = generate.DatasetSpec(objects=tuple(range(8)), transforms=NAMES, size=SIZE,
                                counts={"train": 16, "val": 0, "test": 0}, seed=2)
    draws = generate.draw(spec, "train")
    ours = np.stack([np.asarray(Image.open(io.BytesIO(d))) for d in bench.generator_path(spec, "train", draws)])
    pillow = np.stack([np.asarray(Image.open(io.BytesIO(d))) for d in bench.pillow_loop(spec, "train", draws)])
    assert np.array_equal(ours, generate.render_draws(spec, "train", draws))
    difference = np.abs(ours.astype(int) - pillow).mean()
    assert difference < 12, difference  # same objects, places and filters; other rounding and filter kernels


def test_the_bench_command_compares_both_paths_and_extrapolates_the_full_profile():
    proc = subprocess.run([EQUIPROBE, "t2d", "bench", "--images", "24", "--train-images", "32", "--arch", "small-cnn",
                           "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    rates = list(report["generate_images_per_second"].values())
    assert len(rates) == 2 and all(r > 0 for r in rates)
    assert report["ratio"] == pytest.approx(rates[0] / rates[1], abs=0.01)  # both rounded
    assert report["train_images_per_second"]["small-cnn"] > 0 and "ratio t2d generate / Pillow loop" in proc.stderr
    estimate = report["full_profile_estimate"]["small-cnn"]
    assert estimate["transfer_run_seconds"] > 50 * estimate["epoch_seconds"] * 0.9
