"""`equiprobe demo`: the main job end to end (trainer/demo.py)."""

from __future__ import annotations

from typing import Optional

import typer

from .common import probe_options


@probe_options(skip=(), rename={"kind": "probe"}, unset="the demo's (trainer/demo.py PROBE)")
def demo(workdir: str = typer.Option("build/demo", help="Where the demo writes its files."),
         probe_fields: Optional[dict] = None) -> None:
    """The main job end to end on the embedded default (squeezenet1_1, package photos).

    The probe options change the probes it trains (every candidate's and the generalization probe)."""
    from dataclasses import replace

    from equiprobe.trainer.demo import PROBE, run_demo

    run_demo(workdir, replace(PROBE, **probe_fields))
