"""The 31x expansion as one DALI pipeline: decode once, put the image on the catalog canvas,
run every transformation as its own branch, and stack the versions in catalog order.

With an encoder's `Preprocess`, each version is also resized and cropped for that encoder
(uint8 [K, S, S, 3] in its channel order; the K-version ONNX model normalizes); without, the
canvases come out as uint8 [K, 224, 224, 3] for previews and tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
from nvidia.dali import fn, math as dmath, pipeline_def, types

from ..contract import IMAGE, PARAMS
from ..pipelines import SerializedPipeline, decode_to_canvas, resize_and_crop
from .catalog import AUX_TYPES, Catalog

if TYPE_CHECKING:
    from ..encoders import Preprocess



def as_upload(image, quality):
    """The version re-encoded as a JPEG of `quality` (a per-sample scalar), as a user's upload is;
    quality 0 keeps it as made (the study's protocol). Both are computed and one is kept: DALI
    has no per-sample branch that Triton's dali backend can load."""
    compressed = fn.jpeg_compression_distortion(image, quality=fn.cast(dmath.max(quality, 1.0), dtype=types.INT32))
    keep = fn.cast(quality <= 0.0, dtype=types.UINT8)
    return compressed * (types.Constant(1, dtype=types.UINT8) - keep) + image * keep


@pipeline_def
def expand_pipeline(catalog: Catalog, device: str = "cpu", pre: Optional["Preprocess"] = None,
                    emit_canvas: bool = False, uploads: bool = True):
    """`uploads=False` leaves out the upload re-encoding (as_upload): only for measuring what
    each stage costs (trainer/benchmarks/expansion.py expansion_profile); served pipelines always have it."""
    encoded = fn.external_source(name=IMAGE, device="cpu", dtype=types.UINT8, ndim=1)
    params = fn.external_source(name=PARAMS, device="cpu", dtype=types.FLOAT, ndim=2)
    if not uploads or not any(t.params for t in catalog.transforms):
        # DALI prunes inputs nothing reads, but the served model still takes PARAMS (groups
        # catalog; and without uploads, rows whose parameters only shape host inputs): a
        # preserved no-op keeps the input in the graph.
        fn.reshape(params, shape=[-1], preserve=True)
    aux: list[dict] = [{} for _ in catalog.transforms]
    for name, local, k in catalog.aux_inputs:
        dtype, ndim = AUX_TYPES[local]
        node = fn.external_source(name=name, device="cpu", dtype=dtype, ndim=ndim)
        # Inputs used as image data must live where the images are; kernels and matrices stay
        # on the CPU as operator arguments.
        aux[k][local] = node.gpu() if device == "gpu" and dtype == types.UINT8 else node
    canvas = decode_to_canvas(encoded, device)
    versions = [t.apply(canvas, params[k], aux[k]) for k, t in enumerate(catalog.transforms)]
    if uploads:
        versions = [as_upload(v, params[k][catalog.width]) for k, v in enumerate(versions)]
    if pre is not None:
        versions = [resize_and_crop(v, pre, input_order="RGB") for v in versions]
    # The untouched canvas feeds user-provided style networks that run as later ensemble steps.
    return (fn.stack(*versions), canvas) if emit_canvas else fn.stack(*versions)


@pipeline_def
def resize_pipeline(names: list[str], pre: "Preprocess", device: str = "cpu"):
    """Canvases produced outside DALI (style networks) -> the encoder's crops, stacked [n, S, S, 3]."""
    canvases = [fn.external_source(name=n, device="cpu", dtype=types.UINT8, ndim=3, layout="HWC") for n in names]
    if device == "gpu":
        canvases = [c.gpu() for c in canvases]
    return fn.stack(*[resize_and_crop(c, pre, input_order="RGB") for c in canvases])


def serialize_expand(catalog: Catalog, path: Path, device: str, max_batch_size: int, num_threads: int,
                     pre: Optional["Preprocess"] = None, emit_canvas: bool = False, uploads: bool = True) -> Path:
    return _serialize(expand_pipeline(catalog, device, pre, emit_canvas, uploads, batch_size=max_batch_size,
                                      num_threads=num_threads, device_id=None), path)


def serialize_resize(names: list[str], pre: "Preprocess", path: Path, device: str, max_batch_size: int,
                     num_threads: int) -> Path:
    return _serialize(resize_pipeline(names, pre, device, batch_size=max_batch_size,
                                      num_threads=num_threads, device_id=None), path)


def _serialize(pipe, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pipe.serialize(filename=str(path))
    return path


class Expander(SerializedPipeline):
    """Runs a serialized expansion pipeline: encoded images and their keys in, versions out."""

    def __init__(self, serialized: Path, catalog: Catalog, max_batch_size: int, num_threads: int):
        super().__init__(serialized, max_batch_size, num_threads)
        self.catalog = catalog

    def feeds(self, encoded: list[np.ndarray], keys: list[str], seed: int,
              uploads: bool = False) -> dict[str, list[np.ndarray]]:
        per_image = [self.catalog.host_inputs(key, seed, uploads) for key in keys]
        feeds = {IMAGE: encoded}
        for name in per_image[0]:
            feeds[name] = [inputs[name] for inputs in per_image]
        return feeds

    def expand(self, encoded: list[np.ndarray], keys: list[str], seed: int,
               uploads: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(versions [B, K, ...], params [B, K, params_width])."""
        feeds = self.feeds(encoded, keys, seed, uploads)
        versions = self.run(feeds)[0]
        return versions, np.stack(feeds[PARAMS])
