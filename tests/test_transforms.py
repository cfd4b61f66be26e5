"""The transform catalog: every transformation changes the image, keeps shape and dtype, and is
a pure function of (image, transformation, seed)."""

import numpy as np
import pytest

from equiprobe.clients.photos import encode
from equiprobe.services.transforms import get_catalog, image_key, sample_params
from equiprobe.services.transforms.expand import Expander, serialize_expand

FINE = get_catalog("fine")
PHOTOS = ("astronaut", "chelsea", "coffee")


@pytest.fixture(scope="module")
def expander(tmp_path_factory):
    path = serialize_expand(FINE, tmp_path_factory.mktemp("expand") / "fine.dali", "cpu", 4, 2)
    return Expander(path, FINE, 4, 2)


@pytest.fixture(scope="module")
def images(photos):
    data = [encode(photos[n]) for n in PHOTOS]
    return [np.frombuffer(d, np.uint8) for d in data], [image_key(d) for d in data]


@pytest.fixture(scope="module")
def expanded(expander, images):
    return expander.expand(*images, seed=0)


def test_catalog_has_identity_and_thirty_named_transformations_with_stable_ids():
    assert len(FINE.transforms) == 31 and FINE.transforms[0].name == "identity"
    assert [t.id for t in FINE.transforms] == list(range(31))
    assert len(set(FINE.class_names)) == 31
    axes = {t.category for t in FINE.transforms}
    assert {"filtering", "colour quantizing", "tone", "blur", "noise", "resolution", "geometry",
            "occlusion", "style"} <= axes
    assert not any("flip" in n for n in FINE.class_names)


def test_every_version_keeps_shape_and_dtype(expanded):
    versions, params = expanded
    assert versions.shape == (len(PHOTOS), 31, 224, 224, 3) and versions.dtype == np.uint8
    assert params.shape == (len(PHOTOS), 31, FINE.params_width) and params.dtype == np.float32
    assert (params[..., -1] == 0).all()  # not re-encoded as uploads unless asked


@pytest.mark.parametrize("k", range(1, 31))
def test_transformation_changes_every_image(expanded, k):
    versions, _ = expanded
    for i in range(len(PHOTOS)):
        changed = np.abs(versions[i, k].astype(int) - versions[i, 0].astype(int))
        # Overlays touch only part of the canvas; everything else changes much of it.
        assert changed.mean() > 1.0, f"{FINE.transforms[k].name} barely changed {PHOTOS[i]}"


def test_identity_is_the_canvas(expanded):
    versions, _ = expanded
    assert versions[0, 0].std() > 10  # a real photo, not an empty canvas


def test_deterministic_for_same_key_and_seed_whatever_the_batch(expander, images, expanded):
    encoded, keys = images
    again, params = expander.expand(encoded[::-1], keys[::-1], seed=0)
    np.testing.assert_array_equal(again[::-1], expanded[0])
    np.testing.assert_array_equal(params[::-1], expanded[1])
    alone, _ = expander.expand(encoded[1:2], keys[1:2], seed=0)
    np.testing.assert_array_equal(alone[0], expanded[0][1])


def test_different_seeds_give_different_parameters_and_images(expander, images, expanded):
    other, params = expander.expand(*images, seed=1)
    for k, t in enumerate(FINE.transforms):
        continuous = [i for i, p in enumerate(t.params) if not p.integer]
        if continuous:
            assert not np.array_equal(params[0, k], expanded[1][0, k]), t.name
            assert not np.array_equal(other[0, k], expanded[0][0, k]), t.name


def test_parameters_are_a_pure_function_within_their_ranges():
    t = FINE.transforms[16]
    a = sample_params(t, "abc", 7, FINE.width)
    np.testing.assert_array_equal(a, sample_params(t, "abc", 7, FINE.width))
    assert not np.array_equal(a, sample_params(t, "abd", 7, FINE.width))
    for key in ("k1", "k2", "k3", "k4"):
        for t in FINE.transforms:
            row = sample_params(t, key, 3, FINE.width)
            for i, p in enumerate(t.params):
                assert p.low <= row[i] <= p.high
                if p.integer:
                    assert row[i] == int(row[i])


def test_serialized_pipeline_round_trips(expander, images, expanded, tmp_path):
    # A pipeline serialized at another batch size and thread count gives the same bytes.
    path = serialize_expand(FINE, tmp_path / "again.dali", "cpu", 2, 1)
    versions, _ = Expander(path, FINE, 2, 1).expand(*images, seed=0)
    np.testing.assert_array_equal(versions, expanded[0])


def test_native_expansion_pipeline_serializes_for_the_gpu(tmp_path):
    blob = serialize_expand(FINE, tmp_path / "gpu.dali", "gpu", 8, 2).read_bytes()
    assert b"mixed" in blob and len(blob) < 2_000_000


GENERAL = get_catalog("general")


def test_general_catalog_has_ten_classes_and_held_out_sub_transformations():
    assert len(GENERAL.classes) == 10 and GENERAL.classes[0] == "identity"
    train = [t for t in GENERAL.transforms if t.split == "train" and t.name != "identity"]
    test = [t for t in GENERAL.transforms if t.split == "test"]
    assert len(train) >= 28 and len(test) >= 15
    assert {t.category for t in train} == set(GENERAL.classes) - {"identity"}
    held_out_noise = [t for t in test if t.family == "noise"]
    assert len(held_out_noise) >= 2
    styles = [t for t in GENERAL.transforms if t.family == "style"]
    assert sum(t.split == "train" for t in styles) == 6 and sum(t.split == "test" for t in styles) == 7
    assert len({t.id for t in GENERAL.transforms} | {t.id for t in FINE.transforms}) == 31 + len(GENERAL.transforms)
    # Each row's label is its category.
    for t, label in zip(GENERAL.transforms, GENERAL.labels):
        assert GENERAL.classes[label] == t.category


def test_every_general_sub_transformation_changes_the_image(photos, tmp_path):
    path = serialize_expand(GENERAL, tmp_path / "general.dali", "cpu", 1, 2)
    data = encode(photos["coffee"])
    versions, params = Expander(path, GENERAL, 1, 2).expand([np.frombuffer(data, np.uint8)], [image_key(data)], 0)
    assert versions.shape == (1, len(GENERAL.transforms), 224, 224, 3)
    for k, t in enumerate(GENERAL.transforms[1:], start=1):
        assert np.abs(versions[0, k].astype(int) - versions[0, 0]).mean() > 1.0, t.name
    # Different style references give different images.
    styles = [k for k, t in enumerate(GENERAL.transforms) if t.family == "style"]
    assert len({versions[0, k].tobytes() for k in styles}) == len(styles)


# Pixel-wise transformations and fixed-kernel filters must agree with the Pillow/numpy
# implementation to about a level; noise (other generators), hue (DALI turns hue in YIQ, Pillow
# in HSV), sharpen (DALI's laplacian is smoothed), grid mask, wave, sphere and style differ in
# detail and agree in kind only.
CLOSE = ("identity", "saturate", "grayscale", "tint", "invert", "solarize", "posterize", "brighten", "darken",
         "contrast", "vignette", "gaussian_blur", "motion_blur", "defocus_blur", "pixelate", "jpeg", "crop_zoom",
         "rotate", "perspective", "text_overlay", "icon_overlay", "border", "downscale",
         # the detection catalog's
         "desaturate", "low_contrast", "jpeg_recompress", "crop_zoom_mild", "watermark", "logo", "gamma", "sepia",
         "warm_filter", "cool_filter", "resample", "rotate_crop", "patches", "warm_then_jpeg", "gamma_then_crop",
         "unsharp_mask")


# The detection catalog's mild strengths: an overlay may touch a few hundred pixels (a small logo at
# 35% opacity), and pixelate's finer grids (up to 96 cells) put DALI's and Pillow's nearest-neighbour
# picks a pixel apart more often.
CHANGED = {"detect": 0.1}
LOOSE = {("detect", "pixelate"): 6.0}


@pytest.mark.parametrize("catalog_name", ["fine", "general", "detect"])
def test_pillow_reference_implements_every_transformation(catalog_name, photos, tmp_path):
    from equiprobe.services.transforms.reference import expand_reference

    catalog = get_catalog(catalog_name)
    data = encode(photos["chelsea"])
    key = image_key(data)
    reference = expand_reference(catalog, data, catalog.host_inputs(key, 0))
    path = serialize_expand(catalog, tmp_path / "e.dali", "cpu", 1, 2)
    dali, _ = Expander(path, catalog, 1, 2).expand([np.frombuffer(data, np.uint8)], [key], 0)
    assert reference.shape == dali.shape[1:] and reference.dtype == np.uint8
    for k, t in enumerate(catalog.transforms):
        difference = np.abs(dali[0, k].astype(int) - reference[k]).mean()
        if t.name in CLOSE:
            assert difference < LOOSE.get((catalog_name, t.name), 2.0), (t.name, difference)
        if t.name != "identity":
            assert np.abs(reference[k].astype(int) - reference[0]).mean() > CHANGED.get(catalog_name, 1.0), t.name


def test_every_font_icon_and_style_reference_renders():
    """Parameters pick among these; one that fails to load would fail whole images at random."""
    from equiprobe.services.transforms import assets

    for font in assets.SEEN_FONTS + assets.HELD_OUT_FONTS:
        bitmap = assets.render_text("Sample 42", font, 32, (255, 0, 0))
        assert bitmap.shape[2] == 4 and bitmap[..., 3].max() == 255, font
    for icon in assets.SEEN_ICONS + assets.HELD_OUT_ICONS:
        bitmap = assets.render_icon(icon, 64, (0, 255, 0))
        assert bitmap.shape == (64, 64, 4) and bitmap[..., 3].max() > 0, icon
    for ref in assets.SEEN_STYLES + assets.HELD_OUT_STYLES:
        assert assets.style_reference(ref).shape == (224, 224, 3), ref
    assert not set(assets.SEEN_FONTS) & set(assets.HELD_OUT_FONTS)
    assert not set(assets.SEEN_ICONS) & set(assets.HELD_OUT_ICONS)
    assert not set(assets.SEEN_STYLES) & set(assets.HELD_OUT_STYLES)


def test_catalog_inputs_from_the_bundle_equal_the_packages_and_need_none_of_them(tmp_path):
    """What build-repo bundles into CATALOG_inputs gives the same host inputs as the packages,
    with matplotlib, scikit-image and scikit-learn unimportable (as in the server image)."""
    import subprocess
    import sys

    from equiprobe.services.transforms import assets

    assets.write_bundle(tmp_path / "assets")
    script = f"""
import sys, numpy as np
from equiprobe.services.transforms import get_catalog, assets
cats = [get_catalog(c) for c in ("fine", "general", "groups", "detect")]
keys = [f"{{i:040x}}" for i in range(40)]
packages = [[c.host_inputs(k, 1, True) for k in keys] for c in cats]
for m in ("matplotlib", "skimage", "sklearn"):
    for name in [n for n in sys.modules if n == m or n.startswith(m + ".")]:
        del sys.modules[name]
    sys.modules[m] = None  # import now fails
assets.use_bundle({str(tmp_path / "assets")!r})
for c, before in zip(cats, packages):
    for k, b in zip(keys, before):
        after = c.host_inputs(k, 1, True)
        assert b.keys() == after.keys() and all(np.array_equal(b[n], after[n]) for n in b), (c.name, k)
print("same")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "same", done.stderr[-2000:]
