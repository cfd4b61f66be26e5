"""The `equiprobe` console script: one typer app with every subcommand.

It lives in the trainer package because the trainer is the top of the dependency chain
(services <- clients <- trainer) and may import every layer's commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from equiprobe.clients import cli as client_commands
from equiprobe.clients.connection import admin_key_option, api_key_option, root_certificates_option, tls_option
from equiprobe.services import cli as service_commands

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Image-manipulation probing on frozen embeddings served by Triton.")
app.command()(service_commands.encoders)
app.command()(service_commands.export)
app.command()(service_commands.formats)
app.command("build-repo")(service_commands.build_repo)
app.command()(service_commands.serve)
app.add_typer(service_commands.transforms_app, name="transforms")
app.command()(client_commands.embed)
app.command()(client_commands.score)
app.add_typer(client_commands.store_app, name="store")
app.add_typer(client_commands.corpus_app, name="corpus")
app.add_typer(client_commands.bench_app, name="bench")


@app.command()
def train(
    store: Path = typer.Option(..., help="Store written by `equiprobe embed`."),
    task: str = typer.Option("fine", help="fine (31-way transformation), general (10-way category), semantic "
                             "(the dataset's label) or multitask (transformation and semantic heads on one hidden "
                             "layer, compared with a semantic-only probe)."),
    probe: str = typer.Option("mlp", help="linear or mlp (one hidden layer of 2048, dropout 0.2); or the baselines "
                              "logreg (scikit-learn, C chosen on validation) and knn (faiss, k chosen on validation), "
                              "deterministic: one run, --seeds ignored."),
    out: Path = typer.Option(..., help="Directory for probe.pt and probe.json."),
    seeds: int = typer.Option(5, help="Repeats with seeds 0..N-1; metrics are reported as mean and std."),
    max_epochs: int = typer.Option(100, help="Upper bound; early stopping on validation usually ends sooner."),
    lr: float = typer.Option(1e-3), batch_size: int = typer.Option(1024),
    split: str = typer.Option("store", help="store: the store's train/test split; hash: by image key (80/20), "
                              "for semantic tasks on stores that hold whole classes out."),
    max_examples: int = typer.Option(200_000, help="logreg/knn: training (and validation) examples held in "
                                     "memory; a fixed-seed subsample above this."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Train a probe that predicts how each stored version was transformed."""
    from equiprobe.clients.store import StoreError
    from equiprobe.services.cli import fail
    from equiprobe.trainer.baselines import BASELINES, BaselineConfig, train_baseline
    from equiprobe.trainer.probes import ProbeConfig
    from equiprobe.trainer.train import train_probes

    try:
        if probe in BASELINES:
            record = train_baseline(store, task, BaselineConfig(kind=probe, max_examples=max_examples), out,
                                    progress=not quiet, split_by=split)
        else:
            config = ProbeConfig(kind=probe, lr=lr, batch_size=batch_size, max_epochs=max_epochs)
            record = train_probes(store, task, config, list(range(seeds)), out, progress=not quiet, split_by=split)
    except (StoreError, ValueError) as exc:
        raise fail(str(exc))
    for key, value in record["summary"].items():
        print(f"{key}: {value['mean']:.3f} +- {value['std']:.3f}")
    if "selection" in record:
        print(f"{record['selection']['parameter']} = {record['selection']['chosen']:g} (best validation accuracy)")
    saved = f"{out / 'probe.pt'} (seed {record['saved_seed']}) and " if record["deployable"] else ""
    print(f"saved {saved}{out / 'probe.json'}")


@app.command("baseline-store")
def baseline_store(
    store: Path = typer.Option(..., help="Embedding store (equiprobe embed) whose images, versions and splits to reuse."),
    features: str = typer.Option(..., help="pixels (16x16 RGB box averages, 768 values) or random-encoder (the "
                                 "store's encoder architecture with random weights)."),
    out: Path = typer.Option(..., help="Directory of the new store (resumed if it holds the same job)."),
    seed: int = typer.Option(0, help="random-encoder: torch seed of the random weights."),
    batch_size: int = typer.Option(64, help="random-encoder: versions per forward pass."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """A baseline feature store over the same images, versions and splits as an embedding store."""
    from equiprobe.clients.datasets import DatasetError
    from equiprobe.clients.store import StoreError
    from equiprobe.services.cli import fail
    from equiprobe.trainer.feature_stores import build_baseline_store

    try:
        built = build_baseline_store(store, features, out, seed=seed, batch_size=batch_size, progress=not quiet)
    except (StoreError, DatasetError, ValueError) as exc:
        raise fail(str(exc))
    summary = built.summary()
    print(f"store {out}: {built.manifest['encoder']} features, dim {built.manifest['dim']}; {summary['done']} done, "
          f"{summary['failed']} failed, {summary['pending']} pending (as in {store})")


@app.command()
def report(
    store: list[Path] = typer.Option(..., help="Store(s) to measure (G-EED, copy detection); repeat for Table 1 "
                                     "over several encoders. A store of the groups catalog gives exact group G-EED."),
    probes: list[Path] = typer.Option([], help="Probe directories (equiprobe train) to tabulate and plot."),
    out: Path = typer.Option(..., help="Directory for report.md, results.json and the PNG plots."),
    max_images: int = typer.Option(2000, help="Images per store for the invariance metrics (fixed-seed subsample)."),
    url: str = typer.Option(None, help="gRPC HOST:PORT of a server with the deployed NAME_detector: the detector "
                            "card is also computed on Pillow-made versions of the first store's test sources."),
    encoder: str = typer.Option("squeezenet1_1", help="With --url: whose NAME_detector to score with."),
    reference_images: int = typer.Option(40, help="With --url: test images whose Pillow-made versions are scored."),
    tls: bool = tls_option(),
    root_certificates: Optional[Path] = root_certificates_option(),
    api_key: Optional[str] = api_key_option(),
) -> None:
    """Tables, detector card, invariance metrics and plots for stores and trained probes."""
    from equiprobe.clients.connection import Connection
    from equiprobe.clients.embedding import ServiceError
    from equiprobe.clients.store import StoreError
    from equiprobe.services.cli import fail
    from equiprobe.trainer.report import build_report

    try:
        cards = None
        if url:
            from equiprobe.trainer.reference_card import reference_card

            connection = Connection(url, tls, root_certificates, api_key or None)
            cards = {f"{encoder}_detector": reference_card(connection, encoder, store[0], reference_images)}
        results = build_report(store, probes, out, max_images=max_images, reference_cards=cards)
    except (StoreError, ServiceError, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc))
    print(f"wrote {out / 'report.md'}, {out / 'results.json'} and {len(results['plots'])} plots in {out}")


@client_commands.bench_app.command("train")
def bench_train(
    store: Path = typer.Option(..., help="Store to train on."),
    task: str = typer.Option("fine", help="fine or general."),
    max_epochs: int = typer.Option(100, help="Upper bound for the torch probes (early stopping)."),
) -> None:
    """Torch linear probe vs scikit-learn logistic regression vs MLP, and store read rate, in one run."""
    from rich.console import Console
    from rich.table import Table

    from equiprobe.clients.store import StoreError
    from equiprobe.services.cli import fail
    from equiprobe.trainer.bench import bench_train as run

    try:
        results = run(store, task, max_epochs)
    except (StoreError, ValueError) as exc:
        raise fail(str(exc))
    read = results["read"]
    table = Table("probe", "train time (s)", "test accuracy", "detail", title=f"{store} ({task} task)")
    for name in ("torch linear", "sklearn logreg", "torch mlp"):
        r = results[name]
        detail = ", ".join(f"{k} {v}" for k, v in r["detail"].items() if k in ("epochs", "chosen"))
        table.add_row(name, f"{r['seconds']:.2f}", f"{r['test_accuracy']:.3f}", detail)
    console = Console()
    console.print(table)
    console.print(f"store read: {read['examples']:,} training examples in {read['seconds']:.2f} s = "
                  f"{read['examples_per_s']:,.0f} rows/s ({read['mb_per_s']:.0f} MB/s)")
    console.print(f"sklearn logreg time / torch linear time = {results['logreg_time_over_torch_linear']:.2f}; "
                  f"accuracy torch linear - logreg = {results['accuracy_torch_linear_minus_logreg']:+.3f}")


@app.command()
def deploy(
    probe: list[Path] = typer.Option([], help="Probe directory (probe.pt + probe.json): one fine probe, and "
                                     "optionally one general probe for CATEGORY_PROBS. Repeatable."),
    repo: Path = typer.Option(Path("model_repository"), help="Model repository (build-repo) to deploy into."),
    url: str = typer.Option(None, help="gRPC HOST:PORT of the server on REPO (model control explicit or poll): "
                            "it is made to serve the new version before deploy returns."),
    rollback: bool = typer.Option(False, help="Return to the version the current one replaced (kept on disk)."),
    encoder: str = typer.Option(None, help="With --rollback: which detector, if REPO has several."),
    timeout: float = typer.Option(120.0, help="Seconds to wait for the server to serve the version."),
    target_fpr: float = typer.Option(0.05, help="False-positive rate on the probe's validation sources that "
                                     "chooses the MANIPULATED threshold."),
    threshold: float = typer.Option(None, help="Use this MANIPULATED threshold instead of choosing one."),
    admin_key: Optional[str] = admin_key_option(),
    api_key: Optional[str] = api_key_option(),
    tls: bool = tls_option(),
    root_certificates: Optional[Path] = root_certificates_option(),
) -> None:
    """Deploy probes as NAME_detector (IMAGE -> TRANSFORM_PROBS, CATEGORY_PROBS, MANIPULATION_SCORE,
    MANIPULATED, EMBEDDING), a new NAME_probe version; or roll back to the previous one."""
    from equiprobe.clients.connection import Connection
    from equiprobe.services.cli import fail
    from equiprobe.trainer.deploy import DeployError, deploy as run_deploy, rollback as run_rollback

    if rollback and probe:
        raise fail("--rollback returns to the previous version; it takes no --probe")
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
    print(f"operating threshold {meta['threshold']:.6f} ({chosen}): MANIPULATED = MANIPULATION_SCORE >= threshold")
    if result.server:
        print(f"server {url} serves {names.probe} version {result.version} ({result.server})")
    else:
        print(f"no --url: a server polling REPO picks it up; one in explicit model control needs load_model "
              f"{names.probe} then {names.detector}")


@app.command()
def demo(workdir: str = typer.Option("build/demo", help="Where the demo writes its files.")) -> None:
    """The main job end to end on the embedded default (squeezenet1_1, package photos)."""
    from equiprobe.trainer.demo import run_demo

    run_demo(workdir)


def main() -> None:
    app()
