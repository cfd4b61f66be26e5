"""NAME_embed31 / NAME_embed_general on the real server: one upload, every version embedded."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from equiprobe.services.encoders import get_encoder
from equiprobe.services.contract import ExpansionNames
from equiprobe.services.runtime import ort_session
from equiprobe.services.transforms import get_catalog, image_key
from equiprobe.services.transforms.expand import Expander
from equiprobe.services.contract import EMBEDDINGS, IMAGE, KEY, PARAMS, PIXELS, SEED, UPLOADS

from .conftest import ENCODER


def infer(server, model, data: bytes, seed=None, uploads=None):
    client = grpcclient.InferenceServerClient(server.config.grpc_url)
    array = np.frombuffer(data, np.uint8).reshape(1, -1)
    inputs = [grpcclient.InferInput(IMAGE, list(array.shape), "UINT8")]
    inputs[0].set_data_from_numpy(array)
    if seed is not None:
        inputs.append(grpcclient.InferInput(SEED, [1, 1], "INT64"))
        inputs[1].set_data_from_numpy(np.array([[seed]], np.int64))
    if uploads is not None:
        inputs.append(grpcclient.InferInput(UPLOADS, [1, 1], "BOOL"))
        inputs[-1].set_data_from_numpy(np.array([[uploads]]))
    result = client.infer(model, inputs)
    return result.as_numpy(EMBEDDINGS)[0], result.as_numpy(PARAMS)[0], result.as_numpy(KEY)[0, 0].decode()


@pytest.fixture(scope="module")
def in_process(repo):
    """The repository's own expansion pipeline and its one encoder (every version a crop), run in this process."""
    def run(catalog_name, data, seed, uploads=False):
        catalog, names = get_catalog(catalog_name), ExpansionNames(ENCODER, catalog_name)
        expander = Expander(repo / names.expand / "1" / "model.dali", catalog, 1, 2)
        versions, params = expander.expand([np.frombuffer(data, np.uint8)], [image_key(data)], seed, uploads)
        session = ort_session(repo / names.onnx / "1" / "model.onnx", 2)
        return session.run(None, {PIXELS: versions[0]})[0], params[0]
    return run


@pytest.mark.parametrize("catalog_name", ["fine", "general"])
def test_served_expansion_equals_in_process_pipeline(server, jpegs, in_process, catalog_name):
    catalog = get_catalog(catalog_name)
    model = ExpansionNames(ENCODER, catalog_name).embed
    data = jpegs["chelsea"]
    embeddings, params, key = infer(server, model, data, seed=3)
    assert embeddings.shape == (len(catalog.transforms), get_encoder(ENCODER).dim)
    assert key == image_key(data)
    np.testing.assert_array_equal(params, catalog.params(key, 3))
    expected, expected_params = in_process(catalog_name, data, 3)
    np.testing.assert_array_equal(params, expected_params)
    np.testing.assert_allclose(embeddings, expected, rtol=1e-5, atol=1e-4)
    # Every transformation moves the embedding away from the identity version's.
    distance = np.linalg.norm(embeddings[1:] - embeddings[0], axis=1)
    assert (distance > 0.05 * np.linalg.norm(embeddings[0])).all()


def test_uploads_re_encode_every_version_as_a_jpeg_of_drawn_quality(server, jpegs, in_process):
    model, data = ExpansionNames(ENCODER, "fine").embed, jpegs["astronaut"]
    made, made_params, _ = infer(server, model, data, seed=1, uploads=False)
    uploaded, params, key = infer(server, model, data, seed=1, uploads=True)
    np.testing.assert_array_equal(params, get_catalog("fine").params(key, 1, uploads=True))
    quality = params[:, -1]
    assert ((60 <= quality) & (quality <= 95)).all() and len(set(quality)) > 5 and not made_params[:, -1].any()
    np.testing.assert_array_equal(params[:, :-1], made_params[:, :-1])  # the same transformations
    expected, _ = in_process("fine", data, 1, uploads=True)
    np.testing.assert_allclose(uploaded, expected, rtol=1e-5, atol=1e-4)
    # The upload's compression moves the embedding, less than a transformation does.
    moved = np.linalg.norm(uploaded - made, axis=1) / np.linalg.norm(made, axis=1)
    assert (moved > 1e-3).all() and moved[0] < np.linalg.norm(made[1:] - made[0], axis=1).mean() / np.linalg.norm(made[0])


def test_seed_is_optional_and_changes_parameters(server, jpegs):
    model = ExpansionNames(ENCODER, "fine").embed
    default, params0, _ = infer(server, model, jpegs["coffee"])
    explicit, params0b, _ = infer(server, model, jpegs["coffee"], seed=0)
    np.testing.assert_array_equal(params0, params0b)
    np.testing.assert_allclose(default, explicit, rtol=1e-5, atol=1e-4)
    other, params7, _ = infer(server, model, jpegs["coffee"], seed=7)
    assert not np.array_equal(params0, params7)
    np.testing.assert_allclose(other[0], default[0], rtol=1e-5, atol=1e-4)  # identity does not depend on it
    assert np.abs(other[1:] - default[1:]).max() > 1.0


def test_bad_images_fail_only_their_own_expansion_request(server, jpegs):
    model = ExpansionNames(ENCODER, "fine").embed
    jobs = [jpegs["astronaut"], b"", jpegs["astronaut"][:4000], jpegs["rocket"], b"GIF89a not really"]

    def send(data):
        try:
            return infer(server, model, data)
        except InferenceServerException as exc:
            return exc

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(send, jobs))
    assert results[0][0].shape == (31, 512) and results[3][0].shape == (31, 512)
    for bad in (results[1], results[2], results[4]):
        assert isinstance(bad, InferenceServerException)
        assert bad.status() == "StatusCode.INVALID_ARGUMENT" and IMAGE in bad.message()
    assert server.is_ready()


def test_wrong_seed_dtype_is_refused(server, jpegs):
    client = grpcclient.InferenceServerClient(server.config.grpc_url)
    array = np.frombuffer(jpegs["coins"], np.uint8).reshape(1, -1)
    image = grpcclient.InferInput(IMAGE, list(array.shape), "UINT8")
    image.set_data_from_numpy(array)
    seed = grpcclient.InferInput(SEED, [1, 1], "FP32")
    seed.set_data_from_numpy(np.array([[1.5]], np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer(ExpansionNames(ENCODER, "fine").embed, [image, seed])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
