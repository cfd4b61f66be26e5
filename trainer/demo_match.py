"""The demo's matching step (issue 24): an index of the corpus's known images, its copy projection
and reference-aware probe, deployed live as NAME_matcher, and a table of edited test photos
matched to their originals.

Known images: one crop of every corpus source, embedded as given (identity versions alone,
clients/index_dataset.py), except half of the test sources (by a hash of the source), which stay
out of every index: they are the new photos a matcher must not match. The copy projection and the
probe learn from the detection store's training sources (its versions against the known
originals) and their thresholds from its validation sources; the cards read test sources only.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from .data import unit_hash

from equiprobe.services.contract import MatchNames

NEW_PHOTO_SHARE = 0.5  # of the test sources: kept out of the index (non-copies)
TABLE_EDITS = ("gamma_curve", "white_balance", "small_rotation", "dct_requantize", "watermark_text")


def new_photo_keys(store_path: Path) -> set[str]:
    """Keys of the test images whose source is held out of the index (NEW_PHOTO_SHARE of test sources)."""
    from equiprobe.clients.store import SPLITS, Store

    store = Store.open(store_path)
    split, keys, sources = np.asarray(store.array("split")), np.asarray(store.array("keys")), store.sources()
    return {str(keys[r]) for r in np.flatnonzero(split == SPLITS["test"]) if unit_hash(str(sources[r]), "new-photo") < NEW_PHOTO_SHARE}


def build_matcher(console: Console, work: Path, repo: Path, url: str, detect_store: Path, images: int,
                  encoder: str) -> Path:
    """Embed the known images, build the index (projection learned on detect_store's training
    sources), train its probe, deploy it into the running server; returns the index directory."""
    from equiprobe.clients.embed_job import EmbedJob
    from equiprobe.clients.index_build import build_index
    from equiprobe.clients.index_dataset import embed_identities

    from .match_deploy import deploy_index
    from .match_probe import MatchProbeConfig
    from .match_probe_train import train_match_probe

    references, index = work / "store_known", work / "index_known"
    job = EmbedJob("corpus", encoder, references, url, catalog="groups", limit=images, uploads="none")
    summary = asyncio.run(embed_identities(job, progress=True))
    held_out = new_photo_keys(detect_store)
    meta = build_index([references], index, projection_from=detect_store, exclude_keys=held_out, replace=True,
                       progress=True)
    console.print(f"index [bold]{index}[/bold]: {meta['count']} known images ({summary['done']} embedded as given, "
                  f"{len(held_out)} test images held out as new photos), {meta['kind']}, copy projection "
                  f"{meta['projection']['width']} -> {meta['projection']['dim']} learned on the detection store's "
                  f"training sources")
    record = train_match_probe(index, detect_store, MatchProbeConfig(), progress=True)
    val = record["validation"]
    console.print(f"reference-aware probe: validation {val['classes']}-way accuracy {val['probe']['accuracy']:.3f}, category "
                  f"{val['probe']['category_accuracy']:.3f}, edited AUC {val['probe']['edited_auc']:.3f}; copy "
                  f"threshold {record['copy_threshold']:.3f} (1% of validation non-copies), edited threshold "
                  f"{record['edited_threshold']:.3f}")
    result = deploy_index(index, repo, url=url)
    names = MatchNames(encoder)
    console.print(f"deployed {names.match} version {result.version} into the running server ({result.server}): "
                  f"{names.matcher} serves it")
    return index


def match_table(console: Console, url: str, encoder: str, detect_store: Path, index: Path, count: int = 3) -> None:
    """Edited test photos (scikit-image edits, never trained on) and new photos through NAME_matcher."""
    from equiprobe.clients.matching import Matcher
    from equiprobe.clients.store import Store
    from equiprobe.services.match_index import MatchIndex

    from .everyday_card import apply_edit, get_edit
    from .everyday_card import store_canvases
    from .match_served_card import split_test_images
    from equiprobe.clients.photos import encode

    store = Store.open(detect_store)
    copies, new = split_test_images(store, set(MatchIndex.open(index).keys.tolist()), count, 2)
    table = Table(title=f"{MatchNames(encoder).matcher}: edited test photos (scikit-image, never trained on) and new "
                  "photos (in no index)")
    for column in ("upload (test source)", "edit", "best match", "similarity", "copy", "edited", "named edit"):
        table.add_column(column)
    matcher = Matcher(url, encoder, top=1)
    short = lambda key: key.split("/")[-2] if key.count("/") >= 2 else key  # noqa: E731  corpus/<source>/<crop>
    try:
        for i, (key, content_key, rgb) in enumerate([*store_canvases(store, copies), *store_canvases(store, new)]):
            is_copy = i < len(copies)
            edits = [TABLE_EDITS[(i + j) % len(TABLE_EDITS)] for j in range(2)] if is_copy else [None]
            for name in edits:
                pixels = apply_edit(get_edit(name), rgb, content_key) if name else rgb
                m = matcher.match(encode(pixels, quality=90))
                best, sim = m.matches[0] if m.matches else ("", float("nan"))
                if is_copy:
                    found = "its original" if best == key else f"[red]{short(best)}[/red]"
                else:
                    found = f"{short(best)} (a new photo)"
                named = f"{m.transformation} ({m.category})" if m.transformation else "-"
                table.add_row(short(key) if is_copy else f"new: {short(key)}", name or "original", found,
                              f"{sim:.3f}", "yes" if m.copy else "no", "yes" if m.edited else "no", named)
    finally:
        matcher.close()
    console.print(table)
