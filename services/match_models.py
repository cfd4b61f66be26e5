"""The match family: NAME_match (a deployed index of known images) and NAME_matcher (an ensemble).

    NAME_match    python (python_models/match.py, services/matching.py), versioned: EMBEDDING [D]
                  (+ FEATURES [F] where the index's references hold them) -> MATCH_KEYS [k],
                  MATCH_SIMILARITIES [k], COPY, EDITED, TRANSFORMATION, CATEGORY, EDIT_SCORE [1];
                  its version directory is the index directory, copied whole
    NAME_matcher  ensemble: NAME_embed's steps (image_gate -> NAME_preprocess -> NAME_encoder) with
                  NAME_match as the last step; IMAGE -> the same outputs

NAME_match runs in the python backend: in the portable flavour on the CPU (faiss-cpu and ONNX
Runtime; the `server` extra), in the native one as a KIND_GPU instance whose faiss index is moved
onto its GPU (faiss_device gpu: faiss-gpu, which deploy/Dockerfile.server installs; the probe stays
on ONNX Runtime's CPU, one small matrix product a batch). Rendered from what the repository serves (repository.ServedEncoder) and the
deployed version's record (`meta`, NAME_match/<v>/deployed.json, written by
trainer/match_deploy.py). The files and the version switch are versioning.py's (the pair
NAME_match / NAME_matcher: `match_pair`).
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from .contract import EMBEDDING, FEATURES, MATCH_OUTPUTS, MatchNames, match_inputs, match_outputs
from .detector_models import _internal, embed_steps, unread_outputs_dropped
from .model_config import ServingSpec, dynamic_batching, ensemble_config, instances, string_parameters, tensor_of
from .versioning import HISTORY, VersionedPair

FAISS_DEVICE = {"portable": "cpu", "native": "gpu"}  # where NAME_match's faiss searches, by flavour

# The names each model directory reads through NAME_match/.selected: name there -> name in the selection.
MATCH_LINKS = {"config.pbtxt": "match.pbtxt", HISTORY: HISTORY}
MATCHER_LINKS = {"config.pbtxt": "matcher.pbtxt"}


def match_pair(names: MatchNames) -> VersionedPair:
    return VersionedPair(names.match, names.matcher, MATCH_LINKS, MATCHER_LINKS, "index_version")


def selection_files(served, names: MatchNames, meta: dict) -> dict[str, str]:
    """A selection's files for the version `meta` (versioning.select adds the history)."""
    from google.protobuf import text_format

    return {"match.pbtxt": text_format.MessageToString(match_config(served, names, meta)),
            "matcher.pbtxt": text_format.MessageToString(matcher_config(served, names, meta))}


def _parameters(meta: dict) -> dict:
    """What clients read over gRPC (get_model_config) about the deployed index."""
    probe = meta.get("probe") or {}
    return {"encoder": meta["encoder"], "dim": meta["dim"], "onnx_sha256": meta["encoder_onnx_sha256"],
            "features_dim": meta["features_dim"], "k": meta["k"], "copy_threshold": repr(meta["copy_threshold"]),
            "copy_threshold_source": meta["copy_threshold_source"], "index_version": meta["version"],
            "index_count": meta["count"], "index_kind": meta["kind"], "index_sha256": meta["index_sha256"],
            "probe": "yes" if probe else "no",
            "edited_threshold": repr(probe["edited_threshold"]) if probe else "none"}


def match_config(served, names: MatchNames, meta: dict) -> mc.ModelConfig:
    serving = ServingSpec(max_batch_size=served.embed_config.max_batch_size)
    config = mc.ModelConfig(name=names.match, backend="python", max_batch_size=serving.max_batch_size,
                            input=[tensor_of(s) for s in match_inputs(meta["dim"], meta["features_dim"])],
                            output=[tensor_of(s, is_input=False) for s in match_outputs(meta["k"])],
                            dynamic_batching=dynamic_batching(serving, preferred=False),
                            instance_group=instances(served.flavour))
    config.version_policy.specific.versions.append(meta["version"])
    string_parameters(config, intra_op_threads=1, faiss_device=FAISS_DEVICE[served.flavour],
                      **_parameters(meta))  # a small probe beside the encoder
    return config


def matcher_config(served, names: MatchNames, meta: dict) -> mc.ModelConfig:
    """NAME_embed's ensemble (same IMAGE input, same steps) with NAME_match as a last step."""
    steps, scopes = embed_steps(served)
    match_in = {EMBEDDING: _internal(EMBEDDING, *scopes[0])}
    if meta["features_dim"]:
        match_in[FEATURES] = _internal(FEATURES, *scopes[0])
    steps = unread_outputs_dropped(steps, set(match_in.values()))
    steps.append((names.match, match_in, {name: name for name in MATCH_OUTPUTS}))
    config = ensemble_config(names.matcher, served.embed_config.max_batch_size,
                             inputs=list(served.embed_config.input),
                             outputs=[tensor_of(s, is_input=False) for s in match_outputs(meta["k"])], steps=steps)
    string_parameters(config, **_parameters(meta))
    return config
