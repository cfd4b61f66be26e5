"""`equiprobe deploy`: trained probes into a served model repository, as a new model version.

    NAME_probe     ONNX (trainer/probe_export.py): EMBEDDING [D] -> TRANSFORM_PROBS [31],
                   CATEGORY_PROBS [10], MANIPULATION_SCORE [1] (and EMBEDDING_OUT, the input passed
                   through); class names in label files, so Triton's classification extension
                   answers "score:index:label"
    NAME_detector  ensemble: IMAGE -> NAME_preprocess -> NAME_encoder -> NAME_probe, the steps of the
                   served NAME_embed plus the probe; outputs TRANSFORM_PROBS, CATEGORY_PROBS,
                   MANIPULATION_SCORE, MANIPULATED and EMBEDDING [D], any subset of them per request

A probe of a composite encoder "A+B" (a joined store, clients/concat.py) is served as
A+B_detector: the steps of A_embed and B_embed side by side on the same IMAGE, both embeddings
into the probe, which concatenates them.

Both follow the repository's flavour (read from NAME_encoder's config): portable runs the probe
on ONNX Runtime in a python-backend model, native on the onnxruntime backend with TensorRT.

Versions. A deploy writes NAME_probe/<v>/ (model.onnx, the portable model.py, deployed.json)
completely in a staging directory beside it and renames it into place, so no server ever sees
half a version; then it selects it (version_policy specific [v]). The selected version is the
served one: given --url, deploy asks a server in explicit model control to load NAME_probe, then
NAME_detector; a server in poll mode finds the change by itself and deploy waits for it. Triton
serves the old version until the new one is ready, then unloads it. `--rollback` selects, the
same way, the version the current one replaced (versions stay on disk).
NAME_probe/deploy_history.json logs each deploy and rollback.

Selection, in one step (services/versioning.py, shared with build-repo's staging and the index
deploy). What a selection changes (both models' config.pbtxt and label files, the history) is
written whole into a new hidden directory NAME_probe/.selection-<v>-*; those names in NAME_probe
and NAME_detector are symbolic links through NAME_probe/.selected, and the selection is switched
by renaming a new `.selected` link over the old one. A deploy or rollback killed at any moment
leaves the repository serving the old selection or the new one, never a mix. The very first
deploy builds both model directories whole in a hidden directory inside NAME_embed and renames
them into the repository, NAME_probe first: killed in between, the repository has a complete
probe model and no detector.

This module decides and orchestrates: which probes (each task's `deploys_as`), checked against
what the repository serves (services/repository.py's served_encoder, a composite's view
included), the operating point, the record (services/detector_models.py's ProbeDeployment, the
version's deployed.json, from which the configs are rendered), and when the server switches
(its model-control client is clients/model_control.py: connect, switch_server).

Refusal. A probe trained for another encoder, encoder ONNX file, embedding size or catalog
version than the repository serves is refused with one line naming both values, before anything
in the repository is written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from equiprobe.services.contract import DetectorNames
from equiprobe.services.detector_models import ProbeDeployment, detector_pair, selection_files, served_probe_inputs
from equiprobe.services.model_config import PYTHON_MODELS
from equiprobe.services.repository import RepositoryError, ServedEncoder
from equiprobe.services.repository import served_encoder as served_view
from equiprobe.services.versioning import (HISTORY, VERSION_RECORD, VersionedPair, VersionError, next_version, select,
                                           selected_version, version_record)

from equiprobe.clients.model_control import DeployError, connect, switch_server

from .calibration import Calibration
from .detector_scores import DEFAULT_TARGET_FPR, load_scores
from .probe_export import ProbeError, SavedProbe, category_names, export_probes, read_probe
from .tasks import TASKS, spoken


@contextmanager
def refusing():
    """The repository's own refusals (services/versioning.py) as DeployError, in the same words."""
    try:
        yield
    except VersionError as exc:
        raise DeployError(str(exc)) from None


# -- what the repository serves -------------------------------------------------------------

def served_encoder(repo: Path, encoder: str) -> ServedEncoder:
    """What the repository serves for `encoder`, or for each part of a composite "A+B"."""
    try:
        return served_view(repo, encoder)
    except RepositoryError as exc:
        raise DeployError(f"refused: the probe was trained on encoder '{exc.encoder}', but repository {repo} serves "
                          f"{exc.serving}; nothing was changed") from None


def check_probe(trained: dict, where: str, task: str, served: ServedEncoder) -> None:
    """Refuse, in one line naming both values, a probe made for something the repository does not serve."""
    features = int(trained.get("features_dim") or 0)  # a probe that reads FEATURES beside the embedding
    checks = (("encoder", trained["encoder"], served.name),
              ("embedding dim", int(trained["dim"]) - features, served.dim),
              *((("FEATURES dim", features, served.features),) if features else ()),
              ("encoder ONNX sha256", trained["encoder_onnx_sha256"], served.onnx_sha256),
              (f"{task} catalog version", trained["catalog_version"], served.catalog_versions[task]))
    for what, probe_value, repo_value in checks:
        if probe_value != repo_value:
            raise DeployError(f"refused: {where} was trained for {what} {probe_value!r}, but repository "
                              f"{served.repo} serves {repo_value!r}; nothing was changed")


def pick_probes(probes: list[SavedProbe]) -> tuple[SavedProbe, Optional[SavedProbe]]:
    """The detector's probe (a task that deploys as transformations: fine, or detect) and the
    optional one that deploys as categories (general), as each task's `deploys_as` says."""
    by_role = {role: [p for p in probes if TASKS[p.task].deploys_as == role]
               for role in ("transformations", "categories")}
    if len(by_role["transformations"]) != 1 or len(by_role["categories"]) > 1:
        given = ", ".join(f"{p.path} ({p.task})" for p in probes) or "none"
        takes = {role: [t.name for t in TASKS.values() if t.deploys_as == role] for role in by_role}
        raise DeployError(f"deploy takes one {takes['transformations'][0]} (or {spoken(takes['transformations'][1:])}) "
                          f"probe and at most one {spoken(takes['categories'])} probe; given: {given}")
    fine = by_role["transformations"][0]
    general = by_role["categories"][0] if by_role["categories"] else None
    if general is not None and general.saved.features_dim != fine.saved.features_dim:
        raise DeployError(f"{fine.path} and {general.path} read different inputs (FEATURES width "
                          f"{fine.saved.features_dim} vs {general.saved.features_dim}); train both with or "
                          "without --features")
    if general is not None and general.classes != category_names():
        raise DeployError(f"{general.path}: general classes {general.classes} are not the catalog's "
                          f"{category_names()}")
    return fine, general


# -- the server -----------------------------------------------------------------------------

# -- deploy and rollback ----------------------------------------------------------------------

@dataclass
class DeployResult:
    action: str  # "deploy" or "rollback"
    repo: Path
    flavour: str
    names: DetectorNames
    version: int
    replaced: Optional[int]
    meta: dict  # the version's deployed.json
    server: Optional[str] = None  # how the server took it, when --url was given


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def operating_point(fine: SavedProbe, target_fpr: float,
                    threshold: Optional[float]) -> tuple[float, Optional[float], Calibration]:
    """(threshold, target FPR, calibration): the calibration saved with the probe's validation
    scores (trainer/detector_scores.py), and the threshold on the calibrated score chosen on the
    validation sources, or as given. Given a threshold and no scores.npz, the score stays the raw
    1 - P(identity) (calibration "none")."""
    from .detector_card import operating_threshold

    try:
        scores = load_scores(fine.path)
    except FileNotFoundError as exc:
        if threshold is None:
            raise DeployError(f"no operating threshold for {fine.path}: {exc}; or pass --threshold T") from None
        return float(threshold), None, Calibration.from_dict(None)
    except ValueError as exc:
        raise DeployError(f"no calibration for {fine.path}: {exc}") from None
    if threshold is not None:
        return float(threshold), None, scores["calibration"]
    try:
        val = scores["val"]
        return operating_threshold(val["score"], val["manipulated"], target_fpr), target_fpr, scores["calibration"]
    except ValueError as exc:
        raise DeployError(f"no operating threshold for {fine.path}: {exc}; or pass --threshold T") from None


def deploy(probe_dirs: list[Path], repo: Path, url=None, timeout_s: float = 120.0,
           target_fpr: float = DEFAULT_TARGET_FPR, threshold: Optional[float] = None) -> DeployResult:
    """Export the probes, write them as the next NAME_probe version, select it, and (given a url) load it.
    MANIPULATED = score >= `threshold`, by default the one that gives `target_fpr` on validation sources."""
    repo = Path(repo)
    if not repo.is_dir():
        raise DeployError(f"model repository {repo} does not exist")
    try:
        fine, general = pick_probes([read_probe(p) for p in probe_dirs])
    except ProbeError as exc:
        raise DeployError(str(exc)) from None
    served = served_encoder(repo, fine.record["encoder"])
    for probe in (fine, general):
        if probe is not None:
            check_probe(probe.record, str(probe.path), probe.task, served)
    threshold, target_fpr, calibration = operating_point(fine, target_fpr, threshold)
    client = connect(url) if url else None
    names = DetectorNames(served.name)
    model_dir = repo / names.probe
    replaced = selected_version(model_dir)
    version = next_version(model_dir)
    reads_features = bool(fine.saved.features_dim)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        try:
            exported = export_probes(fine, general, staged / "model.onnx", threshold,
                                     served_probe_inputs(served, reads_features), calibration=calibration)
        except ProbeError as exc:
            raise DeployError(str(exc)) from None
        deployed = ProbeDeployment(
            model=names.probe, version=version, replaced=replaced, deployed_at=now(), encoder=served.name,
            dim=served.dim, encoder_onnx_sha256=served.onnx_sha256, features=reads_features,
            features_dim=served.features if reads_features else 0,
            catalog_versions={p.task: p.record["catalog_version"] for p in (fine, general) if p},
            detector_task=fine.task, classes=fine.classes, categories=category_names(),
            category_source=exported.category_source, parity_max_abs_diff=exported.max_abs_diff,
            threshold=threshold, target_fpr=target_fpr, calibration=calibration.as_dict(),
            probes={p.task: {"path": str(p.path.resolve()), "record": p.record} for p in (fine, general) if p})
        deployed.catalog_versions.setdefault("general", served.catalog_versions["general"])
        meta = deployed.as_json()
        (staged / VERSION_RECORD).write_text(json.dumps(meta, indent=2))
        if served.flavour == "portable":
            shutil.copy2(PYTHON_MODELS / "onnx_encoder.py", staged / "model.py")
        event = {"action": "deploy", "version": version, "replaced": replaced, "at": deployed.deployed_at,
                 "probes": {task: p["path"] for task, p in deployed.probes.items()}}
        return select_and_switch(client, url, timeout_s, repo, detector_pair(names), names, served,
                                 selection_files(served, names, deployed), version, replaced, meta, event, staged)


def previous_version(model_dir: Path, what: str) -> tuple[int, int, dict]:
    """(the selected version, the one it replaced, that one's deployed.json): what a rollback selects."""
    current = selected_version(model_dir)
    if current is None:
        raise DeployError(f"{model_dir}/config.pbtxt selects no version; deploy {what} first")
    with refusing():
        target = version_record(model_dir, current).get("replaced")
        if target is None:
            raise DeployError(f"{model_dir.name} version {current} replaced no earlier version; there is nothing to "
                              "roll back to")
        return current, target, version_record(model_dir, target)


def rollback_target(encoders: list[str], encoder: Optional[str], repo: Path, what: str, model) -> str:
    """The encoder a rollback acts on: `encoder`, which must have a deployed model (`model(encoder)`
    names it), or the repository's only one."""
    if encoder is None:
        if len(encoders) != 1:
            raise DeployError(f"repository {repo} has {len(encoders)} deployed {what} "
                              f"({', '.join(encoders) or 'none'}); name one with --encoder")
        return encoders[0]
    if encoder not in encoders:
        raise DeployError(f"repository {repo} has no deployed {model(encoder)}")
    return encoder


def deployed_encoders(repo: Path) -> list[str]:
    suffix = DetectorNames("").probe
    return sorted(p.parent.name.removesuffix(suffix) for p in repo.glob(f"{DetectorNames('*').probe}/{HISTORY}"))


def rollback(repo: Path, encoder: Optional[str] = None, url=None,
             timeout_s: float = 120.0) -> DeployResult:
    """Select the version the current one replaced, the same way a deploy selects a new one."""
    repo = Path(repo)
    encoder = rollback_target(deployed_encoders(repo) if repo.is_dir() else [], encoder, repo, "detectors",
                              lambda e: DetectorNames(e).detector)
    names = DetectorNames(encoder)
    current, target, meta = previous_version(repo / names.probe, "a probe")
    deployed = ProbeDeployment.from_json(meta)
    served = served_encoder(repo, encoder)
    # The version was checked when it was deployed; the repository's encoder may have changed since.
    for task, probe in deployed.probes.items():
        check_probe(probe["record"], f"{names.probe} version {target}", task, served)
    return roll_back_to(repo, detector_pair(names), names, served, selection_files(served, names, deployed),
                        current, target, meta, url, timeout_s)


def roll_back_to(repo: Path, pair: VersionedPair, names, served: ServedEncoder, files: dict[str, str], current: int,
                 target: int, meta: dict, url, timeout_s: float) -> DeployResult:
    """Select `target` again (the version `current` replaced) and switch a server at `url` to it,
    the server checked before anything in the repository changes."""
    client = connect(url) if url else None
    return select_and_switch(client, url, timeout_s, repo, pair, names, served, files, target, current, meta,
                             {"action": "rollback", "version": target, "replaced": current, "at": now()})


def select_and_switch(client, url, timeout_s: float, repo: Path, pair: VersionedPair, names, served: ServedEncoder,
                      files: dict[str, str], version: int, replaced: Optional[int], meta: dict, event: dict,
                      new_version: Optional[Path] = None) -> DeployResult:
    """Select `version` in the repository (placing `new_version`, a staged version directory, first)
    and have the server behind `client` (checked by connect, or None) serve it."""
    with refusing():
        select(repo, pair, version, files, event, served.staging_parent, new_version=new_version)
    result = DeployResult(event["action"], repo, served.flavour, names, version, replaced, meta)
    if client is not None:
        result.server = switch_server(client, url, pair, version, timeout_s)
    return result
