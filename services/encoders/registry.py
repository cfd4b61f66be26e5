"""The encoder registry: every frozen encoder is one declared `EncoderSpec`.

A spec says everything the serving side needs: the embedding dimension, how pixels must be
prepared (that becomes the DALI pipeline), and how to build the network (that becomes the
ONNX model). `create_encoder(name, weights=...)` builds the network, timm-style.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional, Union

import onnx
import torch


class EncoderError(ValueError):
    """An encoder cannot be built as asked (unknown name, missing or unreadable weights)."""


@dataclass(frozen=True)
class Preprocess:
    """How encoded image bytes become the encoder's input tensor.

    `mean` and `std` are in pixel units (0..255) and in `channel_order`; the output is
    (pixel - mean) / std, laid out as `layout` (without the batch axis).
    """

    size: int  # the square the encoder sees
    resize: int  # "square": both sides resized to this; "shorter": the shorter side
    resize_mode: Literal["square", "shorter"]
    interpolation: Literal["linear", "cubic"]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channel_order: Literal["RGB", "BGR"]
    layout: Literal["CHW", "HWC"] = "CHW"

    @property
    def output_shape(self) -> tuple[int, int, int]:
        s = self.size
        return (3, s, s) if self.layout == "CHW" else (s, s, 3)

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        """What NAME_preprocess and every expansion hand NAME_encoder: uint8 HWC crops."""
        return (self.size, self.size, 3)

    def normalize(self, crops):
        """uint8 crops [..., S, S, 3] -> the exported encoder's input, as NAME_encoder's graph does
        it (services/onnx_wrappers.wrap_for_crops); numpy, for references and tests."""
        import numpy as np

        x = (np.asarray(crops, np.float32) - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3)) if self.layout == "CHW" else x


@dataclass(frozen=True)
class FeatureTaps:
    """The early blocks whose activations feed NAME_encoder's FEATURES output, besides EMBEDDING.

    Each block gives, per channel, the mean and then the standard deviation of its activation over
    space; FEATURES is those, block after block, in the order declared (so 2 x the channels in all).
    Why: the final embedding is trained to ignore what edits change (blur, noise, resampling,
    overlays), the first blocks still see it (measured on held-out photographs, issue 23: the
    statistics of squeezenet1_1's conv1..fire5 gave AUC 0.93 against 0.81 for the embedding).
    A block is a submodule path of a torch network (NCHW), or a tensor name of an ONNX graph.
    """

    blocks: tuple[tuple[str, int], ...]  # (block, channels)
    layout: Literal["NCHW", "NHWC"] = "NCHW"  # of an ONNX graph's tensors (torch modules: NCHW)

    @property
    def dim(self) -> int:
        return 2 * sum(channels for _, channels in self.blocks)

    def columns(self) -> list[dict]:
        """Where each block's statistics sit in FEATURES (stores and probes record it)."""
        out, start = [], 0
        for block, channels in self.blocks:
            out.append({"block": block, "channels": channels, "mean": [start, start + channels],
                        "std": [start + channels, start + 2 * channels]})
            start += 2 * channels
        return out


# What a builder returns: a torch module mapping a preprocessed batch to [B, D] embeddings,
# or an ONNX graph that already does (open_nsfw ships as ONNX only).
Network = Union[torch.nn.Module, onnx.ModelProto]
Builder = Callable[[Optional[Path], bool], Network]


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    dim: int
    preprocess: Preprocess
    builder: Builder = field(repr=False)
    description: str = ""
    # Where real weights come from: "bundled" (a package ships them) or a hint for --weights.
    weights_source: str = "bundled"
    # Early blocks tapped for the detector's FEATURES; None: NAME_encoder gives EMBEDDING only.
    features: Optional[FeatureTaps] = None

    @property
    def feature_dim(self) -> int:
        return self.features.dim if self.features else 0

    @property
    def needs_weights_file(self) -> bool:
        return self.weights_source != "bundled"

    def build(self, weights: Optional[Path] = None, random_weights: bool = False) -> Network:
        if self.needs_weights_file and weights is None and not random_weights:
            raise EncoderError(
                f"encoder '{self.name}' needs pretrained weights from a local file: pass "
                f"--weights PATH ({self.weights_source}). Model hubs cannot be reached, so "
                f"nothing is downloaded. For pipeline tests only, --random-weights builds the "
                f"same architecture with random weights."
            )
        if weights is not None and not Path(weights).is_file():
            raise EncoderError(f"weights file {weights} for encoder '{self.name}' does not exist")
        try:
            network = self.builder(Path(weights) if weights else None, random_weights)
        except EncoderError:
            raise
        except Exception as exc:  # a corrupt or mismatched checkpoint: name the file and why
            raise EncoderError(
                f"could not load weights for '{self.name}' from {weights}: {type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(network, torch.nn.Module):
            network.eval()
        return network


_REGISTRY: dict[str, EncoderSpec] = {}


def register(spec: EncoderSpec) -> EncoderSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"encoder {spec.name} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get_encoder(name: str) -> EncoderSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EncoderError(f"unknown encoder '{name}'; known: {', '.join(sorted(_REGISTRY))}") from None


def list_encoders() -> list[EncoderSpec]:
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def create_encoder(name: str, weights: Optional[Path] = None, random_weights: bool = False) -> Network:
    return get_encoder(name).build(weights, random_weights)
