"""CIFAR-style networks for 32 x 32 inputs (3 x 3 stems, no stem pooling), written with torch.nn
(torchvision's models are not used): resnet18, vgg11 (with batch norm), densenet121 and a small CNN.

Every model has `features(x) -> [B, D]` (the penultimate representation) and `fc`, the last linear
layer, which the experiments replace and fine-tune on each target dataset.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

ARCHS = ("resnet18", "vgg11", "densenet121", "small-cnn")


class Net(nn.Module):
    dim: int

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(Net):
    def __init__(self, classes: int, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        layers, cin = [], 3
        for width in widths:
            layers += _conv_bn(cin, width) + _conv_bn(width, width) + [nn.MaxPool2d(2)]
            cin = width
        self.body, self.dim = nn.Sequential(*layers), cin
        self.fc = nn.Linear(cin, classes)

    def features(self, x):
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(Net):
    def __init__(self, classes: int):
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 64))
        blocks, cin = [], 64
        for width, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, width, stride), BasicBlock(width, width, 1)]
            cin = width
        self.blocks, self.dim = nn.Sequential(*blocks), 512
        self.fc = nn.Linear(512, classes)

    def features(self, x):
        return F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)


class VGG11(Net):
    CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, classes: int):
        super().__init__()
        layers, cin = [], 3
        for v in self.CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += _conv_bn(cin, v)
                cin = v
        self.body, self.dim = nn.Sequential(*layers), 512
        self.fc = nn.Linear(512, classes)

    def features(self, x):
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, 4 * growth, 1, bias=False),
                                  nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True),
                                  nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class DenseNet121(Net):
    def __init__(self, classes: int, growth: int = 32, blocks: tuple[int, ...] = (6, 12, 24, 16)):
        super().__init__()
        cin = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(3, cin, 3, 1, 1, bias=False)]
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(cin, growth))
                cin += growth
            if i < len(blocks) - 1:  # transition: halve channels and resolution
                layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cin // 2, 1, bias=False),
                           nn.AvgPool2d(2)]
                cin //= 2
        layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        self.body, self.dim = nn.Sequential(*layers), cin
        self.fc = nn.Linear(cin, classes)

    def features(self, x):
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)


def build(arch: str, classes: int) -> Net:
    builders = {"resnet18": ResNet18, "vgg11": VGG11, "densenet121": DenseNet121, "small-cnn": SmallCNN}
    if arch not in builders:
        raise ValueError(f"unknown architecture {arch!r}; use {', '.join(ARCHS)}")
    return builders[arch](classes)
