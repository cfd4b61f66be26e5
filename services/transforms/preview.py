"""A labelled grid of every version of one image, like Figures 1-2 of the study."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from .catalog import Catalog
from .expand import Expander, serialize_expand
from .spec import image_key


def expand_one(catalog: Catalog, data: bytes, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All versions of one encoded image on the canvas (uint8 [K, 224, 224, 3]) and their params."""
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = serialize_expand(catalog, Path(tmp) / "expand.dali", "cpu", 1, 2)
        expander = Expander(pipeline, catalog, 1, 2)
    versions, params = expander.expand([np.frombuffer(data, np.uint8)], [image_key(data)], seed)
    return versions[0], params[0]


def render_grid(catalog: Catalog, versions: np.ndarray, params: np.ndarray, out: Path, columns: int = 8) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(versions)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.1, rows * 2.35))
    for k, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if k >= count:
            continue
        t = catalog.transforms[k]
        ax.imshow(versions[k])
        detail = catalog.describe(params[k], k)
        ax.set_title(f"{t.id}. {t.name}\n{t.category}", fontsize=7.5)
        if detail:
            ax.text(0.5, -0.04, detail[:46], fontsize=5, ha="center", va="top", transform=ax.transAxes)
    fig.suptitle(f"catalog {catalog.name} ({catalog.version}): {count} versions", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
