"""`equiprobe report`: tables, detector card, invariance metrics and plots (trainer/report.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from equiprobe.clients.connection import api_key_option, root_certificates_option, tls_option

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
        if url:
            from equiprobe.trainer.reference_card import reference_card

            connection = Connection(url, tls, root_certificates, api_key or None)
            cards = {f"{encoder}_detector": reference_card(connection, encoder, store[0], reference_images)}
            if everyday_images:
                from equiprobe.trainer.everyday_card import everyday_card, format_everyday

                everyday = {f"{encoder}_detector": everyday_card(connection, encoder, store[0], everyday_images)}
                print("\n".join(format_everyday(everyday[f"{encoder}_detector"])))
        results = build_report(store, probes, out, max_images=max_images, reference_cards=cards,
                               everyday_cards=everyday)
    except (StoreError, ServiceError, ValueError, FileNotFoundError) as exc:
        raise fail(str(exc))
    print(f"wrote {out / 'report.md'}, {out / 'results.json'} and {len(results['plots'])} plots in {out}")
