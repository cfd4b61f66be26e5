"""Server-side expansion models: one upload, every transformation and the encoder in Triton.

For an encoder NAME and a catalog (fine -> suffix "31", general -> "_general"):

    CATALOG_inputs     python:    IMAGE, SEED -> PARAMS, KEY, host-rendered inputs (kernels, glyphs...)
    NAME_expandK       DALI:      IMAGE, PARAMS, inputs -> VERSIONS [K, C, S, S]
    NAME_encoderK      ONNX:      PIXELS [K, C, S, S] -> EMBEDDINGS [K, D]
    NAME_embedK        ensemble:  IMAGE, SEED (optional) -> EMBEDDINGS [K, D], PARAMS [K, W], KEY

The inputs model is python in both flavours (hashing, parameter draws and glyph rendering are
host work); the DALI and ONNX steps follow the flavour like NAME_embed's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nvidia.dali import types
from tritonclient.grpc import model_config_pb2 as mc

from .encoders import EncoderSpec
from .export import INPUT_NAME as PIXELS, VERSIONS_OUTPUT as EMBEDDINGS, wrap_for_versions
from .pipelines import INPUT_NAME as IMAGE
from .repository import (Flavour, ModelNames, ServingSpec, dynamic_batching, encoder_config, ensemble_config,
                         instances, python_model, string_parameters, tensor, write_config)
from .transforms import get_catalog
from .transforms.catalog import AUX_DIMS, AUX_TYPES, Catalog
from .transforms.expand import PARAMS, serialize_expand

SUFFIX = {"fine": "31", "general": "_general"}
SEED, KEY, VERSIONS = "SEED", "KEY", "VERSIONS"
_TRITON_TYPE = {types.FLOAT: mc.TYPE_FP32, types.UINT8: mc.TYPE_UINT8}


@dataclass
class ExpansionNames:
    encoder: str
    catalog: str

    @property
    def inputs(self) -> str:
        return f"{self.catalog}_inputs"

    @property
    def expand(self) -> str:
        return f"{self.encoder}_expand{SUFFIX[self.catalog]}"

    @property
    def onnx(self) -> str:
        return f"{self.encoder}_encoder{SUFFIX[self.catalog]}"

    @property
    def embed(self) -> str:
        return f"{self.encoder}_embed{SUFFIX[self.catalog]}"


def _aux_tensors(catalog: Catalog, is_input: bool) -> list:
    return [tensor(name, _TRITON_TYPE[AUX_TYPES[local][0]], AUX_DIMS[local], ragged=is_input and -1 in AUX_DIMS[local],
                   is_input=is_input) for name, local, _ in catalog.aux_inputs]


def _params_tensor(catalog: Catalog, is_input: bool):
    return tensor(PARAMS, mc.TYPE_FP32, [len(catalog.transforms), catalog.width], is_input=is_input)


def inputs_config(catalog: Catalog, names: ExpansionNames, serving: ServingSpec) -> mc.ModelConfig:
    seed = tensor(SEED, mc.TYPE_INT64, [1])
    seed.optional = True
    config = mc.ModelConfig(
        name=names.inputs, max_batch_size=serving.max_batch_size,
        input=[tensor(IMAGE, mc.TYPE_UINT8, [-1], ragged=True), seed],
        output=[_params_tensor(catalog, False), tensor(KEY, mc.TYPE_STRING, [1], is_input=False),
                *_aux_tensors(catalog, False)],
        dynamic_batching=dynamic_batching(serving, preferred=False),
        instance_group=instances("portable"),  # host work in both flavours
    )
    string_parameters(config, catalog=catalog.name, catalog_version=catalog.version)
    return config


def expand_config(spec: EncoderSpec, catalog: Catalog, names: ExpansionNames, flavour: Flavour,
                  serving: ServingSpec) -> mc.ModelConfig:
    config = mc.ModelConfig(
        name=names.expand, max_batch_size=serving.max_batch_size,
        input=[tensor(IMAGE, mc.TYPE_UINT8, [-1], ragged=True), _params_tensor(catalog, True),
               *_aux_tensors(catalog, True)],
        output=[tensor(VERSIONS, mc.TYPE_FP32, [len(catalog.transforms), *spec.preprocess.output_shape],
                       is_input=False)],
        dynamic_batching=dynamic_batching(serving, preferred=False),
        instance_group=instances(flavour),
    )
    if flavour == "native":
        config.backend = "dali"
        config.default_model_filename = "model.dali"
        string_parameters(config, num_threads=serving.dali_threads)
    else:
        string_parameters(config, pipeline="model.dali", num_threads=serving.dali_threads)
    return config


def versions_encoder_config(spec: EncoderSpec, catalog: Catalog, names: ExpansionNames, flavour: Flavour,
                            serving: ServingSpec) -> mc.ModelConfig:
    config = encoder_config(spec, ModelNames(spec.name), flavour, serving)
    k = len(catalog.transforms)
    config.name = names.onnx
    # K versions per image: keep the batch of images small enough for one encoder call.
    config.max_batch_size = max(1, serving.max_batch_size // 4)
    del config.dynamic_batching.preferred_batch_size[:]
    config.input[0].CopyFrom(tensor(PIXELS, mc.TYPE_FP32, [k, *spec.preprocess.output_shape]))
    config.output[0].CopyFrom(tensor(EMBEDDINGS, mc.TYPE_FP32, [k, spec.dim], is_input=False))
    return config


def embed_versions_config(spec: EncoderSpec, catalog: Catalog, names: ExpansionNames,
                          serving: ServingSpec) -> mc.ModelConfig:
    seed = tensor(SEED, mc.TYPE_INT64, [1])
    seed.optional = True
    aux_map = {name: name.lower() for name, _, _ in catalog.aux_inputs}
    return ensemble_config(
        names.embed, max(1, serving.max_batch_size // 4),
        inputs=[tensor(IMAGE, mc.TYPE_UINT8, [-1]), seed],
        outputs=[tensor(EMBEDDINGS, mc.TYPE_FP32, [len(catalog.transforms), spec.dim], is_input=False),
                 _params_tensor(catalog, False), tensor(KEY, mc.TYPE_STRING, [1], is_input=False)],
        steps=[(names.inputs, {IMAGE: IMAGE, SEED: SEED}, {PARAMS: PARAMS, KEY: KEY, **aux_map}),
               (names.expand, {IMAGE: IMAGE, PARAMS: PARAMS, **aux_map}, {VERSIONS: "versions"}),
               (names.onnx, {PIXELS: "versions"}, {EMBEDDINGS: EMBEDDINGS})],
    )


def build_expansion(spec: EncoderSpec, catalog_name: str, repo: Path, flavour: Flavour, serving: ServingSpec,
                    encoder_onnx: Path) -> list[str]:
    """Render the four models of one catalog's expansion for one encoder; returns their names."""
    catalog = get_catalog(catalog_name)
    names = ExpansionNames(spec.name, catalog_name)
    version = lambda model: repo / model / "1"  # noqa: E731
    for model in (names.inputs, names.expand, names.onnx, names.embed):
        version(model).mkdir(parents=True, exist_ok=True)

    inputs = inputs_config(catalog, names, serving)
    python_model(inputs, "transform_inputs.py", version(names.inputs))
    serialize_expand(catalog, version(names.expand) / "model.dali", "gpu" if flavour == "native" else "cpu",
                     serving.max_batch_size, serving.dali_threads, pre=spec.preprocess)
    expand = expand_config(spec, catalog, names, flavour, serving)
    wrap_for_versions(encoder_onnx, version(names.onnx) / "model.onnx", len(catalog.transforms))
    encoder = versions_encoder_config(spec, catalog, names, flavour, serving)
    if flavour == "portable":
        python_model(expand, "dali_pipeline.py", version(names.expand))
        python_model(encoder, "onnx_encoder.py", version(names.onnx))
    for model, config in ((names.inputs, inputs), (names.expand, expand), (names.onnx, encoder),
                          (names.embed, embed_versions_config(spec, catalog, names, serving))):
        write_config(repo / model, config)
    return [names.inputs, names.expand, names.onnx, names.embed]
