import numpy as np
import pytest

from services.encoders import get_encoder
from services.export import INPUT_NAME, RELATIVE_TOLERANCE, export_encoder, random_normalized_batch
from services.runtime import ort_session


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
