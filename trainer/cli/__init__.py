"""The `equiprobe` console script: one typer app with every subcommand, a module per group.

It lives in the trainer package because the trainer is the top of the dependency chain
(services <- clients <- trainer) and its commands may use every layer. It is the only place that
parses arguments. Its modules import typer, rich, the stdlib and light project modules at top
level only; torch, DALI, ONNX, scikit-learn, faiss, Ray, matplotlib and the services' renderers
are imported in the commands that use them, so that `equiprobe embed`, `score` and `store` run
in a client-only install.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

import typer

from . import bench, corpus, demo, deploy, embedding, index, match, report, serving, store, t2d, training, transforms
from .common import fail  # noqa: F401 (for callers: equiprobe.trainer.cli.fail)

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Image-manipulation probing on frozen embeddings served by Triton.")
app.command()(serving.encoders)
app.command()(serving.export)
app.command()(serving.formats)
app.command("build-repo")(serving.build_repo)
app.command()(serving.serve)
app.add_typer(transforms.transforms_app, name="transforms")
app.command()(embedding.embed)
app.command()(embedding.score)
app.command()(match.match)
app.add_typer(store.store_app, name="store")
app.add_typer(index.index_app, name="index")
app.add_typer(corpus.corpus_app, name="corpus")
app.add_typer(bench.bench_app, name="bench")
app.command()(training.train)
app.command("baseline-store")(training.baseline_store)
app.command()(report.report)
app.command()(deploy.deploy)
app.command()(demo.demo)
app.add_typer(t2d.t2d_app, name="t2d")


def expand_repeated(command: Any, argv: Sequence[str]) -> list[str]:
    """`--opt A B C` as `--opt A --opt B --opt C`, for the repeatable (list-valued) options of the
    subcommand `argv` names, so that both spellings work (click has no nargs=-1 for options).

    The word right after such an option is its value, as click takes it; the words after that,
    up to the next one starting with `-`, are further values. `--opt=A`, other options and
    everything after `--` are left as they are. The subcommand is found by following group
    names from the start of `argv` (duck-typed: typer vendors its own click)."""
    argv, i = list(argv), 0
    while i < len(argv) and argv[i] in getattr(command, "commands", {}):
        command, i = command.commands[argv[i]], i + 1
    repeatable = {name for p in command.params if p.param_type_name == "option" and p.multiple for name in p.opts}
    out = argv[:i]
    while i < len(argv):
        word = argv[i]
        out.append(word)
        i += 1
        if word == "--":
            return out + argv[i:]
        if word in repeatable and i < len(argv):
            out.append(argv[i])
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                out += [word, argv[i]]
                i += 1
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    app(args=expand_repeated(typer.main.get_command(app), args), prog_name="equiprobe")
