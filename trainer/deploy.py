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

Selection, in one step. What a selection changes (both models' config.pbtxt and label files, the
history) is written whole into a new hidden directory NAME_probe/.selection-<v>-*; those names in
NAME_probe and NAME_detector are symbolic links through NAME_probe/.selected, and the selection
is switched by renaming a new `.selected` link over the old one. A deploy or rollback killed at
any moment leaves the repository serving the old selection or the new one, never a mix (Triton
ignores hidden directories inside a model directory). The very first deploy builds both model
directories whole in a hidden directory inside NAME_embed and renames them into the repository,
NAME_probe first: killed in between, the repository has a complete probe model and no detector.

Refusal. A probe trained for another encoder, encoder ONNX file, embedding size or catalog
version than the repository serves is refused with one line naming both values, before anything
in the repository is written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from equiprobe.services.contract import CATEGORY_PROBS, TRANSFORM_PROBS, DetectorNames, ModelNames
from equiprobe.services.detector_models import LABEL_FILES, detector_config, probe_config, served_probe_inputs
from equiprobe.services.model_config import PYTHON_MODELS
from equiprobe.services.repository import RepositoryError, ServedEncoder, served_part

from .calibration import Calibration
from .detector_scores import DEFAULT_TARGET_FPR, load_scores
from .probe_export import ProbeError, SavedProbe, category_names, export_probes, read_probe
from .tasks import TASKS

HISTORY = "deploy_history.json"
VERSION_RECORD = "deployed.json"


class DeployError(ValueError):
    """A deployment that must not happen (or could not finish); the message says why in one line."""


# -- what the repository serves -------------------------------------------------------------

def served_encoder(repo: Path, encoder: str) -> ServedEncoder:
    """What the repository serves for `encoder`, or for each part of a composite "A+B"."""
    from equiprobe.clients.concat import COMPOSITE, part_names

    if COMPOSITE not in encoder:
        return _served(repo, encoder)
    parts = [_served(repo, name) for name in part_names(encoder)]
    return ServedEncoder(repo, encoder, sum(p.dim for p in parts), COMPOSITE.join(p.onnx_sha256 for p in parts),
                         parts[0].flavour, parts[0].catalog_versions, parts[0].embed_config, parts,
                         features=sum(p.features for p in parts))


def _served(repo: Path, encoder: str) -> ServedEncoder:
    try:
        return served_part(repo, encoder)
    except RepositoryError as exc:
        raise DeployError(f"refused: the probe was trained on encoder '{encoder}', but repository {repo} serves "
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
    """The detector's probe (a task with `detector`: fine, or detect) and the optional general one."""
    by_task = {"fine": [p for p in probes if TASKS[p.task].detector],
               "general": [p for p in probes if p.task == "general"]}
    if len(by_task["fine"]) != 1 or len(by_task["general"]) > 1:
        given = ", ".join(f"{p.path} ({p.task})" for p in probes) or "none"
        raise DeployError(f"deploy takes one fine (or detect) probe and at most one general probe; given: {given}")
    general = by_task["general"][0] if by_task["general"] else None
    fine = by_task["fine"][0]
    if general is not None and general.saved.features_dim != fine.saved.features_dim:
        raise DeployError(f"{fine.path} and {general.path} read different inputs (FEATURES width "
                          f"{fine.saved.features_dim} vs {general.saved.features_dim}); train both with or "
                          "without --features")
    if general is not None and general.classes != category_names():
        raise DeployError(f"{general.path}: general classes {general.classes} are not the catalog's "
                          f"{category_names()}")
    return by_task["fine"][0], general


# -- files ----------------------------------------------------------------------------------

def versions_on_disk(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit())


def selected_version(model_dir: Path) -> Optional[int]:
    from equiprobe.services.model_config import read_config

    if not (model_dir / "config.pbtxt").is_file():
        return None
    versions = read_config(model_dir / "config.pbtxt").version_policy.specific.versions
    return int(versions[0]) if versions else None


def version_record(model_dir: Path, version: int) -> dict:
    path = model_dir / str(version) / VERSION_RECORD
    if not path.is_file():
        raise DeployError(f"{model_dir.name} version {version} is not on disk ({path} is missing)")
    return json.loads(path.read_text())


def place_version(staged: Path, model_dir: Path, version: int) -> Path:
    """Copy a finished version beside its final place, then rename it in (atomic on one filesystem)."""
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    final = model_dir / str(version)
    try:
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the version from a server running as another user
        for item in staged.iterdir():  # links are followed: a staged version may link to what it copies
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, staging / item.name)
        os.rename(staging, final)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and final.exists():
            raise DeployError(f"{final} appeared while this deploy ran (another deploy?); nothing was "
                              "selected") from None
        raise
    return final


SELECTED = ".selected"  # NAME_probe/.selected -> .selection-<v>-*: the selection both models read
SELECTION_PREFIX = ".selection-"
# The names each model directory reads through NAME_probe/.selected: name there -> name in the selection.
PROBE_LINKS = {"config.pbtxt": "probe.pbtxt", **{f: f for f in LABEL_FILES.values()}, HISTORY: HISTORY}
DETECTOR_LINKS = {"config.pbtxt": "detector.pbtxt", **{f: f for f in LABEL_FILES.values()}}


@dataclass(frozen=True)
class VersionedPair:
    """A versioned model and the ensemble that ends with it, switched together by one selection:
    NAME_probe and NAME_detector here, NAME_match and NAME_matcher (trainer/match_deploy.py)."""

    model: str
    ensemble: str
    model_links: dict  # name in the model directory -> name in the selection
    ensemble_links: dict  # the same for the ensemble's directory
    version_parameter: str  # the ensemble's config parameter that names the model version it serves


def detector_pair(names: DetectorNames) -> VersionedPair:
    return VersionedPair(names.probe, names.detector, PROBE_LINKS, DETECTOR_LINKS, "probe_version")


def read_history(model_dir: Path) -> dict:
    history_file = model_dir / HISTORY
    return (json.loads(history_file.read_text()) if history_file.is_file()
            else {"model": model_dir.name, "events": []})


def select(served: ServedEncoder, names: DetectorNames, meta: dict, event: dict,
           new_version: Optional[Path] = None) -> None:
    """Make the repository serve `meta`'s version (placing `new_version`, a finished version
    directory, first), and log `event` in the history, in one atomic switch (module docstring)."""
    history = read_history(served.repo / names.probe)
    history["events"].append(event)
    switch_selection(served, detector_pair(names), meta["version"],
                     _selection_files(served, names, meta, history), new_version)


def switch_selection(served: ServedEncoder, pair: VersionedPair, version: int, files: dict[str, str],
                     new_version: Optional[Path] = None) -> None:
    """Write `files` as a new selection of `pair.model` and switch both directories to it in one
    rename (placing `new_version` as `version` first); the first time, build both directories."""
    model_dir, ensemble_dir = served.repo / pair.model, served.repo / pair.ensemble
    staging_parent = served.repo / ModelNames(served.parts[0].name).embed
    if model_dir.is_dir():
        if new_version is not None:
            place_version(new_version, model_dir, version)
        _adopt(model_dir, ensemble_dir, pair)
        previous = os.readlink(model_dir / SELECTED)
        selection = _write_selection(model_dir, version, files)
        _link(model_dir / SELECTED, selection.name, selection)  # the switch
        _fsync_dir(model_dir)
        if ensemble_dir.is_dir():
            _link_all(model_dir, ensemble_dir, selection, pair)  # links an adopted selection had no file for
        else:  # a first deploy killed between its two renames
            _staged_model_dirs(staging_parent, (pair.ensemble,),
                               lambda staging: _ensemble_dir(staging / pair.ensemble, pair), served.repo)
        _prune(model_dir, keep={previous, selection.name})
        return

    def build(staging: Path) -> None:
        model = staging / pair.model
        model.mkdir()
        if new_version is not None:
            place_version(new_version, model, version)
        os.symlink(_write_selection(model, version, files).name, model / SELECTED)
        for name, target in pair.model_links.items():
            os.symlink(f"{SELECTED}/{target}", model / name)
        _ensemble_dir(staging / pair.ensemble, pair)

    # The first deploy: both model directories made whole where Triton does not look (a hidden
    # directory inside NAME_embed; a hidden one in the repository would be taken for a model).
    _staged_model_dirs(staging_parent, (pair.model, pair.ensemble), build, served.repo)


def _selection_files(served: ServedEncoder, names: DetectorNames, meta: dict, history: dict) -> dict[str, str]:
    from google.protobuf import text_format

    labels = {TRANSFORM_PROBS: meta["classes"], CATEGORY_PROBS: meta["categories"]}
    return {"probe.pbtxt": text_format.MessageToString(probe_config(served, meta)),
            "detector.pbtxt": text_format.MessageToString(detector_config(served, names, meta)),
            **{LABEL_FILES[output]: "\n".join(values) + "\n" for output, values in labels.items()},
            HISTORY: json.dumps(history, indent=2)}


def _write_selection(probe_dir: Path, version: int, files: dict[str, str]) -> Path:
    selection = Path(tempfile.mkdtemp(prefix=f"{SELECTION_PREFIX}{version}-", dir=probe_dir))
    os.chmod(selection, 0o755)  # mkdtemp's 0700 would hide it from a server running as another user
    for name, text in files.items():
        with open(selection / name, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    _fsync_dir(selection)
    return selection


def _ensemble_dir(path: Path, pair: VersionedPair) -> None:
    (path / "1").mkdir(parents=True)  # an ensemble's (empty) version
    for name, target in pair.ensemble_links.items():
        os.symlink(f"../{pair.model}/{SELECTED}/{target}", path / name)


def _staged_model_dirs(staging_parent: Path, dirs: tuple[str, ...], build, repo: Path) -> None:
    """Build model directories in a hidden staging directory, then rename each into `repo` (in
    the order of `dirs`), so that each appears complete or not at all."""
    staging = Path(tempfile.mkdtemp(prefix=".deploy-", dir=staging_parent))
    try:
        build(staging)
        for name in dirs:
            os.chmod(staging / name, 0o755)
            os.rename(staging / name, repo / name)
        _fsync_dir(repo)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _adopt(probe_dir: Path, detector_dir: Path, pair: VersionedPair) -> None:
    """A repository deployed before selections: its selection's files, copied as they are into a
    selection, become links to it one by one (each link shows the same content: no switch yet)."""
    if (probe_dir / SELECTED).is_symlink():
        return
    files = {}
    for model_dir, links in ((probe_dir, pair.model_links), (detector_dir, pair.ensemble_links)):
        for name, target in links.items():
            if (model_dir / name).is_file():
                files[target] = (model_dir / name).read_text()
    selection = _write_selection(probe_dir, selected_version(probe_dir) or 0, files)
    _link(probe_dir / SELECTED, selection.name, selection)
    _link_all(probe_dir, detector_dir, selection, pair, only=set(files))


def _link_all(probe_dir: Path, detector_dir: Path, selection: Path, pair: VersionedPair,
              only: Optional[set] = None) -> None:
    """Each name the two model directories read through `.selected` (of `only`) as a link there."""
    for model_dir, links, prefix in ((probe_dir, pair.model_links, ""),
                                     (detector_dir, pair.ensemble_links, f"../{probe_dir.name}/")):
        for name, target in links.items():
            if (only is None or target in only) and not (model_dir / name).is_symlink():
                _link(model_dir / name, f"{prefix}{SELECTED}/{target}", selection)


def _link(path: Path, target: str, staging: Path) -> None:
    """Make `path` a symbolic link to `target`, replacing whatever is there in one rename. The link
    is made inside `staging` (a selection directory): Triton stats every entry of a model
    directory, and fails the model on one that leads nowhere, as a killed deploy's leftover link
    would once its selection is pruned; inside a selection it is never looked at, and goes with it."""
    staged = staging / f".link-{path.name}"
    staged.unlink(missing_ok=True)
    os.symlink(target, staged)
    os.replace(staged, path)


def _prune(probe_dir: Path, keep: set[str]) -> None:
    """Selections no longer selected (the one before is kept: a server may still be reading it)."""
    for old in probe_dir.glob(f"{SELECTION_PREFIX}*"):
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the server -----------------------------------------------------------------------------

class _Server:
    """A synchronous gRPC client that sends the connection's headers (TLS, keys) on every call."""

    def __init__(self, connection):
        self.connection, self.client = connection, connection.grpc_client()
        self.headers = connection.grpc_headers() or None

    def __getattr__(self, name):
        import functools

        call = getattr(self.client, name)
        return call if name == "close" else functools.partial(call, headers=self.headers)


def connect(url) -> _Server:
    """A client for the server at `url` (HOST:PORT or a clients.connection.Connection), checked
    before anything in the repository changes: it answers, and it lets this client use model
    control (an exposed server needs the admin key for it)."""
    from tritonclient.utils import InferenceServerException

    from equiprobe.clients.connection import as_connection

    connection = as_connection(url)
    client = _Server(connection)
    try:
        problem = None if client.is_server_live(client_timeout=5) else "not live"
    except InferenceServerException as exc:
        problem = exc.message()
    if problem:
        raise DeployError(connection.explain(f"no Triton server answers at {connection.url} ({problem})") +
                          "; nothing was changed")
    try:
        client.get_model_repository_index(client_timeout=10)  # model control: the admin key's protocol
    except InferenceServerException as exc:
        raise DeployError(f"{connection.explain(exc.message())}; nothing was changed") from None
    return client


def switch_server(client, url, pair: VersionedPair, version: int, timeout_s: float) -> str:
    """Make the server serve `version`: load_model in explicit mode; in poll mode wait for its
    rescan. Returns once the model (the probe) serves only that version and the ensemble (the
    detector) is reloaded."""
    from tritonclient.utils import InferenceServerException

    from equiprobe.clients.connection import refusal

    url = getattr(url, "url", url)
    how = "loaded"
    for model in (pair.model, pair.ensemble):
        try:
            client.load_model(model, client_timeout=timeout_s)
        except InferenceServerException as exc:
            message = (exc.message() or str(exc)).splitlines()[0]
            message = refusal(message, getattr(client, "headers", None), url) or message
            if "not allowed" in message:  # poll (or none) model control: the server decides
                how = "picked up by the server's repository poll"
                break
            raise DeployError(f"version {version} is selected in the repository, but the server at {url} could not "
                              f"load {model} (it keeps serving the previous version; `equiprobe deploy --rollback` "
                              f"selects that one again): {message}") from None
    deadline = time.monotonic() + timeout_s
    while not _serving(client, pair, version):
        if time.monotonic() > deadline:
            raise DeployError(f"version {version} is in the repository, but the server at {url} did not serve it "
                              f"within {timeout_s:.0f} s (a server started with --model-control none never "
                              "reloads; use explicit or poll)")
        time.sleep(0.25)
    client.close()
    return how


def _serving(client, pair: VersionedPair, version: int) -> bool:
    from tritonclient.utils import InferenceServerException

    from equiprobe.clients.connection import refusal

    try:
        index = client.get_model_repository_index(as_json=True).get("models", [])
        ready = {m.get("version") for m in index if m["name"] == pair.model and m.get("state") == "READY"}
        if ready != {str(version)} or not client.is_model_ready(pair.ensemble):
            return False
        parameters = client.get_model_config(pair.ensemble, as_json=True)["config"].get("parameters", {})
        return parameters.get(pair.version_parameter, {}).get("string_value") == str(version)
    except InferenceServerException as exc:
        refused = refusal(exc.message(), getattr(client, "headers", None))
        if refused:  # waiting will not bring a key
            raise DeployError(f"version {version} is selected in the repository, but {refused}") from None
        return False


# -- deploy and rollback ----------------------------------------------------------------------

@dataclass
class DeployResult:
    action: str  # "deploy" or "rollback"
    repo: Path
    flavour: str
    names: DetectorNames
    version: int
    replaced: Optional[int]
    meta: dict
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
    version = max(versions_on_disk(model_dir), default=0) + 1
    reads_features = bool(fine.saved.features_dim)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        try:
            exported = export_probes(fine, general, staged / "model.onnx", threshold,
                                     served_probe_inputs(served, {"features": reads_features}),
                                     calibration=calibration)
        except ProbeError as exc:
            raise DeployError(str(exc)) from None
        meta = {"model": names.probe, "version": version, "replaced": replaced, "deployed_at": now(),
                "encoder": served.name, "dim": served.dim, "encoder_onnx_sha256": served.onnx_sha256,
                "features": reads_features, "features_dim": served.features if reads_features else 0,
                "catalog_versions": {p.task: p.record["catalog_version"] for p in (fine, general) if p},
                "detector_task": fine.task,  # whose catalog's rows TRANSFORM_PROBS are: fine or detect
                "classes": fine.classes, "categories": category_names(),
                "category_source": exported.category_source, "parity_max_abs_diff": exported.max_abs_diff,
                "threshold": threshold, "target_fpr": target_fpr, "calibration": calibration.as_dict(),
                "probes": {p.task: {"path": str(p.path.resolve()), "record": p.record}
                           for p in (fine, general) if p}}
        meta["catalog_versions"].setdefault("general", served.catalog_versions["general"])
        (staged / VERSION_RECORD).write_text(json.dumps(meta, indent=2))
        if served.flavour == "portable":
            shutil.copy2(PYTHON_MODELS / "onnx_encoder.py", staged / "model.py")
        select(served, names, meta, {"action": "deploy", "version": version, "replaced": replaced,
                                     "at": meta["deployed_at"],
                                     "probes": {task: p["path"] for task, p in meta["probes"].items()}}, staged)
    result = DeployResult("deploy", repo, served.flavour, names, version, replaced, meta)
    if client is not None:
        result.server = switch_server(client, url, detector_pair(names), version, timeout_s)
    return result


def deployed_encoders(repo: Path) -> list[str]:
    return sorted(p.parent.name[:-len("_probe")] for p in repo.glob(f"*_probe/{HISTORY}"))


def rollback(repo: Path, encoder: Optional[str] = None, url=None,
             timeout_s: float = 120.0) -> DeployResult:
    """Select the version the current one replaced, the same way a deploy selects a new one."""
    repo = Path(repo)
    encoders = deployed_encoders(repo) if repo.is_dir() else []
    if encoder is None:
        if len(encoders) != 1:
            raise DeployError(f"repository {repo} has {len(encoders)} deployed detectors "
                              f"({', '.join(encoders) or 'none'}); name one with --encoder")
        encoder = encoders[0]
    elif encoder not in encoders:
        raise DeployError(f"repository {repo} has no deployed {encoder}_detector")
    names = DetectorNames(encoder)
    model_dir = repo / names.probe
    current = selected_version(model_dir)
    if current is None:
        raise DeployError(f"{model_dir}/config.pbtxt selects no version; deploy a probe first")
    target = version_record(model_dir, current).get("replaced")
    if target is None:
        raise DeployError(f"{names.probe} version {current} replaced no earlier version; there is nothing to roll "
                          "back to")
    meta = version_record(model_dir, target)
    served = served_encoder(repo, encoder)
    # The version was checked when it was deployed; the repository's encoder may have changed since.
    for task, probe in meta["probes"].items():
        check_probe(probe["record"], f"{names.probe} version {target}", task, served)
    client = connect(url) if url else None
    select(served, names, meta, {"action": "rollback", "version": target, "replaced": current, "at": now()})
    result = DeployResult("rollback", repo, served.flavour, names, target, current, meta)
    if client is not None:
        result.server = switch_server(client, url, detector_pair(names), target, timeout_s)
    return result
