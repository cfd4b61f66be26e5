"""`equiprobe store info`, `store concat` and `store merge`: embedding stores."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .common import fail



store_app = typer.Typer(no_args_is_help=True, help="Embedding stores.")


@store_app.command("info")
def store_info(path: Path = typer.Argument(..., help="Store directory.")) -> None:
    """Print a store's manifest and how complete it is."""
    from equiprobe.clients.store import Store, StoreError

    try:
        store = Store.open(path)
    except StoreError as exc:
        raise fail(str(exc))
    m = store.manifest
    summary = store.summary()
    table = Table("field", "value", title=str(path), show_header=False)
    for key in ("dataset", "shard", "limit", "count", "encoder", "encoder_onnx_sha256", "dim", "dtype", "catalog",
                "catalog_version", "seed", "tool_version"):
        table.add_row(key, str(m.get(key)))
    blocks = [c["block"] for c in m.get("feature_layout") or []]
    table.add_row("FEATURES", f"{store.features_dim} (mean and std per channel of {', '.join(blocks)})" if blocks
                  else "none")
    table.add_row("versions per image", f"{len(m['rows'])} ({', '.join(m['rows'][:4])}, ...)")
    table.add_row("labels", f"{len(m['label_names'])} ({', '.join(m['label_names'][:5])}...)" if m["label_names"]
                  else "none")
    table.add_row("completeness", f"{summary['done']} done, {summary['failed']} failed, {summary['pending']} pending "
                  f"of {summary['rows']} ({'complete' if store.complete else 'incomplete: run embed again to resume'})")
    Console(width=140).print(table)
    for error in store.errors()[:10]:
        print(f"  failed: {error['key']}: {error['reason']}")


@store_app.command("concat")
def store_concat(out: Path = typer.Option(..., help="Joined store to write."),
                 stores: list[Path] = typer.Argument(..., help="Complete stores of the same images, one per encoder.")
                 ) -> None:
    """Join stores of several encoders over the same images: each embedding is the parts' concatenated
    (encoder "A+B"); train and deploy it like any store, as one detector that runs every encoder."""
    from equiprobe.clients.concat import concat_stores
    from equiprobe.clients.store import StoreError

    try:
        joined = concat_stores(stores, out)
    except StoreError as exc:
        raise fail(str(exc))
    print(json.dumps({**joined.summary(), "store": str(out), "encoder": joined.manifest["encoder"],
                      "dim": joined.manifest["dim"]}))


@store_app.command("merge")
def store_merge(out: Path = typer.Option(..., help="Merged store to write."),
                shards: list[Path] = typer.Argument(..., help="Complete shard stores 0/N .. N-1/N.")) -> None:
    """Merge N shard stores into the store one unsharded run would have written."""
    from equiprobe.clients.embed_job import merge_stores
    from equiprobe.clients.store import StoreError

    try:
        merged = merge_stores(shards, out)
    except StoreError as exc:
        raise fail(str(exc))
    print(json.dumps({**merged.summary(), "store": str(out)}))
