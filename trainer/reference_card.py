"""The detector card on versions the detector never trained on: made by the Pillow/numpy
implementation of the catalog (services/transforms/reference.py), uploaded as JPEGs of
random quality, and scored by the served NAME_detector over gRPC, as a user's uploads are.

The images are the store's test sources (one crop each, as far as there are sources), so no
photograph, and no implementation of the transformations, was seen in training.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rich.progress import track

from equiprobe.clients.datasets import open_dataset
from equiprobe.clients.photos import encode
from equiprobe.clients.scoring import Scorer
from equiprobe.clients.store import DONE, SPLITS, Store
from equiprobe.services.transforms import get_catalog, image_key
from equiprobe.services.transforms.reference import expand_reference
from equiprobe.services.transforms.spec import upload_quality

from .detector_card import detector_card
from .probe_export import IDENTITY, category_names

def test_images(store: Store, images: int) -> list[int]:
    """Rows of test sources, one per source first, then further crops."""
    split, status, sources = np.asarray(store.array("split")), store.status(), store.sources()
    rows = np.flatnonzero((split == SPLITS["test"]) & (status == DONE))
    first = {}
    for r in rows:
        first.setdefault(str(sources[r]), r)
    ordered = list(first.values()) + [r for r in rows if r not in set(first.values())]
    return [int(r) for r in ordered[:images]]


def reference_card(url, encoder: str, store_path: Path, images: int = 40, workers: int = 4) -> dict:
    store = Store.open(store_path)
    m = store.manifest
    catalog, dataset = get_catalog(m["catalog"]), open_dataset(m["dataset"])
    categories = category_names()
    index = np.asarray(store.array("index"))
    scorer = Scorer(url, encoder, top=1)
    scorer.check()
    manipulated, true_category = [], []

    def uploads():  # made while the server scores the ones before (pool.map submits each as it comes)
        for row in track(test_images(store, images), description="Pillow-made versions"):
            data = dataset.record(int(index[row])).load()
            key = image_key(data)
            seed = int(m.get("seed", 0))
            versions = expand_reference(catalog, data, catalog.host_inputs(key, seed))
            for t, version in zip(catalog.transforms, versions):  # the qualities the server's uploads draw
                manipulated.append(t.name != IDENTITY)
                true_category.append(t.category)
                yield encode(version, quality=upload_quality(t, key, seed))

    with ThreadPoolExecutor(workers) as pool:
        scores = list(pool.map(scorer.score, uploads()))
    threshold = scorer.threshold
    scorer.close()
    card = detector_card([s.manipulation_score for s in scores], manipulated, true_category,
                         [s.categories[0][0] for s in scores], threshold, categories)
    return {"images": len(scores) // len(catalog.transforms), "uploads": len(scores), **card}
