"""The Triton contract: every served model family's model names and tensors, stated once.

Standard library only (no torch, DALI, ONNX or tritonclient), so that the renderers, the
python-backend models, the clients, deploy and the tests all take names from here, and a
client-only install (`equiprobe[client]`) can know what to send without the server's libraries.

Families, for an encoder NAME (see the README's glossary):

    image_gate       IMAGE -> image                    one per repository, in front of every upload
    embed            NAME_embed = image_gate -> NAME_preprocess -> NAME_encoder
    expansion        NAME_embed31 | _general | _groups | _detect = image_gate -> CATALOG_inputs -> NAME_expandK
                     [-> style_NET -> NAME_style_resize] -> NAME_versions -> NAME_encoder
    detector         NAME_detector = NAME_embed's steps -> NAME_probe
    match            NAME_matcher = NAME_embed's steps -> NAME_match (a known-image index, versioned)

NAME_encoder is the only model that holds the encoder's weights: NAME_embed calls it in the
ensemble, every expansion through NAME_versions (one python model per encoder that picks ROWS
and sends the crops to NAME_encoder), and NAME_detector through NAME_embed's steps.

Model names are built here alone (the names classes) and parsed back here (encoder_of); NAME may
be a composite "A+B" (compose, parts_of). tests/test_contract_names.py keeps it so.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- tensors ------------------------------------------------------------------------------------
IMAGE = "IMAGE"  # encoded upload bytes, UINT8 [-1] per image
CHECKED = "image"  # inside ensembles: the gate's checked bytes (a PPM where DALI cannot decode the upload)
PIXELS = "PIXELS"  # NAME_encoder's input: UINT8 crops [S, S, 3], the encoder's size and channel order
EMBEDDING = "EMBEDDING"  # FP32 [D] per image
EMBEDDINGS = "EMBEDDINGS"  # FP32 [R, D] per image: one row per catalog version picked by ROWS
# The detector's early-layer statistics (services/encoders/taps.py), where the encoder declares taps:
FEATURES = "FEATURES"  # FP32 [F] per image (NAME_encoder, NAME_embed); FP32 [R, F] from the expansions
SEED = "SEED"  # INT64 [1], optional: the parameter draws' seed (default 0)
ROWS = "ROWS"  # INT32 [R], optional: which versions to encode (default all)
UPLOADS = "UPLOADS"  # BOOL [1], optional: re-encode each version as a JPEG upload
PARAMS = "PARAMS"  # FP32 [K, W + 1]: each version's parameters, the upload quality last
KEY = "KEY"  # BYTES [1]: the image's key (what its parameter draws are seeded with)
VERSIONS = "VERSIONS"  # UINT8 [K, S, S, 3]: the expansion's crops for the encoder
EXTRA = "EXTRA"  # UINT8 [N, S, S, 3]: style networks' crops, appended after the K versions
CANVAS = "CANVAS"  # UINT8 [224, 224, 3]: the untouched canvas, a style network's input
STYLED = "STYLED"  # UINT8 [224, 224, 3]: a style network's output

# The detector's outputs (NAME_probe and NAME_detector).
TRANSFORM_PROBS = "TRANSFORM_PROBS"
CATEGORY_PROBS = "CATEGORY_PROBS"
# FP32 [1]: P(edited | upload) for an upload a priori as likely edited as not: the fine probe's
# log P(edited)/P(identity) calibrated on validation sources (trainer/calibration.py); not 1 - P(identity)
MANIPULATION_SCORE = "MANIPULATION_SCORE"
MANIPULATED = "MANIPULATED"  # BOOL [1]: MANIPULATION_SCORE >= the deployed threshold (config parameter "threshold")
EMBEDDING_OUT = "EMBEDDING_OUT"  # the probe's input, passed through
DETECTOR_OUTPUTS = (TRANSFORM_PROBS, CATEGORY_PROBS, MANIPULATION_SCORE, MANIPULATED)

# NAME_match's and NAME_matcher's outputs (matching an upload against an index of known images).
MATCH_KEYS = "MATCH_KEYS"  # BYTES [k]: the keys of the k nearest known images, best first ("" where none)
MATCH_SIMILARITIES = "MATCH_SIMILARITIES"  # FP32 [k]: their cosine similarities to the upload
COPY = "COPY"  # BOOL [1]: the best match's similarity >= the deployed copy threshold
EDITED = "EDITED"  # BOOL [1]: a copy, and the reference-aware probe's EDITED_SCORE >= its threshold
TRANSFORMATION = "TRANSFORMATION"  # BYTES [1]: the probe's most likely transformation of the best match ("" if none)
CATEGORY = "CATEGORY"  # BYTES [1]: that transformation's category ("" if none)
EDIT_SCORE = "EDIT_SCORE"  # FP32 [1]: the probe's EDITED_SCORE (-1 without a probe, or for a non-copy)
MATCH_OUTPUTS = (MATCH_KEYS, MATCH_SIMILARITIES, COPY, EDITED, TRANSFORMATION, CATEGORY, EDIT_SCORE)
# The reference-aware probe's ONNX graph (probe/match_probe.onnx in an index; run inside NAME_match):
QUERY = "QUERY"  # FP32 [n, W]: the upload's [embedding, features]
REFERENCE = "REFERENCE"  # FP32 [n, W]: the matched known image's, from the index's references.npy
EDITED_SCORE = "EDITED_SCORE"  # FP32 [n, 1]: how likely QUERY is an edited REFERENCE (besides TRANSFORM_PROBS)

GATE = "image_gate"
MANIFEST = "equiprobe.json"  # in NAME_encoder: what build-repo rendered, the flavour included
EXPANSION_MANIFEST = "versions.json"  # in NAME_embedK: row names, catalog version, style-network hashes
CATALOG_SUFFIX = {"fine": "31", "general": "_general", "groups": "_groups", "detect": "_detect"}
# A composite encoder "A+B" (clients/concat.py joins the parts' stores; NAME_detector runs every part).
COMPOSITE = "+"


def compose(parts) -> str:
    """The composite encoder's name for PARTS, in order ("A+B"); one part is that encoder."""
    return COMPOSITE.join(parts)


def parts_of(encoder: str) -> list[str]:
    """The encoders a composite "A+B" joins, in order ([encoder] for one encoder)."""
    return encoder.split(COMPOSITE)


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a served model, as a client sees it (dims without the batch dimension)."""

    name: str
    dtype: str  # Triton's name: UINT8, INT32, INT64, FP32, BOOL, BYTES
    dims: tuple[int, ...]
    optional: bool = False


# -- names ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelNames:
    """The embed family of one encoder."""

    encoder: str

    @property
    def preprocess(self) -> str:
        return f"{self.encoder}_preprocess"

    @property
    def onnx(self) -> str:
        """NAME_encoder, the one model with the encoder's weights."""
        return f"{self.encoder}_encoder"

    @property
    def versions(self) -> str:
        """NAME_versions: the expansions' step in front of NAME_encoder (ROWS, style rows)."""
        return f"{self.encoder}_versions"

    @property
    def embed(self) -> str:
        return f"{self.encoder}_embed"


@dataclass(frozen=True)
class ExpansionNames:
    """One catalog's expansion for one encoder."""

    encoder: str
    catalog: str

    def __post_init__(self):
        if self.catalog not in CATALOG_SUFFIX:
            raise ValueError(f"unknown catalog {self.catalog!r}; known: {', '.join(CATALOG_SUFFIX)}")

    @property
    def inputs(self) -> str:
        return f"{self.catalog}_inputs"

    @property
    def expand(self) -> str:
        return f"{self.encoder}_expand{CATALOG_SUFFIX[self.catalog]}"

    @property
    def versions(self) -> str:
        return ModelNames(self.encoder).versions

    @property
    def onnx(self) -> str:
        return ModelNames(self.encoder).onnx

    @property
    def embed(self) -> str:
        return f"{self.encoder}_embed{CATALOG_SUFFIX[self.catalog]}"

    @property
    def style_resize(self) -> str:
        return f"{self.encoder}_style_resize"

    @staticmethod
    def style(net: str) -> str:
        return f"style_{net}"


@dataclass(frozen=True)
class DetectorNames:
    encoder: str

    @property
    def probe(self) -> str:
        return f"{self.encoder}_probe"

    @property
    def detector(self) -> str:
        return f"{self.encoder}_detector"


@dataclass(frozen=True)
class MatchNames:
    encoder: str

    @property
    def match(self) -> str:
        """NAME_match: python, the deployed index (versioned): EMBEDDING [, FEATURES] -> MATCH_OUTPUTS."""
        return f"{self.encoder}_match"

    @property
    def matcher(self) -> str:
        """NAME_matcher: ensemble, NAME_embed's steps with NAME_match as the last step."""
        return f"{self.encoder}_matcher"


def encoder_models(encoder: str) -> tuple[str, ...]:
    """Every model name the classes above build for ENCODER (not the shared image_gate,
    CATALOG_inputs and style_NET)."""
    names, catalogs = ModelNames(encoder), [ExpansionNames(encoder, c) for c in CATALOG_SUFFIX]
    return (names.preprocess, names.onnx, names.versions, names.embed, *(e.expand for e in catalogs),
            *(e.embed for e in catalogs), catalogs[0].style_resize, DetectorNames(encoder).probe,
            DetectorNames(encoder).detector, MatchNames(encoder).match, MatchNames(encoder).matcher)


_NAME = "NAME"
# What follows "ENCODER_" in an encoder's model names ("embed", "embed31", "detector", ...), longest first.
ROLES = tuple(sorted((m[len(_NAME) + 1:] for m in encoder_models(_NAME)), key=len, reverse=True))


def encoder_of(model: str) -> tuple[str | None, str]:
    """A served model's name parsed back to (encoder, role): role is what follows "ENCODER_" (one of
    ROLES: "embed", "embed31", "detector", ...), so ("squeezenet1_1", "embed31") for
    squeezenet1_1_embed31 and ("A+B", "detector") for A+B_detector. Models shared by every encoder
    (image_gate, CATALOG_inputs, style_NET) give (None, the model's name)."""
    if model == GATE or model in {ExpansionNames(_NAME, c).inputs for c in CATALOG_SUFFIX}:
        return None, model
    for role in ROLES:
        encoder = model[:-len(role) - 1]
        if model.endswith("_" + role) and encoder and all(parts_of(encoder)):
            return encoder, role
    if model.startswith(ExpansionNames.style("")) and model != ExpansionNames.style(""):
        return None, model
    raise ValueError(f"{model!r} is no model name of the contract (roles: {', '.join(sorted(ROLES))})")


# -- what a client sends and gets -------------------------------------------------------------

def embed_inputs() -> tuple[TensorSpec, ...]:
    return (TensorSpec(IMAGE, "UINT8", (-1,)),)


def embed_outputs(dim: int, features: int = 0) -> tuple[TensorSpec, ...]:
    """EMBEDDING [D], and FEATURES [F] where the encoder taps early blocks (features > 0)."""
    return (TensorSpec(EMBEDDING, "FP32", (dim,)),) + ((TensorSpec(FEATURES, "FP32", (features,)),) if features else ())


def expansion_inputs() -> tuple[TensorSpec, ...]:
    return (TensorSpec(IMAGE, "UINT8", (-1,)), TensorSpec(SEED, "INT64", (1,), optional=True),
            TensorSpec(ROWS, "INT32", (-1,), optional=True), TensorSpec(UPLOADS, "BOOL", (1,), optional=True))


def expansion_outputs(versions: int, params_width: int, dim: int, features: int = 0) -> tuple[TensorSpec, ...]:
    """EMBEDDINGS [R, D] (R = the rows asked for), PARAMS [K, W + 1] (K = the catalog's versions), KEY,
    and FEATURES [R, F] where the encoder taps early blocks."""
    return (TensorSpec(EMBEDDINGS, "FP32", (-1, dim)), TensorSpec(PARAMS, "FP32", (versions, params_width)),
            TensorSpec(KEY, "BYTES", (1,))) + ((TensorSpec(FEATURES, "FP32", (-1, features)),) if features else ())


def detector_outputs(classes: int, categories: int, dim: int, embedding: str = EMBEDDING) -> tuple[TensorSpec, ...]:
    """NAME_detector's outputs (embedding = EMBEDDING) or NAME_probe's (embedding = EMBEDDING_OUT)."""
    return (TensorSpec(TRANSFORM_PROBS, "FP32", (classes,)), TensorSpec(CATEGORY_PROBS, "FP32", (categories,)),
            TensorSpec(MANIPULATION_SCORE, "FP32", (1,)), TensorSpec(MANIPULATED, "BOOL", (1,)),
            TensorSpec(embedding, "FP32", (dim,)))


@dataclass(frozen=True)
class ProbeInput:
    """One input of NAME_probe: which part's NAME_encoder output feeds it (EMBEDDING or FEATURES)."""

    name: str
    part: int  # the encoder's index in a composite "A+B" (0 for one encoder)
    source: str  # EMBEDDING or FEATURES
    dim: int


def probe_inputs(part_dims: list[int], part_features: list[int] = ()) -> list[ProbeInput]:
    """NAME_probe's inputs, in the order the probe concatenates them, which is a store's column
    order: every part's EMBEDDING, then (for a probe that reads them) the FEATURES of every part
    that has them. One encoder: EMBEDDING [, FEATURES]; a composite: EMBEDDING_0, EMBEDDING_1 [,
    FEATURES_0, FEATURES_1]."""
    suffix = (lambda i: "") if len(part_dims) == 1 else (lambda i: f"_{i}")
    inputs = [ProbeInput(EMBEDDING + suffix(i), i, EMBEDDING, d) for i, d in enumerate(part_dims)]
    return inputs + [ProbeInput(FEATURES + suffix(i), i, FEATURES, f) for i, f in enumerate(part_features) if f]


def match_inputs(dim: int, features: int = 0) -> tuple[TensorSpec, ...]:
    """NAME_match's inputs: EMBEDDING [D], and FEATURES [F] where the index's references hold them."""
    return (TensorSpec(EMBEDDING, "FP32", (dim,)),) + ((TensorSpec(FEATURES, "FP32", (features,)),) if features else ())


def match_outputs(k: int) -> tuple[TensorSpec, ...]:
    """NAME_match's and NAME_matcher's outputs: the k best matches and the verdict on the best."""
    return (TensorSpec(MATCH_KEYS, "BYTES", (k,)), TensorSpec(MATCH_SIMILARITIES, "FP32", (k,)),
            TensorSpec(COPY, "BOOL", (1,)), TensorSpec(EDITED, "BOOL", (1,)),
            TensorSpec(TRANSFORMATION, "BYTES", (1,)), TensorSpec(CATEGORY, "BYTES", (1,)),
            TensorSpec(EDIT_SCORE, "FP32", (1,)))
