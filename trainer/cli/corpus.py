"""`equiprobe corpus info` and `corpus manifest`: the built-in corpus."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .common import fail



corpus_app = typer.Typer(no_args_is_help=True, help="The built-in corpus (clients/corpus_manifest.json).")


@corpus_app.command("info")
def corpus_info() -> None:
    """Sources per package, kind and split, after checking that every file is installed."""
    from collections import Counter

    from equiprobe.clients.corpus import CorpusError, check_corpus, load_manifest, split_of

    try:
        entries = check_corpus()
    except CorpusError as exc:
        raise fail(str(exc))
    table = Table("package", "licence", "photograph", "screenshot", "illustration", "train", "validation", "test",
                  title=f"{len(entries)} colour sources in {len({e['group'] for e in entries})} groups "
                        f"({sum(not e['colour'] for e in load_manifest()['entries'])} grayscale images excluded)")
    for package in sorted({e["package"] for e in entries}):
        mine = [e for e in entries if e["package"] == package]
        kinds, splits = Counter(e["kind"] for e in mine), Counter(split_of(e["group"]) for e in mine)
        table.add_row(package, ", ".join(sorted({e["licence"] for e in mine}))[:40],
                      *(str(kinds[k]) for k in ("photograph", "screenshot", "illustration")),
                      *(str(splits[k]) for k in ("train", "validation", "test")))
    Console(width=160).print(table)


@corpus_app.command("manifest")
def corpus_manifest(out: Path = typer.Option(None, help="Where to write it (default: the committed manifest).")
                    ) -> None:
    """Rescan the installed packages and rewrite the manifest (file, package, licence, kind, group...)."""
    from equiprobe.clients.corpus import MANIFEST, build_manifest, save_manifest

    save_manifest(build_manifest(), out or MANIFEST)
    print(f"wrote {out or MANIFEST}")
