"""Uploads as users send them: every accepted format, strict decoding, limits, folder layouts.

The acceptance corpus (clients/upload_corpus.py) goes through the real server: every valid file
embedded (lossless formats to the very embedding of the same pixels as PNG), every broken one
refused alone with INVALID_ARGUMENT and a message that names the problem, under concurrent load.
"""

from __future__ import annotations

import io
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from equiprobe.clients.datasets import DatasetError, folder_dataset
from equiprobe.clients.upload_corpus import EMBED, REFUSE, upload_corpus
from equiprobe.services.decode_log import structured_entries
from equiprobe.services.contract import ModelNames
from equiprobe.services.embed_models import InProcessEmbed
from equiprobe.services.uploads import FORMATS, ImageRejected, Limits, admit
from equiprobe.services.contract import EMBEDDING, EMBEDDINGS, ExpansionNames, IMAGE
from equiprobe.trainer.benchmarks.soak import BAD_OTHER, BAD_REFUSED, GOOD_FAILED, GOOD_OK, run_soak

from .conftest import ENCODER, embed_bin

NAMES = ModelNames(ENCODER)
CORPUS = {u.name: u for u in upload_corpus()}
LOSSLESS = ("rgb.bmp", "lossless.webp", "rgb.tiff", "lzw.tiff", "rgb.ppm")
# What the gate says about broken files, decided before any decoding.
GATE_MESSAGES = {
    "empty": "empty \\(0 bytes\\)",
    "html": "not an image file of an accepted format",
    "jpeg-cut-at-half": "JPEG is truncated: the scan starting at byte \\d+ runs to the end",
    "jpeg-30pct-random-scan": "JPEG entropy-coded data is corrupt at byte \\d+",
    "jpeg-60pct-random-scan": "JPEG entropy-coded data is corrupt at byte \\d+",
    "jpeg-zeroed-body": "JPEG is corrupt at byte \\d+",
    "png-cut-at-half": "PNG is truncated: chunk IDAT at byte \\d+",
    "png-bad-crc": "PNG chunk IDAT at byte \\d+ is corrupt \\(CRC mismatch\\)",
    "giant-png-header": "30000x30000 pixels, over the pixel cap of 144,000,000",
    "tiff-cut-at-two-thirds": "TIFF could not be decoded .*truncated",
    "gif-cut-at-two-thirds": "GIF is truncated",
    "heic-cut-at-two-thirds": "HEIC/HEIF could not be decoded",
}
# Broken only for the decoder: the marker walk passes them, DALI's decoder complains.
DECODER_ONLY = ("jpeg-junk-before-eoi", "jpeg-scan-bytes-deleted")


def logged(server, event: str, done, timeout_s: float = 15.0) -> list[dict]:
    """The server log's structured `event` entries once `done(entries)` holds, or when the time is
    up: a python model's log line reaches the server's output after its response has gone out."""
    deadline = time.monotonic() + timeout_s
    while True:
        entries = structured_entries(list(server.log), event)
        if done(entries) or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def infer(url: str, model: str, data: bytes, request_id: str = "", outputs=(EMBEDDING,)):
    client = grpcclient.InferenceServerClient(url)
    array = np.frombuffer(data, np.uint8).reshape(1, -1)
    image = grpcclient.InferInput(IMAGE, list(array.shape), "UINT8")
    image.set_data_from_numpy(array)
    try:
        result = client.infer(model, [image], request_id=request_id, client_timeout=120)
        return {name: result.as_numpy(name) for name in outputs}
    finally:
        client.close()


def outcome(url: str, model: str, data: bytes, request_id: str = ""):
    """The embedding, or (status, message) of the refusal."""
    try:
        return infer(url, model, data, request_id)[EMBEDDING][0]
    except InferenceServerException as exc:
        return exc.status(), exc.message()


# -- the gate on its own ---------------------------------------------------------------------------

def test_every_good_file_is_admitted_with_its_format_and_broken_ones_named():
    expected_format = {".jpg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WebP", ".tiff": "TIFF",
                       ".jp2": "JPEG 2000", ".ppm": "PNM", ".pgm": "PNM", ".gif": "GIF", ".avif": "AVIF",
                       ".heic": "HEIC/HEIF"}
    seen = set()
    for upload in CORPUS.values():
        case = upload.name.split("/", 1)[1]
        if upload.expected == EMBED:
            admitted = admit(upload.data)
            suffix = "." + case.rsplit(".", 1)[1]
            assert admitted.format == expected_format[suffix], upload.name
            assert admitted.converted == (admitted.format in ("GIF", "AVIF", "HEIC/HEIF"))
            seen.add(admitted.format)
        elif case in GATE_MESSAGES:
            with pytest.raises(ImageRejected, match=GATE_MESSAGES[case]):
                admit(upload.data)
    assert seen == {f.name for f in FORMATS}


def test_converted_formats_hand_on_the_upright_first_frame():
    heic = np.asarray(Image.open(io.BytesIO(admit(CORPUS["chelsea/orientation6.heic"].data).data)), np.float32)
    photo = Image.open(io.BytesIO(CORPUS["chelsea/rgb.png"].data))
    turned = np.asarray(photo.transpose(Image.Transpose.ROTATE_270), np.float32)  # what EXIF orientation 6 asks for
    assert heic.shape == turned.shape == (451, 300, 3) and np.abs(heic - turned).mean() < 3  # lossy HEIC
    gif = np.asarray(Image.open(io.BytesIO(admit(CORPUS["chelsea/animated.gif"].data).data)), np.float32)
    with Image.open(io.BytesIO(CORPUS["chelsea/animated.gif"].data)) as frames:
        first = np.asarray(frames.convert("RGB"), np.float32)
        frames.seek(1)
        second = np.asarray(frames.convert("RGB"), np.float32)
    assert np.abs(gif - first).mean() < 1 < np.abs(gif - second).mean()


def test_limits_are_named():
    jpeg = CORPUS["rocket/baseline.jpg"].data
    with pytest.raises(ImageRejected, match=f"IMAGE is {len(jpeg):,} bytes .*over the request size cap of 10,000 bytes"):
        admit(jpeg, Limits(max_request_bytes=10_000))
    with pytest.raises(ImageRejected, match="640x427 pixels, over the pixel cap of 1,000 pixels"):
        admit(jpeg, Limits(max_pixels=1000))


def test_formats_command_lists_every_format():
    out = subprocess.run([embed_bin(), "formats"], capture_output=True, text=True, timeout=120).stdout
    for fmt in FORMATS:
        assert fmt.name in out
    assert "64 MB" in out and "144,000,000 pixels" in out


# -- folder layouts ------------------------------------------------------------------------------

def write_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(CORPUS[f"coffee/{name.split('_')[-1]}"].data)


def test_folder_dataset_takes_flat_class_and_split_layouts(tmp_path):
    write_images(tmp_path / "flat", ["a_rgb.heic", "b_baseline.jpg", "c_lossy.webp"])
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    flat = folder_dataset(tmp_path / "flat")
    assert len(flat) == 3 and flat.label_names == []
    assert [flat.record(i).label for i in range(3)] == [-1, -1, -1] and flat.record(0).key == "a_rgb.heic"
    write_images(tmp_path / "classes" / "cats", ["a_rgb.tiff"])
    write_images(tmp_path / "classes" / "dogs", ["b_rgb.png", "c_rgb.avif"])
    classes = folder_dataset(tmp_path / "classes")
    assert classes.label_names == ["cats", "dogs"] and [classes.record(i).label for i in range(3)] == [0, 1, 1]
    write_images(tmp_path / "split" / "train", ["a_rgb.jp2", "b_rgb.ppm"])
    write_images(tmp_path / "split" / "test", ["c_rgb.bmp"])
    split = folder_dataset(tmp_path / "split")
    assert [split.record(i).split for i in range(3)] == ["train", "train", "test"]
    write_images(tmp_path / "mixed" / "cats", ["a_rgb.png"])
    write_images(tmp_path / "mixed", ["b_rgb.png"])
    with pytest.raises(DatasetError, match="mixes images"):
        folder_dataset(tmp_path / "mixed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no image files"):
        folder_dataset(tmp_path / "empty")


# -- through the real server ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def served(server):
    """Every corpus upload sent to NAME_embed by 16 concurrent clients."""
    uploads = list(CORPUS.values())
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda u: outcome(server.config.grpc_url, NAMES.embed, u.data), uploads))
    return dict(zip(CORPUS, results))


def test_every_valid_upload_is_embedded_as_in_process(served, repo):
    reference = InProcessEmbed(repo, ENCODER)
    good = [name for name, u in CORPUS.items() if u.expected == EMBED]
    failed = [name for name in good if isinstance(served[name], tuple)]
    assert not failed, {name: served[name] for name in failed}
    for name in good:
        np.testing.assert_allclose(served[name], reference([np.frombuffer(CORPUS[name].data, np.uint8)])[0],
                                   rtol=1e-4, atol=1e-4, err_msg=name)


def test_lossless_formats_and_orientation_give_the_same_pixels_embedding(served):
    for photo in ("astronaut", "coffee"):
        png = served[f"{photo}/rgb.png"]
        for name in LOSSLESS:
            np.testing.assert_allclose(served[f"{photo}/{name}"], png, rtol=1e-5, atol=1e-5, err_msg=name)


def test_exif_orientation_is_applied(served, server):
    image = Image.open(io.BytesIO(CORPUS["coffee/rgb.png"].data))
    rotated = io.BytesIO()
    image.transpose(Image.Transpose.ROTATE_90).save(rotated, "PNG")  # what EXIF orientation 8 asks for
    upright = outcome(server.config.grpc_url, NAMES.embed, rotated.getvalue())
    np.testing.assert_allclose(served["coffee/orientation8.png"], upright, rtol=1e-5, atol=1e-5)
    assert not np.allclose(served["coffee/rgb.png"], upright, atol=1e-3)


def test_every_broken_upload_is_refused_with_a_clear_message(served, server):
    for name, upload in CORPUS.items():
        if upload.expected != REFUSE:
            continue
        status, message = served[name]
        assert status == "StatusCode.INVALID_ARGUMENT", (name, status, message)
        case = name.split("/", 1)[1]
        if case in GATE_MESSAGES:
            assert re.search(GATE_MESSAGES[case], message), (name, message)
        assert not message.rstrip().endswith(":") and "Failed to decode sample" not in message, (name, message)
    assert server.is_ready() and server.process.poll() is None


def test_partly_decoded_jpeg_is_refused_and_logged_with_its_request_id(server):
    for case in DECODER_ONLY:
        data = CORPUS[f"rocket/{case}"].data
        admit(data)  # the marker walk cannot tell; only the decoder can
        status, message = outcome(server.config.grpc_url, NAMES.embed, data, request_id=f"req-{case}")
        assert status == "StatusCode.INVALID_ARGUMENT" and "only partly understood" in message
        assert "Corrupt JPEG data" in message, message
    wanted = {f"req-{case}" for case in DECODER_ONLY}
    entries = logged(server, "partly_decoded", lambda es: wanted <= {e["request_id"] for e in es})
    for case in DECODER_ONLY:
        entry = next(e for e in entries if e["request_id"] == f"req-{case}")
        assert entry["model"] == NAMES.preprocess and entry["decoder"] and entry["image_bytes"]
    bare = [line for line in server.log if "Corrupt JPEG data" in line and "partly_decoded" not in line]  # never bare
    assert not bare, bare[:3]


def test_expansion_takes_converted_formats_and_refuses_broken_ones(server):
    model, outputs = ExpansionNames(ENCODER, "fine").embed, (EMBEDDINGS,)
    for name in ("rocket/rgb.heic", "rocket/animated.gif", "rocket/lossy.webp"):
        assert infer(server.config.grpc_url, model, CORPUS[name].data, outputs=outputs)[EMBEDDINGS].shape == (1, 31, 512)
    for name in ("rocket/jpeg-30pct-random-scan", "rocket/jpeg-junk-before-eoi", "rocket/heic-cut-at-two-thirds"):
        with pytest.raises(InferenceServerException) as info:
            infer(server.config.grpc_url, model, CORPUS[name].data, outputs=outputs)
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT", (name, info.value.message())


def test_request_over_the_size_cap_is_refused_naming_it(server):
    status, message = outcome(server.config.grpc_url, NAMES.embed, bytes(65 << 20))
    assert status == "StatusCode.INVALID_ARGUMENT" and "over the request size cap of 67,108,864 bytes (64 MB)" in message
    assert isinstance(outcome(server.config.grpc_url, NAMES.embed, CORPUS["rocket/baseline.jpg"].data), np.ndarray)


def test_short_soak_of_mixed_uploads_fails_no_good_request(server):
    report = run_soak(server.config.grpc_url, NAMES.embed, server.group_pids, minutes=0.25, concurrency=16,
                      interval_s=5, warmup_s=5)
    assert report.totals[GOOD_FAILED] == 0 and report.totals[BAD_OTHER] == 0, report.failures
    assert report.totals[GOOD_OK] > 50 and report.totals[BAD_REFUSED] > 50
    assert len(report.intervals) >= 3 and sum(r["requests_per_s"] > 0 for r in report.intervals) >= 3
    names = " ".join(report.rss_end_mb)
    assert "tritonserver" in names and "image_gate (stub" in names and NAMES.preprocess in names
    assert server.is_ready()


def test_decode_failures_past_the_gate_carry_the_decoders_words(server):
    """NAME_preprocess called directly (no gate): DALI's bare "Failed to decode sample #0 :" or
    "nvImageCodec failure: '#17'" comes back with what the decoder said."""
    for name, words in (("coffee/png-cut-at-half", "end of stream|truncated|Premature|error"),
                        ("coffee/jpeg-cut-at-half", "Premature end of JPEG data")):
        with pytest.raises(InferenceServerException) as info:
            infer(server.config.grpc_url, NAMES.preprocess, CORPUS[name].data, outputs=())
        message = info.value.message()
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and re.search(words, message), (name, message)
        assert "#17" not in message and not message.rstrip().endswith(":"), message
    entries = logged(server, "decode_failed", lambda es: any(e["model"] == NAMES.preprocess for e in es))
    assert any(e["model"] == NAMES.preprocess and e["decoder"] for e in entries)
