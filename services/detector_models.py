"""The detector family: NAME_probe (the deployed probes) and NAME_detector (an ensemble).

    NAME_probe     ONNX (trainer/probe_export.py): EMBEDDING [D] -> TRANSFORM_PROBS, CATEGORY_PROBS,
                   MANIPULATION_SCORE, MANIPULATED and EMBEDDING_OUT (the input, passed through);
                   class names in label files, so Triton's classification extension answers
                   "score:index:label"
    NAME_detector  ensemble: NAME_embed's steps (for a composite "A+B", every part's side by side on
                   the same IMAGE) with NAME_probe as the last step

Rendered from what the repository serves (repository.ServedEncoder: flavour, NAME_embed's config)
and the deployed version's record (ProbeDeployment, NAME_probe/<v>/deployed.json). The files and
the version switch are versioning.py's (the pair NAME_probe / NAME_detector: `detector_pair`);
what to deploy is trainer/deploy.py's; this module only says what the configs are.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from tritonclient.grpc import model_config_pb2 as mc

from .contract import (CATEGORY_PROBS, DETECTOR_OUTPUTS, EMBEDDING, EMBEDDING_OUT, FEATURES, TRANSFORM_PROBS,
                       DetectorNames, detector_outputs, probe_inputs)
from .model_config import ServingSpec, ensemble_config, onnx_config, string_parameters, tensor, tensor_of
from .versioning import HISTORY, VersionedPair

LABEL_FILES = {TRANSFORM_PROBS: "transform_labels.txt", CATEGORY_PROBS: "category_labels.txt"}
# The names each model directory reads through NAME_probe/.selected: name there -> name in the selection.
PROBE_LINKS = {"config.pbtxt": "probe.pbtxt", **{f: f for f in LABEL_FILES.values()}, HISTORY: HISTORY}
DETECTOR_LINKS = {"config.pbtxt": "detector.pbtxt", **{f: f for f in LABEL_FILES.values()}}


def detector_pair(names: DetectorNames) -> VersionedPair:
    return VersionedPair(names.probe, names.detector, PROBE_LINKS, DETECTOR_LINKS, "probe_version")


@dataclass(kw_only=True)
class ProbeDeployment:
    """One NAME_probe version: what was deployed, for what, and how MANIPULATED is decided. Its
    JSON (`as_json`, the fields in this order) is the version's deployed.json; `from_json` reads
    one, an older version's too (the fields with defaults were added later)."""

    model: str  # NAME_probe
    version: int
    replaced: Optional[int] = None  # the version it replaced when it was deployed
    deployed_at: Optional[str] = None
    encoder: str
    dim: int  # the served embedding's width (a composite's: the parts' sum)
    encoder_onnx_sha256: str
    features: bool = False  # the probe reads FEATURES beside the embedding
    features_dim: int = 0
    catalog_versions: dict  # task -> catalog version the probes were trained on (general: the repository's)
    detector_task: str = "fine"  # whose catalog's rows TRANSFORM_PROBS are: fine or detect
    classes: list  # TRANSFORM_PROBS' labels
    categories: list  # CATEGORY_PROBS' labels
    category_source: str
    parity_max_abs_diff: Optional[float] = None  # ONNX Runtime vs torch
    threshold: float  # MANIPULATED = MANIPULATION_SCORE >= threshold
    target_fpr: Optional[float] = None  # what the threshold was chosen for (None: given)
    calibration: Optional[dict] = None  # None: deployed before calibration, the raw 1 - P(identity)
    probes: dict = field(default_factory=dict)  # task -> {"path", "record"}: the deployed probes

    def as_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, record: dict) -> "ProbeDeployment":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})


def selection_files(served, names: DetectorNames, meta: ProbeDeployment) -> dict[str, str]:
    """A selection's files for the version `meta` (versioning.select adds the history)."""
    from google.protobuf import text_format

    labels = {TRANSFORM_PROBS: meta.classes, CATEGORY_PROBS: meta.categories}
    return {"probe.pbtxt": text_format.MessageToString(probe_config(served, meta)),
            "detector.pbtxt": text_format.MessageToString(detector_config(served, names, meta)),
            **{LABEL_FILES[output]: "\n".join(values) + "\n" for output, values in labels.items()}}


def _outputs(meta: ProbeDeployment, embedding: str) -> list:
    """The probe's outputs (embedding = EMBEDDING_OUT) or the detector's (embedding = EMBEDDING)."""
    outputs = []
    for spec in detector_outputs(len(meta.classes), len(meta.categories), meta.dim, embedding):
        output = tensor_of(spec, is_input=False)
        if spec.name in LABEL_FILES:  # read from the model directory, next to config.pbtxt
            output.label_filename = LABEL_FILES[spec.name]
        outputs.append(output)
    return outputs


def _parameters(meta: ProbeDeployment) -> dict:
    """What clients can read over gRPC (get_model_config) about the deployed probes: among them the
    threshold MANIPULATED applies, the score it applies to (a calibrated P(edited); a version
    deployed before calibration served the raw 1 - P(identity)) and the calibration's parameters."""
    calibration = meta.calibration or {"kind": "none", "score": "1 - P(identity)"}
    return {"encoder": meta.encoder, "dim": meta.dim, "onnx_sha256": meta.encoder_onnx_sha256,
            "catalog_version": meta.catalog_versions[meta.detector_task],  # fine or detect
            "category_source": meta.category_source,
            "probe_model": meta.model, "probe_version": meta.version,
            "threshold": repr(meta.threshold), "target_fpr": meta.target_fpr,
            "score": calibration.get("score", "1 - P(identity)"),
            "calibration": json.dumps({k: v for k, v in calibration.items() if k not in ("fitted_on",
                                      "cross_validated_log_loss")}, separators=(",", ":"))}


def probe_config(served, meta: ProbeDeployment) -> mc.ModelConfig:
    # A tiny model beside the encoder on the same cores: one thread.
    serving = ServingSpec(max_batch_size=served.embed_config.max_batch_size, ort_threads=1)
    inputs = [tensor(i.name, mc.TYPE_FP32, [i.dim]) for i in served_probe_inputs(served, meta.features)]
    config = onnx_config(meta.model, inputs, _outputs(meta, EMBEDDING_OUT), served.flavour, serving)
    if served.flavour == "portable":
        config.backend = "python"  # model.py (services/python_models/onnx_encoder.py) is in each version
    config.version_policy.specific.versions.append(meta.version)
    string_parameters(config, **_parameters(meta))
    return config


def served_probe_inputs(served, features: bool) -> list:
    """NAME_probe's inputs for the deployed probe: each part's EMBEDDING, and its FEATURES where
    the probe reads them (features: the probe was trained on a store's FEATURES too)."""
    parts = served.parts
    return probe_inputs([p.dim for p in parts], [p.features for p in parts] if features else [])


def _internal(tensor_name: str, ensemble_inputs: set[str], suffix: str) -> str:
    """A NAME_embed tensor inside the detector: inputs stay; the embedding becomes internal (the
    probe passes it on as EMBEDDING); a composite's parts get a suffix, so they share no tensor."""
    if tensor_name in ensemble_inputs:
        return tensor_name
    return (tensor_name.lower() if tensor_name in (EMBEDDING, FEATURES) else tensor_name) + suffix


def embed_steps(served) -> tuple[list, list]:
    """NAME_embed's ensemble steps (a composite's parts side by side on the same IMAGE) as steps of
    a larger ensemble, with their EMBEDDING and FEATURES internal (lower case, a composite's with a
    suffix per part), and each part's scope (ensemble inputs, suffix) for `_internal`: what the
    detector and the matcher (services/match_models.py) put in front of their last step."""
    composite = len(served.parts) > 1
    steps, scopes = [], []  # scopes: each part's (ensemble inputs, suffix)
    for i, part in enumerate(served.parts):
        scopes.append(({t.name for t in part.embed_config.input}, f"_{i}" if composite else ""))
        steps += [(s.model_name, {k: _internal(v, *scopes[i]) for k, v in s.input_map.items()},
                   {k: _internal(v, *scopes[i]) for k, v in s.output_map.items()})
                  for s in part.embed_config.ensemble_scheduling.step]
    return steps, scopes


def unread_outputs_dropped(steps: list, last_step_reads: set[str]) -> list:
    """Triton refuses an ensemble with a tensor no step reads: a last step without FEATURES leaves
    the encoders' FEATURES unmapped."""
    read = {t for _, step_in, _ in steps for t in step_in.values()} | last_step_reads
    return [(model, step_in, {k: v for k, v in step_out.items() if v in read}) for model, step_in, step_out in steps]


def detector_config(served, names: DetectorNames, meta: ProbeDeployment) -> mc.ModelConfig:
    """NAME_embed's ensemble (same IMAGE input, same steps) with the probe as a last step. The
    encoders' embeddings go to the probe, and EMBEDDING comes back from the probe's pass-through
    (see trainer/probe_export.py: Triton prunes the steps behind an unrequested ensemble output)."""
    embed = served.embed_config
    steps, scopes = embed_steps(served)
    probe_in = {p.name: _internal(p.source, *scopes[p.part]) for p in served_probe_inputs(served, meta.features)}
    probe_outputs = {**{name: name for name in DETECTOR_OUTPUTS}, EMBEDDING_OUT: EMBEDDING}
    steps = unread_outputs_dropped(steps, set(probe_in.values()))
    steps.append((names.probe, probe_in, probe_outputs))
    config = ensemble_config(names.detector, embed.max_batch_size, inputs=list(embed.input),
                             outputs=_outputs(meta, EMBEDDING), steps=steps)
    string_parameters(config, **_parameters(meta))
    return config
