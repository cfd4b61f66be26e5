"""The `equiprobe` console script: one typer app with every subcommand.

It lives in the trainer package because the trainer is the top of the dependency chain
(services <- clients <- trainer) and may import every layer's commands.
"""

from __future__ import annotations

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
def demo(workdir: str = typer.Option("build/demo", help="Where the demo writes its files.")) -> None:
    """The main job end to end on the embedded default (squeezenet1_1, package photos)."""
    from trainer.demo import run_demo

    run_demo(workdir)


def main() -> None:
    app()
