"""`equiprobe index build`, `add`, `merge`, `info` and `train-probe`: indexes of known images for
matching, and the reference-aware probe that names an upload's edit (docs/match.md). faiss and
torch are imported in the commands only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from equiprobe.trainer.match_probe import CONFIG_HELP, MatchProbeConfig

from .common import config_options, fail

index_app = typer.Typer(no_args_is_help=True, help="Indexes of known images, for matching uploads (docs/match.md).")

KIND_HELP = ("auto (flat up to 100,000 images, ivf up to 2,000,000, ivfpq above), flat (exact), ivf, hnsw or "
             "ivfpq.")


def _summary(meta: dict) -> str:
    line = f"{meta['count']} images, {meta['kind']}, dim {meta['dim']}, encoder {meta['encoder']}"
    projection = meta.get("projection")
    if projection:
        line += f", copy projection {projection['width']} -> {projection['dim']} dims"
    recall = meta.get("recall")
    if recall:
        line += (f"; recall@1 {recall['recall@1']:.3f}, recall@10 {recall['recall@10']:.3f} against exact search, "
                 f"match@1 {recall['match@1']:.3f} (exact {recall['match@1_exact']:.3f}) on {recall['queries']} "
                 f"queries ({recall['queries_from']})")
    return line


@index_app.command("build")
def index_build(store: list[Path] = typer.Option([], "--store", help="A store to index (repeatable); or --dataset."),
                out: Path = typer.Option(..., help="Index directory to write."),
                kind: str = typer.Option("auto", help=KIND_HELP),
                shard: Optional[str] = typer.Option(None, help="I/N: index only the I-th of N slices of the rows "
                                                    "(exact); join the N shards with `index merge`."),
                dataset: Optional[str] = typer.Option(None, help="Instead of --store: a dataset (corpus, folder:PATH, "
                                                      "list:FILE, tar:GLOB...) whose images the server at --url "
                                                      "embeds (identity version only), then indexed."),
                encoder: Optional[str] = typer.Option(None, help="With --dataset: the served encoder."),
                url: str = typer.Option("127.0.0.1:8001", help="With --dataset: Triton gRPC address HOST:PORT."),
                store_dir: Optional[Path] = typer.Option(None, help="With --dataset: keep the store here (resumable); "
                                                         "default a temporary one beside OUT, removed after."),
                catalog: str = typer.Option("groups", help="With --dataset: the expansion asked for its identity row "
                                            "alone (any catalog the server has; groups is the cheapest)."),
                limit: Optional[int] = typer.Option(None, help="With --dataset: only the first N images."),
                ray: bool = typer.Option(False, "--ray", help="Build --shards shard indexes as Ray tasks and merge "
                                         "them (the stores on a filesystem every node reads)."),
                shards: Optional[int] = typer.Option(None, help="With --ray: shards (default the cluster's CPUs)."),
                ray_address: Optional[str] = typer.Option(None, help="With --ray: cluster address (default RAY_ADDRESS "
                                                          "or a local one)."),
                seed: int = typer.Option(0, help="Seed of the recall queries and the IVF training sample."),
                force: bool = typer.Option(False, help="Replace OUT if it exists."),
                quiet: bool = typer.Option(False, help="No progress bar."),
                projection_from: Optional[Path] = typer.Option(None, help="A store of the same encoder whose "
                                                               "training sources' versions teach the copy projection "
                                                               "the index searches in (docs/match.md)."),
                projection_dim: int = typer.Option(512, help="Dimensions of the copy projection."),
                exclude_keys: Optional[Path] = typer.Option(None, help="A file of image keys (one per line) kept out "
                                                            "of the index: held-out new photos.")) -> None:
    """Index the identity version of every done image of the stores (cosine similarity)."""
    excluded = exclude_keys.read_text().split() if exclude_keys else None
    if dataset or ray or not store:
        from .index_sources import build_from_sources, describe_sources

        meta = build_from_sources(store, out, kind, shard, seed, force, quiet, dataset, encoder, url, store_dir, catalog,
                                  limit, ray, shards, ray_address, projection_from=projection_from,
                                  projection_dim=projection_dim, exclude_keys=excluded)
        print(f"{out}: {_summary(meta)}; {meta['skipped_duplicates']} duplicate keys skipped; {describe_sources(meta)}")
        return
    from equiprobe.clients.index_build import build_index

    try:
        meta = build_index(store, out, kind=kind, shard=shard, seed=seed, replace=force, progress=not quiet,
                           projection_from=projection_from, projection_dim=projection_dim,
                           exclude_keys=excluded)
    except (ValueError, OSError) as exc:
        raise fail(str(exc))
    print(f"{out}: {_summary(meta)}; {meta['skipped_duplicates']} duplicate keys skipped"
          + (f", {meta['excluded_keys']} excluded" if exclude_keys else ""))


@index_app.command("add")
def index_add(index: Path = typer.Option(..., help="Index directory to add to (rewritten atomically)."),
              store: Path = typer.Option(..., help="Store whose done images to add."),
              seed: int = typer.Option(0, help="Seed of the recall queries."),
              quiet: bool = typer.Option(False, help="No progress bar.")) -> None:
    """Append a store's images (keys already indexed are skipped and counted)."""
    from equiprobe.clients.index_build import add_to_index

    try:
        meta = add_to_index(index, store, seed=seed, progress=not quiet)
    except ValueError as exc:
        raise fail(str(exc))
    print(f"{index}: {meta['added']} added, {meta['skipped_duplicates']} duplicate keys skipped; {_summary(meta)}")


@index_app.command("merge")
def index_merge(out: Path = typer.Option(..., help="Index directory to write."),
                shards: list[Path] = typer.Argument(..., help="Shard indexes 0/N .. N-1/N."),
                kind: str = typer.Option("auto", help=KIND_HELP),
                seed: int = typer.Option(0, help="Seed of the recall queries and the IVF training sample."),
                force: bool = typer.Option(False, help="Replace OUT if it exists."),
                quiet: bool = typer.Option(False, help="No progress bar.")) -> None:
    """Join shard indexes into the index one build would have made."""
    from equiprobe.clients.index_build import merge_indexes

    try:
        meta = merge_indexes(shards, out, kind=kind, seed=seed, replace=force, progress=not quiet)
    except ValueError as exc:
        raise fail(str(exc))
    print(f"{out}: {_summary(meta)}")


@index_app.command("info")
def index_info(path: Path = typer.Argument(..., help="Index directory."),
               as_json: bool = typer.Option(False, "--json", help="One JSON object."),
               verify: bool = typer.Option(False, help="Also check index.faiss's sha256.")) -> None:
    """Print an index's metadata and what it takes in memory."""
    from equiprobe.services.match_index import MatchIndex

    try:
        meta = MatchIndex.open(path, verify=verify).meta
    except ValueError as exc:
        raise fail(str(exc))
    from equiprobe.services.match_index import describe_memory
    from equiprobe.trainer.match_probe import describe, read_record

    memory = describe_memory(meta)
    try:
        probe = read_record(path)
    except ValueError as exc:
        raise fail(str(exc))
    if as_json:
        summary = None if probe is None else {k: probe.get(k) for k in (
            "classes", "catalog", "catalog_version", "width", "features_dim", "copy_threshold", "copy_target_fpr",
            "edited_threshold", "edited_target_fpr", "store", "trained_at", "validation")}
        print(json.dumps({**meta, "memory": memory, "probe": summary}, sort_keys=True))
        return
    table = Table("field", "value", title=str(path), show_header=False)
    for key in ("count", "kind", "params", "metric", "dim", "search_dim", "encoder", "encoder_onnx_sha256", "catalogs",
                "created", "updated", "format_version", "shard", "skipped_duplicates"):
        table.add_row(key, str(meta.get(key)))
    recall = meta.get("recall")
    table.add_row("recall", "exact search" if meta["kind"] == "flat" else _summary(meta).split("; ", 1)[-1]
                  if recall else "not measured")
    table.add_row("memory", f"{memory['index_bytes']:,} bytes index + {memory['keys_and_locations_bytes']:,} keys "
                  f"and locations; {memory['bytes_per_vector']:,.0f} bytes a vector, "
                  f"{memory['bytes_per_million_images'] / 1e9:,.2f} GB per million images")
    for i, store in enumerate(meta["stores"]):
        table.add_row(f"store {i}", f"{store['path']}: {store['images']} images indexed of {store['rows']} rows "
                      f"({store['catalog']}/{store['catalog_version']}, {store['versions']} versions)")
    table.add_row("references", f"{meta['count']} x {meta['reference_width']} float16 (embedding {meta['dim']} + "
                  f"FEATURES {meta.get('features_dim') or 0}), {memory['references_bytes']:,} bytes"
                  if meta.get("reference_width") else "none (built before references; rebuild for the probe)")
    projection = meta.get("projection")
    table.add_row("projection", f"{projection['width']} -> {projection['dim']} dims (projection.npz, sha256 "
                  f"{projection['sha256'][:12]}), learned on {projection['images']} training images of "
                  f"{projection['store']}" if projection else "none (raw embeddings)")
    table.add_row("probe", describe(probe))
    Console(width=160).print(table)


@index_app.command("train-probe")
@config_options(MatchProbeConfig, "probe_fields", helps=CONFIG_HELP)
def index_train_probe(index: Path = typer.Option(..., help="Index directory; the probe is written to INDEX/probe/."),
                      store: Path = typer.Option(..., help="Store of the same images (keys) as the index, of another "
                                                 "catalog or seed than the index's stores: its versions are the "
                                                 "queries."),
                      quiet: bool = typer.Option(False, help="No progress bar."),
                      probe_fields: Optional[dict] = None) -> None:
    """Train the reference-aware probe: what was done to an upload, given the known image it matched."""
    from equiprobe.trainer.match_probe_train import train_match_probe

    try:
        record = train_match_probe(index, store, MatchProbeConfig(**(probe_fields or {})), progress=not quiet)
    except ValueError as exc:
        raise fail(str(exc))
    val = record["validation"]
    probe, base, copy = val["probe"], val["baseline"], val["copy"]

    def fmt(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    print(f"{index}/probe: {len(record['classes'])} classes ({record['catalog']}), W {record['width']}; "
          f"{record['training']['images']} training and {val['val']['images']} validation images")
    print(f"validation {val['classes']}-way accuracy {fmt(probe['accuracy'])} (nearest stored version "
          f"{fmt(base['accuracy'])}), category {fmt(probe['category_accuracy'])} ({fmt(base['category_accuracy'])}), "
          f"edited AUC {fmt(probe['edited_auc'])} ({fmt(base['edited_auc'])})")
    if base.get("shared_classes_share") is not None and base["shared_classes_share"] < 1:
        print(f"on the {base['shared_classes_share']:.0%} of pairs whose class the index's stores have: accuracy "
              f"{fmt(probe['accuracy_shared_classes'])} (nearest stored version {fmt(base['accuracy_shared_classes'])})")
    print(f"copy threshold {record['copy_threshold']:.4f} (cosine; non-copies through {copy['non_copy_fpr']:.4f}, "
          f"copies {copy['copy_recall']:.3f}); edited threshold {record['edited_threshold']:.4f} "
          f"(identity pairs through {probe['fpr_at_threshold']:.3f}, edited {probe['tpr_at_threshold']:.3f})")


@index_app.command("card")
def index_card(index: Path = typer.Option(..., help="Index directory (with its probe: index train-probe)."),
               store: Path = typer.Option(..., help="Store of another catalog than the index's stores: its test "
                                          "images are the queries (in the index: copies; not: new photos)."),
               out: Optional[Path] = typer.Option(None, help="Directory for match_card.json and match_card.png.")) -> None:
    """The match card on test sources: recall@1/@10, micro-AP, copies called, edits named, edited AUC."""
    import json

    from equiprobe.trainer.match_card import format_match_card, plot_match_card, store_match_card

    try:
        card = store_match_card(index, store)
    except ValueError as exc:
        raise fail(str(exc))
    print("\n".join(format_match_card(card)))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "match_card.json").write_text(json.dumps(card, indent=2))
        plot_match_card(card, out / "match_card.png")
        print(f"wrote {out / 'match_card.json'} and {out / 'match_card.png'}")
