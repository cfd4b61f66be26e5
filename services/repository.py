"""Render a Triton model repository for one encoder, in either flavour: the orchestrator.

Three layers, no cycles: generic config helpers (model_config.py) <- one renderer per model
family (embed_models.py, expansion_models.py, detector_models.py) <- this module, which renders
the families an encoder serves and writes one manifest, NAME_encoder/equiprobe.json, that says
what was rendered and in which flavour; deploy and clients read it instead of re-deriving it.
Names and tensors come from contract.py.

`portable` runs DALI and ONNX Runtime in python-backend models on the CPU (this machine, CI);
`native` is for NVIDIA's Triton container on GPUs: the dali backend with mixed decoding and the
onnxruntime backend with the TensorRT accelerator. The artifacts (model.dali, model.onnx) are
the same for both.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from .contract import CATALOG_SUFFIX, EMBEDDING, MANIFEST, ExpansionNames, ModelNames
from .embed_models import render_embed, render_gate
from .encoders import get_encoder
from .expansion_models import build_expansion
from .export import ExportResult
from .model_config import FLAVOURS, Flavour, ServingSpec, read_config


# -- the whole repository -------------------------------------------------------------------

@dataclass
class BuildResult:
    encoder: str
    flavour: str
    repo: Path
    models: list[str]
    onnx_sha256: str
    export_max_abs_diff: float
    serving: dict = field(default_factory=dict)


def build_repo(encoder: str, repo: Path, flavour: Flavour = "portable", weights: Optional[Path] = None,
               random_weights: bool = False, serving: ServingSpec = ServingSpec(),
               export: Optional[ExportResult] = None, catalogs: tuple[str, ...] = ("fine", "general", "groups"),
               style_nets: Optional[dict[str, Path]] = None) -> BuildResult:
    """Write image_gate, NAME_preprocess, NAME_encoder, NAME_versions, NAME_embed and, per catalog,
    the server-side expansion (NAME_embed31, NAME_embed_general, NAME_embed_groups) into `repo`,
    and the manifest; other models are kept."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; use 'portable' or 'native'")
    spec = get_encoder(encoder)
    names = ModelNames(encoder)
    repo = Path(repo)
    embed_models, export = render_embed(spec, repo, flavour, serving, lambda: spec.build(weights, random_weights),
                                        export)
    models = render_gate(repo, serving) + embed_models
    for catalog in catalogs:
        models += build_expansion(spec, catalog, repo, flavour, serving, export.sha256, style_nets)

    result = BuildResult(encoder=encoder, flavour=flavour, repo=repo, models=models,
                         onnx_sha256=export.sha256, export_max_abs_diff=export.max_abs_diff,
                         serving=asdict(serving))
    # onnx_sha256 is the exported graph's (services/export.py), before the crops wrapper: the
    # encoder's identity, recorded by stores and probes and checked by deploy.
    manifest = {**asdict(result), "repo": str(repo), "dim": spec.dim, "catalogs": list(catalogs),
                "preprocess": asdict(spec.preprocess), "random_weights": random_weights,
                "renderer_sha256": renderer_fingerprint()}
    (repo / names.onnx / MANIFEST).write_text(json.dumps(manifest, indent=2))
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
    """A repository that does not serve what was asked; `serving` says what it serves instead."""

    def __init__(self, message: str, serving: str):
        super().__init__(message)
        self.serving = serving


def served_encoders(repo: Path) -> list[str]:
    return sorted(p.parent.name[:-len("_embed")] for p in Path(repo).glob("*_embed/config.pbtxt"))


def read_manifest(repo: Path, encoder: str) -> dict:
    """NAME_encoder/equiprobe.json, written by build_repo."""
    path = Path(repo) / ModelNames(encoder).onnx / MANIFEST
    if not path.is_file() or not (Path(repo) / ModelNames(encoder).embed / "config.pbtxt").is_file():
        serving = ", ".join(f"'{s}'" for s in served_encoders(repo)) or "no encoder (no NAME_embed model)"
        raise RepositoryError(f"repository {repo} serves {serving}, not '{encoder}' (build it with "
                              f"`equiprobe build-repo`)", serving)
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

    def __post_init__(self):
        if self.parts is None:
            self.parts = [self]


def served_part(repo: Path, encoder: str) -> ServedEncoder:
    from .transforms import get_catalog

    names = ModelNames(encoder)
    manifest = read_manifest(repo, encoder)
    embed = read_config(Path(repo) / names.embed / "config.pbtxt")
    (embedding,) = [o for o in embed.output if o.name == EMBEDDING]
    versions = {}
    for catalog in CATALOG_SUFFIX:
        expansion = Path(repo) / ExpansionNames(encoder, catalog).embed / "config.pbtxt"
        params = read_config(expansion).parameters if expansion.is_file() else {}
        versions[catalog] = (params["catalog_version"].string_value if "catalog_version" in params
                             else get_catalog(catalog).version)
    return ServedEncoder(Path(repo), encoder, int(embedding.dims[0]), manifest["onnx_sha256"], manifest["flavour"],
                         versions, embed)
