"""DALI preprocessing against the Pillow reference, and the serialized pipeline round trip."""

from dataclasses import replace

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def, types

from equiprobe.clients.photos import encode
from equiprobe.services.encoders import get_encoder, list_encoders
from equiprobe.services.pipelines import (CANVAS_SIZE, CpuPreprocessor, crop_window, preprocess_pipeline,
                                          resize_and_crop, resize_then_crop, serialize_preprocess, to_canvas)
from equiprobe.services.reference import reference_preprocess
from equiprobe.services.contract import IMAGE

# Tolerances in 8-bit pixel units. Every image is first put on the 224 canvas (a shorter-side
# resize), then resized for the encoder. Square encoder resizes (squeezenet, open_nsfw) differ
# only by filter rounding, twice: mean <= 0.5, 99th percentile <= 3 (measured up to 0.41 / 3).
# Shorter-side resizes keep a fractional scale in DALI where Pillow rounds the size to whole
# pixels, a sub-pixel shift: mean <= 1.0.
TOLERANCE = {"square": (0.5, 3.0), "shorter": (1.0, 12.0)}
PHOTOS = ["astronaut", "chelsea", "rocket", "coins", "china"]


@pytest.mark.parametrize("encoder", ["squeezenet1_1", "open_nsfw", "clip_vit_b32", "vit_l16_supervised"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP"])
def test_dali_matches_reference(encoder, fmt, photos, tmp_path):
    pre = get_encoder(encoder).preprocess
    dali = CpuPreprocessor(serialize_preprocess(pre, tmp_path / "p.dali", "cpu", 8, 2), 8, 2)
    data = [encode(photos[name], fmt) for name in PHOTOS]
    crops = dali.run([np.frombuffer(d, np.uint8) for d in data])
    assert crops.shape == (len(PHOTOS), *pre.crop_shape) and crops.dtype == np.uint8
    ours = pre.normalize(crops)  # what NAME_encoder does first
    assert ours.shape == (len(PHOTOS), *pre.output_shape) and ours.dtype == np.float32
    mean_limit, p99_limit = TOLERANCE[pre.resize_mode]
    for got, d in zip(ours, data):
        diff = np.abs(got - reference_preprocess(d, pre)) * np.mean(pre.std)  # back to pixel units
        assert diff.mean() <= mean_limit and np.percentile(diff, 99) <= p99_limit, (diff.mean(), np.percentile(diff, 99))


def _crops(body, canvases):
    @pipeline_def(batch_size=len(canvases), num_threads=1, device_id=None, exec_async=False, exec_pipelined=False)
    def pipe():
        return body(fn.external_source(name="x", dtype=types.UINT8, ndim=3, layout="HWC"))
    p = pipe()
    p.build()
    p.feed_input("x", canvases)
    return p.run()[0].as_array()


EXTRA_RESIZES = [  # (resize, size, interpolation): beyond the registry's, an odd margin, downscales, cubic
    (255, 224, "linear"), (200, 180, "linear"), (240, 224, "cubic"), (224, 224, "cubic"), (160, 160, "linear")]


@pytest.mark.parametrize("case", [*(e.name for e in list_encoders()), *EXTRA_RESIZES], ids=str)
def test_windowed_resize_equals_resize_then_crop(case, photos):
    """The optimized resize (only the crop window, channel swap last) against the unoptimized path,
    on real canvases and on noise (every pixel different), from RGB canvases as the expansion has them:
    equal for the registered encoders; elsewhere within 1 (the window's scale rounds differently)."""
    exact = isinstance(case, str)
    if exact:
        pre = get_encoder(case).preprocess
    else:
        resize, size, interpolation = case
        pre = replace(get_encoder("open_nsfw").preprocess, resize=resize, size=size, interpolation=interpolation)
    noise = np.random.default_rng(0).integers(0, 256, (CANVAS_SIZE, CANVAS_SIZE, 3), dtype=np.uint8)
    canvases = [_crops(to_canvas, [np.asarray(photos[n])])[0] for n in PHOTOS[:3]] + [noise]
    got = _crops(lambda x: resize_and_crop(x, pre, input_order="RGB"), canvases)
    want = _crops(lambda x: resize_then_crop(x, pre, input_order="RGB"), canvases)
    assert got.shape == want.shape == (len(canvases), *pre.crop_shape)
    diff = np.abs(got.astype(np.int16) - want)
    if exact:
        np.testing.assert_array_equal(got, want)
    else:
        assert diff.max() <= 1 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_a_crop_larger_than_its_resize_is_refused():
    with pytest.raises(ValueError, match="crop 230 is larger than the resize 224"):
        crop_window(replace(get_encoder("open_nsfw").preprocess, resize=224, size=230))


def test_reference_comparison_can_fail(photos, tmp_path):
    """The check above would notice a wrong channel order."""
    pre = get_encoder("squeezenet1_1").preprocess
    dali = CpuPreprocessor(serialize_preprocess(pre, tmp_path / "p.dali", "cpu", 8, 2), 8, 2)
    d = encode(photos["astronaut"])
    got = pre.normalize(dali.run([np.frombuffer(d, np.uint8)]))[0]
    swapped = reference_preprocess(d, pre)[::-1]
    assert np.abs(got - swapped).mean() > TOLERANCE["square"][0]


def test_serialized_pipeline_round_trips(jpegs, tmp_path):
    pre = get_encoder("squeezenet1_1").preprocess
    direct = preprocess_pipeline(pre, "cpu", batch_size=4, num_threads=1, device_id=None)
    direct.build()
    images = [np.frombuffer(jpegs[n], np.uint8) for n in ("astronaut", "coffee")]
    direct.feed_input(IMAGE, images)
    expected = direct.run()[0].as_array()
    restored = CpuPreprocessor(serialize_preprocess(pre, tmp_path / "p.dali", "cpu", 4, 1), 4, 1)
    np.testing.assert_array_equal(restored.run(images), expected)


def test_native_pipeline_serializes_with_gpu_decoding(tmp_path):
    path = serialize_preprocess(get_encoder("squeezenet1_1").preprocess, tmp_path / "g.dali", "gpu", 32, 2)
    blob = path.read_bytes()
    assert b"mixed" in blob and b"decoders__Image" in blob


def test_pipeline_recovers_after_a_corrupt_image(jpegs, tmp_path):
    pre = get_encoder("squeezenet1_1").preprocess
    dali = CpuPreprocessor(serialize_preprocess(pre, tmp_path / "p.dali", "cpu", 4, 1), 4, 1)
    good = np.frombuffer(jpegs["astronaut"], np.uint8)
    with pytest.raises(RuntimeError):
        dali.run([good, good[: good.size // 3]])
    assert dali.run([good]).shape == (1, *pre.crop_shape)


def test_a_stored_versions_upload_is_the_jpeg_a_user_sends(photos):
    """Detector stores re-encode each version as an upload inside DALI (expand.as_upload:
    jpeg_compression_distortion at the drawn quality); the server decodes a user's JPEG. A Pillow
    JPEG of the same canvas at the same quality (libjpeg's defaults, 4:2:0), decoded as served,
    gives the same pixels: the stores' uploads are the served ones. Quality 0 keeps the version."""
    from equiprobe.services.pipelines import decode
    from equiprobe.services.transforms.expand import as_upload

    canvases = [np.ascontiguousarray(photos[name][:CANVAS_SIZE, :CANVAS_SIZE]) for name in ("astronaut", "chelsea", "coffee")]
    for quality in (60, 77, 95):
        uploads = [np.frombuffer(encode(c, quality=quality), np.uint8) for c in canvases]

        @pipeline_def(batch_size=len(canvases), num_threads=1, device_id=None, exec_async=False, exec_pipelined=False)
        def pipe():
            canvas = fn.external_source(source=lambda: canvases, batch=True, dtype=types.UINT8, layout="HWC")
            drawn = fn.external_source(source=lambda: [np.float32(quality)] * len(canvases), batch=True,
                                       dtype=types.FLOAT)
            none = fn.external_source(source=lambda: [np.float32(0)] * len(canvases), batch=True, dtype=types.FLOAT)
            sent = fn.external_source(source=lambda: uploads, batch=True, dtype=types.UINT8)
            return as_upload(canvas, drawn), decode(sent, "RGB", "cpu"), as_upload(canvas, none)

        built = pipe()
        built.build()
        stored, served, kept = (out.as_array() for out in built.run())
        np.testing.assert_array_equal(stored, served)
        np.testing.assert_array_equal(kept, np.stack(canvases))
        assert np.abs(stored.astype(int) - kept).mean() > 1  # the compression does change the pixels
