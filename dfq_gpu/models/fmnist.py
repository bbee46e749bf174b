"""A small MobileNetV2-style network for Fashion-MNIST (28x28 grayscale, 10 classes).

Inverted residual blocks (1x1 expand -> BN -> ReLU6 -> 3x3 depthwise -> BN -> ReLU6 -> 1x1
project -> BN, identity skip where shapes allow), a 1x1 head and global average pooling:
every structure DFQ has to handle, small enough to quantize and evaluate in seconds on a
CPU. ``scripts/train_fmnist.py`` trains it; the weights ship in ``dfq_gpu/assets``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["FMNISTMobileNet", "fmnist_mobilenet", "FMNIST_WEIGHTS", "FMNIST_BLOCKS"]

FMNIST_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "fmnist_mobilenet.safetensors"

# (expansion, output channels, repeats, first stride)
FMNIST_BLOCKS = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 40, 3, 2), (4, 64, 2, 2))


def _conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn_act(cin, hidden, 1))
        layers += [_conv_bn_act(hidden, hidden, 3, stride, groups=hidden), _conv_bn_act(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_skip else y


class FMNISTMobileNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 16, head: int = 256) -> None:
        super().__init__()
        self.stem = _conv_bn_act(1, width, 3)
        blocks: list[nn.Module] = []
        cin = width
        for t, c, n, s in FMNIST_BLOCKS:
            for i in range(n):
                blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.head = _conv_bn_act(cin, head, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(torch.flatten(self.pool(x), 1))


def fmnist_mobilenet(num_classes: int = 10) -> FMNISTMobileNet:
    """The architecture (random init); ``dfq_gpu.zoo.load_model("fmnist_mobilenet")`` loads the weights."""
    return FMNISTMobileNet(num_classes)
