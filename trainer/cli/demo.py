"""`equiprobe demo`: the main job end to end (trainer/demo.py)."""

from __future__ import annotations

from typing import Optional

import typer

from ..configs import DETECTOR_ALSO_FINE, DETECTOR_ENSEMBLE, DETECTOR_HIDDEN, DETECTOR_STOP_ON, STOP_ON
from .common import probe_options


@probe_options(skip=("stop_on",), rename={"kind": "probe"}, unset="the demo's (trainer/demo.py PROBE)")
def demo(workdir: str = typer.Option("build/demo", help="Where the demo writes its files."),
         candidates: Optional[list[str]] = typer.Option(None, help="Detector encoders (repeatable): each alone, and "
                                                        "all concatenated when several; the best validation AUC is "
                                                        "deployed. Default: squeezenet1_1 (trainer/demo.py "
                                                        "CANDIDATES); more take longer than 15 minutes."),
         detect_images: int = typer.Option(0, help="Corpus crops embedded in the detection catalog per candidate; "
                                           "0: one crop of every source."),
         compare_embedding_only: bool = typer.Option(False, help="Also train the detector on the embedding alone "
                                                     "(what FEATURES add; docs/detector.md has it measured)."),
         detector_hidden: int = typer.Option(DETECTOR_HIDDEN, help="The detector probe's hidden width (the study's probes take "
                                             "--hidden, 2048 as the paper's); 512 measured best on validation "
                                             "(trainer/configs.py DETECTOR_HIDDEN)."),
         detector_ensemble: bool = typer.Option(DETECTOR_ENSEMBLE, "--detector-ensemble/--detector-best-seed",
                                                help="Deploy the detector's seeds averaged (measured better on "
                                                "validation, trainer/configs.py DETECTOR_ENSEMBLE) or the seed of "
                                                "best validation accuracy."),
         detector_stop_on: str = typer.Option(DETECTOR_STOP_ON, help=f"What the detector's early stopping watches "
                                              f"on validation: {' or '.join(STOP_ON)} (trainer/configs.py "
                                              "DETECTOR_STOP_ON)."),
         detector_also_fine: bool = typer.Option(DETECTOR_ALSO_FINE, "--detector-also-fine/--detector-detect-only",
                                                 help="The default encoder's detector also trains on the fine "
                                                 "store's training sources (strong edits; trainer/configs.py "
                                                 "DETECTOR_ALSO_FINE) or on the detect store alone."),
         probe_fields: Optional[dict] = None) -> None:
    """The main job end to end on the embedded default (squeezenet1_1, package photos).

    The probe options change the probes it trains (every candidate's and the study's), but for the
    detector's hidden width, seeds, early stopping and extra training store (the --detector-*
    options)."""
    from dataclasses import replace

    from equiprobe.trainer.demo import CANDIDATES, PROBE, run_demo

    run_demo(workdir, replace(PROBE, **probe_fields), tuple(candidates) if candidates else CANDIDATES, detect_images,
             compare_embedding_only, detector_hidden, detector_ensemble, detector_stop_on, detector_also_fine)
