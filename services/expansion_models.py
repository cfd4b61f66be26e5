"""Server-side expansion models: one upload, every transformation and the encoder in Triton.

For an encoder NAME and a catalog (fine -> suffix "31", general -> "_general", groups -> "_groups"):

    image_gate         python:    IMAGE -> checked bytes (services/uploads.py), shared with NAME_embed
    CATALOG_inputs     python:    IMAGE, SEED -> PARAMS, KEY, host-rendered inputs (kernels, glyphs...)
    NAME_expandK       DALI:      IMAGE, PARAMS, inputs -> VERSIONS uint8 [K, S, S, 3]
    NAME_versions      python:    VERSIONS (+ EXTRA), ROWS -> NAME_encoder (BLS) -> EMBEDDINGS [R, D]
    NAME_embedK        ensemble:  IMAGE, SEED, UPLOADS (optional) -> EMBEDDINGS [K, D], PARAMS [K, W + 1], KEY

NAME_versions and NAME_encoder belong to the embed family (services/embed_models.py): one
encoder model per encoder, shared by every catalog's expansion and by NAME_embed.

Uploads as they arrive: with UPLOADS true, each catalog version is re-encoded as a JPEG of a
quality drawn per (image, version) before the encoder sees it, as users' uploads are; the
quality is PARAMS' last column (0 without UPLOADS: the study's protocol). Style-network rows are
not re-encoded.

User-provided fast-neural-style networks add rows after the catalog's K: the expansion also
emits the untouched canvas, each `style_NET` model (ONNX) styles it, `NAME_style_resize`
(DALI) resizes and crops the styled canvases for the encoder, and NAME_versions appends them
(EXTRA). Versions travel between steps as uint8 crops; NAME_encoder normalizes.

Refresh: the optional ensemble input ROWS (INT32 [R], row indices, default all) has NAME_versions
send only those rows to the encoder, EMBEDDINGS [R, D] in that order; PARAMS and KEY stay whole. The inputs
model checks ROWS (a clear INVALID_ARGUMENT) and always hands the encoder an explicit ROWS. The
DALI expansion still renders every version: the encoder is the expensive step.
These are neural style transfer proper, unlike the catalog's reference-based stylization.

The inputs model is python in both flavours (hashing, parameter draws and glyph rendering are
host work); the DALI and ONNX steps follow the flavour like NAME_embed's. Each NAME_embedK
directory holds `versions.json`: the row names, catalog version and style-network hashes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from nvidia.dali import types
from tritonclient.grpc import model_config_pb2 as mc

from .contract import (CANVAS, CHECKED, EMBEDDINGS, EXPANSION_MANIFEST, EXTRA, FEATURES, GATE, IMAGE, KEY,
                       PARAMS, ROWS, SEED, STYLED, UPLOADS, VERSIONS, ExpansionNames, expansion_inputs,
                       expansion_outputs)
from .embed_models import crop_dims
from .encoders import EncoderSpec
from .files import sha256_of
from .model_config import (Flavour, PlannedModel, ServingSpec, dali_config, dynamic_batching, ensemble_config,
                           instances, onnx_config, python_backend, string_parameters, tensor, tensor_of)
from .onnx_wrappers import wrap_style_network
from .pipelines import CANVAS_SIZE
from .transforms import get_catalog
from .transforms.assets import write_bundle
from .transforms.catalog import AUX_DIMS, AUX_TYPES, Catalog
from .transforms.expand import serialize_expand, serialize_resize

BUNDLE = "assets"  # in CATALOG_inputs' version directory; the model reads its assets from here
_TRITON_TYPE = {types.FLOAT: mc.TYPE_FP32, types.UINT8: mc.TYPE_UINT8}


def _aux_tensors(catalog: Catalog, is_input: bool) -> list:
    return [tensor(name, _TRITON_TYPE[AUX_TYPES[local][0]], AUX_DIMS[local], ragged=is_input and -1 in AUX_DIMS[local],
                   is_input=is_input) for name, local, _ in catalog.aux_inputs]


def _params_tensor(catalog: Catalog, is_input: bool):
    return tensor(PARAMS, mc.TYPE_FP32, [len(catalog.transforms), catalog.params_width], is_input=is_input)


def inputs_config(catalog: Catalog, names: ExpansionNames, serving: ServingSpec, rows: int) -> mc.ModelConfig:
    config = mc.ModelConfig(
        name=names.inputs, max_batch_size=serving.max_batch_size,
        input=[tensor_of(t, ragged=t.name == IMAGE) for t in expansion_inputs()],
        output=[_params_tensor(catalog, False), tensor(KEY, mc.TYPE_STRING, [1], is_input=False),
                *_aux_tensors(catalog, False), tensor(ROWS, mc.TYPE_INT32, [-1], is_input=False)],
        dynamic_batching=dynamic_batching(serving, preferred=False),
        instance_group=instances("portable"),  # host work in both flavours
    )
    # rows: how many rows ROWS may pick from (the catalog's K plus any style networks' rows).
    string_parameters(config, catalog=catalog.name, catalog_version=catalog.version, rows=rows)
    return config


def canvas_tensor(name: str, is_input: bool):
    return tensor(name, mc.TYPE_UINT8, [CANVAS_SIZE, CANVAS_SIZE, 3], is_input=is_input)


def expand_config(spec: EncoderSpec, catalog: Catalog, names: ExpansionNames, flavour: Flavour,
                  serving: ServingSpec, emit_canvas: bool) -> mc.ModelConfig:
    outputs = [tensor(VERSIONS, mc.TYPE_UINT8, [len(catalog.transforms), *crop_dims(spec)], is_input=False)]
    if emit_canvas:
        outputs.append(canvas_tensor(CANVAS, is_input=False))
    inputs = [tensor(IMAGE, mc.TYPE_UINT8, [-1], ragged=True), _params_tensor(catalog, True),
              *_aux_tensors(catalog, True)]
    return dali_config(names.expand, inputs, outputs, flavour, serving)


def style_config(net: str, flavour: Flavour, serving: ServingSpec) -> mc.ModelConfig:
    return onnx_config(ExpansionNames.style(net), [canvas_tensor(CANVAS, True)],
                       [canvas_tensor(STYLED, False)], flavour, serving, tensorrt=False, preferred=False)


def styled_name(j: int) -> str:
    return f"STYLED_{j}"


def embed_versions_config(spec: EncoderSpec, catalog: Catalog, names: ExpansionNames,
                          serving: ServingSpec, nets: list[str]) -> mc.ModelConfig:
    aux_map = {name: name.lower() for name, _, _ in catalog.aux_inputs}
    expand_out = {VERSIONS: "versions", **({CANVAS: "canvas"} if nets else {})}
    steps = [(GATE, {IMAGE: IMAGE}, {IMAGE: CHECKED}),
             (names.inputs, {IMAGE: CHECKED, SEED: SEED, ROWS: ROWS, UPLOADS: UPLOADS},
              {PARAMS: PARAMS, KEY: KEY, ROWS: "rows", **aux_map}),
             (names.expand, {IMAGE: CHECKED, PARAMS: PARAMS, **aux_map}, expand_out)]
    encoder_in = {VERSIONS: "versions", ROWS: "rows"}
    if nets:
        steps += [(names.style(net), {CANVAS: "canvas"}, {STYLED: f"styled_{j}"})
                  for j, net in enumerate(nets)]
        steps.append((names.style_resize, {styled_name(j): f"styled_{j}" for j in range(len(nets))},
                      {VERSIONS: "extra"}))
        encoder_in[EXTRA] = "extra"
    steps.append((names.versions, encoder_in, {EMBEDDINGS: EMBEDDINGS, **({FEATURES: FEATURES} if spec.features else {})}))
    return ensemble_config(
        names.embed, max(1, serving.max_batch_size // 4),
        inputs=[tensor_of(t) for t in expansion_inputs()],
        outputs=[tensor_of(t, is_input=False)
                 for t in expansion_outputs(len(catalog.transforms), catalog.params_width, spec.dim, spec.feature_dim)],
        steps=steps,
    )


def row_fingerprints(catalog: Catalog, style_nets: dict[str, str]) -> list[str]:
    """One per EMBEDDINGS row: the catalog's (transforms.spec.fingerprint), then one per style
    network from its ONNX hash. A store's column is reusable where the fingerprint is equal."""
    styled = [hashlib.sha256(f"neural_style {net} {digest}".encode()).hexdigest()
              for net, digest in style_nets.items()]
    return catalog.fingerprints + styled


def expansion_rows(catalog: Catalog, style_nets: dict[str, str]) -> tuple[list[str], list[str]]:
    """EMBEDDINGS' row names and fingerprints: the catalog's, then one per style network (NET: sha256)."""
    nets = sorted(style_nets)
    return (catalog.class_names + [f"neural_style_{net}" for net in nets],
            row_fingerprints(catalog, {net: style_nets[net] for net in nets}))


def expansion_models(spec: EncoderSpec, catalog_name: str, flavour: Flavour, serving: ServingSpec, onnx_sha256: str,
                     style_nets: Optional[dict[str, str]] = None, precision: str = "fp32") -> dict[str, PlannedModel]:
    """One catalog's expansion for one encoder (and any style networks, NET: sha256 of its ONNX file)
    as rendered: configs and model.py sources, pure (no DALI serialization, no files).
    `precision` is NAME_encoder's (fp32 or int8), published for the stores to record."""
    catalog = get_catalog(catalog_name)
    names = ExpansionNames(spec.name, catalog_name)
    style_nets = dict(style_nets or {})
    nets = sorted(style_nets)
    models = {names.inputs: python_backend(inputs_config(catalog, names, serving, len(catalog.transforms) + len(nets)),
                                           "transform_inputs.py"),
              names.expand: PlannedModel(expand_config(spec, catalog, names, flavour, serving, emit_canvas=bool(nets)))}
    dali_models, onnx_models = [names.expand], []
    for net in nets:
        models[names.style(net)] = PlannedModel(style_config(net, flavour, serving))
        onnx_models.append(names.style(net))
    if nets:
        models[names.style_resize] = PlannedModel(dali_config(
            names.style_resize, [canvas_tensor(styled_name(j), True) for j in range(len(nets))],
            [tensor(VERSIONS, mc.TYPE_UINT8, [len(nets), *crop_dims(spec)], is_input=False)],
            flavour, serving))
        dali_models.append(names.style_resize)
    embed = embed_versions_config(spec, catalog, names, serving, nets)
    rows, fingerprints = expansion_rows(catalog, style_nets)
    # What a bulk client must record in its store, readable over gRPC with get_model_config.
    string_parameters(embed, encoder=spec.name, dim=spec.dim, onnx_sha256=onnx_sha256, precision=precision,
                      features_dim=spec.feature_dim,
                      feature_layout=json.dumps(spec.features.columns() if spec.features else []),
                      catalog=catalog.name, catalog_version=catalog.version, rows=json.dumps(rows),
                      style_nets=json.dumps({net: style_nets[net] for net in nets}),
                      row_fingerprints=json.dumps(fingerprints), params_width=catalog.params_width,
                      row_labels=json.dumps(catalog.labels.tolist()), classes=json.dumps(list(catalog.classes)),
                      row_splits=json.dumps([t.split for t in catalog.transforms]))
    models[names.embed] = PlannedModel(embed)
    if flavour == "portable":
        for model in dali_models:
            models[model] = python_backend(models[model].config, "dali_pipeline.py")
        for model in onnx_models:
            models[model] = python_backend(models[model].config, "onnx_encoder.py")
    return models


def style_net_digests(style_nets: Optional[dict[str, Path]]) -> dict[str, str]:
    return {net: sha256_of(path) for net, path in sorted((style_nets or {}).items())}


def write_expansion_artifacts(spec: EncoderSpec, catalog_name: str, repo: Path, flavour: Flavour,
                              serving: ServingSpec, style_nets: Optional[dict[str, Path]] = None) -> None:
    """One catalog's expansion files but its configs and model.py (expansion_models): the inputs
    model's asset bundle, the DALI pipelines, the wrapped style networks and versions.json."""
    catalog = get_catalog(catalog_name)
    names = ExpansionNames(spec.name, catalog_name)
    nets = sorted(style_nets or {})
    version = lambda model: repo / model / "1"  # noqa: E731
    device = "gpu" if flavour == "native" else "cpu"
    for model in (names.inputs, names.expand):
        version(model).mkdir(parents=True, exist_ok=True)
    write_bundle(version(names.inputs) / BUNDLE)  # fonts, icons, style references: no matplotlib/skimage at serve time
    serialize_expand(catalog, version(names.expand) / "model.dali", device, serving.max_batch_size,
                     serving.dali_threads, pre=spec.preprocess, emit_canvas=bool(nets))
    for net in nets:
        version(names.style(net)).mkdir(parents=True, exist_ok=True)
        wrap_style_network(style_nets[net], version(names.style(net)) / "model.onnx")
    if nets:
        version(names.style_resize).mkdir(parents=True, exist_ok=True)
        serialize_resize([styled_name(j) for j in range(len(nets))], spec.preprocess,
                         version(names.style_resize) / "model.dali", device, serving.max_batch_size,
                         serving.dali_threads)
    version(names.embed).mkdir(parents=True, exist_ok=True)
    digests = style_net_digests(style_nets)
    rows, fingerprints = expansion_rows(catalog, digests)
    (repo / names.embed / EXPANSION_MANIFEST).write_text(json.dumps({
        "catalog": catalog.name, "catalog_version": catalog.version, "rows": rows,
        "style_nets": digests, "row_fingerprints": fingerprints,
    }, indent=2))
