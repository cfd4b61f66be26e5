"""Render a Triton model repository for one encoder, in either flavour: the orchestrator.

Three layers, no cycles: generic config helpers (model_config.py) <- one renderer per model
family (embed_models.py, expansion_models.py, detector_models.py) <- this module, which renders
the families an encoder serves and writes one manifest, NAME_encoder/equiprobe.json, that says
what was rendered and in which flavour; deploy and clients read it instead of re-deriving it.
Names and tensors come from contract.py; an INT8 build is staged and moved in by versioning.py,
as deploy stages its models.

`portable` runs DALI and ONNX Runtime in python-backend models on the CPU (this machine, CI);
`native` is for NVIDIA's Triton container on GPUs: the dali backend with mixed decoding and the
onnxruntime backend with the TensorRT accelerator. The artifacts (model.dali, model.onnx) are
the same for both.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .contract import CATALOG_SUFFIX, COMPOSITE, EMBEDDING, FEATURES, MANIFEST, ExpansionNames, ModelNames, parts_of
from .embed_models import embed_models, gate_models, write_embed_artifacts
from .encoders import EncoderSpec, get_encoder
from .expansion_models import expansion_models, style_net_digests, write_expansion_artifacts
from .export import ExportResult
from .files import sha256_of
from .model_config import FLAVOURS, Flavour, PlannedModel, ServingSpec, read_config, write_model
from .quantize import (METHOD, PRECISIONS, CpuTwin, Int8Options, ParityError, gate_failures, parity_figures,
                       options_record, parity_summary, quantize_encoder, trt_calibration_table,
                       write_trt_calibration)
from .versioning import move_models, staging_dir


# -- the whole repository -------------------------------------------------------------------

# NAME_embedK's onnx_sha256 where no export was made (plan_repository alone, the golden configs):
# the hash of an exported graph depends on the weights and the torch/ONNX versions, not on the code.
ONNX_SHA256_UNKNOWN = "<sha256 of the exported encoder graph: known after export>"


@dataclass
class BuildResult:
    encoder: str
    flavour: str
    repo: Path
    models: list[str]
    onnx_sha256: str
    export_max_abs_diff: float
    serving: dict = field(default_factory=dict)
    precision: str = "fp32"
    int8: Optional[dict] = None  # an INT8 build's calibration and parity figures (the manifest's "int8")


def build_repo(encoder: str, repo: Path, flavour: Flavour = "portable", weights: Optional[Path] = None,
               random_weights: bool = False, serving: ServingSpec = ServingSpec(),
               export: Optional[ExportResult] = None, catalogs: tuple[str, ...] = ("fine", "general", "groups"),
               style_nets: Optional[dict[str, Path]] = None, precision: str = "fp32",
               int8: Optional[Int8Build] = None) -> BuildResult:
    """Write image_gate, NAME_preprocess, NAME_encoder, NAME_versions, NAME_embed and, per catalog,
    the server-side expansion (NAME_embed31, NAME_embed_general, NAME_embed_groups) into `repo`,
    and the manifest; other models are kept. precision "int8" needs `int8` (calibration and
    parity images): the whole build is staged, gated by its parity (ParityError) and only then
    moved into `repo`, so a refused build leaves `repo` as it was."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; use 'portable' or 'native'")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use {' or '.join(repr(p) for p in PRECISIONS)}")
    if precision == "int8":
        if int8 is None:
            raise ValueError("an INT8 build needs calibration and parity images (services.repository.Int8Build)")
        return _build_int8(encoder, Path(repo), flavour, int8, weights=weights, random_weights=random_weights,
                           serving=serving, export=export, catalogs=catalogs, style_nets=style_nets)
    result, manifest = _render(encoder, Path(repo), flavour, weights, random_weights, serving, export, catalogs,
                               style_nets, precision)
    (Path(repo) / ModelNames(encoder).onnx / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return result


def plan_repository(encoder: str, flavour: Flavour = "portable", serving: ServingSpec = ServingSpec(),
                    catalogs: tuple[str, ...] = ("fine", "general", "groups"), onnx_sha256: str = ONNX_SHA256_UNKNOWN,
                    style_nets: Optional[dict[str, str]] = None, precision: str = "fp32") -> list[dict[str, PlannedModel]]:
    """What build_repo writes for each model (config.pbtxt, and model.py's source for the python
    backend), family by family, without exporting, serializing DALI pipelines or writing a file:
    a pure function of the encoder's spec, flavour, serving knobs, catalogs and precision. The
    export's sha256 (NAME_embedK's onnx_sha256) and the style networks' (NET: sha256) are known
    only from files: build_repo passes the real ones; left out, onnx_sha256 is ONNX_SHA256_UNKNOWN.
    services/golden_configs.py renders these into tests/golden/configs."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; use 'portable' or 'native'")
    spec = get_encoder(encoder)
    families = [gate_models(serving), embed_models(spec, flavour, serving, precision)]
    families += [expansion_models(spec, catalog, flavour, serving, onnx_sha256, style_nets, precision)
                 for catalog in catalogs]
    return families


def _render(encoder: str, repo: Path, flavour: Flavour, weights: Optional[Path], random_weights: bool,
            serving: ServingSpec, export: Optional[ExportResult], catalogs: tuple[str, ...],
            style_nets: Optional[dict[str, Path]], precision: str) -> tuple[BuildResult, dict]:
    spec = get_encoder(encoder)
    export = write_embed_artifacts(spec, repo, flavour, serving, lambda: spec.build(weights, random_weights), export)
    for catalog in catalogs:
        write_expansion_artifacts(spec, catalog, repo, flavour, serving, style_nets)
    families = plan_repository(encoder, flavour, serving, catalogs, export.sha256, style_net_digests(style_nets),
                               precision)
    for family in families:  # the configs last: a rescanning server finds each model's files in place
        for name, model in family.items():
            write_model(repo, name, model)
    models = [name for family in families for name in family]

    result = BuildResult(encoder=encoder, flavour=flavour, repo=repo, models=models,
                         onnx_sha256=export.sha256, export_max_abs_diff=export.max_abs_diff,
                         serving=asdict(serving), precision=precision)
    # onnx_sha256 is the exported graph's (services/export.py), before the crops wrapper: the
    # encoder's identity, recorded by stores and probes and checked by deploy (an INT8 build
    # keeps it: its parity gate is what lets FP32-trained probes run on it).
    manifest = {**asdict(result), "repo": str(repo), "dim": spec.dim, "catalogs": list(catalogs),
                "features_dim": spec.feature_dim, "feature_layout": spec.features.columns() if spec.features else [],
                "preprocess": asdict(spec.preprocess), "random_weights": random_weights,
                "renderer_sha256": renderer_fingerprint()}
    return result, manifest


# -- the INT8 encoder -------------------------------------------------------------------------

@dataclass
class Int8Build:
    """What an INT8 build is calibrated and judged on: encoded images, calibration from TRAIN
    sources, parity from held-out ones (never the same), and the detector's parity check
    (trainer/int8_parity.py; called with the encoder spec, the FP32 and the INT8 graph; returns
    figures with auc_fp32, auc_int8, accuracy_fp32, accuracy_int8, test_images, versions)."""

    calibration: list[bytes]
    parity: list[bytes]
    options: Int8Options = field(default_factory=Int8Options)
    detector_parity: Optional[Callable[[EncoderSpec, Path, Path], dict]] = None
    sources: dict = field(default_factory=dict)  # where the images come from, for the manifest


def _build_int8(encoder: str, repo: Path, flavour: Flavour, int8: Int8Build, **render) -> BuildResult:
    repo.parent.mkdir(parents=True, exist_ok=True)
    names, spec = ModelNames(encoder), get_encoder(encoder)
    with staging_dir(repo.parent, f".{repo.name}.int8-") as staging:
        result, manifest = _render(encoder, staging, flavour, precision="int8", **render)
        version = staging / names.onnx / "1"
        fp32 = staging / "fp32.onnx"  # outside every model directory; removed with the staging
        shutil.move(str(version / "model.onnx"), fp32)
        twin = CpuTwin(spec.preprocess, render["serving"].max_batch_size, render["serving"].dali_threads)
        calibration = twin(int8.calibration)
        record = {"method": METHOD, "calibration_images": len(calibration), "options": options_record(int8.options),
                  "sources": int8.sources}
        if flavour == "native":  # TensorRT calibrates from the table at engine build, on the GPU: not run here
            shutil.copy2(fp32, version / "model.onnx")
            table = write_trt_calibration(fp32, calibration, version / trt_calibration_table(encoder))
            record.update(method="TensorRT INT8 (onnxruntime backend), calibration table from " + METHOD.split(":")[0],
                          calibration_table=f"1/{table.name}", parity="not measured: TensorRT runs on the GPU only",
                          note=f"the onnxruntime backend reads {table.name} from trt_engine_cache_path "
                               f"({render['serving'].trt_cache_path}): deploy/k8s/triton.yaml's init container "
                               "copies it there before the server starts")
        else:
            quantized = quantize_encoder(fp32, version / "model.onnx", calibration)
            figures = parity_figures(fp32, quantized, twin(int8.parity))
            if int8.detector_parity is not None:
                figures["detector"] = int8.detector_parity(spec, fp32, quantized)
            failures = gate_failures(figures, int8.options.thresholds)
            record.update(parity=figures, thresholds=asdict(int8.options.thresholds), passed=not failures,
                          failures=failures, override=bool(failures) and int8.options.accept_parity_failure,
                          served_onnx_sha256=sha256_of(quantized))
            if failures and not int8.options.accept_parity_failure:
                raise ParityError(f"refusing the INT8 {encoder} encoder: " + "; ".join(failures)
                                  + f" ({parity_summary(figures)}); {repo} is unchanged", figures)
        fp32.unlink()
        manifest.update(repo=str(repo), int8=record)
        (version.parent / MANIFEST).write_text(json.dumps(manifest, indent=2))
        # Each staged model directory replaces its namesake in `repo` (NAME_encoder last).
        move_models(staging, repo, sorted((p.name for p in staging.iterdir()),
                                          key=lambda name: (name == names.onnx, name)), replace=True)
    result.repo = repo
    result.int8 = record
    return result


def renderer_fingerprint() -> str:
    """sha256 of the services package's source: what rendered a repository. A benchmark's cached
    repository from other code (other configs, graphs or pipelines) is rebuilt, not measured."""
    digest = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# -- what a repository serves -----------------------------------------------------------------

class RepositoryError(ValueError):
    """A repository that does not serve what was asked (`encoder`: for a composite, the part it
    lacks); `serving` says what it serves instead."""

    def __init__(self, message: str, serving: str, encoder: Optional[str] = None):
        super().__init__(message)
        self.serving = serving
        self.encoder = encoder


def served_encoders(repo: Path) -> list[str]:
    suffix = ModelNames("").embed
    return sorted(p.parent.name.removesuffix(suffix) for p in Path(repo).glob(f"{ModelNames('*').embed}/config.pbtxt"))


def read_manifest(repo: Path, encoder: str) -> dict:
    """NAME_encoder/equiprobe.json, written by build_repo."""
    path = Path(repo) / ModelNames(encoder).onnx / MANIFEST
    if not path.is_file() or not (Path(repo) / ModelNames(encoder).embed / "config.pbtxt").is_file():
        serving = ", ".join(f"'{s}'" for s in served_encoders(repo)) or "no encoder (no NAME_embed model)"
        raise RepositoryError(f"repository {repo} serves {serving}, not '{encoder}' (build it with "
                              f"`equiprobe build-repo`)", serving, encoder)
    return json.loads(path.read_text())


@dataclass
class ServedEncoder:
    repo: Path
    name: str
    dim: int
    onnx_sha256: str  # of the exported encoder graph (the manifest's), what stores and probes record
    flavour: str  # from the manifest: what build-repo rendered
    catalog_versions: dict[str, str]  # catalog -> catalog version of the repo's expansion (else this code's)
    embed_config: object  # NAME_embed's ModelConfig: the detector repeats its steps
    parts: list["ServedEncoder"] = None  # type: ignore[assignment]  # a composite's encoders, else [self]
    features: int = 0  # FEATURES' width from NAME_embed (0: the encoder taps no blocks); a composite: the sum

    def __post_init__(self):
        if self.parts is None:
            self.parts = [self]

    @property
    def staging_parent(self) -> Path:
        """Where a first deploy stages its model directories (services/versioning.py): the first
        part's NAME_embed, a model directory (a hidden directory in the repository would be taken
        for a model)."""
        return self.repo / ModelNames(self.parts[0].name).embed


def served_encoder(repo: Path, encoder: str) -> ServedEncoder:
    """What the repository serves for `encoder`, or for each part of a composite "A+B" (a joined
    store, clients/concat.py): the parts side by side, their embeddings and FEATURES concatenated.
    RepositoryError names the (first) part the repository lacks."""
    if COMPOSITE not in encoder:
        return served_part(repo, encoder)
    parts = [served_part(repo, name) for name in parts_of(encoder)]
    return ServedEncoder(Path(repo), encoder, sum(p.dim for p in parts), COMPOSITE.join(p.onnx_sha256 for p in parts),
                         parts[0].flavour, parts[0].catalog_versions, parts[0].embed_config, parts,
                         features=sum(p.features for p in parts))


def served_part(repo: Path, encoder: str) -> ServedEncoder:
    from .transforms import get_catalog

    names = ModelNames(encoder)
    manifest = read_manifest(repo, encoder)
    embed = read_config(Path(repo) / names.embed / "config.pbtxt")
    (embedding,) = [o for o in embed.output if o.name == EMBEDDING]
    features = [int(o.dims[0]) for o in embed.output if o.name == FEATURES]
    versions = {}
    for catalog in CATALOG_SUFFIX:
        expansion = Path(repo) / ExpansionNames(encoder, catalog).embed / "config.pbtxt"
        params = read_config(expansion).parameters if expansion.is_file() else {}
        versions[catalog] = (params["catalog_version"].string_value if "catalog_version" in params
                             else get_catalog(catalog).version)
    return ServedEncoder(Path(repo), encoder, int(embedding.dims[0]), manifest["onnx_sha256"], manifest["flavour"],
                         versions, embed, features=sum(features))
