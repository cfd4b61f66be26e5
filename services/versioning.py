"""Writing into a served model repository without a server ever seeing half of it: the one
implementation of staging and of the atomic version switch, for build-repo (an INT8 build), the
probe deploy (NAME_probe / NAME_detector) and the index deploy (NAME_match / NAME_matcher).

Staging. Model directories are built whole in a hidden directory where Triton does not look
(`staging_dir`) and renamed into the repository one by one (`move_models`), so each appears
complete or not at all.

Versions. A new version NAME/<v>/ is copied into a hidden staging directory beside its final
place and renamed in (`place_version`). Which version is served is a selection: what it changes
(both models' config.pbtxt, label files, the history) is written whole into a new hidden
directory MODEL/.selection-<v>-*; those names in the model's and its ensemble's directories are
symbolic links through MODEL/.selected, and the selection is switched by renaming a new
`.selected` link over the old one (`select`). Killed at any moment, the repository serves the old
selection or the new one, never a mix (Triton ignores hidden directories inside a model
directory). The very first switch builds both model directories whole in a staging directory and
renames them in, the model first: killed in between, the repository has a complete model and no
ensemble, which the next switch adds. MODEL/deploy_history.json logs each switch.

The renderers say what the selection's files hold (detector_models.py, match_models.py); the
trainer decides what to select (trainer/deploy.py, trainer/match_deploy.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

from .files import fsync_path

HISTORY = "deploy_history.json"  # in MODEL (through the selection): each deploy and rollback
VERSION_RECORD = "deployed.json"  # in MODEL/<v>: what the version is
SELECTED = ".selected"  # MODEL/.selected -> .selection-<v>-*: the selection both models read
SELECTION_PREFIX = ".selection-"


class VersionError(ValueError):
    """A version switch that must not happen (or could not finish); the message says why in one line."""


@dataclass(frozen=True)
class VersionedPair:
    """A versioned model and the ensemble that ends with it, switched together by one selection:
    NAME_probe and NAME_detector (detector_models.py), NAME_match and NAME_matcher (match_models.py)."""

    model: str
    ensemble: str
    model_links: dict  # name in the model directory -> name in the selection
    ensemble_links: dict  # the same for the ensemble's directory
    version_parameter: str  # the ensemble's config parameter that names the model version it serves


# -- staging ------------------------------------------------------------------------------------

@contextmanager
def staging_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A new hidden directory in `parent` (`prefix` starts with a dot), removed afterwards with
    whatever was left in it."""
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def move_models(staging: Path, repo: Path, names: Sequence[str], replace: bool = False) -> None:
    """Rename the staged model directories `names` into `repo`, in that order. replace: one already
    there is renamed aside first and removed after (else the rename fails on it)."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in names:
        source, target = staging / name, repo / name
        os.chmod(source, 0o755)  # readable by a server running as another user
        old = repo / f".{name}.replaced-{os.getpid()}"
        if replace and target.exists():
            os.rename(target, old)
        os.rename(source, target)
        if replace:
            shutil.rmtree(old, ignore_errors=True)
    fsync_path(repo)


# -- versions -----------------------------------------------------------------------------------

def versions_on_disk(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit())


def next_version(model_dir: Path) -> int:
    return max(versions_on_disk(model_dir), default=0) + 1


def selected_version(model_dir: Path) -> Optional[int]:
    from .model_config import read_config

    if not (model_dir / "config.pbtxt").is_file():
        return None
    versions = read_config(model_dir / "config.pbtxt").version_policy.specific.versions
    return int(versions[0]) if versions else None


def version_record(model_dir: Path, version: int) -> dict:
    path = model_dir / str(version) / VERSION_RECORD
    if not path.is_file():
        raise VersionError(f"{model_dir.name} version {version} is not on disk ({path} is missing)")
    return json.loads(path.read_text())


def read_history(model_dir: Path) -> dict:
    history_file = model_dir / HISTORY
    return (json.loads(history_file.read_text()) if history_file.is_file()
            else {"model": model_dir.name, "events": []})


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
            raise VersionError(f"{final} appeared while this deploy ran (another deploy?); nothing was "
                               "selected") from None
        raise
    return final


# -- the selection ------------------------------------------------------------------------------

def select(repo: Path, pair: VersionedPair, version: int, files: dict[str, str], event: dict,
           staging_parent: Path, new_version: Optional[Path] = None) -> None:
    """Make the repository serve `version` of `pair.model` (placing `new_version`, a finished
    version directory, first) with the selection `files` and `event` logged in the history, in
    one atomic switch (module docstring). A first switch stages in `staging_parent` (a model
    directory: a hidden directory in the repository would be taken for a model)."""
    history = read_history(repo / pair.model)
    history["events"].append(event)
    switch_selection(repo, pair, version, {**files, HISTORY: json.dumps(history, indent=2)}, staging_parent,
                     new_version)


def switch_selection(repo: Path, pair: VersionedPair, version: int, files: dict[str, str], staging_parent: Path,
                     new_version: Optional[Path] = None) -> None:
    """Write `files` as a new selection of `pair.model` and switch both directories to it in one
    rename (placing `new_version` as `version` first); the first time, build both directories."""
    model_dir, ensemble_dir = repo / pair.model, repo / pair.ensemble
    if model_dir.is_dir():
        if new_version is not None:
            place_version(new_version, model_dir, version)
        _adopt(model_dir, ensemble_dir, pair)
        previous = os.readlink(model_dir / SELECTED)
        selection = _write_selection(model_dir, version, files)
        _link(model_dir / SELECTED, selection.name, selection)  # the switch
        fsync_path(model_dir)
        if ensemble_dir.is_dir():
            _link_all(model_dir, ensemble_dir, selection, pair)  # links an adopted selection had no file for
        else:  # a first switch killed between its two renames
            with staging_dir(staging_parent, ".deploy-") as staging:
                _ensemble_dir(staging / pair.ensemble, pair)
                move_models(staging, repo, (pair.ensemble,))
        _prune(model_dir, keep={previous, selection.name})
        return

    # The first switch: both model directories made whole where Triton does not look.
    with staging_dir(staging_parent, ".deploy-") as staging:
        model = staging / pair.model
        model.mkdir()
        if new_version is not None:
            place_version(new_version, model, version)
        os.symlink(_write_selection(model, version, files).name, model / SELECTED)
        for name, target in pair.model_links.items():
            os.symlink(f"{SELECTED}/{target}", model / name)
        _ensemble_dir(staging / pair.ensemble, pair)
        move_models(staging, repo, (pair.model, pair.ensemble))


def _write_selection(model_dir: Path, version: int, files: dict[str, str]) -> Path:
    selection = Path(tempfile.mkdtemp(prefix=f"{SELECTION_PREFIX}{version}-", dir=model_dir))
    os.chmod(selection, 0o755)  # mkdtemp's 0700 would hide it from a server running as another user
    for name, text in files.items():
        with open(selection / name, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    fsync_path(selection)
    return selection


def _ensemble_dir(path: Path, pair: VersionedPair) -> None:
    (path / "1").mkdir(parents=True)  # an ensemble's (empty) version
    for name, target in pair.ensemble_links.items():
        os.symlink(f"../{pair.model}/{SELECTED}/{target}", path / name)


def _adopt(model_dir: Path, ensemble_dir: Path, pair: VersionedPair) -> None:
    """A repository deployed before selections: its selection's files, copied as they are into a
    selection, become links to it one by one (each link shows the same content: no switch yet)."""
    if (model_dir / SELECTED).is_symlink():
        return
    files = {}
    for directory, links in ((model_dir, pair.model_links), (ensemble_dir, pair.ensemble_links)):
        for name, target in links.items():
            if (directory / name).is_file():
                files[target] = (directory / name).read_text()
    selection = _write_selection(model_dir, selected_version(model_dir) or 0, files)
    _link(model_dir / SELECTED, selection.name, selection)
    _link_all(model_dir, ensemble_dir, selection, pair, only=set(files))


def _link_all(model_dir: Path, ensemble_dir: Path, selection: Path, pair: VersionedPair,
              only: Optional[set] = None) -> None:
    """Each name the two model directories read through `.selected` (of `only`) as a link there."""
    for directory, links, prefix in ((model_dir, pair.model_links, ""),
                                     (ensemble_dir, pair.ensemble_links, f"../{model_dir.name}/")):
        for name, target in links.items():
            if (only is None or target in only) and not (directory / name).is_symlink():
                _link(directory / name, f"{prefix}{SELECTED}/{target}", selection)


def _link(path: Path, target: str, staging: Path) -> None:
    """Make `path` a symbolic link to `target`, replacing whatever is there in one rename. The link
    is made inside `staging` (a selection directory): Triton stats every entry of a model
    directory, and fails the model on one that leads nowhere, as a killed deploy's leftover link
    would once its selection is pruned; inside a selection it is never looked at, and goes with it."""
    staged = staging / f".link-{path.name}"
    staged.unlink(missing_ok=True)
    os.symlink(target, staged)
    os.replace(staged, path)


def _prune(model_dir: Path, keep: set[str]) -> None:
    """Selections no longer selected (the one before is kept: a server may still be reading it)."""
    for old in model_dir.glob(f"{SELECTION_PREFIX}*"):
        if old.name not in keep:
            shutil.rmtree(old, ignore_errors=True)
