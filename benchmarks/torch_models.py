"""The benchmark networks written by hand in PyTorch (CPU), matching the cnndsl specs.

Same layers, shapes and parameter counts as the .cnn networks: Keras/TensorFlow
`same` padding (the extra pixel bottom/right, so an explicit pad before a valid
conv or pool where it is asymmetric), batchnorm with Keras' epsilon, and
dense layers reading NHWC-ordered features. Used by bench_step.py.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def tf_pads(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow `same`: out = ceil(n/s); the extra pixel of padding goes after."""
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


class Conv(nn.Module):
    """Keras Conv2D(padding='same'): symmetric padding inside the conv when TF's split is
    symmetric (no extra copy, as one would write it), an explicit pad otherwise."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.k, self.stride = k, stride
        self.conv = nn.Conv2d(cin, cout, k, stride, bias=bias)
        self.pads: tuple[int, int, int, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_pads(x.shape[2], self.k, self.stride)
        left, right = tf_pads(x.shape[3], self.k, self.stride)
        if (top, left) == (bottom, right):
            return F.conv2d(x, self.conv.weight, self.conv.bias, self.stride, (top, left))
        return self.conv(F.pad(x, (left, right, top, bottom)))


def bn(c: int) -> nn.BatchNorm2d:
    """Keras BatchNormalization defaults in torch terms (momentum 0.99 -> 0.01)."""
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


def max_pool_same(x: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """Keras MaxPooling2D(padding='same'): −inf padding, the extra pixel after."""
    top, bottom = tf_pads(x.shape[2], k, stride)
    left, right = tf_pads(x.shape[3], k, stride)
    return F.max_pool2d(F.pad(x, (left, right, top, bottom), value=-float("inf")), k, stride)


class FashionCNN(nn.Module):
    """The Fashion-MNIST CNN of Hands-On ML ch. 14 (specs/fashion_mnist.cnn), logits out."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.c1 = Conv(1, 64, 7)
        self.c2, self.c3 = Conv(64, 128, 3), Conv(128, 128, 3)
        self.c4, self.c5 = Conv(128, 256, 3), Conv(256, 256, 3)
        self.d1, self.d2 = nn.Linear(2304, 128), nn.Linear(128, 64)
        self.d3 = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c3(F.relu(self.c2(x)))), 2)
        x = F.max_pool2d(F.relu(self.c5(F.relu(self.c4(x)))), 2)
        x = x.permute(0, 2, 3, 1).flatten(1)
        x = F.dropout(F.relu(self.d1(x)), 0.5, self.training)
        x = F.dropout(F.relu(self.d2(x)), 0.5, self.training)
        return self.d3(x)


class ResidualUnit(nn.Module):
    """Two 3×3 convs with batchnorm; a 1×1 projection skip when the stride is 2."""

    def __init__(self, cin: int, filters: int, stride: int) -> None:
        super().__init__()
        self.c1, self.b1 = Conv(cin, filters, 3, stride, bias=False), bn(filters)
        self.c2, self.b2 = Conv(filters, filters, 3, bias=False), bn(filters)
        self.skip: nn.Module | None = None
        if stride > 1:
            self.skip = nn.Sequential(Conv(cin, filters, 1, stride, bias=False), bn(filters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(main + (x if self.skip is None else self.skip(x)))


def residual_stages(units: tuple[int, ...]) -> nn.Sequential:
    """The four stages of basic units (64, 128, 256, 512 filters), each after the first /2."""
    layers: list[Any] = []
    cin = 64
    for filters, n in zip((64, 128, 256, 512), units, strict=True):
        for _ in range(n):
            layers.append(ResidualUnit(cin, filters, 1 if filters == cin else 2))
            cin = filters
    return nn.Sequential(*layers)


class ResNetCifar(nn.Module):
    """ResNet-18 for 32×32 inputs: a 3×3 stem without pooling, then 4 stages of units."""

    def __init__(self, units: tuple[int, ...] = (2, 2, 2, 2), classes: int = 10) -> None:
        super().__init__()
        self.stem, self.stem_bn = Conv(3, 64, 3, bias=False), bn(64)
        self.units = residual_stages(units)
        self.head = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.units(F.relu(self.stem_bn(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


class ResNet34(nn.Module):
    """ResNet-34 of specs/resnet34.cnn: 7×7/2 stem, 3×3/2 max pool, [3, 4, 6, 3] units."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem, self.stem_bn = Conv(3, 64, 7, 2, bias=False), bn(64)
        self.units = residual_stages((3, 4, 6, 3))
        self.head = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = max_pool_same(F.relu(self.stem_bn(self.stem(x))), 3, 2)
        return self.head(self.units(x).mean(dim=(2, 3)))


class SeparableBlock(nn.Module):
    """MobileNet's depthwise separable block as Keras builds it (zoo.mobilenet)."""

    def __init__(self, cin: int, filters: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.dw = nn.Conv2d(cin, cin, 3, stride, 1 if stride == 1 else 0, groups=cin, bias=False)
        self.b1 = bn(cin)
        self.pw, self.b2 = nn.Conv2d(cin, filters, 1, bias=False), bn(filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.pad(x, (0, 1, 0, 1))  # zeropad(((0, 1), (0, 1))), then a valid conv
        x = F.relu6(self.b1(self.dw(x)))
        return F.relu6(self.b2(self.pw(x)))


class MobileNet(nn.Module):
    """MobileNet v1 (alpha 1) of zoo.mobilenet, logits out; dropout before the 1×1 head."""

    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5,
              (1024, 2), (1024, 1))  # fmt: skip

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem, self.stem_bn = Conv(3, 32, 3, 2, bias=False), bn(32)
        blocks: list[Any] = []
        cin = 32
        for filters, stride in self.BLOCKS:
            blocks.append(SeparableBlock(cin, filters, stride))
            cin = filters
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(cin, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu6(self.stem_bn(self.stem(x))))
        x = F.dropout(x.mean(dim=(2, 3), keepdim=True), 0.001, self.training)
        return self.head(x).flatten(1)


MODELS = {
    "fashion_mnist": FashionCNN,
    "resnet18_cifar": ResNetCifar,
    "mobilenet96": MobileNet,
    "resnet34_infer": ResNet34,
}
