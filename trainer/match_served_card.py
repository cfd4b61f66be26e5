"""The match card on edits made by another library, through the served NAME_matcher.

Copies: test-source images of a store whose keys are in the deployed index, each uploaded as a fresh
re-encoding of the original and as its everyday edits (trainer.everyday_card: written with
scikit-image, scipy and numpy; no training path makes them). New photos: test-source images in no
index, uploaded as a fresh re-encoding and `new_photo_edits` of the everyday edits, a different few
for each (`rotating_edits`: every edit is made for some new photos; every version is a non-copy; all
22 for each of 98 new photos cost the demo about 40 s and measure the same thing). Figures per edit
and by group (artifacts; plausible tone, colour and geometry edits): recall@1 and @10 of the right
original, copies called, the category named for matched copies (judged only for edits whose
operation a row of the probe's catalog does: `Edit.same_as`; the others have no right name in the
catalog and are counted apart), and the AUC of the edit score between matched edited copies and
matched re-uploads. Overall: ISC micro-AP over copies and new photos, and the share of new photos
matched at the deployed copy threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from equiprobe.services.contract import MatchNames

from .everyday_card import EDITS, rotating_edits, served_while_made, store_canvases
from .match_metrics import auc, micro_average_precision, recall_at

ORIGINAL = "original"


def split_test_images(store, known: set, images: int, new_images: int) -> tuple[list[int], list[int]]:
    from .reference_card import test_images

    keys = np.asarray(store.array("keys"))
    rows = test_images(store, 10 ** 9)
    copies = [r for r in rows if keys[r] in known][:images]
    new = [r for r in rows if keys[r] not in known][:new_images]
    return copies, new


def expected_categories(classes: list[str], categories: list[str]) -> dict[str, set]:
    """Edit name -> the categories of the probe's rows doing the same operation (empty: novel)."""
    by_row = dict(zip(classes, categories))
    return {e.name: {by_row[r] for r in e.same_as if r in by_row} for e in EDITS}


def served_match_card(url, encoder: str, index_path: Path, store_path: Path, images: int = 40,
                      new_images: int = 40, workers: int = 4, seed: int = 0, progress: bool = True,
                      new_photo_edits: int = 4) -> dict:
    from equiprobe.clients.matching import Matcher
    from equiprobe.clients.store import Store
    from equiprobe.services.match_index import MatchIndex

    from .match_probe import read_record

    index, store = MatchIndex.open(Path(index_path)), Store.open(Path(store_path))
    known = set(index.keys.tolist())
    copies, new = split_test_images(store, known, images, new_images)
    if not copies:
        raise ValueError(f"{store_path}: none of its test images is in {index_path}")
    record = read_record(Path(index_path)) or {}
    expected = expected_categories(record.get("classes", []), record.get("categories", []))
    matcher = Matcher(url, encoder, top=10)
    matcher.check()
    try:
        canvases = ((content, rgb) for _, content, rgb in store_canvases(store, copies + new))
        answers = served_while_made(matcher.match, canvases, len(copies + new), seed, workers,
                                    "everyday edits through NAME_matcher", progress,
                                    lambda i: EDITS if i < len(copies) else rotating_edits(i, new_photo_edits))
    finally:
        matcher.close()
    keys = [str(key) for key in np.asarray(store.array("keys"))[copies + new]]
    rows = [{"key": keys[i], "edit": name, "copy_query": keys[i] in known, "top": [k for k, _ in a.matches],
             "similarity": a.matches[0][1] if a.matches else -1.0, "copy": a.copy, "edited": a.edited,
             "category": a.category, "score": a.score} for i, name, a in answers]
    return summarize(rows, expected, {e.name: e.group for e in EDITS}) | {
        "matcher": MatchNames(encoder).matcher, "index": str(index_path), "store": str(store_path), "seed": int(seed),
        "copies": len(copies), "new_photos": len(new), "new_photo_edits": min(new_photo_edits, len(EDITS)),
        "index_images": index.count}


def summarize(rows: list[dict], expected: dict[str, set], groups: dict[str, str]) -> dict:
    """The card's figures from per-upload rows (see served_match_card); pure, tested on its own."""
    copies = [r for r in rows if r["copy_query"]]
    new = [r for r in rows if not r["copy_query"]]
    right = [r["top"][:1] == [r["key"]] for r in copies]
    for r, ok in zip(copies, right):
        r["matched"] = bool(ok and r["copy"])
    reuploads = [r["score"] for r in copies if r["edit"] == ORIGINAL and r["matched"]]

    def figures(sel: list[dict]) -> dict:
        matched = [r for r in sel if r["matched"]]
        judged = [r for r in matched if expected.get(r["edit"])]
        return {"queries": len(sel),
                "recall@1": recall_at([r["top"] for r in sel], [r["key"] for r in sel], 1),
                "recall@10": recall_at([r["top"] for r in sel], [r["key"] for r in sel], 10),
                "copy": float(np.mean([r["matched"] for r in sel])) if sel else None,
                "category_accuracy": float(np.mean([r["category"] in expected[r["edit"]] for r in judged]))
                if judged else None,
                "category_judged": len(judged),
                "edited_auc": auc([r["score"] for r in matched], reuploads) if matched else None,
                "edited_tpr": float(np.mean([r["edited"] for r in matched])) if matched else None}

    edited = [r for r in copies if r["edit"] != ORIGINAL]
    per_edit = {name: {"group": group, **figures([r for r in edited if r["edit"] == name])}
                for name, group in groups.items()}
    out = {"all_edits": figures(edited),
           "groups": {g: figures([r for r in edited if groups.get(r["edit"]) == g]) for g in sorted(set(groups.values()))},
           "reuploads": {"recall@1": float(np.mean([ok for r, ok in zip(copies, right) if r["edit"] == ORIGINAL])),
                         "copy": float(np.mean([r["matched"] for r in copies if r["edit"] == ORIGINAL])),
                         "called_edited": float(np.mean([r["edited"] for r in copies
                                                         if r["edit"] == ORIGINAL and r["matched"]]))
                         if reuploads else None},
           "per_edit": per_edit}
    originals_new = [r for r in new if r["edit"] == ORIGINAL]
    out["new_photos_matched"] = float(np.mean([r["copy"] for r in originals_new])) if originals_new else None
    out["new_photos_matched_any_version"] = float(np.mean([r["copy"] for r in new])) if new else None
    sims = np.array([r["similarity"] for r in copies] + [r["similarity"] for r in new], np.float64)
    correct = np.array(right + [False] * len(new), bool)
    out["micro_ap"] = micro_average_precision(sims, correct, len(copies))
    return out


def format_served_match_card(card: dict) -> list[str]:
    def f(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:.3f}"
    lines = [f"{card['copies']} test originals in an index of {card['index_images']} images, {card['new_photos']} new "
             f"test photos (each with {card.get('new_photo_edits', len(EDITS))} of the edits); everyday edits by "
             f"scikit-image/scipy/numpy through {card['matcher']}",
             f"{'edits':<12} {'recall@1':>9} {'recall@10':>9} {'copy':>6} {'category':>9} {'edited AUC':>11}"]
    for name, fig in [("all", card["all_edits"]), *card["groups"].items()]:
        lines.append(f"{name:<12} {f(fig['recall@1']):>9} {f(fig['recall@10']):>9} {f(fig['copy']):>6} "
                     f"{f(fig['category_accuracy']):>9} {f(fig['edited_auc']):>11}")
    lines.append(f"re-uploads: recall@1 {f(card['reuploads']['recall@1'])}, called copies {f(card['reuploads']['copy'])}, "
                 f"called edited {f(card['reuploads']['called_edited'])}; new photos matched "
                 f"{f(card['new_photos_matched'])} (any version {f(card['new_photos_matched_any_version'])}); "
                 f"micro-AP {f(card['micro_ap'])}")
    return lines
