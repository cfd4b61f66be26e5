"""The `equiprobe` console script: one typer app with every subcommand.

It lives in the trainer package because the trainer is the top of the dependency chain
(services <- clients <- trainer) and may import every layer's commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

from clients import cli as client_commands
from services import cli as service_commands

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Image-manipulation probing on frozen embeddings served by Triton.")
app.command()(service_commands.encoders)
app.command()(service_commands.export)
app.command("build-repo")(service_commands.build_repo)
app.command()(service_commands.serve)
app.add_typer(service_commands.transforms_app, name="transforms")
app.command()(client_commands.embed)
app.add_typer(client_commands.store_app, name="store")
app.add_typer(client_commands.bench_app, name="bench")


@app.command()
def train(
    store: Path = typer.Option(..., help="Store written by `equiprobe embed`."),
    task: str = typer.Option("fine", help="fine (31-way transformation) or general (10-way category)."),
    probe: str = typer.Option("mlp", help="linear or mlp (one hidden layer of 2048, dropout 0.2)."),
    out: Path = typer.Option(..., help="Directory for probe.pt and probe.json."),
    seeds: int = typer.Option(5, help="Repeats with seeds 0..N-1; metrics are reported as mean and std."),
    max_epochs: int = typer.Option(100, help="Upper bound; early stopping on validation usually ends sooner."),
    lr: float = typer.Option(1e-3), batch_size: int = typer.Option(1024),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Train a probe that predicts how each stored version was transformed."""
    from clients.store import StoreError
    from services.cli import fail
    from trainer.probes import ProbeConfig
    from trainer.train import train_probes

    config = ProbeConfig(kind=probe, lr=lr, batch_size=batch_size, max_epochs=max_epochs)
    try:
        record = train_probes(store, task, config, list(range(seeds)), out, progress=not quiet)
    except (StoreError, ValueError) as exc:
        raise fail(str(exc))
    for key, value in record["summary"].items():
        print(f"{key}: {value['mean']:.3f} +- {value['std']:.3f}")
    print(f"saved {out / 'probe.pt'} (seed {record['saved_seed']}) and {out / 'probe.json'}")


@app.command()
def demo(workdir: str = typer.Option("build/demo", help="Where the demo writes its files.")) -> None:
    """The main job end to end on the embedded default (squeezenet1_1, package photos)."""
    from trainer.demo import run_demo

    run_demo(workdir)


def main() -> None:
    app()
