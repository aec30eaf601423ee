"""CIFAR ResNet-56/110 (He et al. 2016, section 4.2), option-A shortcuts (METHOD.md section 3).

Widths 16/32/64, 3 stages of n basic blocks (n = 9 for 56, 18 for 110). The shortcut
where the shape changes is parameter-free: stride-2 subsampling plus zero channel padding
(option A, as in HRank's `resnet_cifar`). Module names follow HRank (`layer{1,2,3}.{i}.conv1`,
`relu1` ...); HRank's `linear` is `classifier` here. Baseline ResNet-56: 0.85M params,
125,485,696 conv+linear MACs; ResNet-110: 1.72M, 252.89M.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import init_weights, layer


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: subsample by `stride`, zero-pad channels evenly on both sides."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - x.shape[1]
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv1-bn1-relu1-conv2-bn2, add shortcut, relu2."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        if stride != 1 or in_planes != planes:
            self.shortcut = ZeroPadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def prunable_layers(self):
        """The inner channel of every basic block (conv1 out / conv2 in); residual widths
        are kept (METHOD.md section 2)."""
        return [
            layer(f"{s}.{i}.conv1", f"{s}.{i}.relu1", f"{s}.{i}.conv2")
            for s in ("layer1", "layer2", "layer3")
            for i in range(len(getattr(self, s)))
        ]


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(56, num_classes=num_classes, in_channels=in_channels)


def resnet110(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(110, num_classes=num_classes, in_channels=in_channels)
