"""`equiprobe deploy`: probes into the model repository as NAME_detector, versions and rollback
(trainer/deploy.py); `--index`: an index of known images as NAME_matcher (trainer/match_deploy.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from equiprobe.clients.connection import admin_key_option, api_key_option, root_certificates_option, tls_option

from .common import fail


def deploy(
    probe: list[Path] = typer.Option([], help="Probe directory (probe.pt + probe.json): one fine (or detect) "
                                     "probe, and optionally one general probe for CATEGORY_PROBS. Repeatable."),
    repo: Path = typer.Option(Path("model_repository"), help="Model repository (build-repo) to deploy into."),
    url: str = typer.Option(None, help="gRPC HOST:PORT of the server on REPO (model control explicit or poll): "
                            "it is made to serve the new version before deploy returns."),
    rollback: bool = typer.Option(False, help="Return to the version the current one replaced (kept on disk)."),
    encoder: str = typer.Option(None, help="With --rollback: which detector (or matcher), if REPO has several."),
    index: Path = typer.Option(None, help="Deploy this index of known images (equiprobe index build) as a new "
                               "NAME_match version, served by NAME_matcher (docs/match.md)."),
    copy_threshold: float = typer.Option(None, help="--index: COPY = the best match's cosine similarity >= this; "
                                         "required for an index without a reference-aware probe (else the probe's)."),
    top: int = typer.Option(5, help="--index: how many best matches NAME_match returns (k)."),
    matcher: bool = typer.Option(False, help="With --rollback: roll back NAME_match (the index), not NAME_probe."),
    timeout: float = typer.Option(120.0, help="Seconds to wait for the server to serve the version."),
    target_fpr: float = typer.Option(0.05, help="False-positive rate on new originals that the MANIPULATED "
                                     "threshold is chosen for, on the probe's validation sources."),
    threshold: float = typer.Option(None, help="Use this MANIPULATED threshold (on the calibrated P(edited)) "
                                    "instead of choosing one."),
    admin_key: Optional[str] = admin_key_option(),
    api_key: Optional[str] = api_key_option(),
    tls: bool = tls_option(),
    root_certificates: Optional[Path] = root_certificates_option(),
) -> None:
    """Deploy probes as NAME_detector (IMAGE -> TRANSFORM_PROBS, CATEGORY_PROBS, MANIPULATION_SCORE,
    MANIPULATED, EMBEDDING), a new NAME_probe version; or roll back to the previous one."""
    from equiprobe.clients.connection import Connection
    from equiprobe.clients.scoring import format_threshold
    from equiprobe.trainer.calibration import Calibration
    from equiprobe.trainer.deploy import DeployError, deploy as run_deploy, rollback as run_rollback

    if rollback and (probe or index):
        raise fail("--rollback returns to the previous version; it takes no --probe or --index")
    if index is not None and probe:
        raise fail("deploy takes --probe or --index, not both")
    if index is not None or (rollback and matcher):
        return _deploy_index(index, repo, url, rollback, encoder, timeout, copy_threshold, top,
                             (tls, root_certificates, api_key or None, admin_key or None))
    try:
        server = Connection(url, tls, root_certificates, api_key or None, admin_key or None) if url else None
        result = (run_rollback(repo, encoder, server, timeout) if rollback
                  else run_deploy(probe, repo, server, timeout, target_fpr, threshold))
    except (DeployError, ValueError) as exc:
        raise fail(str(exc))
    meta, names = result.meta, result.names
    action = "rolled back to" if rollback else "deployed"
    replaced = f", replacing version {result.replaced}" if result.replaced else ""
    print(f"{action} {names.probe} version {result.version}{replaced} ({result.flavour} repository {result.repo}); "
          f"categories from the {meta['category_source']}; ONNX Runtime vs torch max abs diff "
          f"{meta['parity_max_abs_diff']:.2g}")
    print(f"{names.detector}: IMAGE -> TRANSFORM_PROBS [{len(meta['classes'])}], CATEGORY_PROBS "
          f"[{len(meta['categories'])}], MANIPULATION_SCORE [1], MANIPULATED [1], EMBEDDING [{meta['dim']}]")
    chosen = (f"chosen for FPR {meta['target_fpr']:g} on validation sources" if meta.get("target_fpr") is not None
              else "given")
    calibration = Calibration.from_dict(meta.get("calibration"))
    print(f"MANIPULATION_SCORE: {calibration.describe()}")
    print(f"operating threshold {format_threshold(meta['threshold'])} ({chosen}): MANIPULATED = MANIPULATION_SCORE "
          ">= threshold")
    if result.server:
        print(f"server {url} serves {names.probe} version {result.version} ({result.server})")
    else:
        print(f"no --url: a server polling REPO picks it up; one in explicit model control needs load_model "
              f"{names.probe} then {names.detector}")


def _deploy_index(index: Optional[Path], repo: Path, url: Optional[str], rollback: bool, encoder: Optional[str],
                  timeout: float, copy_threshold: Optional[float], top: int, security: tuple) -> None:
    from equiprobe.clients.connection import Connection
    from equiprobe.trainer.deploy import DeployError
    from equiprobe.trainer.match_deploy import deploy_index, rollback_index

    try:
        server = Connection(url, *security) if url else None
        result = (rollback_index(repo, encoder, server, timeout) if rollback
                  else deploy_index(index, repo, server, timeout, copy_threshold, top))
    except (DeployError, ValueError) as exc:
        raise fail(str(exc))
    meta, names = result.meta, result.names
    replaced = f", replacing version {result.replaced}" if result.replaced else ""
    print(f"{'rolled back to' if rollback else 'deployed'} {names.match} version {result.version}{replaced} "
          f"({meta['count']} known images, {meta['kind']}; {result.flavour} repository {result.repo})")
    probe = meta.get("probe")
    print(f"{names.matcher}: IMAGE -> MATCH_KEYS [{meta['k']}], MATCH_SIMILARITIES [{meta['k']}], COPY, EDITED, "
          f"TRANSFORMATION, CATEGORY, EDIT_SCORE; COPY = similarity >= {meta['copy_threshold']:g} "
          f"({meta['copy_threshold_source']}); "
          + (f"reference-aware probe: {len(probe['classes'])} transformations, EDITED = EDIT_SCORE >= "
             f"{probe['edited_threshold']:g}" if probe else "no probe: EDITED false, EDIT_SCORE -1"))
    if result.server:
        print(f"server {url} serves {names.match} version {result.version} ({result.server})")
    else:
        print(f"no --url: a server polling REPO picks it up; one in explicit model control needs load_model "
              f"{names.match} then {names.matcher}")
