"""DALI preprocessing: encoded image bytes in, the encoder's uint8 crop out (NAME_encoder normalizes).

There is one preprocessing path, used by every served model and every store: decode as RGB,
put the image on the 224x224 canvas (shorter side to 224, centre crop; the study's images),
then resize and crop for the encoder. A store's identity version and what NAME_embed and
NAME_detector compute for the same file are therefore the same pixels (tests/test_parity.py);
resizing straight to the encoder's size instead gave embeddings only 0.988 cosine apart.

One decorated function per pipeline, as in Triton's dali_backend examples. `device="gpu"`
renders the native flavour (mixed decoding on the GPU, the rest on the GPU); `device="cpu"`
is the portable flavour that runs inside a python-backend model here. Both serialize: no
python_function anywhere, so Triton's dali backend can load them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.pipeline import Pipeline

from .contract import IMAGE

if TYPE_CHECKING:  # the python-backend stub imports this module; keep torch out of it
    from .encoders import Preprocess

CANVAS_SIZE = 224  # every image is first put on a 224x224 RGB canvas, as in the study

_INTERP = {"linear": types.INTERP_LINEAR, "cubic": types.INTERP_CUBIC}
_ORDER = {"RGB": types.RGB, "BGR": types.BGR}


def decode(encoded, channel_order: str, device: str):
    decoder = "mixed" if device == "gpu" else "cpu"
    return fn.decoders.image(encoded, device=decoder, output_type=_ORDER[channel_order])


def to_canvas(images):
    """Shorter side to the canvas size, centre crop."""
    resized = fn.resize(images, resize_shorter=CANVAS_SIZE, antialias=True)
    return fn.crop(resized, crop=(CANVAS_SIZE, CANVAS_SIZE), crop_pos_x=0.5, crop_pos_y=0.5)


def decode_to_canvas(encoded, device: str):
    return to_canvas(decode(encoded, "RGB", device))


def crop_window(pre: "Preprocess") -> tuple[float, float]:
    """Where the encoder's centre crop falls on the CANVAS_SIZE canvas: (start, side) in canvas
    pixels, the same on both axes. Every image reaches the encoder's resize as that square (the
    canvas, its versions, styled canvases: their configs say so), so resizing to `pre.resize` and
    cropping `pre.size` in the middle keeps exactly this window, scaled to `pre.size`."""
    if pre.size > pre.resize:
        raise ValueError(f"crop {pre.size} is larger than the resize {pre.resize}")
    scale = CANVAS_SIZE / pre.resize
    anchor = math.floor((pre.resize - pre.size) / 2 + 0.5)  # fn.crop rounds the centred anchor to a pixel
    return anchor * scale, pre.size * scale


def resize_and_crop(images, pre: Preprocess, input_order: str = ""):
    """Resize and centre-crop canvases for an encoder, left as uint8 HWC: a quarter of the bytes
    of the normalized tensor; NAME_encoder normalizes (services/onnx_wrappers.wrap_for_crops).

    One resize of the crop window straight to the crop size, instead of resizing the whole canvas
    and cutting the crop out: the same filter at the same scale, so the same pixels (tested
    against resize-then-crop in tests/test_preprocess.py: equal for every registered encoder,
    within 1 of 255 elsewhere, float rounding of the scale) for 30% less work for a 256 -> 224
    crop; none when the crop is the canvas itself. The channel swap comes last: a permutation
    of channels commutes with a per-channel resize, and there are fewer pixels after it.
    `input_order` names the channel order of `images` when it may differ from the encoder's
    (the transform canvases are RGB)."""
    start, side = crop_window(pre)
    if not pre.resize == pre.size == CANVAS_SIZE:
        images = fn.resize(images, size=[pre.size, pre.size], roi_start=[start, start],
                           roi_end=[start + side, start + side], roi_relative=False,
                           interp_type=_INTERP[pre.interpolation], antialias=True)
    if input_order and input_order != pre.channel_order:
        images = fn.color_space_conversion(images, image_type=_ORDER[input_order],
                                           output_type=_ORDER[pre.channel_order])
    return images


def resize_then_crop(images, pre: Preprocess, input_order: str = ""):
    """The unoptimized path resize_and_crop must equal (tests only): channels swapped, the whole
    image resized (`pre.resize_mode`), then the centre crop cut out."""
    if input_order and input_order != pre.channel_order:
        images = fn.color_space_conversion(images, image_type=_ORDER[input_order],
                                           output_type=_ORDER[pre.channel_order])
    if pre.resize_mode == "square":
        images = fn.resize(images, resize_x=pre.resize, resize_y=pre.resize,
                           interp_type=_INTERP[pre.interpolation], antialias=True)
    else:
        images = fn.resize(images, resize_shorter=pre.resize, interp_type=_INTERP[pre.interpolation], antialias=True)
    return fn.crop(images, crop=(pre.size, pre.size), crop_pos_x=0.5, crop_pos_y=0.5)


@pipeline_def
def preprocess_pipeline(pre: Preprocess, device: str = "cpu"):
    encoded = fn.external_source(name=IMAGE, device="cpu", dtype=types.UINT8, ndim=1)
    return resize_and_crop(decode_to_canvas(encoded, device), pre, input_order="RGB")


def serialize_preprocess(pre: Preprocess, path: Path, device: str, max_batch_size: int,
                         num_threads: int) -> Path:
    # device_id 0 for the native flavour (Triton's dali backend sets the real one per instance);
    # None for CPU so that serialization does not look for a GPU.
    pipe = preprocess_pipeline(pre, device, batch_size=max_batch_size, num_threads=num_threads,
                               device_id=None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pipe.serialize(filename=str(path))
    return path


class SerializedPipeline:
    """Runs a serialized CPU pipeline in this process, fed by name: used by the portable
    python-backend models, the in-process benchmarks and the tests, so that all of them run
    the very same pipeline."""

    def __init__(self, serialized: Path, max_batch_size: int, num_threads: int):
        self.serialized = Path(serialized).read_bytes()
        self.max_batch_size = max_batch_size
        self.num_threads = num_threads
        self.pipe = self._build()

    def _build(self) -> Pipeline:
        pipe = Pipeline.deserialize(serialized_pipeline=self.serialized, batch_size=self.max_batch_size,
                                    num_threads=self.num_threads, device_id=None,
                                    prefetch_queue_depth=1)
        pipe.build()
        return pipe

    def run(self, feeds: dict[str, list[np.ndarray]]) -> list[np.ndarray]:
        """One array per pipeline output, batch first; raises if any sample fails (bad image)."""
        count = len(next(iter(feeds.values())))
        chunks: list[list[np.ndarray]] = []
        for start in range(0, count, self.max_batch_size):
            try:
                for name, samples in feeds.items():
                    self.pipe.feed_input(name, samples[start:start + self.max_batch_size])
                outputs = self.pipe.run()
            except Exception:
                # A failed run leaves the pipeline unusable: start a fresh one for the next call.
                self.pipe = self._build()
                raise
            chunks.append([o.as_array() for o in outputs])
        return [np.concatenate(parts) for parts in zip(*chunks)]


class CpuPreprocessor(SerializedPipeline):
    """The encoder's preprocessing: encoded images in, uint8 crops [B, S, S, 3] out."""

    def run(self, encoded: list[np.ndarray]) -> np.ndarray:  # type: ignore[override]
        return super().run({IMAGE: encoded})[0]
