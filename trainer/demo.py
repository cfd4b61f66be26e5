"""`make demo`: the main job end to end on the built-in corpus.

Build the portable repository for the candidate encoders (squeezenet1_1, open_nsfw); start the
real Triton server (explicit model control, so the detector can be deployed into it live);
check one served embedding against the in-process pipeline and send a corrupt file; bulk-embed
one crop of every corpus source in all 31 versions per encoder (and smaller generalization and
rotation/flip group stores) into memory-mapped stores, split by source; train the fine-grained
MLP probe of every candidate (each encoder alone, and both concatenated: the stores joined) and
the generalization probe; pick the detector by validation AUC
(never test data) and deploy it with its threshold for 5% FPR on validation sources; write the
report with the detector card, on DALI-made and on Pillow-made versions of test sources; score
new crops of test sources; stop the server cleanly.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from equiprobe.clients.embedding import EmbeddingClient, ServiceError
from equiprobe.clients.photos import encode
from equiprobe.services.embed_models import InProcessEmbed
from equiprobe.services.repository import build_repo
from equiprobe.services.server import TritonServer, loopback_config
from equiprobe.trainer.configs import ProbeConfig

DATASET = "corpus"
ENCODER = "squeezenet1_1"  # the embedded default: also the generalization and groups stores
CANDIDATES = ("squeezenet1_1", "open_nsfw")  # each alone, and both concatenated (COMPOSITE)
COMPOSITE = "+".join(CANDIDATES)  # the detector is the candidate with the best validation AUC
FINE_IMAGES = 0  # x 31 versions; 0: one crop of every corpus source
GENERAL_IMAGES = 150  # x 47 versions: 28 seen sub-transformations and 19 held out
GROUPS_IMAGES = 100  # x 5 versions: identity, three rotations, a flip (exact group G-EED)
SEEDS = [0, 1]  # the study repeats 5 seeds (equiprobe train's default); two keep the demo short
MAX_EPOCHS = 60
PROBE = ProbeConfig(kind="mlp", max_epochs=MAX_EPOCHS)  # the probes it trains (equiprobe demo's options change it)
REFERENCE_IMAGES = 40  # test sources whose Pillow-made versions the served detector scores
SHOWN_VERSIONS = ("identity", "gaussian_blur", "text_overlay", "reference_style")


def run_demo(workdir: str, probe: ProbeConfig = PROBE) -> None:
    from equiprobe.clients.corpus import check_corpus
    from equiprobe.clients.datasets import open_dataset

    console = Console(width=130)
    work = Path(workdir)
    repo = work / "model_repository"
    t0 = time.perf_counter()
    dataset = open_dataset(DATASET)
    # Crop 0 of every corpus image comes first (clients/corpus.py), then crop 1 of each...
    fine_images = FINE_IMAGES or len(check_corpus())
    sources = len({dataset.record(i).source for i in range(fine_images)})
    console.rule("1. build the model repository")
    shutil.rmtree(repo, ignore_errors=True)  # the demo's own repository: fresh, so the detector starts at v1
    for encoder in CANDIDATES:
        catalogs = ("fine", "general", "groups") if encoder == ENCODER else ("fine",)
        result = build_repo(encoder, repo, catalogs=catalogs)
        console.print(f"{result.flavour} repository [bold]{repo}[/bold]: {encoder}, {len(result.models)} models; "
                      f"ONNX export max abs diff vs torch {result.export_max_abs_diff:.2g}")

    console.rule("2. serve with Triton (explicit model control) and embed over gRPC")
    with TritonServer(loopback_config(repo, model_control_mode="explicit")) as server:
        url = server.config.grpc_url
        console.print(f"tritonserver ready on gRPC {url} (pid {server.process.pid})")
        check_service(console, repo, url, dataset.record(0).load())

        console.rule(f"3. bulk-embed the built-in corpus ({fine_images} images, {sources} sources) into stores")
        fine = {e: bulk_embed(console, url, work / f"store_fine_{e}", "fine", fine_images, e) for e in CANDIDATES}
        fine[COMPOSITE] = join_stores(console, work, fine)
        general = bulk_embed(console, url, work / "store_general", "general", GENERAL_IMAGES)
        groups = bulk_embed(console, url, work / "store_groups", "groups", GROUPS_IMAGES)

        console.rule(f"4. train the fine-grained MLP probe of every candidate and the generalization probe "
                     f"(seeds {SEEDS})")
        probes = {f"fine_{e}": train_demo_probe(console, work, store, "fine", e, probe) for e, store in fine.items()}
        probes["general"] = train_demo_probe(console, work, general, "general", ENCODER, probe)
        chosen = pick_detector(console, probes)

        console.rule("5. deploy the chosen detector into the running server")
        deploy_detector(console, repo, url, probes, chosen)

        console.rule("6. report: detector card, tables, invariance (G-EED, copy detection), plots")
        report = write_report(console, work, url, chosen, fine, [general, groups], probes)

        console.rule("7. score new crops of test sources and transformed versions of them")
        score_held_out(console, url, chosen, dataset, fine_images)
    grid = render_grid_for(work / "transforms_fine.png", dataset.record(0).load())
    console.rule("8. stopped")
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


def join_stores(console: Console, work: Path, fine: dict[str, Path]) -> Path:
    from equiprobe.clients.concat import concat_stores

    out = work / f"store_fine_{COMPOSITE}"
    shutil.rmtree(out, ignore_errors=True)
    joined = concat_stores([fine[e] for e in CANDIDATES], out)
    console.print(f"{COMPOSITE} fine store [bold]{out}[/bold]: the two stores joined, {joined.manifest['dim']}-d "
                  "embeddings")
    return out


def train_demo_probe(console: Console, work: Path, store: Path, task: str, encoder: str,
                     probe: ProbeConfig = PROBE) -> Path:
    from equiprobe.trainer.train import train_probes

    out = work / f"probe_{task}_{encoder}_{probe.kind}"
    t0 = time.perf_counter()
    record = train_probes(store, task, probe, SEEDS, out)
    images = record["images"]
    console.print(f"{encoder} {task}: {images['train']} train / {images['val']} validation / {images['test']} test "
                  f"images, test accuracy {record['summary']['test_accuracy']['mean']:.3f}, "
                  f"{time.perf_counter() - t0:.0f} s -> {out}")
    return out


def pick_detector(console: Console, probes: dict[str, Path]) -> str:
    """The candidate with the best validation AUC; test figures are printed, never used to choose."""
    from equiprobe.trainer.probe_record import ProbeRecord

    table = Table("encoder", "validation AUC", "test AUC", "TPR @ FPR 5% (test)", "top category (test)",
                  "fine-grained acc. (test)", title="detector candidates: originals vs manipulated versions")
    cards = {}
    for name, path in probes.items():
        if name.startswith("fine_"):
            record = ProbeRecord.read(path)
            cards[name[len("fine_"):]] = c = record.detector
            table.add_row(name[len("fine_"):], f"{c['validation_auc']:.3f}", f"{c['auc']:.3f}",
                          f"{c['tpr_at_fpr_0.05']:.3f}", f"{c['top_category_accuracy']:.3f}",
                          f"{record.summary['test_accuracy']['mean']:.3f}")
    console.print(table)
    chosen = max(cards, key=lambda e: cards[e]["validation_auc"])
    console.print(f"chosen by validation AUC: [bold]{chosen}[/bold]")
    return chosen


def write_report(console: Console, work: Path, url: str, chosen: str, fine: dict[str, Path], others: list[Path],
                 probes: dict[str, Path]) -> Path:
    from equiprobe.trainer.detector_card import format_card
    from equiprobe.trainer.reference_card import reference_card
    from equiprobe.trainer.report import build_report, detector_cards

    out = work / "report"
    reference = {f"{chosen}_detector": reference_card(url, chosen, fine[chosen], REFERENCE_IMAGES)}
    stores = [fine[e] for e in CANDIDATES] + others  # the joined store's invariance is its parts'
    results = build_report(stores, list(probes.values()), out, max_images=500, reference_cards=reference)
    for name, card in detector_cards(results).items():
        console.print(f"[bold]detector card, {name}[/bold] (test sources)")
        for line in format_card(card):
            console.print("  " + line)
    row = next(r for r in results["table1"] if r["encoder"] == ENCODER)
    cell = lambda s: f"{s['mean']:.3f} +- {s['std']:.3f}" if s else "-"  # noqa: E731
    table = Table("encoder", "probe", "fine-grained (31-way)", "generalization (10-way)", "held-out noise",
                  "held-out style", title="Table 1 layout: test accuracy on held-out sources "
                  "(chance 0.032 and 0.100)")
    table.add_row(row["encoder"], row["probe"], cell(row.get("fine")), cell(row.get("general")),
                  cell(row.get("held_out_noise")), cell(row.get("held_out_style")))
    console.print(table)
    fine = results["stores"][list(CANDIDATES).index(ENCODER)]
    geed = fine["latent_geed"]["per_transformation"]
    most, least = max(geed, key=lambda n: geed[n]["cosine"]), min(geed, key=lambda n: geed[n]["cosine"])
    console.print(f"latent G-EED (cosine, / M): most moved by {most} {geed[most]['cosine']:.2f}, least by {least} "
                  f"{geed[least]['cosine']:.2f}; copy detection recall@1 "
                  f"{fine['copy_detection']['overall']['recall@1']:.2f}, @10 {fine['copy_detection']['overall']['recall@10']:.2f}")
    groups = results["stores"][-1]["latent_geed"]["groups"]
    console.print("exact group G-EED (euclidean, / M): " + ", ".join(
        f"{name} {{{', '.join(g['members'])}}} {g['euclidean']:.2f}" for name, g in groups.items()))
    return out


def deploy_detector(console: Console, repo: Path, url: str, probes: dict[str, Path], chosen: str) -> None:
    from equiprobe.trainer.deploy import deploy

    given = [probes[f"fine_{chosen}"]] + ([probes["general"]] if chosen == ENCODER else [])
    result = deploy(given, repo, url)
    meta = result.meta
    console.print(f"{result.names.probe} version {result.version} serving ({result.server}); "
                  f"{result.names.detector}: IMAGE -> TRANSFORM_PROBS [31], CATEGORY_PROBS [10], "
                  f"MANIPULATION_SCORE [1], MANIPULATED [1], EMBEDDING [{meta['dim']}]; threshold "
                  f"{meta['threshold']:.6f} for FPR {meta['target_fpr']:g} on validation sources")


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
    from equiprobe.clients.scoring import Scorer
    from equiprobe.services.transforms import get_catalog
    from equiprobe.services.transforms.preview import expand_one

    catalog = get_catalog("fine")
    scorer = Scorer(url, encoder, top=1)
    table = Table("source (test)", "version", "manipulated?", "score", "top transformation", "top category")
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
    console.print(f"threshold {scorer.threshold:.6f}: originals flagged {np.mean(verdicts[False]):.0%} of "
                  f"{len(verdicts[False])}, transformed versions flagged {np.mean(verdicts[True]):.0%} of "
                  f"{len(verdicts[True])}; top transformation right for {np.mean(top1):.0%} (JPEG uploads)")
    scorer.close()


def render_grid_for(out: Path, data: bytes) -> Path:
    from equiprobe.services.transforms import get_catalog
    from equiprobe.services.transforms.preview import expand_one, render_grid

    catalog = get_catalog("fine")
    versions, params = expand_one(catalog, data, seed=0)
    return render_grid(catalog, versions, params, out)
