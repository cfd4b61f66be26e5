"""`make demo`: the main job end to end on the built-in corpus.

Build the portable repository for the candidate encoders (by default the embedded squeezenet1_1;
`equiprobe demo --candidates A --candidates B` adds others and their concatenation); start the
real Triton server (explicit model control, so the detector can be deployed into it live); check
one served embedding against the in-process pipeline and send a corrupt file; bulk-embed one crop
of every corpus source in the detection catalog's versions (edits from mild to strong, everyday
ones included) per candidate, and smaller study stores (the fine catalog, generalization,
rotation/flip groups), into memory-mapped stores split by source; train the detector probe of
every candidate on its embedding and early-block FEATURES (the default encoder's also on the fine
store's strong edits of training sources; early stopping on validation AUC; with
--compare-embedding-only also one on the embedding alone), and the study's probes; pick the
detector by validation AUC (never test data) and deploy it with its calibrated score and its
threshold for 5% FPR on validation sources; write the report with the detector cards (detection-catalog, strong fine-catalog edits
made by DALI and by Pillow, and the everyday-edits card made with scikit-image) on test sources;
index the known images (half of the test sources held out as new photos), learn the copy
projection and the reference-aware probe on training sources, deploy NAME_matcher live and print
its cards and a table of edited test photos matched to their originals (trainer/demo_match.py);
score new crops of test sources; stop the server cleanly.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from equiprobe.clients.embedding import EmbeddingClient, ServiceError
from equiprobe.clients.photos import encode
from equiprobe.services.contract import DetectorNames, MatchNames, compose
from equiprobe.services.embed_models import InProcessEmbed
from equiprobe.services.repository import build_repo
from equiprobe.services.server import TritonServer, loopback_config
from equiprobe.trainer.configs import (DETECTOR_ALSO_FINE, DETECTOR_ENSEMBLE, DETECTOR_HIDDEN, DETECTOR_STOP_ON,
                                       ProbeConfig)
from equiprobe.trainer.demo_match import build_matcher, match_table

DATASET = "corpus"
ENCODER = "squeezenet1_1"  # the embedded default: also the study's fine, generalization and groups stores
CANDIDATES = (ENCODER,)  # detector encoders: each alone, and all of them concatenated when several
DETECTOR_CATALOG = "detect"  # what the detector trains on (services/transforms/detect.py)
DETECT_IMAGES = 0  # x 48 versions; 0: one crop of every corpus source
FINE_IMAGES = 200  # x 31 versions: the study's fine-grained task (Table 1) and the strong-edit cards
GENERAL_IMAGES = 64  # x 47 versions: 28 seen sub-transformations and 19 held out (the dearest catalog a version)
GROUPS_IMAGES = 60  # x 5 versions: identity, three rotations, a flip (exact group G-EED)
SEEDS = [0, 1]  # the study repeats 5 seeds (equiprobe train's default); two keep the demo short
MAX_EPOCHS = 60
# The probes it trains (equiprobe demo's options change it). The detector candidates read the
# encoders' early-block FEATURES beside their embeddings (`features`); the study's probes and one
# embedding-only detector candidate of ENCODER read the embedding alone.
PROBE = ProbeConfig(kind="mlp", max_epochs=MAX_EPOCHS, features=True)
REFERENCE_IMAGES = 40  # test sources whose Pillow-made and scikit-image-made versions the served detector scores
# Test copies and new photos whose everyday edits go through the served matcher: every test
# source's first image that the demo's split has (92 copies, 98 new photos); 30 of each once gave a
# category accuracy 0.06 above the full set's, so the card takes them all (about 35 s more).
MATCH_IMAGES = 200
SHOWN_VERSIONS = ("identity", "gaussian_blur", "text_overlay", "reference_style")


def run_demo(workdir: str, probe: ProbeConfig = PROBE, candidates: tuple[str, ...] = CANDIDATES,
             detect_images: int = DETECT_IMAGES, compare_embedding_only: bool = False,
             detector_hidden: int = DETECTOR_HIDDEN, detector_ensemble: bool = DETECTOR_ENSEMBLE,
             detector_stop_on: str = DETECTOR_STOP_ON, detector_also_fine: bool = DETECTOR_ALSO_FINE) -> None:
    from equiprobe.clients.corpus import check_corpus
    from equiprobe.clients.datasets import open_dataset

    console = Console(width=130)
    t0 = time.perf_counter()

    def step(title: str) -> None:  # each stage's start time: where the demo's minutes go
        console.rule(f"{title} [dim]({time.perf_counter() - t0:.0f} s)[/dim]")

    work = Path(workdir)
    repo = work / "model_repository"
    dataset = open_dataset(DATASET)
    # Crop 0 of every corpus image comes first (clients/corpus.py), then crop 1 of each...
    detect_images = detect_images or len(check_corpus())
    sources = len({dataset.record(i).source for i in range(detect_images)})
    step("1. build the model repository")
    shutil.rmtree(repo, ignore_errors=True)  # the demo's own repository: fresh, so the detector starts at v1
    for encoder in dict.fromkeys((ENCODER, *candidates)):
        catalogs = (DETECTOR_CATALOG, "fine", "general", "groups") if encoder == ENCODER else (DETECTOR_CATALOG,)
        result = build_repo(encoder, repo, catalogs=catalogs)
        console.print(f"{result.flavour} repository [bold]{repo}[/bold]: {encoder}, {len(result.models)} models; "
                      f"ONNX export max abs diff vs torch {result.export_max_abs_diff:.2g}")

    step("2. serve with Triton (explicit model control) and embed over gRPC")
    with TritonServer(loopback_config(repo, model_control_mode="explicit")) as server:
        url = server.config.grpc_url
        console.print(f"tritonserver ready on gRPC {url} (pid {server.process.pid})")
        check_service(console, repo, url, dataset.record(0).load())

        step(f"3. bulk-embed the built-in corpus ({detect_images} images, {sources} sources) into stores")
        detect = {e: bulk_embed(console, url, work / f"store_{DETECTOR_CATALOG}_{e}", DETECTOR_CATALOG, detect_images, e)
                  for e in candidates}
        if len(candidates) > 1:
            detect[compose(candidates)] = join_stores(console, work, detect, candidates)
        fine = bulk_embed(console, url, work / "store_fine", "fine", FINE_IMAGES)
        general = bulk_embed(console, url, work / "store_general", "general", GENERAL_IMAGES)
        groups = bulk_embed(console, url, work / "store_groups", "groups", GROUPS_IMAGES)

        step(f"4. train the detector probe of every candidate, and the study's probes (seeds {SEEDS})")
        detector = replace(probe, hidden=detector_hidden, ensemble=detector_ensemble, stop_on=detector_stop_on)
        also = (fine,) if detector_also_fine else ()  # the fine store is ENCODER's: its detector's alone
        detectors = {e: train_demo_probe(console, work, store, DETECTOR_CATALOG, e, detector, also if e == ENCODER else ())
                     for e, store in detect.items()}
        if compare_embedding_only and ENCODER in detect:  # what the FEATURES add: the detector on the embedding alone
            detectors[f"{ENCODER} (embedding only)"] = train_demo_probe(
                console, work, detect[ENCODER], DETECTOR_CATALOG, ENCODER, replace(detector, features=False), also)
        study = replace(probe, features=False)  # the study probes the embedding
        studies = {"fine": train_demo_probe(console, work, fine, "fine", ENCODER, study),
                   "general": train_demo_probe(console, work, general, "general", ENCODER, study)}
        chosen = pick_detector(console, detectors)
        encoder = chosen.split(" ")[0]

        step("5. deploy the chosen detector into the running server")
        deploy_detector(console, repo, url, detectors[chosen])

        step("6. match: index the known images, train the reference-aware probe, deploy the matcher")
        index = build_matcher(console, work, repo, url, detect[ENCODER], detect_images, ENCODER)

        step("7. report: detector and match cards, tables, invariance (G-EED, copy detection), plots")
        report = write_report(console, work, url, encoder, detectors[chosen], [*detect.values(), fine],
                              [general, groups], [*detectors.values(), *studies.values()], fine,
                              (index, detect[ENCODER]))

        step("8. score new crops of test sources and transformed versions of them; match edited test photos")
        score_held_out(console, url, encoder, dataset, max(detect_images, FINE_IMAGES))
        match_table(console, url, ENCODER, detect[ENCODER], index)
    grid = render_grid_for(work / "transforms_detect.png", dataset.record(0).load(), DETECTOR_CATALOG)
    step("9. stopped")
    console.print(f"server stopped; processes left in its group: {len(server.group_pids())}; "
                  f"shared-memory files left: {len(server.shared_memory_files())}")
    console.print(f"report [bold]{report / 'report.md'}[/bold] (and results.json, {len(list(report.glob('*.png')))} "
                  f"PNG plots in {report}); preview grid {grid}; total {time.perf_counter() - t0:.0f} s")


def check_service(console: Console, repo: Path, url: str, encoded: bytes) -> None:
    """One photo served vs in-process, and a truncated JPEG refused while the server keeps answering."""
    client = EmbeddingClient(url, ENCODER)
    client.check()
    served = client.embed(encoded)
    local = InProcessEmbed(repo, ENCODER)([np.frombuffer(encoded, np.uint8)])[0]
    console.print(f"a corpus crop: embedding [{len(served)}], served vs in-process max abs diff "
                  f"{np.abs(local - served).max():.2g}")
    try:
        client.embed(encoded[: len(encoded) // 3])
    except ServiceError as exc:
        console.print(f"a truncated JPEG is refused on its own: [yellow]{exc}[/yellow]")
    console.print(f"and the server still answers: |embedding| = {np.linalg.norm(client.embed(encoded)):.1f}")
    client.close()


def bulk_embed(console: Console, url: str, out: Path, catalog: str, images: int, encoder: str = ENCODER) -> Path:
    from equiprobe.clients.embed_job import EmbedJob, run_embed_job
    from equiprobe.clients.store import SPLITS, Store

    shutil.rmtree(out, ignore_errors=True)  # the demo's own store: rebuilt with the repository
    t0 = time.perf_counter()
    summary = asyncio.run(run_embed_job(EmbedJob(DATASET, encoder, out, url, catalog, limit=images)))
    elapsed = time.perf_counter() - t0
    store = Store.open(out)
    split, sources = np.asarray(store.array("split")), store.sources()
    count = {name: len(set(sources[split == code])) for name, code in SPLITS.items() if name}
    shape = store.array("embeddings").shape
    console.print(f"{encoder} {catalog} store [bold]{out}[/bold]: {summary['done']} images x {shape[1]} versions, "
                  f"{summary['failed']} failed; sources {count['train']} train / {count['validation']} validation / "
                  f"{count['test']} test; {summary['done'] / elapsed:.1f} images/s, "
                  f"{summary['done'] * shape[1] / elapsed:.0f} embeddings/s")
    return out


def join_stores(console: Console, work: Path, stores: dict[str, Path], parts: tuple[str, ...]) -> Path:
    from equiprobe.clients.concat import concat_stores

    name = compose(parts)
    out = work / f"store_{DETECTOR_CATALOG}_{name}"
    shutil.rmtree(out, ignore_errors=True)
    joined = concat_stores([stores[e] for e in parts], out)
    console.print(f"{name} {DETECTOR_CATALOG} store [bold]{out}[/bold]: the stores joined, {joined.manifest['dim']}-d "
                  f"embeddings, {joined.features_dim} FEATURES")
    return out


def train_demo_probe(console: Console, work: Path, store: Path, task: str, encoder: str,
                     probe: ProbeConfig = PROBE, also: tuple[Path, ...] = ()) -> Path:
    from equiprobe.trainer.train import train_probes

    out = work / f"probe_{task}_{encoder}_{probe.kind}{'_features' if probe.features else ''}"
    t0 = time.perf_counter()
    record = train_probes(store, task, probe, SEEDS, out, also=also)
    images = record["images"]
    extra = "".join(f" (+ {a['train_images']} x {a['versions']} from {Path(a['store']).name})" for a in record.get("also", []))
    console.print(f"{encoder} {task}{' (+FEATURES)' if probe.features else ''}: {images['train']} train{extra} / "
                  f"{images['val']} validation / {images['test']} test images, test accuracy "
                  f"{record['summary']['test_accuracy']['mean']:.3f}, {time.perf_counter() - t0:.0f} s -> {out}")
    return out


def pick_detector(console: Console, detectors: dict[str, Path]) -> str:
    """The candidate with the best validation AUC; test figures are printed, never used to choose."""
    from equiprobe.trainer.probe_record import ProbeRecord

    table = Table("candidate", "inputs", "validation AUC", "test AUC", "TPR @ FPR 5% (test)", "top category (test)",
                  f"{DETECTOR_CATALOG} acc. (test)", title=f"detector candidates on {DETECTOR_CATALOG}-catalog "
                  "versions of test sources: originals vs edited")
    cards = {}
    for name, path in detectors.items():
        record = ProbeRecord.read(path)
        cards[name] = c = record.detector
        table.add_row(name, "embedding + FEATURES" if record.features_dim else "embedding",
                      f"{c['validation_auc']:.3f}", f"{c['auc']:.3f}", f"{c['tpr_at_fpr_0.05']:.3f}",
                      f"{c['top_category_accuracy']:.3f}", f"{record.summary['test_accuracy']['mean']:.3f}")
    console.print(table)
    chosen = max(cards, key=lambda e: cards[e]["validation_auc"])
    console.print(f"chosen by validation AUC: [bold]{chosen}[/bold]")
    return chosen


def write_report(console: Console, work: Path, url: str, encoder: str, detector: Path, stores: list[Path],
                 others: list[Path], probes: list[Path], fine: Path, matching: tuple[Path, Path]) -> Path:
    """The report, with the chosen detector's cards: its own (detection-catalog versions of test
    sources), on the study's strong edits made by DALI (the fine store's test sources, offline, as
    served) and by Pillow, and the everyday-edits card (scikit-image), the last two scored by the
    served detector; and the matcher's cards (`matching`: the index, the store whose test images
    it is queried with)."""
    from equiprobe.trainer.detector_card import format_card
    from equiprobe.trainer.match_card import format_match_card, store_match_card
    from equiprobe.trainer.match_served_card import format_served_match_card, served_match_card
    from equiprobe.trainer.everyday_card import cannot_see, everyday_card, format_everyday
    from equiprobe.trainer.reference_card import reference_card
    from equiprobe.trainer.report import build_report, detector_cards
    from equiprobe.trainer.store_card import StoreCardError, card_on_store

    out = work / "report"
    name = DetectorNames(encoder).detector
    reference = {name: reference_card(url, encoder, fine, REFERENCE_IMAGES)}
    everyday = {name: everyday_card(url, encoder, fine, REFERENCE_IMAGES)}
    try:  # a composite detector has no fine store of its own encoder
        strong = {f"{name} on fine": card_on_store(detector, fine)}
    except StoreCardError as exc:
        console.print(f"no DALI-made strong-edit card: {exc}")
        strong = {}
    index, queried = matching
    match = {"store": store_match_card(index, queried),
             "served": served_match_card(url, ENCODER, index, queried, MATCH_IMAGES, MATCH_IMAGES)}
    results = build_report(stores + others, probes, out, max_images=500, reference_cards=reference,
                           everyday_cards=everyday, store_cards=strong, match_cards=match)
    for card_name, card in detector_cards(results).items():
        if card_name.startswith(encoder) or card_name.startswith(name):
            console.print(f"[bold]detector card, {card_name}[/bold] (test sources)")
            for line in format_card(card):
                console.print("  " + line)
    console.print(f"[bold]everyday-edits card, {name}[/bold] (scikit-image, test sources)")
    for line in format_everyday(everyday[name]):
        console.print("  " + line, markup=False, highlight=False)
    console.print(cannot_see(everyday[name]), markup=False)
    console.print(f"[bold]match cards, {MatchNames(ENCODER).matcher}[/bold] (test sources; copies vs new photos in "
                  "no index)")
    for line in format_match_card(match["store"]) + format_served_match_card(match["served"]):
        console.print("  " + line, markup=False, highlight=False)
    row = next(r for r in results["table1"] if r["encoder"] == ENCODER and r.get("fine"))
    cell = lambda s: f"{s['mean']:.3f} +- {s['std']:.3f}" if s else "-"  # noqa: E731
    table = Table("encoder", "probe", "fine-grained (31-way)", "generalization (10-way)", "held-out noise",
                  "held-out style", title="Table 1 layout: test accuracy on held-out sources "
                  "(chance 0.032 and 0.100; the embedding alone, as the study)")
    table.add_row(row["encoder"], row["probe"], cell(row.get("fine")), cell(row.get("general")),
                  cell(row.get("held_out_noise")), cell(row.get("held_out_style")))
    console.print(table)
    study = next(s for s in results["stores"] if s["path"] == str(fine))
    for r in study.get("layerwise", {}).get("rows", []):
        console.print(f"layer-wise linear probe {r['block']:>12} ({r['columns']:>4} values): 31-way accuracy "
                      f"{r['test_accuracy']:.3f}, AUC edited vs original {r['test_auc']:.3f}")
    geed = study["latent_geed"]["per_transformation"]
    most, least = max(geed, key=lambda n: geed[n]["cosine"]), min(geed, key=lambda n: geed[n]["cosine"])
    console.print(f"latent G-EED (cosine, / M): most moved by {most} {geed[most]['cosine']:.2f}, least by {least} "
                  f"{geed[least]['cosine']:.2f}; copy detection recall@1 "
                  f"{study['copy_detection']['overall']['recall@1']:.2f}, "
                  f"@10 {study['copy_detection']['overall']['recall@10']:.2f}")
    groups = results["stores"][-1]["latent_geed"]["groups"]
    console.print("exact group G-EED (euclidean, / M): " + ", ".join(
        f"{g_name} {{{', '.join(g['members'])}}} {g['euclidean']:.2f}" for g_name, g in groups.items()))
    return out


def deploy_detector(console: Console, repo: Path, url: str, detector: Path) -> None:
    from equiprobe.clients.scoring import format_threshold
    from equiprobe.trainer.deploy import deploy

    result = deploy([detector], repo, url)
    meta = result.meta
    inputs = f"EMBEDDING [{meta['dim']}]" + (f" and FEATURES [{meta['features_dim']}]" if meta.get("features") else "")
    console.print(f"{result.names.probe} version {result.version} serving ({result.server}); "
                  f"{result.names.detector}: IMAGE -> {inputs} -> TRANSFORM_PROBS [{len(meta['classes'])}], "
                  f"CATEGORY_PROBS [{len(meta['categories'])}], MANIPULATION_SCORE [1] (calibrated P(edited), equal "
                  f"prior), MANIPULATED [1]; threshold {format_threshold(meta['threshold'])} for FPR "
                  f"{meta['target_fpr']:g} on validation sources")


def unseen_crops(dataset, stored: int, count: int = 4) -> list[tuple[str, bytes]]:
    """(source, JPEG) for new crops of test sources: crops no store of the demo holds."""
    picked: dict[str, bytes] = {}
    for i in range(stored, dataset.count):
        record = dataset.record(i)
        if record.split == "test" and record.source not in picked:
            picked[record.source] = record.load()
        if len(picked) == count:
            break
    return list(picked.items())


def score_held_out(console: Console, url: str, encoder: str, dataset, stored: int) -> None:
    from equiprobe.clients.scoring import Scorer, format_threshold
    from equiprobe.services.transforms import get_catalog
    from equiprobe.services.transforms.preview import expand_one

    catalog = get_catalog("fine")
    scorer = Scorer(url, encoder, top=1)
    table = Table("source (test)", "version", "manipulated?", "P(edited)", "top transformation", "top category")
    verdicts: dict[bool, list[bool]] = {False: [], True: []}
    top1 = []
    for source, data in unseen_crops(dataset, stored):
        versions, _ = expand_one(catalog, data, seed=0)
        for k, t in enumerate(catalog.transforms):
            score = scorer.score(encode(versions[k], quality=90))
            verdicts[k > 0].append(score.manipulated)
            top1.append(score.transformations[0][0] == t.name)
            if t.name in SHOWN_VERSIONS:
                (tn, tp), (cn, cp) = score.transformations[0], score.categories[0]
                table.add_row(source[-28:], t.name, "yes" if score.manipulated else "no",
                              f"{score.manipulation_score:.3f}", f"{tn} {tp:.2f}", f"{cn} {cp:.2f}")
    console.print(table)
    console.print(f"threshold {format_threshold(scorer.threshold)}: originals flagged {np.mean(verdicts[False]):.0%} of "
                  f"{len(verdicts[False])}, transformed versions flagged {np.mean(verdicts[True]):.0%} of "
                  f"{len(verdicts[True])}; top transformation right for {np.mean(top1):.0%} (JPEG uploads)")
    scorer.close()


def render_grid_for(out: Path, data: bytes, catalog_name: str = "fine") -> Path:
    from equiprobe.services.transforms import get_catalog
    from equiprobe.services.transforms.preview import expand_one, render_grid

    catalog = get_catalog(catalog_name)
    versions, params = expand_one(catalog, data, seed=0)
    return render_grid(catalog, versions, params, out)
