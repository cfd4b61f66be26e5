"""`make demo`: the main job end to end on the embedded default.

So far: build the portable repository for squeezenet1_1, start the real Triton server, embed
the photos that packages ship over gRPC, check one against the in-process reference, send a
corrupt file; then expand photos 31x inside the server (one upload each) and show how far each
transformation moves the embedding; render a preview grid; stop cleanly.
"""

from __future__ import annotations

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
DEMO_IMAGES = 120


def run_demo(workdir: str) -> None:
    console = Console(width=120)
    repo = Path(workdir) / "model_repository"
    t0 = time.perf_counter()
    console.rule("1. build the model repository")
    result = build_repo(ENCODER, repo)
    console.print(f"{result.flavour} repository [bold]{repo}[/bold]: {', '.join(result.models)}; "
                  f"ONNX export max abs diff vs torch {result.export_max_abs_diff:.2g}")

    photos = package_photos()
    encoded = {name: encode(image) for name, image in photos.items()}
    console.rule("2. serve with Triton and embed real photos over gRPC")
    with TritonServer(loopback_config(repo)) as server:
        console.print(f"tritonserver ready on gRPC {server.config.grpc_url} "
                      f"(pid {server.process.pid}, {len(server.group_pids())} processes)")
        client = EmbeddingClient(server.config.grpc_url, ENCODER)
        client.check()
        embeddings = {name: client.embed(data) for name, data in encoded.items()}

        names = list(embeddings)
        matrix = np.stack([embeddings[n] for n in names])
        unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        cosine = unit @ unit.T
        np.fill_diagonal(cosine, -1)
        table = Table("photo", "pixels", "JPEG bytes", "|embedding|", "nearest other photo", "cosine")
        for i, name in enumerate(names):
            j = int(cosine[i].argmax())
            h, w = photos[name].shape[:2]
            table.add_row(name, f"{w}x{h}", f"{len(encoded[name]):,}", f"{np.linalg.norm(matrix[i]):.1f}",
                          names[j], f"{cosine[i, j]:.3f}")
        console.print(table)

        # The served embedding must be what the same pipeline and ONNX model give in-process.
        local = InProcessEmbed(repo, ENCODER)([np.frombuffer(encoded["astronaut"], np.uint8)])[0]
        console.print(f"served vs in-process embedding of 'astronaut': max abs diff "
                      f"{np.abs(local - embeddings['astronaut']).max():.2g}")

        truncated = encoded["coffee"][: len(encoded["coffee"]) // 3]
        try:
            client.embed(truncated)
        except ServiceError as exc:
            console.print(f"a truncated JPEG is refused on its own: [yellow]{exc}[/yellow]")
        console.print(f"and the server still answers: |embedding(coffee)| = "
                      f"{np.linalg.norm(client.embed(encoded['coffee'])):.1f}")
        client.close()

        console.rule("3. one upload, 31 versions: the transform catalog runs inside the server")
        show_expansion(console, server.config.grpc_url, {n: encoded[n] for n in ("astronaut", "chelsea", "rocket")})

        console.rule(f"4. bulk-embed {DEMO_IMAGES} built-in photos 31x into a memory-mapped store")
        bulk_embed(console, server.config.grpc_url, Path(workdir) / "store")
    console.rule("5. train fine-grained probes on the store (one seed each, for the demo)")
    train_demo_probes(console, Path(workdir))
    grid = render_grid_for(Path(workdir) / "transforms_fine.png", encoded["chelsea"])
    console.print(f"preview grid of every version of 'chelsea': [bold]{grid}[/bold]")
    console.rule("6. stopped")
    console.print(f"server stopped; processes left in its group: {len(server.group_pids())}; "
                  f"shared-memory files left: {len(server.shared_memory_files())}; "
                  f"total {time.perf_counter() - t0:.0f} s")


def show_expansion(console: Console, url: str, images: dict[str, bytes]) -> None:
    from services.expansion_repo import ExpansionNames
    from services.transforms import get_catalog

    import tritonclient.grpc as grpcclient
    from clients.embedding import as_image_input

    catalog = get_catalog("fine")
    client = grpcclient.InferenceServerClient(url)
    model = ExpansionNames(ENCODER, "fine").embed
    distances = []
    t0 = time.perf_counter()
    for data in images.values():
        rows = client.infer(model, [as_image_input(data)]).as_numpy("EMBEDDINGS")[0]
        unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        distances.append(1.0 - unit @ unit[0])
    elapsed = time.perf_counter() - t0
    mean = np.mean(distances, axis=0)
    table = Table("transformation", "category", "cosine distance from identity (mean of "
                  f"{len(images)} photos)", title=f"{model}: {len(images)} uploads, "
                  f"{len(images) * len(catalog.transforms)} embeddings in {elapsed:.1f} s")
    for k in np.argsort(-mean):
        t = catalog.transforms[k]
        if t.name != "identity":
            table.add_row(t.name, t.category, f"{mean[k]:.3f}")
    console.print(table)


def render_grid_for(out: Path, data: bytes) -> Path:
    from services.transforms import get_catalog
    from services.transforms.preview import expand_one, render_grid

    catalog = get_catalog("fine")
    versions, params = expand_one(catalog, data, seed=0)
    return render_grid(catalog, versions, params, out)


def bulk_embed(console: Console, url: str, out: Path):
    import asyncio
    import shutil

    from clients.embed_job import EmbedJob, run_embed_job
    from clients.store import Store

    shutil.rmtree(out, ignore_errors=True)  # the demo's own store: rebuilt with the repository
    t0 = time.perf_counter()
    summary = asyncio.run(run_embed_job(EmbedJob("photos", ENCODER, out, url, limit=DEMO_IMAGES)))
    elapsed = time.perf_counter() - t0
    store = Store.open(out)
    split = np.asarray(store.array("split"))
    console.print(f"store [bold]{out}[/bold]: {summary['done']} images done, {summary['failed']} failed, "
                  f"{(split == 0).sum()} train / {(split == 1).sum()} test (by source photograph); "
                  f"embeddings {store.array('embeddings').shape} {store.manifest['dtype']}; "
                  f"{summary['done'] / elapsed:.1f} images/s, {summary['done'] * 31 / elapsed:.0f} embeddings/s")
    return store


def train_demo_probes(console: Console, workdir: Path) -> None:
    from trainer.probes import ProbeConfig
    from trainer.train import train_probes

    table = Table("probe", "task", "test accuracy (held-out photographs)", "chance", "saved to")
    for kind in ("linear", "mlp"):
        out = workdir / f"probe_fine_{kind}"
        record = train_probes(workdir / "store", "fine", ProbeConfig(kind=kind, max_epochs=60), [0], out)
        table.add_row(kind, "fine (31-way)", f"{record['summary']['test_accuracy']['mean']:.3f}",
                      f"{1 / len(record['classes']):.3f}", str(out))
    console.print(table)
