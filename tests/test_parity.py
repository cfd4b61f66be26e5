"""Train/serve parity: a store's identity version is what NAME_embed returns for the same file.

Both go through the one preprocessing path (services/pipelines.py: canvas, then the encoder's
resize), so they agree at any size and aspect ratio. The detector's side of the contract
(NAME_detector's EMBEDDING for the same files) is in tests/test_detector.py: it is NAME_embed's.
Detector-training stores re-encode every version as a JPEG upload on purpose (a served input
is an upload already); this test embeds with --uploads none to compare the preprocessing alone.
"""

import io
import subprocess

import numpy as np
import pytest

from equiprobe.clients.embedding import EmbeddingClient
from equiprobe.clients.photos import encode
from equiprobe.clients.store import Store

from .conftest import ENCODER, embed_bin

MIN_COSINE = 0.9999


def odd_sizes(photos) -> dict[str, bytes]:
    """Non-square (both orientations), small, large and square files, as users upload them."""
    from PIL import Image

    big = np.asarray(Image.fromarray(photos["astronaut"]).resize((2400, 1800), Image.BICUBIC))
    return {"wide.jpg": encode(photos["chelsea"][:, :]),  # 451 x 300
            "tall.png": encode(photos["rocket"][:, 100:380], "PNG"),  # 280 x 427
            "small.jpg": encode(photos["coffee"][100:180, 200:300]),  # 100 x 80: upscaled to the canvas
            "large.jpg": encode(big),
            "square.bmp": encode(photos["astronaut"][:300, :300], "BMP")}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def files(photos, tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads") / "uploads"
    (folder / "mixed").mkdir(parents=True)
    images = odd_sizes(photos)
    for name, data in images.items():
        (folder / "mixed" / name).write_bytes(data)
    return folder, images


def test_store_identity_equals_served_embedding_at_any_size(server, files, tmp_path):
    folder, images = files
    out = tmp_path / "store"
    proc = subprocess.run([embed_bin(), "embed", "--dataset", f"folder:{folder}", "--encoder", ENCODER, "--out",
                           str(out), "--url", server.config.grpc_url, "--quiet", "--dtype", "float32",
                           "--uploads", "none"],  # uploads re-encode every version, identity included
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    store = Store.open(out)
    identity = list(store.manifest["rows"]).index("identity")
    keys = [str(k).rsplit("/", 1)[-1] for k in store.array("keys")]
    client = EmbeddingClient(server.config.grpc_url, ENCODER)
    assert store.features_dim == 1664  # squeezenet1_1's FEATURES, stored beside the embeddings
    try:
        for row, key in enumerate(keys):
            stored = np.asarray(store.array("embeddings")[row, identity], np.float32)
            embedding, features = client.features(images[key])
            assert cosine(stored, client.embed(images[key])) >= MIN_COSINE, key
            np.testing.assert_array_equal(embedding, client.embed(images[key]))
            # The detector's FEATURES: the store's identity version is what NAME_embed serves.
            assert cosine(np.asarray(store.array("features")[row, identity], np.float32), features) >= MIN_COSINE, key
    finally:
        client.close()


def test_served_features_equal_the_in_process_pipeline(server, repo, files):
    """NAME_embed's FEATURES over gRPC against the repository's own DALI and ONNX files run here."""
    from equiprobe.services.contract import EMBEDDING, FEATURES
    from equiprobe.services.embed_models import InProcessEmbed

    _, images = files
    local = InProcessEmbed(repo, ENCODER)
    client = EmbeddingClient(server.config.grpc_url, ENCODER)
    try:
        for name, data in images.items():
            embedding, features = client.features(data)
            expected = local.outputs([np.frombuffer(data, np.uint8)], [EMBEDDING, FEATURES])
            np.testing.assert_allclose(embedding, expected[0][0], rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(features, expected[1][0], rtol=1e-5, atol=1e-3)
            assert features.shape == (1664,)
    finally:
        client.close()


def test_parity_check_can_fail(server, files):
    """The same comparison notices the old two-resize path's skew (canvas vs a direct resize)."""
    from PIL import Image

    _, images = files
    client = EmbeddingClient(server.config.grpc_url, ENCODER)
    try:
        direct = encode(np.asarray(Image.open(io.BytesIO(images["large.jpg"])).convert("RGB")
                                   .resize((227, 227), Image.BILINEAR)))
        assert cosine(client.embed(images["large.jpg"]), client.embed(direct)) < MIN_COSINE
    finally:
        client.close()
