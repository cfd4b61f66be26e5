import numpy as np
import pytest

from equiprobe.services.encoders import get_encoder
from equiprobe.services.contract import PIXELS as INPUT_NAME
from equiprobe.services.export import RELATIVE_TOLERANCE, export_encoder, random_normalized_batch
from equiprobe.services.runtime import ort_session


def export_and_check(name, tmp_path, **build):
    spec = get_encoder(name)
    result = export_encoder(spec, spec.build(**build), tmp_path / f"{name}.onnx")
    # Reported, and within the documented tolerance (float32 summation order differs).
    print(f"{name}: max abs diff {result.max_abs_diff:.3g} (embedding scale {result.reference_scale:.3g})")
    assert result.within_tolerance
    assert result.max_abs_diff <= RELATIVE_TOLERANCE * max(1.0, result.reference_scale)
    return spec, result


@pytest.mark.parametrize("name", ["squeezenet1_1", "open_nsfw"])
def test_exported_onnx_matches_source_and_has_dynamic_batch(name, tmp_path):
    spec, result = export_and_check(name, tmp_path)
    session = ort_session(result.path)
    assert session.get_inputs()[0].name == INPUT_NAME
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic batch axis
    for batch in (1, 5):
        out = session.run(None, {INPUT_NAME: random_normalized_batch(spec.preprocess, batch, seed=7)})[0]
        assert out.shape == (batch, spec.dim)


@pytest.mark.slow
def test_study_encoder_exports_with_random_weights(tmp_path):
    export_and_check("clip_vit_b32", tmp_path, random_weights=True)


@pytest.mark.parametrize("name", ["squeezenet1_1", "open_nsfw"])
def test_crops_wrapper_normalizes_like_the_encoders_preprocessing(name, tmp_path):
    """uint8 crops through the served NAME_encoder's wrapper == normalized crops through the plain encoder."""
    from equiprobe.services.onnx_wrappers import wrap_for_crops

    spec = get_encoder(name)
    pre = spec.preprocess
    plain = export_encoder(spec, spec.build(), tmp_path / "plain.onnx").path
    wrapped = wrap_for_crops(plain, tmp_path / "served.onnx", pre)
    crops = np.random.default_rng(0).integers(0, 256, (2, 4, pre.size, pre.size, 3)).astype(np.uint8)
    normalized = (crops.astype(np.float32) - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32)
    if pre.layout == "CHW":
        normalized = normalized.transpose(0, 1, 4, 2, 3)
    expected = ort_session(plain).run(None, {INPUT_NAME: normalized.reshape(8, *pre.output_shape)})[0]
    got = ort_session(wrapped).run(None, {INPUT_NAME: crops.reshape(8, pre.size, pre.size, 3)})[0]
    assert got.shape == (8, spec.dim)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
