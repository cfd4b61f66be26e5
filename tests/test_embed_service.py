"""The embedding service on the real Triton server, over gRPC."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from equiprobe.clients.embedding import EmbeddingClient, ServiceError
from equiprobe.clients.photos import encode
from equiprobe.services.contract import ModelNames
from equiprobe.services.embed_models import InProcessEmbed
from equiprobe.services.contract import IMAGE

from .conftest import ENCODER

NAMES = ModelNames(ENCODER)


@pytest.fixture(scope="module")
def client(server):
    c = EmbeddingClient(server.config.grpc_url, ENCODER)
    c.check()
    yield c
    c.close()


@pytest.fixture(scope="module")
def in_process(repo):
    """The same serialized pipeline and ONNX file, run in this process."""
    embed = InProcessEmbed(repo, ENCODER)
    return lambda data: embed([np.frombuffer(data, np.uint8)])[0]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP"])
def test_served_embedding_equals_in_process_reference(fmt, photos, client, in_process):
    for name in ("astronaut", "chelsea", "retina"):
        data = encode(photos[name], fmt)
        served = client.embed(data)
        assert served.shape == (512,) and served.dtype == np.float32
        np.testing.assert_allclose(served, in_process(data), rtol=1e-5, atol=1e-4)


def test_different_photos_give_different_embeddings(jpegs, client):
    a, b = client.embed(jpegs["astronaut"]), client.embed(jpegs["brick"])
    cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert cosine < 0.9


def inference_counts(server, model):
    c = grpcclient.InferenceServerClient(server.config.grpc_url)
    stats = c.get_inference_statistics(model).model_stats[0]
    return stats.inference_count, stats.execution_count


def test_ragged_requests_from_many_clients_are_batched_together(server, photos, in_process):
    # 24 requests, each a different crop size so every byte length differs.
    images = [encode(photos["coffee"][: 200 + 7 * i, : 260 + 5 * i]) for i in range(24)]
    assert len({len(i) for i in images}) == len(images)
    before = inference_counts(server, NAMES.preprocess)
    clients = [EmbeddingClient(server.config.grpc_url, ENCODER) for _ in range(12)]
    with ThreadPoolExecutor(len(clients)) as pool:
        served = list(pool.map(lambda i: clients[i % len(clients)].embed(images[i]), range(len(images))))
    after = inference_counts(server, NAMES.preprocess)
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == len(images)
    assert executions < inferences, "the dynamic batcher never merged two requests"
    for data, embedding in zip(images, served):  # each caller gets its own image's embedding
        np.testing.assert_allclose(embedding, in_process(data), rtol=1e-5, atol=1e-4)


def giant_bmp(photos) -> bytes:
    """A real BMP whose header claims 20000 x 20000 pixels (1.2 GB decoded)."""
    data = bytearray(encode(photos["coins"][:8, :8], "BMP"))
    data[18:22] = (20000).to_bytes(4, "little")
    data[22:26] = (20000).to_bytes(4, "little")
    return bytes(data)


BAD = {
    "empty": (lambda p, j: b"", "empty"),
    "truncated": (lambda p, j: j["astronaut"][: len(j["astronaut"]) // 3], "JPEG is truncated"),
    "not an image": (lambda p, j: b"<html>certainly not a photo</html>", "not an image file of an accepted format"),
    "giant": (lambda p, j: giant_bmp(p), "over the pixel cap of 144,000,000"),
    "corrupt body": (lambda p, j: j["rocket"][:600] + bytes(len(j["rocket"]) - 600), "JPEG .*corrupt at byte"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_image_gets_invalid_argument(case, photos, jpegs, client):
    make, message = BAD[case]
    with pytest.raises(ServiceError, match=message):
        client.embed(make(photos, jpegs))
    raw = grpcclient.InferenceServerClient(client.url)
    data = np.frombuffer(make(photos, jpegs), np.uint8)
    image = grpcclient.InferInput(IMAGE, [1, data.size], "UINT8")
    image.set_data_from_numpy(data.reshape(1, -1))
    with pytest.raises(InferenceServerException) as info:
        raw.infer(NAMES.embed, [image])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_wrong_dtype_gets_invalid_argument(client):
    raw = grpcclient.InferenceServerClient(client.url)
    floats = grpcclient.InferInput(IMAGE, [1, 16], "FP32")
    floats.set_data_from_numpy(np.zeros((1, 16), np.float32))
    with pytest.raises(InferenceServerException) as info:
        raw.infer(NAMES.embed, [floats])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "UINT8" in info.value.message()


def test_bad_requests_fail_alone_while_good_ones_in_flight_succeed(server, photos, jpegs, in_process):
    good = [jpegs[n] for n in ("astronaut", "chelsea", "coffee", "rocket")]
    bad = [make(photos, jpegs) for make, _ in BAD.values()]
    jobs = [("good", g) for g in good * 3] + [("bad", b) for b in bad * 2]
    np.random.default_rng(0).shuffle(jobs)
    clients = [EmbeddingClient(server.config.grpc_url, ENCODER) for _ in range(len(jobs))]

    def send(i):
        kind, data = jobs[i]
        try:
            return kind, data, clients[i].embed(data)
        except ServiceError as exc:
            return kind, data, exc

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(send, range(len(jobs))))
    for kind, data, outcome in results:
        if kind == "good":
            np.testing.assert_allclose(outcome, in_process(data), rtol=1e-5, atol=1e-4)
        else:
            assert isinstance(outcome, ServiceError)
    assert server.is_ready() and server.process.poll() is None


def test_client_names_a_dead_server_and_a_missing_model(server):
    from equiprobe.services.server import free_port

    with pytest.raises(ServiceError, match="no Triton server answers"):
        EmbeddingClient(f"127.0.0.1:{free_port()}", ENCODER).check()
    with pytest.raises(ServiceError, match="'clip_vit_b32_embed' is not loaded"):
        EmbeddingClient(server.config.grpc_url, "clip_vit_b32").check()
