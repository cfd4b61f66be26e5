"""`equiprobe report`: tables, detector card, invariance metrics and plots (trainer/report.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from equiprobe.clients.connection import api_key_option, root_certificates_option, tls_option
from equiprobe.services.contract import DetectorNames

from .common import fail


def report(
    store: list[Path] = typer.Option(..., help="Store(s) to measure (G-EED, copy detection); repeat for Table 1 "
                                     "over several encoders. A store of the groups catalog gives exact group G-EED."),
    probes: list[Path] = typer.Option([], help="Probe directories (equiprobe train) to tabulate and plot."),
    out: Path = typer.Option(..., help="Directory for report.md, results.json and the PNG plots."),
    max_images: int = typer.Option(2000, help="Images per store for the invariance metrics (fixed-seed subsample)."),
    url: str = typer.Option(None, help="gRPC HOST:PORT of a server with the deployed NAME_detector: the detector "
                            "card is also computed on Pillow-made versions of the first store's test sources, and the "
                            "everyday-edits card on scikit-image-made ones."),
    encoder: str = typer.Option("squeezenet1_1", help="With --url: whose NAME_detector to score with."),
    reference_images: int = typer.Option(40, help="With --url: test images whose Pillow-made versions are scored."),
    everyday_images: int = typer.Option(40, help="With --url: test images whose everyday edits (scikit-image, "
                                        "never trained on; trainer/everyday_card.py) are scored; 0: none."),
    index: Optional[Path] = typer.Option(None, help="Index of known images with its probe (equiprobe index "
                                         "train-probe): the match card on the first store's test images (DALI-made "
                                         "versions; the store must be of another catalog than the index's), and "
                                         "with --url the served NAME_matcher's on everyday edits."),
    match_images: int = typer.Option(40, help="With --index --url: test images in the index (copies) to query."),
    match_new_images: int = typer.Option(40, help="With --index --url: test images in no index (new photos)."),
    tls: bool = tls_option(),
    root_certificates: Optional[Path] = root_certificates_option(),
    api_key: Optional[str] = api_key_option(),
) -> None:
    """Tables, detector card, invariance metrics and plots for stores and trained probes."""
    from equiprobe.clients.connection import Connection
    from equiprobe.clients.embedding import ServiceError
    from equiprobe.clients.store import StoreError
    from equiprobe.trainer.report import build_report

    try:
        cards = everyday = None
        connection = Connection(url, tls, root_certificates, api_key or None) if url else None
        if url:
            from equiprobe.trainer.reference_card import reference_card

            detector = DetectorNames(encoder).detector
            cards = {detector: reference_card(connection, encoder, store[0], reference_images)}
            if everyday_images:
                from equiprobe.trainer.everyday_card import everyday_card, format_everyday

                everyday = {detector: everyday_card(connection, encoder, store[0], everyday_images)}
                print("\n".join(format_everyday(everyday[detector])))
        matching = match_cards(index, store[0], connection if url else None, encoder, match_images,
                               match_new_images) if index else None
        results = build_report(store, probes, out, max_images=max_images, reference_cards=cards,
                               everyday_cards=everyday, match_cards=matching)
    except (StoreError, ServiceError, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc))
    print(f"wrote {out / 'report.md'}, {out / 'results.json'} and {len(results['plots'])} plots in {out}")


def match_cards(index: Path, store: Path, connection, encoder: str, images: int, new_images: int) -> dict:
    """{"store": the card on the store's DALI-made test versions, "served": on everyday edits (with a server)}."""
    from equiprobe.trainer.match_card import format_match_card, store_match_card

    cards = {"store": store_match_card(index, store)}
    print("\n".join(format_match_card(cards["store"])))
    if connection is not None:
        from equiprobe.trainer.match_served_card import format_served_match_card, served_match_card

        cards["served"] = served_match_card(connection, encoder, index, store, images, new_images)
        print("\n".join(format_served_match_card(cards["served"])))
    return cards
