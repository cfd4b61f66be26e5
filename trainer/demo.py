"""`make demo`: the main job end to end on the embedded default.

Build the portable repository for squeezenet1_1; start the real Triton server (explicit model
control, so the detector can be deployed into it live); check one served embedding against the
in-process pipeline and send a corrupt file; bulk-embed a few hundred built-in photos in all
their versions (fine catalog 31x, generalization catalog 47x, the rotation/flip groups 5x)
into memory-mapped stores; train
the fine-grained and generalization MLP probes; write the report (tables, G-EED, plots); deploy
both probes as NAME_detector; score held-out photos and their transformed versions over gRPC;
stop the server cleanly.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from clients.embedding import EmbeddingClient, ServiceError
from clients.photos import encode, package_photos
from services.repository import InProcessEmbed, build_repo
from services.server import TritonServer, loopback_config

ENCODER = "squeezenet1_1"
FINE_IMAGES = 300  # x 31 versions
GENERAL_IMAGES = 150  # x 47 versions: 28 seen sub-transformations and 19 held out
GROUPS_IMAGES = 100  # x 5 versions: identity, three rotations, a flip (exact group G-EED)
SEEDS = [0, 1]  # the study repeats 5 seeds (equiprobe train's default); two keep the demo short
MAX_EPOCHS = 60
SHOWN_VERSIONS = ("identity", "gaussian_blur", "text_overlay", "reference_style")


def run_demo(workdir: str) -> None:
    console = Console(width=130)
    work = Path(workdir)
    repo = work / "model_repository"
    t0 = time.perf_counter()
    console.rule("1. build the model repository")
    shutil.rmtree(repo, ignore_errors=True)  # the demo's own repository: fresh, so the detector starts at v1
    result = build_repo(ENCODER, repo)
    console.print(f"{result.flavour} repository [bold]{repo}[/bold]: {len(result.models)} models; "
                  f"ONNX export max abs diff vs torch {result.export_max_abs_diff:.2g}")

    console.rule("2. serve with Triton (explicit model control) and embed over gRPC")
    with TritonServer(loopback_config(repo, model_control_mode="explicit")) as server:
        url = server.config.grpc_url
        console.print(f"tritonserver ready on gRPC {url} (pid {server.process.pid})")
        check_service(console, repo, url)

        console.rule("3. bulk-embed built-in photos into memory-mapped stores")
        stores = {"fine": bulk_embed(console, url, work / "store_fine", "fine", FINE_IMAGES),
                  "general": bulk_embed(console, url, work / "store_general", "general", GENERAL_IMAGES)}
        groups = bulk_embed(console, url, work / "store_groups", "groups", GROUPS_IMAGES)

        console.rule(f"4. train the fine-grained and generalization MLP probes (seeds {SEEDS})")
        probes = train_demo_probes(console, work, stores)

        console.rule("5. report: tables, invariance (G-EED, copy detection), plots")
        report = write_report(console, work, [*stores.values(), groups], probes)

        console.rule("6. deploy the probes into the running server as the manipulation detector")
        deploy_detector(console, repo, url, probes)

        console.rule("7. score new photos and transformed versions of them through the detector")
        score_held_out(console, url)
    grid = render_grid_for(work / "transforms_fine.png", encode(package_photos()["chelsea"]))
    console.rule("8. stopped")
    console.print(f"server stopped; processes left in its group: {len(server.group_pids())}; "
                  f"shared-memory files left: {len(server.shared_memory_files())}")
    console.print(f"report [bold]{report / 'report.md'}[/bold] (and results.json, {len(list(report.glob('*.png')))} "
                  f"PNG plots in {report}); preview grid {grid}; total {time.perf_counter() - t0:.0f} s")


def check_service(console: Console, repo: Path, url: str) -> None:
    """One photo served vs in-process, and a truncated JPEG refused while the server keeps answering."""
    encoded = encode(package_photos()["astronaut"])
    client = EmbeddingClient(url, ENCODER)
    client.check()
    served = client.embed(encoded)
    local = InProcessEmbed(repo, ENCODER)([np.frombuffer(encoded, np.uint8)])[0]
    console.print(f"'astronaut': embedding [{len(served)}], served vs in-process max abs diff "
                  f"{np.abs(local - served).max():.2g}")
    try:
        client.embed(encoded[: len(encoded) // 3])
    except ServiceError as exc:
        console.print(f"a truncated JPEG is refused on its own: [yellow]{exc}[/yellow]")
    console.print(f"and the server still answers: |embedding| = {np.linalg.norm(client.embed(encoded)):.1f}")
    client.close()


def bulk_embed(console: Console, url: str, out: Path, catalog: str, images: int) -> Path:
    from clients.embed_job import EmbedJob, run_embed_job
    from clients.store import Store

    shutil.rmtree(out, ignore_errors=True)  # the demo's own store: rebuilt with the repository
    t0 = time.perf_counter()
    summary = asyncio.run(run_embed_job(EmbedJob("photos", ENCODER, out, url, catalog, limit=images)))
    elapsed = time.perf_counter() - t0
    store = Store.open(out)
    split = np.asarray(store.array("split"))
    shape = store.array("embeddings").shape
    console.print(f"{catalog} store [bold]{out}[/bold]: {summary['done']} images x {shape[1]} versions, "
                  f"{summary['failed']} failed, {(split == 0).sum()} train / {(split == 1).sum()} test (by source "
                  f"photograph); {summary['done'] / elapsed:.1f} images/s, "
                  f"{summary['done'] * shape[1] / elapsed:.0f} embeddings/s")
    return out


def train_demo_probes(console: Console, work: Path, stores: dict[str, Path]) -> dict[str, Path]:
    from trainer.probes import ProbeConfig
    from trainer.train import train_probes

    probes = {}
    for task, store in stores.items():
        out = work / f"probe_{task}_mlp"
        t0 = time.perf_counter()
        record = train_probes(store, task, ProbeConfig(kind="mlp", max_epochs=MAX_EPOCHS), SEEDS, out)
        console.print(f"{task}: {record['images']['train']} train / {record['images']['test']} test images, "
                      f"{time.perf_counter() - t0:.0f} s -> {out}")
        probes[task] = out
    return probes


def write_report(console: Console, work: Path, stores: list[Path], probes: dict[str, Path]) -> Path:
    from trainer.report import build_report

    out = work / "report"
    results = build_report(stores, list(probes.values()), out, max_images=500)
    row = results["table1"][0]
    cell = lambda s: f"{s['mean']:.3f} +- {s['std']:.3f}" if s else "-"  # noqa: E731
    table = Table("encoder", "probe", "fine-grained (31-way)", "generalization (10-way)", "held-out noise",
                  "held-out style", title="Table 1 layout: test accuracy on held-out photographs "
                  "(chance 0.032 and 0.100)")
    table.add_row(row["encoder"], row["probe"], cell(row.get("fine")), cell(row.get("general")),
                  cell(row.get("held_out_noise")), cell(row.get("held_out_style")))
    console.print(table)
    fine = results["stores"][0]
    geed = fine["latent_geed"]["per_transformation"]
    most, least = max(geed, key=lambda n: geed[n]["cosine"]), min(geed, key=lambda n: geed[n]["cosine"])
    console.print(f"latent G-EED (cosine, / M): most moved by {most} {geed[most]['cosine']:.2f}, least by {least} "
                  f"{geed[least]['cosine']:.2f}; copy detection recall@1 "
                  f"{fine['copy_detection']['overall']['recall@1']:.2f}, @10 {fine['copy_detection']['overall']['recall@10']:.2f}")
    groups = results["stores"][-1]["latent_geed"]["groups"]
    console.print("exact group G-EED (euclidean, / M): " + ", ".join(
        f"{name} {{{', '.join(g['members'])}}} {g['euclidean']:.2f}" for name, g in groups.items()))
    return out


def deploy_detector(console: Console, repo: Path, url: str, probes: dict[str, Path]) -> None:
    from trainer.deploy import deploy

    result = deploy([probes["fine"], probes["general"]], repo, url)
    console.print(f"{result.names.probe} version {result.version} serving ({result.server}); "
                  f"{result.names.detector}: IMAGE -> TRANSFORM_PROBS [31], CATEGORY_PROBS [10], "
                  f"MANIPULATION_SCORE [1], EMBEDDING [{result.meta['dim']}]")


def unseen_crops(per_side: int = 2) -> list[tuple[str, str, bytes]]:
    """(photograph, side, JPEG) for crops that no store of the demo holds: of test photographs
    (held out from training entirely) and of training photographs (new crops of seen scenes)."""
    from clients.datasets import photos_dataset

    dataset = photos_dataset()
    picked: dict[str, list] = {"test": [], "train": []}
    for i in range(max(FINE_IMAGES, GENERAL_IMAGES), len(dataset)):
        record = dataset.record(i)
        name = record.key.split("/")[1]
        side = picked[record.split]
        if len(side) < per_side and name not in [n for n, _, _ in side]:
            side.append((name, "held out" if record.split == "test" else "seen", record.load()))
        if all(len(v) == per_side for v in picked.values()):
            break
    return picked["test"] + picked["train"]


def score_held_out(console: Console, url: str) -> None:
    from clients.scoring import Scorer
    from services.transforms import get_catalog
    from services.transforms.preview import expand_one

    catalog = get_catalog("fine")
    scorer = Scorer(url, ENCODER, top=1)
    table = Table("photo", "photograph in training", "version", "manipulation score", "top transformation", "top category")
    scores: dict[tuple[str, bool], list[float]] = {}
    top1 = []
    for name, side, data in unseen_crops():
        versions, _ = expand_one(catalog, data, seed=0)
        for k, t in enumerate(catalog.transforms):
            score = scorer.score(encode(versions[k], quality=95))
            scores.setdefault((side, k > 0), []).append(score.manipulation_score)
            top1.append(score.transformations[0][0] == t.name)
            if t.name in SHOWN_VERSIONS:
                (tn, tp), (cn, cp) = score.transformations[0], score.categories[0]
                table.add_row(name, side, t.name, f"{score.manipulation_score:.3f}", f"{tn} {tp:.2f}",
                              f"{cn} {cp:.2f}")
    scorer.close()
    console.print(table)
    for side in dict.fromkeys(s for s, _ in scores):
        what = "crops of held-out photographs" if side == "held out" else "new crops of training photographs"
        console.print(f"{what}: mean manipulation score of the originals {np.mean(scores[side, False]):.3f}, of "
                      f"their 30 transformed versions {np.mean(scores[side, True]):.3f}")
    console.print(f"top transformation right for {np.mean(top1):.0%} of {len(top1)} uploads (each version "
                  "re-encoded as JPEG, as a user would upload it)")


def render_grid_for(out: Path, data: bytes) -> Path:
    from services.transforms import get_catalog
    from services.transforms.preview import expand_one, render_grid

    catalog = get_catalog("fine")
    versions, params = expand_one(catalog, data, seed=0)
    return render_grid(catalog, versions, params, out)
