"""The embed family of one encoder (names and tensors: services/contract.py).

    image_gate       python:        upload -> checked bytes DALI can decode (services/uploads.py)
    NAME_preprocess  DALI pipeline: checked bytes -> uint8 crops PIXELS [S, S, 3]
    NAME_encoder     ONNX model:    PIXELS -> normalize -> encoder -> EMBEDDING [D]; the only model
                     with the encoder's weights
    NAME_versions    python (BLS):  an expansion's VERSIONS [K, S, S, 3] (+ EXTRA) and ROWS ->
                     NAME_encoder -> EMBEDDINGS [R, D], shared by every catalog's expansion
    NAME_embed       ensemble:      IMAGE -> image_gate -> NAME_preprocess -> NAME_encoder -> EMBEDDING

The DALI step hands on uint8 crops and NAME_encoder normalizes (services/onnx_wrappers.py), so
every caller of NAME_encoder, the expansions included, sends it the same thing.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
from tritonclient.grpc import model_config_pb2 as mc

from .contract import (CHECKED, EMBEDDING, EMBEDDINGS, EXTRA, FEATURES, GATE, IMAGE, PIXELS, ROWS, VERSIONS,
                       ModelNames, embed_inputs, embed_outputs)
from .encoders import EncoderSpec
from .export import ExportResult, export_encoder
from .model_config import (Flavour, PlannedModel, ServingSpec, dali_config, dynamic_batching, ensemble_config,
                           instances, onnx_config, python_backend, string_parameters, tensor, tensor_of)
from .onnx_wrappers import wrap_for_crops
from .pipelines import serialize_preprocess
from .quantize import trt_calibration_table


def crop_dims(spec: EncoderSpec) -> list[int]:
    return list(spec.preprocess.crop_shape)


def gate_config(serving: ServingSpec) -> mc.ModelConfig:
    """image_gate: python in both flavours (Pillow reads headers and converts what DALI cannot)."""
    config = mc.ModelConfig(name=GATE, max_batch_size=serving.max_batch_size,
                            input=[tensor(IMAGE, mc.TYPE_UINT8, [-1], ragged=True)],
                            output=[tensor(IMAGE, mc.TYPE_UINT8, [-1], is_input=False)],
                            dynamic_batching=dynamic_batching(serving, preferred=False),
                            instance_group=instances("portable"))
    string_parameters(config, max_request_bytes=serving.max_request_mb << 20, max_pixels=serving.max_pixels)
    return config


def preprocess_config(spec: EncoderSpec, names: ModelNames, flavour: Flavour,
                      serving: ServingSpec) -> mc.ModelConfig:
    return dali_config(names.preprocess, [tensor(IMAGE, mc.TYPE_UINT8, [-1], ragged=True)],
                       [tensor(PIXELS, mc.TYPE_UINT8, crop_dims(spec), is_input=False)], flavour, serving)


def encoder_config(spec: EncoderSpec, names: ModelNames, flavour: Flavour,
                   serving: ServingSpec, precision: str = "fp32") -> mc.ModelConfig:
    """precision "int8": portable serves the QDQ graph build_repo writes (services/quantize.py);
    native keeps the FP32 graph and has TensorRT build an INT8 engine from the calibration table
    shipped beside it (the onnxruntime backend reads the table from trt_engine_cache_path)."""
    config = onnx_config(names.onnx, [tensor(PIXELS, mc.TYPE_UINT8, crop_dims(spec))],
                         [tensor_of(t, is_input=False) for t in embed_outputs(spec.dim, spec.feature_dim)],
                         flavour, serving)
    if flavour == "portable":
        string_parameters(config, intra_op_threads=serving.encoder_threads, micro_batch=serving.encoder_micro_batch,
                          parallel_runs=serving.encoder_parallel_runs)
    if precision == "int8" and flavour == "native":
        for trt in config.optimization.execution_accelerators.gpu_execution_accelerator:
            trt.parameters["precision_mode"] = "INT8"
            trt.parameters["int8_calibration_table_name"] = trt_calibration_table(spec.name)
            trt.parameters["int8_use_native_calibration_table"] = "0"  # ONNX Runtime's table, not TensorRT's
    elif precision == "int8":
        string_parameters(config, precision="int8")
    return config


def versions_config(spec: EncoderSpec, names: ModelNames, serving: ServingSpec) -> mc.ModelConfig:
    """NAME_versions: python in both flavours (BLS); ragged inputs, so that the requests of
    catalogs with different K (and style rows) are batched together."""
    crops = [-1, *crop_dims(spec)]
    extra = tensor(EXTRA, mc.TYPE_UINT8, crops, ragged=True)
    extra.optional = True  # only with style networks
    config = mc.ModelConfig(
        name=names.versions, max_batch_size=max(1, serving.max_batch_size // 4),
        input=[tensor(VERSIONS, mc.TYPE_UINT8, crops, ragged=True), extra, tensor(ROWS, mc.TYPE_INT32, [-1], ragged=True)],
        output=[tensor(EMBEDDINGS, mc.TYPE_FP32, [-1, spec.dim], is_input=False)]
        + ([tensor(FEATURES, mc.TYPE_FP32, [-1, spec.feature_dim], is_input=False)] if spec.features else []),
        dynamic_batching=dynamic_batching(serving, preferred=False),
        instance_group=instances("portable"))
    string_parameters(config, encoder_model=names.onnx, encoder_max_batch_size=serving.max_batch_size, dim=spec.dim,
                      features=spec.feature_dim)
    return config


def embed_config(spec: EncoderSpec, names: ModelNames, serving: ServingSpec) -> mc.ModelConfig:
    return ensemble_config(
        names.embed, serving.max_batch_size,
        inputs=[tensor_of(t) for t in embed_inputs()],
        outputs=[tensor_of(t, is_input=False) for t in embed_outputs(spec.dim, spec.feature_dim)],
        steps=[(GATE, {IMAGE: IMAGE}, {IMAGE: CHECKED}),
               (names.preprocess, {IMAGE: CHECKED}, {PIXELS: "pixels"}),
               (names.onnx, {PIXELS: "pixels"}, {t.name: t.name for t in embed_outputs(spec.dim, spec.feature_dim)})],
    )


def gate_models(serving: ServingSpec) -> dict[str, PlannedModel]:
    return {GATE: python_backend(gate_config(serving), "image_gate.py")}


def embed_models(spec: EncoderSpec, flavour: Flavour, serving: ServingSpec,
                 precision: str = "fp32") -> dict[str, PlannedModel]:
    """NAME_preprocess, NAME_encoder, NAME_versions and NAME_embed as rendered (configs and model.py
    sources; pure: no export, no DALI serialization). write_embed_artifacts writes the rest."""
    names = ModelNames(spec.name)
    configs = {names.preprocess: preprocess_config(spec, names, flavour, serving),
               names.onnx: encoder_config(spec, names, flavour, serving, precision),
               names.versions: versions_config(spec, names, serving),
               names.embed: embed_config(spec, names, serving)}
    models = {name: PlannedModel(config) for name, config in configs.items()}
    if flavour == "portable":
        models[names.preprocess] = python_backend(configs[names.preprocess], "dali_pipeline.py")
        models[names.onnx] = python_backend(configs[names.onnx], "onnx_encoder.py")
    models[names.versions] = python_backend(configs[names.versions], "versions_encoder.py")
    return models


def write_embed_artifacts(spec: EncoderSpec, repo: Path, flavour: Flavour, serving: ServingSpec, network,
                          export: Optional[ExportResult] = None) -> ExportResult:
    """The embed family's files but its configs and model.py (embed_models): NAME_preprocess's
    model.dali and NAME_encoder's model.onnx. Returns the export (its sha256 is the encoder's
    identity, recorded in stores and probes). model.onnx is the FP32 graph in every precision: an
    INT8 build (services/repository.py) quantizes it, or writes TensorRT's table beside it, after this."""
    names = ModelNames(spec.name)
    version = lambda model: repo / model / "1"  # noqa: E731
    for model in (names.preprocess, names.onnx, names.versions, names.embed):
        version(model).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if export is None:
            export = export_encoder(spec, network(), Path(tmp) / "exported.onnx")
        wrap_for_crops(export.path, version(names.onnx) / "model.onnx", spec.preprocess)
    serialize_preprocess(spec.preprocess, version(names.preprocess) / "model.dali",
                         device="gpu" if flavour == "native" else "cpu",
                         max_batch_size=serving.max_batch_size, num_threads=serving.dali_threads)
    return export


class InProcessEmbed:
    """NAME_embed's steps from a repository's own files (model.dali, model.onnx), run in this
    process: the reference the served embeddings are checked against, and the benchmark baseline."""

    def __init__(self, repo: Path, encoder: str, serving: ServingSpec = ServingSpec()):
        from .pipelines import CpuPreprocessor
        from .runtime import OnnxRunner

        names = ModelNames(encoder)
        self.preprocess = CpuPreprocessor(Path(repo) / names.preprocess / "1" / "model.dali",
                                          serving.max_batch_size, serving.dali_threads)
        self.encoder = OnnxRunner.served_encoder(Path(repo) / names.onnx / "1" / "model.onnx", serving)

    def __call__(self, encoded: list[np.ndarray]) -> np.ndarray:
        """Encoded images (uint8 byte arrays) -> embeddings [B, D], through the gate as served."""
        return self.outputs(encoded, [EMBEDDING])[0]

    def outputs(self, encoded: list[np.ndarray], names: Optional[list[str]] = None) -> list[np.ndarray]:
        """NAME_encoder's outputs for encoded images (EMBEDDING, and FEATURES where it has them)."""
        from .uploads import admit

        checked = [np.frombuffer(admit(np.asarray(e).tobytes()).data, np.uint8) for e in encoded]
        return self.encoder({PIXELS: self.preprocess.run(checked)}, names)
