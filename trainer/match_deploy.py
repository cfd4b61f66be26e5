"""`equiprobe deploy --index`: an index of known images into a served model repository, as a new
version of NAME_match, served by NAME_matcher (services/match_models.py).

The version directory is the index directory copied whole (services/match_index.py: index.faiss,
keys.npy, index.json, ...; references.npy and probe/ where the index has them), with deployed.json
and the python model. Versions, the one-rename selection and the history are
services/versioning.py's, for the pair NAME_match / NAME_matcher (services/match_models.py:
match_pair, the configs); explicit model control and `--rollback` are trainer/deploy.py's.

Refusal. An index of another encoder, encoder ONNX file, embedding size or FEATURES width than
the repository serves, or one whose files are missing or do not match index.json (size, sha256),
is refused with one line before anything in the repository is written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from equiprobe.clients.model_control import DeployError, connect
from equiprobe.services.contract import COMPOSITE, MatchNames
from equiprobe.services.match_index import FILES, MatchIndexError, read_meta, read_projection, sha256_of
from equiprobe.services.match_models import match_pair, selection_files
from equiprobe.services.matching import DEFAULT_K, PROBE_DIR, PROBE_JSON, REFERENCES, features_dim, has_probe, \
    read_probe_record
from equiprobe.services.model_config import PYTHON_MODELS
from equiprobe.services.repository import RepositoryError, ServedEncoder, served_part
from equiprobe.services.versioning import HISTORY, VERSION_RECORD, next_version, selected_version

from .deploy import DeployResult, now, previous_version, roll_back_to, rollback_target, select_and_switch


def served_for(repo: Path, encoder: str, what: str) -> ServedEncoder:
    if COMPOSITE in str(encoder):
        raise DeployError(f"refused: {what} holds composite '{encoder}' embeddings; NAME_match serves one encoder's "
                          "index; nothing was changed")
    try:
        return served_part(repo, encoder)
    except RepositoryError as exc:
        raise DeployError(f"refused: {what} holds encoder '{encoder}' embeddings, but repository {repo} serves "
                          f"{exc.serving}; nothing was changed") from None


def check_index(meta: dict, what: str, served: ServedEncoder) -> None:
    """Refuse, in one line naming both values, an index made for something the repository does not serve."""
    checks = (("encoder", meta.get("encoder"), served.name), ("embedding dim", meta.get("dim"), served.dim),
              ("encoder ONNX sha256", meta.get("encoder_onnx_sha256"), served.onnx_sha256),
              *((("FEATURES dim", features_dim(meta), served.features),) if features_dim(meta) else ()))
    for field, have, serves in checks:
        if have != serves:
            raise DeployError(f"refused: {what} holds {field} {have!r}, but repository {served.repo} serves "
                              f"{serves!r}; nothing was changed")


def check_files(index: Path, meta: dict) -> Optional[dict]:
    """The index's files are there and whole (index.faiss's size and sha256 against index.json;
    the probe's record against the index); returns the probe's record (None: no probe)."""
    for name in FILES:
        if not (index / name).is_file():
            raise DeployError(f"refused: {index / name} is missing; nothing was changed")
    faiss_file = index / "index.faiss"
    if meta.get("index_bytes") is not None and faiss_file.stat().st_size != meta["index_bytes"]:
        raise DeployError(f"refused: {faiss_file} is {faiss_file.stat().st_size} bytes, index.json says "
                          f"{meta['index_bytes']} (truncated or replaced); nothing was changed")
    if meta.get("index_sha256") and sha256_of(faiss_file) != meta["index_sha256"]:
        raise DeployError(f"refused: {faiss_file}'s sha256 differs from index.json's (corrupt); nothing was changed")
    try:  # the copy projection, where the index has one (missing, corrupt or of another shape)
        read_projection(index, meta)
    except MatchIndexError as exc:
        raise DeployError(f"refused: {exc}; nothing was changed") from None
    if not has_probe(index):
        return None
    if not (index / REFERENCES).is_file():
        raise DeployError(f"refused: {index / REFERENCES} is missing (the probe compares uploads with these "
                          "references); nothing was changed")
    try:
        return read_probe_record(index, meta)
    except MatchIndexError as exc:
        raise DeployError(f"refused: {exc}; nothing was changed") from None


def deploy_index(index: Path, repo: Path, url=None, timeout_s: float = 120.0, copy_threshold: Optional[float] = None,
                 k: int = DEFAULT_K) -> DeployResult:
    """Write INDEX as the next NAME_match version, select it, and (given a url) load it."""
    index, repo = Path(index), Path(repo)
    if not repo.is_dir():
        raise DeployError(f"model repository {repo} does not exist")
    try:
        meta_index = read_meta(index)
    except MatchIndexError as exc:
        raise DeployError(f"refused: {exc}; nothing was changed") from None
    served = served_for(repo, meta_index.get("encoder"), f"index {index}")
    check_index(meta_index, f"index {index}", served)
    probe = check_files(index, meta_index)
    if copy_threshold is None and probe is None:
        raise DeployError(f"index {index} has no reference-aware probe ({PROBE_DIR}/{PROBE_JSON}) to take the copy "
                          "threshold from; pass --copy-threshold (a cosine similarity)")
    if k < 1:
        raise DeployError(f"--top must be at least 1, not {k}")
    client = connect(url) if url else None
    names = MatchNames(served.name)
    model_dir = repo / names.match
    replaced = selected_version(model_dir)
    version = next_version(model_dir)
    meta = {"model": names.match, "version": version, "replaced": replaced, "deployed_at": now(),
            "index": str(index.resolve()), "encoder": served.name, "dim": served.dim,
            "encoder_onnx_sha256": served.onnx_sha256, "features_dim": features_dim(meta_index),
            "count": int(meta_index["count"]), "kind": meta_index.get("kind"),
            "index_sha256": meta_index.get("index_sha256") or "", "k": min(int(k), int(meta_index["count"])),
            "copy_threshold": float(copy_threshold if copy_threshold is not None else probe["copy_threshold"]),
            "copy_threshold_source": "given" if copy_threshold is not None else "probe",
            "probe": ({f: probe[f] for f in ("classes", "categories", "identity", "width", "copy_threshold",
                                             "edited_threshold")} if probe else None),
            "index_meta": meta_index}
    if meta["k"] < 1:
        raise DeployError(f"refused: index {index} holds no images; nothing was changed")
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp)
        for item in index.iterdir():  # links: place_version copies what they lead to, once
            if not item.name.startswith("."):
                (staged / item.name).symlink_to(item.resolve())
        (staged / VERSION_RECORD).write_text(json.dumps(meta, indent=2))
        shutil.copy2(PYTHON_MODELS / "match.py", staged / "model.py")
        event = {"action": "deploy", "version": version, "replaced": replaced, "at": meta["deployed_at"],
                 "index": meta["index"]}
        return select_and_switch(client, url, timeout_s, repo, match_pair(names), names, served,
                                 selection_files(served, names, meta), version, replaced, meta, event, staged)


def deployed_indexes(repo: Path) -> list[str]:
    suffix = MatchNames("").match
    return sorted(p.parent.name.removesuffix(suffix) for p in repo.glob(f"{MatchNames('*').match}/{HISTORY}"))


def rollback_index(repo: Path, encoder: Optional[str] = None, url=None, timeout_s: float = 120.0) -> DeployResult:
    """Select the NAME_match version the current one replaced, the same way a deploy selects one."""
    repo = Path(repo)
    encoder = rollback_target(deployed_indexes(repo) if repo.is_dir() else [], encoder, repo, "indexes",
                              lambda e: MatchNames(e).match)
    names = MatchNames(encoder)
    current, target, meta = previous_version(repo / names.match, "an index")
    served = served_for(repo, encoder, f"{names.match} version {target}")
    check_index(meta["index_meta"], f"{names.match} version {target}", served)  # the repository may have changed
    return roll_back_to(repo, match_pair(names), names, served, selection_files(served, names, meta), current, target,
                        meta, url, timeout_s)
