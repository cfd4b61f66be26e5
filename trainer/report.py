"""`equiprobe report`: stores and trained probes in, numbers, tables and plots out.

results.json holds every figure; report.md shows the tables and links the PNG plots:
  - the detector card of each fine probe: ROC (detector_roc.png), AUC, TPR at FPR 1% and 5%,
    FPR and identity recall at the threshold chosen on validation sources, recall per category,
    on the store's test sources; and, given `reference_cards`, the same figures on versions
    made by the Pillow/numpy implementation and scored by the served detector;
  - the study's Table 1 layout, one row per (encoder, probe): fine-grained accuracy, and the
    generalization task's overall, held-out-noise and held-out-style accuracy (mean +- std
    over seeds), baselines included (logreg / knn probes, pixel and random-weight stores);
  - per-style accuracy, seen and held out (Table 2), from generalization probes;
  - multitask probes against semantic-only probes on the same split;
  - per store: latent G-EED (Euclidean and cosine) and copy-detection recall per transformation
    (trainer.invariance); the exact finite-group form for stores of the groups catalog; softmax
    G-EED of each loadable fine or general probe;
  - per probe: accuracy per transformation and the confusion matrix on its test split;
  - old vs new detectors (probes of two catalog versions, same encoder, task and kind) on the
    same test images and the transformations both catalogs have.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from equiprobe.clients.scoring import format_threshold
from equiprobe.clients.store import Store
from equiprobe.services.transforms import parse_version

from . import invariance, plots
from .data import ProbeData, Task
from .detector_card import plot_roc
from .probe_record import ProbeRecord
from .probes import load_probe, predict
from .tasks import get_task


def _mean_over_runs(runs: list[dict], key: str) -> dict:
    """Per-name mean over seeds of a metric that maps names to values."""
    names = runs[0].get(key) or {}
    return {n: float(np.mean([r[key][n] if not isinstance(r[key][n], dict) else r[key][n]["accuracy"]
                              for r in runs])) for n in names}


Outcomes = dict[tuple[str, str], bool]  # (image key, version name) -> correct?


def probe_section(directory: Path, max_images: int) -> tuple[dict, Optional[Outcomes]]:
    """The probe's figures, and its per-example test outcomes where it can be run on its store
    (a single-head probe with weights), for comparisons across catalog versions."""
    record = ProbeRecord.read(directory)
    spec, runs = get_task(record.task), record.runs
    section = {
        "dir": str(directory), "kind": record.kind, "task": record.task, "encoder": record.encoder,
        "catalog_version": record.catalog_version, "store": record.store, "summary": record.summary,
        "features_dim": record.features_dim,
        "images": record.images, "seeds": record.seeds,
        "per_version_accuracy": _mean_over_runs(runs, "per_version_accuracy"),
    }
    if record.detector is not None:  # train's card: threshold on validation sources, figures on test sources
        section["detector_card"] = record.detector
    if spec.per_style and runs[0].get("per_style_accuracy"):
        seen = {n: s["seen"] for n, s in runs[0]["per_style_accuracy"].items()}
        section["per_style_accuracy"] = {n: {"accuracy": a, "seen": seen[n]}
                                         for n, a in _mean_over_runs(runs, "per_style_accuracy").items()}
    outcomes = None
    store_path = Path(record.store) if record.store else None
    if (directory / "probe.pt").exists() and store_path and (store_path / "manifest.json").exists():
        model, _ = load_probe(directory)
        store = Store.open(store_path)
        data = ProbeData.from_store(store, Task.from_store(store, record.task), record.split or "store",
                                    features=bool(record.features_dim))
        predicted, truth, versions = predict(model, data, "test")
        if predicted.ndim == 1:
            classes = len(data.task.classes)
            matrix = np.zeros((classes, classes), np.int64)
            np.add.at(matrix, (truth, predicted), 1)
            section["confusion"] = {"classes": data.task.classes, "matrix": matrix.tolist()}
            rows, _ = data.examples("test")  # predict reads the examples in this order
            keys, names = np.asarray(store.array("image_keys")), store.manifest["rows"]
            outcomes = {(str(keys[r]), names[v]): bool(c) for r, v, c in zip(rows, versions, predicted == truth)}
        if spec.softmax_geed and not record.features_dim:  # the study's G-EED is of embeddings alone
            section["softmax_geed"] = invariance.softmax_geed(model, store, max_images=max_images)
    return section, outcomes


def store_section(path: Path, max_images: int) -> dict:
    store = Store.open(path)
    m = store.manifest
    section = {"path": str(path), "encoder": m["encoder"], "catalog": m["catalog"],
               "catalog_version": m["catalog_version"], "dataset": m["dataset"], "rows": m["rows"]}
    section["latent_geed"] = invariance.latent_geed(store, max_images=max_images)
    section["copy_detection"] = invariance.copy_detection_recall(store, max_images=max_images)
    if m["catalog"] == "fine" and store.features_dim:  # the encoder's tapped blocks, each probed alone
        from .layerwise import layerwise_table

        section["layerwise"] = layerwise_table(path, progress=False)
    return section


def compare_versions(probes: list[dict], outcomes_by_dir: dict[str, Optional[Outcomes]]) -> list[dict]:
    """Old and new detectors (same encoder and task, different catalog versions) on the same test
    images and the transformations both catalogs have: accuracy of each, per transformation."""
    comparisons = []
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for p in probes:
        groups.setdefault((p["encoder"], p["task"], p["kind"]), []).append(p)
    for (encoder, task, kind), members in groups.items():
        by_version = {p["catalog_version"]: p for p in members}
        if len(by_version) < 2:
            continue
        old, new = (by_version[v] for v in sorted(by_version, key=parse_version)[-2:])
        outcomes = [outcomes_by_dir[p["dir"]] for p in (old, new)]
        if None in outcomes:
            continue
        common = sorted(set(outcomes[0]) & set(outcomes[1]))
        if not common:
            continue
        names = sorted({name for _, name in common})
        per = {n: [float(np.mean([outcomes[i][c] for c in common if c[1] == n])) for i in (0, 1)] for n in names}
        comparisons.append({
            "encoder": encoder, "task": task, "kind": kind, "old": old["catalog_version"], "new": new["catalog_version"],
            "old_dir": old["dir"], "new_dir": new["dir"], "images": len({k for k, _ in common}), "examples": len(common),
            "old_accuracy": float(np.mean([outcomes[0][c] for c in common])),
            "new_accuracy": float(np.mean([outcomes[1][c] for c in common])),
            "per_transformation": {n: {"old": a, "new": b} for n, (a, b) in per.items()}})
    return comparisons


def _cell(stat: Optional[dict]) -> str:
    if not stat:
        return "-"
    return f"{stat['mean']:.3f} +- {stat['std']:.3f}"


def table1(probes: list[dict]) -> list[dict]:
    """The study's Table 1: one row per (encoder, probe kind)."""
    rows: dict[tuple[str, str], dict] = {}
    for p in probes:
        if not get_task(p["task"]).table1 or p.get("features_dim"):  # the study's cells, of the embedding alone
            continue
        row = rows.setdefault((p["encoder"], p["kind"]), {"encoder": p["encoder"], "probe": p["kind"]})
        row.update({column: p["summary"].get(metric) for column, metric in get_task(p["task"]).table1})
    return list(rows.values())


def multitask_rows(probes: list[dict]) -> list[dict]:
    return [{"encoder": p["encoder"], "dir": p["dir"], **{k: p["summary"].get(k) for k in (
        "test_accuracy", "semantic_accuracy", "semantic_only_accuracy", "semantic_accuracy_change")}}
            for p in probes if get_task(p["task"]).semantic_only]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def detector_cards(results: dict) -> dict[str, dict]:
    """name -> card: every fine probe's (DALI-made versions of its store's test sources), and
    the cards of Pillow-made versions scored by the served detector, where the report has them."""
    cards = {f"{p['encoder']} {p['kind']} {p['task']}{' +FEATURES' if p.get('features_dim') else ''} (DALI-made)":
             p["detector_card"] for p in results["probes"] if "detector_card" in p}
    cards.update({f"{name} (DALI-made)": card for name, card in results.get("store_cards", {}).items()})
    cards.update({f"{name} (Pillow-made)": card for name, card in results.get("reference_cards", {}).items()})
    return cards


def match_markdown(cards: dict) -> list[str]:
    """The matcher's cards (issue 24): test sources against an index of known images."""
    if not cards:
        return []
    from .match_card import format_match_card
    from .match_served_card import format_served_match_card

    lines = ["## Matching against known images (test sources)", ""]
    if cards.get("store"):
        lines += ["DALI-made versions of a store's test images (trainer/match_card.py):", "", "```",
                  *format_match_card(cards["store"]), "```", ""]
    if cards.get("served"):
        lines += ["Everyday edits made by scikit-image/scipy/numpy, through the served matcher "
                  "(trainer/match_served_card.py):", "", "```", *format_served_match_card(cards["served"]), "```", ""]
    return lines


def render_plots(results: dict, out: Path) -> list[Path]:
    written = []
    cards = detector_cards(results)
    if cards:
        written.append(plot_roc(cards, out / "detector_roc.png", "Detector ROC, test sources: originals vs "
                                "manipulated"))
    if results.get("everyday_cards"):
        from .everyday_card import plot_everyday

        for name, card in results["everyday_cards"].items():
            written.append(plot_everyday(card, out / f"everyday_{_slug(name)}.png"))
    if (results.get("match_cards") or {}).get("store"):
        from .match_card import plot_match_card

        written.append(plot_match_card(results["match_cards"]["store"], out / "match_card.png"))
    fine = [p for p in results["probes"] if get_task(p["task"]).per_transformation_plot]
    if fine:
        names = fine[0]["per_version_accuracy"].keys()
        written.append(plots.grouped_bars(
            out / "accuracy_per_transformation.png", "Test accuracy per transformation", "accuracy", list(names),
            {f"{p['encoder']} {p['kind']} ({p['task']})": [p["per_version_accuracy"].get(n) for n in names]
             for p in fine}))
    for p in results["probes"]:
        if "confusion" in p:
            written.append(plots.confusion(
                out / f"confusion_{_slug(p['encoder'])}_{p['kind']}_{p['task']}.png",
                f"{p['encoder']} {p['kind']} probe, {p['task']} task (test images)",
                np.array(p["confusion"]["matrix"]), p["confusion"]["classes"]))
        if "per_style_accuracy" in p:
            written.append(plots.seen_unseen_bars(
                out / f"per_style_{_slug(p['encoder'])}_{p['kind']}.png",
                f"{p['encoder']} {p['kind']}: accuracy per style", p["per_style_accuracy"]))
    for s in results["stores"]:
        tag = f"{_slug(s['encoder'])}_{s['catalog']}"
        if "layerwise" in s:
            from .layerwise import plot_layerwise

            written.append(out / f"layerwise_{tag}.png")
            plot_layerwise(s["layerwise"], written[-1])
        geed = s["latent_geed"]["per_transformation"]
        names = list(geed)
        written.append(plots.grouped_bars(
            out / f"geed_{tag}.png", f"Latent G-EED per transformation, {s['encoder']} ({s['catalog']}); "
            "0 = invariant, 1 = as far as a different image", "G-EED", names,
            {d: [geed[n][d] for n in names] for d in invariance.DISTANCES}, ylim=None))
        recall = s["copy_detection"]["per_transformation"]
        names = list(recall)
        written.append(plots.grouped_bars(
            out / f"copy_detection_{tag}.png", f"Copy detection, {s['encoder']}: is the original the nearest "
            "neighbour?", "recall", names,
            {"recall@1": [recall[n]["recall@1"] for n in names], "recall@10": [recall[n]["recall@10"] for n in names]}))
    return written


def calibration_lines(cards: dict[str, dict]) -> list[str]:
    """The calibration of each trained detector: what the score is, how well it reads as a
    probability (validation and test sources), and the raw 1 - P(identity) beside it."""
    from .calibration import Calibration

    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = []
    for name, c in cards.items():
        if not c.get("calibration"):
            continue
        if not lines:
            lines += ["", "Calibration (fitted on validation sources; log loss and expected calibration error "
                      "under the equal prior; raw = 1 - P(identity), the score served before):", "",
                      "| detector | score | log loss val / test | ECE val / test | raw log loss test | raw AUC test | "
                      "threshold as raw score | validation originals | new-source FPR, 90% |",
                      "|---|---|---|---|---|---|---|---|---|"]
        q, rule, raw = c.get("calibration_quality") or {}, c["threshold_rule"], c["raw"]
        val, test = q.get("validation", {}), q.get("test", {})
        get = lambda part, kind, key: part.get(kind, {}).get(key)  # noqa: E731
        interval = rule.get("fpr_interval_90")
        lines.append(f"| {name} | {Calibration.from_dict(c['calibration']).describe()} | "
                     f"{f(get(val, 'calibrated', 'log_loss'))} / {f(get(test, 'calibrated', 'log_loss'))} | "
                     f"{f(get(val, 'calibrated', 'ece'))} / {f(get(test, 'calibrated', 'ece'))} | "
                     f"{f(get(test, 'raw', 'log_loss'))} | {f(raw['auc'])} | {format_threshold(raw['threshold'])} | "
                     f"{rule['validation_originals']} | "
                     + (f"{interval[0]:.3f}-{interval[1]:.3f} |" if interval else "- |"))
    return lines


def markdown(results: dict, images: list[Path]) -> str:
    lines = ["# equiprobe report", ""]
    cards = detector_cards(results)
    if cards:
        lines += ["## Detector card (test sources; threshold chosen on validation sources)", "",
                  "The score is the calibrated P(edited) for an upload a priori as likely edited as not "
                  "(trainer/calibration.py); the threshold is on it.", "",
                  "| detector | AUC | TPR @ FPR 1% | TPR @ FPR 5% | threshold | target FPR | FPR at threshold | "
                  "identity recall | top category right |", "|---|---|---|---|---|---|---|---|---|"]
        for name, c in cards.items():
            f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            at = c["at_threshold"]
            lines.append(f"| {name} | {f(c['auc'])} | {f(c['tpr_at_fpr_0.01'])} | {f(c['tpr_at_fpr_0.05'])} | "
                         f"{format_threshold(c['threshold'])} | {f(c.get('target_fpr'))} | {f(at['fpr'])} | "
                         f"{f(at['identity_recall'])} | "
                         f"{f(c['top_category_accuracy'])} |")
        manipulations = [n for n in next(iter(cards.values()))["per_category"] if n != "identity"]
        lines += ["", "Recall per category (manipulated versions scored at or above the threshold / named "
                  "with the right category):", "", "| detector | " + " | ".join(manipulations) + " |",
                  "|---" * (1 + len(manipulations)) + "|"]
        for name, c in cards.items():
            cells = [("-" if c["per_category"][n]["detected"] is None else
                      f"{c['per_category'][n]['detected']:.2f} / {c['per_category'][n]['named']:.2f}")
                     for n in manipulations]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += calibration_lines(cards)
        lines.append("")
    if results.get("everyday_cards"):
        from .everyday_card import everyday_markdown

        lines += everyday_markdown(results["everyday_cards"])
    lines += match_markdown(results.get("match_cards") or {})
    lines += ["## Table 1: probe accuracy (test images; mean +- std over seeds)", "",
              "| encoder | probe | fine-grained (31-way) | generalization (10-way) | held-out noise | held-out style |",
              "|---|---|---|---|---|---|"]
    for r in results["table1"]:
        lines.append(f"| {r['encoder']} | {r['probe']} | {_cell(r.get('fine'))} | {_cell(r.get('general'))} | "
                     f"{_cell(r.get('held_out_noise'))} | {_cell(r.get('held_out_style'))} |")
    styles = [p for p in results["probes"] if "per_style_accuracy" in p]
    if styles:
        lines += ["", "## Table 2: accuracy per style (generalization task)", "",
                  "| encoder | probe | style | seen in training | accuracy |", "|---|---|---|---|---|"]
        for p in styles:
            for name, s in sorted(p["per_style_accuracy"].items(), key=lambda kv: (not kv[1]["seen"], kv[0])):
                lines.append(f"| {p['encoder']} | {p['kind']} | {name} | {'yes' if s['seen'] else 'no'} | "
                             f"{s['accuracy']:.3f} |")
    if results["multitask"]:
        lines += ["", "## Multitask probe vs semantic-only probe (same split)", "",
                  "| encoder | transformation acc. | semantic acc. (multitask) | semantic acc. (semantic-only) | change |",
                  "|---|---|---|---|---|"]
        for r in results["multitask"]:
            lines.append(f"| {r['encoder']} | {_cell(r['test_accuracy'])} | {_cell(r['semantic_accuracy'])} | "
                         f"{_cell(r['semantic_only_accuracy'])} | {_cell(r['semantic_accuracy_change'])} |")
    for c in results.get("catalog_comparison", []):
        lines += ["", f"## Old vs new detector: {c['encoder']} {c['kind']} {c['task']}, {c['old']} vs {c['new']}", "",
                  f"The same {c['images']} test images and the {len(c['per_transformation'])} transformations both "
                  f"catalogs have ({c['examples']} examples): accuracy {c['old_accuracy']:.3f} (old) vs "
                  f"{c['new_accuracy']:.3f} (new).", "", "| transformation | old | new |", "|---|---|---|"]
        for name, acc in c["per_transformation"].items():
            lines.append(f"| {name} | {acc['old']:.3f} | {acc['new']:.3f} |")
    for s in results["stores"]:
        lines += ["", f"## Invariance: {s['encoder']}, {s['catalog_version']} ({s['path']})", ""]
        geed, recall = s["latent_geed"], s["copy_detection"]
        norm = geed["normalizer"]
        lines += [f"{geed['images']} images. Latent G-EED = E_x d(f(x), f(t x)) / M, the two-point orbit form "
                  f"{{x, t x}}; M = mean distance between distinct images (euclidean {norm['euclidean']:.3g}, "
                  f"cosine {norm['cosine']:.4g}). Copy detection: is x's original the nearest (top-10) identity "
                  f"embedding to f(t x)? Overall recall@1 {recall['overall']['recall@1']:.3f}, "
                  f"@10 {recall['overall']['recall@10']:.3f}.", "",
                  "| transformation | G-EED euclidean | G-EED cosine | copy recall@1 | copy recall@10 |",
                  "|---|---|---|---|---|"]
        for name, g in geed["per_transformation"].items():
            r = recall["per_transformation"][name]
            lines.append(f"| {name} | {g['euclidean']:.3f} | {g['cosine']:.3f} | {r['recall@1']:.3f} | "
                         f"{r['recall@10']:.3f} |")
        if geed["groups"]:
            lines += ["", "Exact finite-group G-EED, E_x E_{g in G} d(f(x), f(g x)) / M (identity included):", "",
                      "| group | members | G-EED euclidean | G-EED cosine |", "|---|---|---|---|"]
            for name, g in geed["groups"].items():
                lines.append(f"| {name} | {', '.join(g['members'])} | {g['euclidean']:.3f} | {g['cosine']:.3f} |")
    layerwise = [s for s in results["stores"] if "layerwise" in s]
    if layerwise:
        lines += ["", "## Layer-wise linear probes (Alain and Bengio): how much of the fine task each block holds", "",
                  "One standardized logistic regression per block's pooled statistics (FEATURES), per final "
                  "embedding and on everything; C chosen on validation sources, figures on test sources.", "",
                  "| encoder | block | values | C | 31-way accuracy | AUC edited vs original |", "|---|---|---|---|---|---|"]
        for s in layerwise:
            for r in s["layerwise"]["rows"]:
                lines.append(f"| {s['encoder']} | {r['block']} | {r['columns']} | {r['C']:g} | "
                             f"{r['test_accuracy']:.3f} | {r['test_auc']:.3f} |")
    probes_geed = [p for p in results["probes"] if "softmax_geed" in p]
    if probes_geed:
        lines += ["", "## Softmax G-EED of the probes (KL between the probe's outputs on x and t x)", "",
                  "| encoder | probe | task | transformation | KL (nats) | KL / mean KL of distinct images |",
                  "|---|---|---|---|---|---|"]
        for p in probes_geed:
            for name, g in p["softmax_geed"]["per_transformation"].items():
                lines.append(f"| {p['encoder']} | {p['kind']} | {p['task']} | {name} | {g['kl']:.3f} | "
                             f"{g['normalized']:.3f} |")
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"


def build_report(stores: list[Path], probes: list[Path], out: Path, max_images: int = 2000,
                 reference_cards: Optional[dict[str, dict]] = None,
                 everyday_cards: Optional[dict[str, dict]] = None,
                 store_cards: Optional[dict[str, dict]] = None,
                 match_cards: Optional[dict[str, dict]] = None) -> dict:
    """`reference_cards`: detector cards of Pillow-made versions (trainer.reference_card), by detector;
    `everyday_cards`: everyday-edits cards (trainer.everyday_card), by detector; `store_cards`: a
    detector's cards on another store's DALI-made test versions (trainer.store_card), by name;
    `match_cards`: the matcher's cards ("store": trainer.match_card, "served": trainer.match_served_card)."""
    out.mkdir(parents=True, exist_ok=True)
    results = {"stores": [store_section(Path(s), max_images) for s in stores],
               "probes": [], "reference_cards": reference_cards or {}, "everyday_cards": everyday_cards or {},
               "store_cards": store_cards or {}, "match_cards": match_cards or {}}
    outcomes_by_dir = {}
    for path in probes:
        section, outcomes_by_dir[str(Path(path))] = probe_section(Path(path), max_images)
        results["probes"].append(section)
    results["table1"] = table1(results["probes"])
    results["multitask"] = multitask_rows(results["probes"])
    results["catalog_comparison"] = compare_versions(results["probes"], outcomes_by_dir)
    images = render_plots(results, out)
    results["plots"] = [p.name for p in images]
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(markdown(results, images))
    return results
