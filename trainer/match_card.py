"""The match card on a store's test sources: what `equiprobe index card` prints.

Queries are every version of every test-source image of a store whose catalog the index was not
built from (its DALI-made edits; the identity version is a fresh re-encoding of the original, a
re-upload), searched as served (trainer.match_probe.match_uploads, the served logic in-process).
Test images whose key is in the index are copies (the rest of the index is their distractors);
test images in no index are new photos, the non-copies. Figures (trainer.match_metrics):
recall@1 and @10 of the right original, ISC micro average precision over copies and new photos,
the share of copies called copies and of new photos matched, the category and transformation
named for matched copies, and the AUC of the edit score between edited copies and re-uploads
(matched ones), overall, per edit and for the tone, colour and geometry edits a detector without
the original cannot see. The index's probe and thresholds were fitted on training and validation
sources; this reads test sources only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from equiprobe.clients.index_stores import read_versions
from equiprobe.clients.store import DONE, SPLITS, Store
from equiprobe.services.match_index import MatchIndex

from .match_metrics import auc, micro_average_precision, recall_at
from .match_probe import load_probe, match_uploads

# What a detector without the original cannot see (docs/detector.md): tone, colour, small geometry.
BLIND_CATEGORIES = ("tone", "filtering", "geometry")
CHUNK = 64  # images per search


def _results(index, probe, store, rows, width, k):
    results = []
    for start in range(0, len(rows), CHUNK):
        x = read_versions(store, rows[start:start + CHUNK])[..., :width]  # W the index's references have
        results += match_uploads(index, probe, x.reshape(-1, x.shape[-1]), k=k)
    return results


def store_match_card(index_path: Path, store_path: Path, k: int = 10) -> dict:
    from equiprobe.services.transforms import get_catalog

    index, store = MatchIndex.open(Path(index_path)), Store.open(Path(store_path))
    probe = load_probe(index)
    width = index.reference_width or index.dim
    keys, split = np.asarray(store.array("keys")), np.asarray(store.array("split"))
    test = np.flatnonzero((split == SPLITS["test"]) & (np.asarray(store.array("status")) == DONE))
    known = set(index.keys.tolist())
    copies = np.array([r for r in test if keys[r] in known], np.int64)
    new = np.array([r for r in test if keys[r] not in known], np.int64)
    if not len(copies):
        raise ValueError(f"{store_path}: none of its test images is in {index_path}; index the images the card queries")
    classes = list(store.manifest["classes"])
    category = {t.name: t.category for t in get_catalog(store.manifest["catalog"]).transforms}
    category["identity"] = "identity"
    k_versions = len(classes)
    identity = classes.index("identity")

    found = _results(index, probe, store, copies, width, k)
    truth = np.repeat(keys[copies], k_versions)
    version = np.tile(np.arange(k_versions), len(copies))
    edited = version != identity
    best_key = np.array([r["keys"][0] for r in found])
    right = best_key == truth
    similarity = np.array([r["similarities"][0] for r in found])
    copy = np.array([r["copy"] for r in found]) & right
    score = np.array([r["edit_score"] for r in found])
    named = np.array([r["transformation"] for r in found])
    true_name = np.array([classes[v] for v in version])

    new_found = _results(index, probe, store, new, width, 1) if len(new) else []
    new_version = np.tile(np.arange(k_versions), len(new))
    new_similarity = np.array([r["similarities"][0] for r in new_found])
    new_copy = np.array([r["copy"] for r in new_found], bool)

    matched = copy & edited
    reuploads = score[copy & ~edited]
    per_edit = {}
    for v, name in enumerate(classes):
        if v == identity:
            continue
        sel = version == v
        per_edit[name] = {"category": category[name], "recall@1": float(right[sel].mean()),
                          "copy": float(copy[sel].mean()), "named": float((named[sel & copy] == name).mean())
                          if (sel & copy).any() else None, "edited_auc": auc(score[sel & copy], reuploads)}
    blind = matched & np.isin([category[n] for n in true_name], BLIND_CATEGORIES)
    top = [r["keys"] for r in found]
    return {
        "index": str(index_path), "store": str(store_path), "catalog": store.manifest["catalog"],
        "copy_threshold": probe.record["copy_threshold"] if probe else None,
        "edited_threshold": probe.record["edited_threshold"] if probe else None,
        "copies": {"images": int(len(copies)), "queries": int(len(found)), "index_images": index.count},
        "new_photos": {"images": int(len(new)), "queries": int(len(new_found))},
        "recall@1": recall_at([t for t, e in zip(top, edited) if e], truth[edited], 1),
        "recall@10": recall_at([t for t, e in zip(top, edited) if e], truth[edited], k),
        "reupload_recall@1": float(right[~edited].mean()),
        "micro_ap": micro_average_precision(np.r_[similarity, new_similarity],
                                            np.r_[right, np.zeros(len(new_similarity), bool)], len(similarity)),
        "copy_rate_edited": float(copy[edited].mean()), "copy_rate_reuploads": float(copy[~edited].mean()),
        "new_photos_matched": float(new_copy[new_version == identity].mean()) if len(new) else None,
        "new_photos_matched_any_version": float(new_copy.mean()) if len(new) else None,
        "category_accuracy": float(np.mean([category[n] == category[t] for n, t in zip(named[matched],
                                                                                       true_name[matched])]))
        if matched.any() else None,
        "transformation_accuracy": float((named[matched] == true_name[matched]).mean()) if matched.any() else None,
        "edited_auc": auc(score[matched], reuploads),
        "edited_auc_tone_colour_geometry": auc(score[blind], reuploads),
        "edited_tpr": float(np.mean([r["edited"] for r, m in zip(found, matched) if m])) if matched.any() else None,
        "edited_fpr_reuploads": float(np.mean([r["edited"] for r, m in zip(found, copy & ~edited) if m]))
        if (copy & ~edited).any() else None,
        "per_edit": per_edit,
    }


def format_match_card(card: dict) -> list[str]:
    def f(v):
        return "-" if v is None else f"{v:.3f}"
    return [f"{card['copies']['images']} test originals in an index of {card['copies']['index_images']} images; "
            f"{card['new_photos']['images']} new test photos in no index ({card['catalog']} versions, DALI-made)",
            f"recall@1 {f(card['recall@1'])}, recall@10 {f(card['recall@10'])} (re-uploads "
            f"{f(card['reupload_recall@1'])}); micro-AP {f(card['micro_ap'])}",
            f"called copies: edited {f(card['copy_rate_edited'])}, re-uploads {f(card['copy_rate_reuploads'])}; "
            f"new photos matched {f(card['new_photos_matched'])}",
            f"matched copies: category {f(card['category_accuracy'])}, transformation "
            f"{f(card['transformation_accuracy'])}; edited AUC {f(card['edited_auc'])} (tone, colour, geometry "
            f"{f(card['edited_auc_tone_colour_geometry'])}), TPR {f(card['edited_tpr'])}, re-uploads called edited "
            f"{f(card['edited_fpr_reuploads'])}"]


def plot_match_card(card: dict, out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(card["per_edit"], key=lambda n: card["per_edit"][n]["recall@1"])
    fig, ax = plt.subplots(figsize=(max(8, 0.3 * len(names) + 3), 4.5))
    x = np.arange(len(names))
    for offset, field, label in ((-0.2, "recall@1", "recall@1"), (0.2, "edited_auc", "edited AUC (matched)")):
        ax.bar(x + offset, [card["per_edit"][n][field] or 0 for n in names], 0.4, label=label)
    ax.set_xticks(x, names, rotation=70, ha="right", fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    ax.set_title("match card per edit (test sources)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
