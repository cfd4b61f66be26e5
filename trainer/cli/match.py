"""`equiprobe match`: images against the deployed index of known images (NAME_matcher,
clients/matching.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from equiprobe.clients.connection import api_key_option, root_certificates_option, tls_option

from .common import answer_files, fail


def match(
    files: list[Path] = typer.Argument(..., help="Image files (JPEG, PNG, BMP) to match."),
    url: str = typer.Option("127.0.0.1:8001", help="Triton gRPC address HOST:PORT."),
    encoder: str = typer.Option("squeezenet1_1", help="Encoder whose NAME_matcher the server has."),
    top: int = typer.Option(5, help="Best matches to show (at most the k the index was deployed with)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line (file, matches, copy, edited, "
                                 "transformation, category, score; or error)."),
    tls: bool = tls_option(),
    root_certificates: Optional[Path] = root_certificates_option(),
    api_key: Optional[str] = api_key_option(),
) -> None:
    """Match images against the known images: the nearest ones, whether each is a copy of one,
    and (with the index's reference-aware probe) whether and how the copy was edited."""
    from equiprobe.clients.connection import Connection
    from equiprobe.clients.embedding import ServiceError
    from equiprobe.clients.matching import Matcher

    try:
        matcher = Matcher(Connection(url, tls, root_certificates, api_key or None), encoder, top=top)
        matcher.check()
    except (ServiceError, ValueError) as exc:
        raise fail(str(exc))
    def ask(data: bytes) -> dict:
        result = matcher.match(data).as_dict()
        result.pop("model_version")
        return result

    def show(console, path, result: dict) -> None:
        best = ", ".join(f"{m['key']} {m['similarity']:.3f}" for m in result["matches"])
        verdict = "copy" if result["copy"] else "no copy"
        if result["copy"] and result["transformation"] is not None:
            verdict += (f", {'edited' if result['edited'] else 'not edited'} (score {result['score']:.3f}; "
                        f"{result['transformation']}, {result['category']})")
        console.print(f"[bold]{path}[/bold]  {verdict}  matches: {best}", highlight=False)

    try:
        answer_files(files, ask, as_json, show, errors=(ServiceError,))
    finally:
        matcher.close()
