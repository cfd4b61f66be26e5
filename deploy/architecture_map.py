"""Draw deploy/architecture.png: the served models of one encoder NAME and the data flow around them.

    .venv/bin/python deploy/architecture_map.py [--out deploy/architecture.png]   (or `make architecture-map`)

Model and tensor names come from services/contract.py (standard library only), so the map uses
the names the renderers use. Only matplotlib is needed; the drawing is fixed (no randomness, no
date or version in the PNG's metadata), so running it again writes the same file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from equiprobe.services.contract import (CANVAS, EMBEDDING, EXTRA, GATE, IMAGE, PARAMS, PIXELS,  # noqa: E402
                                         ROWS, STYLED, VERSIONS, DetectorNames, ExpansionNames, ModelNames)

OUT = Path(__file__).with_name("architecture.png")
NAMES, DETECTOR = ModelNames("NAME"), DetectorNames("NAME")
EXPANSIONS = [ExpansionNames("NAME", c) for c in ("fine", "general", "groups")]

# Backends (the native flavour's; portable runs the DALI and ONNX models in python-backend models).
COLOURS = {"python": "#fde2b8", "dali": "#cfe3f7", "onnx": "#d4efd0", "shared": "#f6c9c9", "flow": "#eeeeee"}
EDGE = "#444444"


def _catalog_names() -> tuple[str, str]:
    """CATALOG_inputs and NAME_expandK as the glossary writes them (one per catalog)."""
    inputs = "CATALOG_inputs"  # fine_inputs, general_inputs, groups_inputs
    expand = "NAME_expandK"  # NAME_expand31, NAME_expand_general, NAME_expand_groups
    assert {e.inputs for e in EXPANSIONS} == {"fine_inputs", "general_inputs", "groups_inputs"}
    assert {e.expand for e in EXPANSIONS} == {"NAME_expand31", "NAME_expand_general", "NAME_expand_groups"}
    return inputs, expand


def box(ax, x0, y0, x1, y1, title, body="", colour="python", bold=True, size=10.5, lw=1.2):
    ax.add_patch(FancyBboxPatch((x0, y0), x1 - x0, y1 - y0, boxstyle="round,pad=0.25,rounding_size=0.8",
                                facecolor=COLOURS[colour], edgecolor=EDGE, linewidth=lw, zorder=2))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if body:
        ax.text(cx, cy + 1.3, title, ha="center", va="bottom", fontsize=size, zorder=3,
                fontweight="bold" if bold else "normal")
        ax.text(cx, cy + 0.9, body, ha="center", va="top", fontsize=size - 2.3, zorder=3, linespacing=1.25)
    else:
        ax.text(cx, cy, title, ha="center", va="center", fontsize=size, zorder=3,
                fontweight="bold" if bold else "normal")


def band(ax, y0, y1, label, sub, x=19.5):
    ax.add_patch(FancyBboxPatch((1.5, y0), 157, y1 - y0, boxstyle="round,pad=0.2,rounding_size=1.2",
                                facecolor="#fafafa", edgecolor="#999999", linewidth=1.0, linestyle=(0, (4, 3)),
                                zorder=0))
    ax.text(x, y1 - 1.1, label, ha="left", va="top", fontsize=11, fontweight="bold", zorder=1)
    ax.text(x, y1 - 3.9, sub, ha="left", va="top", fontsize=8.6, color="#333333", zorder=1)


def arrow(ax, start, end, label="", dashed=False, rad=0.0, label_at=0.5, offset=(0, 1.0), size=8.2, both=False):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="<|-|>" if both else "-|>", mutation_scale=13,
                                 color=EDGE, linewidth=1.2, linestyle="--" if dashed else "-",
                                 connectionstyle=f"arc3,rad={rad}", zorder=4, shrinkA=1, shrinkB=1))
    if label:
        x = start[0] + (end[0] - start[0]) * label_at + offset[0]
        y = start[1] + (end[1] - start[1]) * label_at + offset[1]
        ax.text(x, y, label, ha="center", va="bottom", fontsize=size, zorder=5,
                bbox=dict(facecolor="white", edgecolor="none", pad=0.6, alpha=0.9))


def draw(out: Path) -> Path:
    inputs, expand = _catalog_names()
    fig = plt.figure(figsize=(16, 10.6), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 160)
    ax.set_ylim(0, 106)
    ax.axis("off")

    # -- data flow ------------------------------------------------------------------------------
    ax.text(2, 104.2, "Data flow", fontsize=13, fontweight="bold", va="top")
    flow = [("uploads", "image files over gRPC\n(clients/: embed, score)"),
            ("Triton", "serves model_repository/\n(rendered by services/)"),
            ("stores", "memory-mapped .npy\n(clients/store.py)"),
            ("trainer", "probes, baselines, report\n(trainer/: train, report)"),
            ("deploy", f"{DETECTOR.probe} version\n+ {DETECTOR.detector} (trainer/deploy.py)")]
    xs = [2, 34, 66, 98, 130]
    for (title, body), x in zip(flow, xs):
        box(ax, x, 90, x + 27, 99.5, title, body, colour="flow", size=11.5)
    labels = ["IMAGE bytes", "EMBEDDINGS,\nPARAMS, KEY", "probe.pt,\nprobe.json", "ONNX probe"]
    for x, label in zip(xs[:-1], labels):
        arrow(ax, (x + 27.4, 94.75), (x + 31.6, 94.75))
        ax.text(x + 29.5, 99.9, label, ha="center", va="bottom", fontsize=7.6)
    arrow(ax, (143.5, 89.6), (47.5, 89.6), rad=-0.09)
    ax.text(95.5, 82.4, "deploy writes into the repository; a server in explicit model control loads it "
            "(deploy --rollback selects the previous version)", ha="center", va="bottom", fontsize=8.4)

    # -- served models ----------------------------------------------------------------------------
    ax.text(2, 80.6, "Served models of one encoder NAME (build-repo renders them; services/repository.py)",
            fontsize=13, fontweight="bold", va="top")
    band(ax, 63, 77.5, f"embed: {NAMES.embed} (ensemble)", f"{IMAGE} -> {EMBEDDING} [D]", x=53)
    band(ax, 46, 61.5, f"detector: {DETECTOR.detector} (ensemble)",
         f"after equiprobe deploy: {NAMES.embed}'s steps -> {DETECTOR.probe}", x=53)
    band(ax, 4, 44.5, "expansion: " + " | ".join(e.embed for e in EXPANSIONS),
         f"ensembles, one per catalog: {IMAGE}, SEED, {ROWS}, UPLOADS -> EMBEDDINGS [R, D], {PARAMS} [K, W + 1], KEY")

    # shared models: tall boxes across the bands
    box(ax, 3.5, 13, 17, 74.5, GATE, "upload checks\n(services/\nuploads.py)\n\none per\nrepository,\nin front of\n"
        "every upload", colour="python", size=10)
    box(ax, 96, 13, 118, 74.5, NAMES.onnx, f"{PIXELS}: uint8 crops\n[S, S, 3]\n-> normalize\n-> encoder\n"
        f"-> {EMBEDDING} [D]\n\nthe only model\nwith the encoder's\nweights: shared by\nevery family",
        colour="shared", size=11, lw=2.2)
    box(ax, 28, 50, 50, 69, NAMES.preprocess, "decode, 224 canvas,\nresize and crop\nfor the encoder\n"
        f"-> {PIXELS}", colour="dali")

    # embed
    arrow(ax, (17.3, 66), (27.7, 66), IMAGE)
    arrow(ax, (50.3, 66), (95.7, 66), f"{PIXELS} (uint8 crops)")
    arrow(ax, (118.3, 69), (128, 69), EMBEDDING)
    ax.text(129, 69, f"{EMBEDDING} [D]\n({NAMES.embed}'s output)", ha="left", va="center", fontsize=9)

    # detector
    arrow(ax, (17.3, 53), (27.7, 53), IMAGE)
    arrow(ax, (50.3, 53), (95.7, 53), PIXELS)
    box(ax, 126, 47.5, 157, 57.5, DETECTOR.probe, "ONNX probes, versioned; outputs\nTRANSFORM_PROBS, CATEGORY_PROBS,\n"
        "MANIPULATION_SCORE, MANIPULATED", colour="onnx", size=10)
    arrow(ax, (118.3, 53), (125.7, 53), "", offset=(0, 0.6))
    ax.text(122, 54.0, EMBEDDING, ha="center", va="bottom", fontsize=7.6)

    # expansion
    box(ax, 21, 23.5, 39, 35.5, inputs, "python: key, PARAMS\n(drawn per image),\naux inputs, ROWS", colour="python",
        size=9.8)
    box(ax, 44, 23.5, 62, 35.5, expand, "DALI: the catalog's\nK versions, cropped\nfor the encoder", colour="dali",
        size=9.8)
    box(ax, 69, 23.5, 87.5, 35.5, NAMES.versions, "python (BLS): picks\nROWS, appends EXTRA,\nreturns EMBEDDINGS",
        colour="python", size=9.8)
    box(ax, 44, 6, 62, 15.5, "style_NET", "ONNX style network\n(build-repo --style-net)", colour="onnx", size=9.8)
    box(ax, 69, 6, 87.5, 15.5, EXPANSIONS[0].style_resize,
        "DALI: styled canvases\ncropped for the encoder", colour="dali", size=9.8)
    arrow(ax, (17.3, 29.5), (20.7, 29.5))
    arrow(ax, (39.3, 29.5), (43.7, 29.5))
    ax.text(41.5, 28.6, f"{PARAMS},\naux", ha="center", va="top", fontsize=7.6)
    arrow(ax, (62.3, 29.5), (68.7, 29.5))
    ax.text(65.5, 28.6, VERSIONS, ha="center", va="top", fontsize=7.6)
    arrow(ax, (30, 35.8), (78.2, 35.8), ROWS, rad=-0.11, label_at=0.5, offset=(0, 1.6))
    arrow(ax, (53, 23.2), (53, 15.8), CANVAS, offset=(3.6, -1.2))
    arrow(ax, (62.3, 10.7), (68.7, 10.7), STYLED, offset=(0, 1.6))
    arrow(ax, (78.2, 15.8), (78.2, 23.2), EXTRA, offset=(3.4, -1.2))
    arrow(ax, (87.8, 29.5), (95.7, 29.5), "", both=True)
    ax.text(91.7, 30.9, "crops", ha="center", va="bottom", fontsize=7.6)
    ax.text(91.7, 28.1, "EMB.", ha="center", va="top", fontsize=7.6)
    ax.text(125, 36, f"{NAMES.versions} sends the rows {ROWS} picks\n"
            f"to {NAMES.onnx} (BLS), so its dynamic\nbatcher sees them with {NAMES.embed}'s\n"
            "requests (chunks of at most its\nmax_batch_size, all in flight at once).\n\n"
            "optional row: style_NET and\nNAME_style_resize only with\nbuild-repo --style-net NAME=PATH",
            ha="left", va="top", fontsize=9, linespacing=1.3)

    # legend
    legend = [("python", "python backend"), ("dali", "DALI (native: dali backend)"),
              ("onnx", "ONNX (native: onnxruntime + TensorRT)"), ("shared", "the one shared encoder model")]
    ax.text(2, 1.2, "portable flavour: DALI and ONNX models run inside python-backend models on the CPU",
            fontsize=8.4, va="bottom", color="#333333")
    for i, (colour, label) in enumerate(legend):
        x = (66, 80, 101, 129)[i]
        ax.add_patch(FancyBboxPatch((x, 0.9), 2.4, 2.0, boxstyle="round,pad=0.1", facecolor=COLOURS[colour],
                                    edgecolor=EDGE, linewidth=0.8))
        ax.text(x + 3.2, 1.9, label, fontsize=8.4, va="center")

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, metadata={"Software": None})  # no matplotlib version: the same bytes each run
    plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    path = draw(parser.parse_args().out)
    print(f"{path}: {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
