"""`equiprobe transforms list` and `transforms preview`: the transform catalogs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .common import fail

transforms_app = typer.Typer(no_args_is_help=True, help="The transform catalogs.")


@transforms_app.command("list")
def transforms_list(catalog: str = typer.Option("fine", help="fine, general, groups or detect.")) -> None:
    """List a catalog's transformations with their ids, categories and parameter ranges."""
    from equiprobe.services.transforms import get_catalog

    try:
        cat = get_catalog(catalog)
    except ValueError as exc:
        raise fail(str(exc))
    table = Table("id", "name", "category", "parameters", title=f"{cat.name} catalog, version {cat.version}")
    for t in cat.transforms:
        table.add_row(str(t.id), t.name, t.category, "; ".join(p.describe() for p in t.params))
    Console(width=140).print(table)


@transforms_app.command("preview")
def transforms_preview(
    image: Path = typer.Argument(..., help="An image file (see `equiprobe formats`)."),
    out: Path = typer.Option(Path("grid.png"), help="PNG to write."),
    catalog: str = typer.Option("fine", help="fine, general, groups or detect."),
    seed: int = typer.Option(0, help="Dataset seed: parameters are a function of (image, transform, seed)."),
) -> None:
    """Render a labelled grid of every version of IMAGE."""
    from equiprobe.services.transforms import get_catalog
    from equiprobe.services.transforms.preview import expand_one, render_grid
    from equiprobe.services.uploads import admit

    if not image.is_file():
        raise fail(f"{image} does not exist")
    data = image.read_bytes()
    try:
        cat = get_catalog(catalog)
        versions, params = expand_one(cat, admit(data).data, seed)
    except (ValueError, RuntimeError) as exc:
        raise fail(f"{image}: {exc}")
    print(f"wrote {render_grid(cat, versions, params, out)} ({len(versions)} versions)")
