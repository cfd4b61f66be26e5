"""Both flavours render from one spec, and every config.pbtxt parses with Triton's schema."""

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from equiprobe.services.contract import GATE, ExpansionNames, ModelNames
from equiprobe.services.model_config import read_config
from equiprobe.services.repository import build_repo
from equiprobe.services.contract import EMBEDDING, PIXELS, ROWS


@pytest.fixture(scope="module")
def native_repo(tmp_path_factory):
    path = tmp_path_factory.mktemp("native")
    build_repo("squeezenet1_1", path, "native")
    return path


def configs(repo):
    return {p.parent.name: read_config(p) for p in sorted(repo.glob("*/config.pbtxt"))}


def test_portable_configs_parse_and_use_python_backend(repo):
    names = ModelNames("squeezenet1_1")
    parsed = configs(repo)
    expansions = [ExpansionNames("squeezenet1_1", c) for c in ("fine", "general", "groups")]
    assert set(parsed) == {GATE, names.preprocess, names.onnx, names.versions, names.embed,
                           *[m for e in expansions for m in (e.inputs, e.expand, e.onnx, e.embed)]}
    assert parsed[names.preprocess].backend == "python" and parsed[names.onnx].backend == "python"
    assert (repo / names.preprocess / "1" / "model.dali").stat().st_size > 0
    assert (repo / names.onnx / "1" / "model.onnx").stat().st_size > 0
    image = parsed[names.preprocess].input[0]
    assert image.data_type == mc.TYPE_UINT8 and list(image.dims) == [-1] and image.allow_ragged_batch
    embed = parsed[names.embed]
    assert embed.platform == "ensemble"
    assert [s.model_name for s in embed.ensemble_scheduling.step] == [GATE, names.preprocess, names.onnx]
    gate = parsed[GATE]
    assert gate.backend == "python" and gate.parameters["max_request_bytes"].string_value == str(64 << 20)
    assert embed.output[0].name == EMBEDDING and list(embed.output[0].dims) == [512]


def test_native_configs_parse_and_target_gpu_backends(native_repo):
    names = ModelNames("squeezenet1_1")
    parsed = configs(native_repo)
    pre, enc = parsed[names.preprocess], parsed[names.onnx]
    assert pre.backend == "dali" and pre.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert enc.backend == "onnxruntime" and enc.default_model_filename == "model.onnx"
    (trt,) = enc.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    assert trt.parameters["trt_engine_cache_enable"] == "true"
    assert list(enc.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert not (native_repo / names.preprocess / "1" / "model.py").exists()
    fine = ExpansionNames("squeezenet1_1", "fine")
    assert parsed[fine.expand].backend == "dali" and parsed[fine.onnx].backend == "onnxruntime"
    assert parsed[fine.inputs].backend == "python"  # host work (hashing, glyphs) in both flavours
    assert parsed[GATE].backend == "python"  # Pillow reads headers and converts GIF/AVIF/HEIC in both
    assert [s.model_name for s in parsed[fine.embed].ensemble_scheduling.step][:2] == [GATE, fine.inputs]
    assert list(parsed[fine.embed].output[0].dims) == [-1, 512]  # 31 rows, or the R rows ROWS asks for
    rows_in = {i.name: i for i in parsed[fine.versions].input}[ROWS]
    assert rows_in.data_type == mc.TYPE_INT32 and not rows_in.optional  # the inputs model always sends it
    assert {i.name: i for i in parsed[fine.embed].input}[ROWS].optional
    assert b"mixed" in (native_repo / fine.expand / "1" / "model.dali").read_bytes()


@pytest.mark.parametrize("flavour", ["portable", "native"])
def test_one_encoder_model_serves_every_ensemble(flavour, repo, native_repo):
    """NAME_encoder is the only model with the encoder's weights: NAME_embed calls it, and every
    catalog's expansion reaches it through NAME_versions."""
    path = repo if flavour == "portable" else native_repo
    names, parsed = ModelNames("squeezenet1_1"), configs(path)
    weights = [p.parent.parent.name for p in path.glob("*/1/model.onnx")]
    assert weights == [names.onnx]
    assert [s.model_name for s in parsed[names.embed].ensemble_scheduling.step][-1] == names.onnx
    for catalog in ("fine", "general", "groups"):
        steps = parsed[ExpansionNames("squeezenet1_1", catalog).embed].ensemble_scheduling.step
        assert steps[-1].model_name == names.versions
    versions = parsed[names.versions]
    assert versions.parameters["encoder_model"].string_value == names.onnx
    assert int(versions.parameters["encoder_max_batch_size"].string_value) <= parsed[names.onnx].max_batch_size
    encoder_in = parsed[names.onnx].input[0]
    assert encoder_in.name == PIXELS and encoder_in.data_type == mc.TYPE_UINT8 and list(encoder_in.dims) == [227, 227, 3]


def test_both_flavours_expose_identical_ensembles(repo, native_repo):
    portable, native = configs(repo), configs(native_repo)
    for name, config in portable.items():
        if config.platform == "ensemble":
            assert config == native[name], name


def test_schema_check_rejects_a_bad_config():
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x"\nmax_batch_size: 8\nbatchsize_typo: 3\n', mc.ModelConfig())
    with pytest.raises(text_format.ParseError):
        text_format.Parse('input { name: "I" data_type: TYPE_BYTES8 }', mc.ModelConfig())


def test_unknown_flavour_is_refused(tmp_path):
    with pytest.raises(ValueError, match="flavour"):
        build_repo("squeezenet1_1", tmp_path, "cuda")  # type: ignore[arg-type]


def test_serving_knobs_reach_the_encoder_config():
    """build-repo's batching and threading flags land in NAME_encoder's config (portable), and the
    defaults are the measured ones: no added queue delay, no spinning ONNX Runtime threads."""
    from equiprobe.services.embed_models import encoder_config
    from equiprobe.services.encoders import get_encoder
    from equiprobe.services.model_config import ServingSpec

    spec, names = get_encoder("squeezenet1_1"), ModelNames("squeezenet1_1")
    default = encoder_config(spec, names, "portable", ServingSpec())
    assert default.dynamic_batching.max_queue_delay_microseconds == 0
    assert default.parameters["allow_spinning"].string_value == "0"
    assert default.parameters["micro_batch"].string_value == "1"
    assert default.parameters["intra_op_threads"].string_value == "1"
    assert default.parameters["parallel_runs"].string_value == "2"
    tuned = encoder_config(spec, names, "portable", ServingSpec(max_batch_size=16, queue_delay_us=500, ort_threads=3,
                                                                ort_spinning=True, encoder_micro_batch=4,
                                                                encoder_threads=2, encoder_parallel_runs=3))
    assert tuned.max_batch_size == 16
    assert tuned.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(tuned.dynamic_batching.preferred_batch_size) == [8, 16]
    assert tuned.parameters["allow_spinning"].string_value == "1"
    assert tuned.parameters["intra_op_threads"].string_value == "2"  # the encoder's, not ort_threads
    assert tuned.parameters["micro_batch"].string_value == "4"
    assert tuned.parameters["parallel_runs"].string_value == "3"


@pytest.mark.parametrize("micro_batch,parallel_runs", [(1, 1), (3, 1), (1, 2), (3, 3)])
def test_micro_batches_give_the_whole_batch_embeddings(repo, micro_batch, parallel_runs):
    """NAME_encoder's micro-batched runs (services/runtime.py) equal one run over the whole batch,
    and running micro-batches side by side on threads gives exactly the one-at-a-time result, in order."""
    import numpy as np

    from equiprobe.services.contract import EMBEDDING, PIXELS
    from equiprobe.services.runtime import OnnxRunner, run_in_micro_batches

    runner = OnnxRunner(repo / ModelNames("squeezenet1_1").onnx / "1" / "model.onnx", 1, micro_batch, parallel_runs)
    shape = runner.session.get_inputs()[0].shape[1:]
    crops = np.random.default_rng(3).integers(0, 256, (8, *shape)).astype(np.uint8)
    whole = runner.session.run([EMBEDDING], {PIXELS: crops})[0]
    parts = runner({PIXELS: crops}, [EMBEDDING])[0]
    assert parts.shape == whole.shape
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())
    one_at_a_time = run_in_micro_batches(runner.session, [EMBEDDING], {PIXELS: crops}, micro_batch)[0]
    np.testing.assert_array_equal(parts, one_at_a_time)
