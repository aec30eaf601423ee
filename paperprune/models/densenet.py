"""DenseNet-40 (k = 12) for 32x32 inputs, HRank's variant (METHOD.md section 3).

Stem conv3x3 3->24; three dense blocks of 12 pre-activation layers (BN-ReLU-Conv3x3 to 12
channels, output concatenated to the input); transitions BN-ReLU-Conv1x1-AvgPool2d(2)
with no compression (168->168, 312->312); final BN-ReLU-AvgPool-Linear(456, K). No conv
biases. Baseline 1.04M params; conv+linear MACs 282.92M (published 282.00M).
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers import init_weights, layer


class DenseLayer(nn.Module):
    """BN-ReLU-Conv3x3, output concatenated after the input (HRank's DenseBasicBlock)."""

    def __init__(self, in_planes: int, growth_rate: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x, self.conv1(self.relu(self.bn1(x)))), 1)


class Transition(nn.Module):
    """BN-ReLU-Conv1x1-AvgPool2d(2)."""

    def __init__(self, in_planes: int, out_planes: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=1, bias=False)
        self.avgpool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.avgpool(self.conv1(self.relu(self.bn1(x))))


class DenseNet(nn.Module):
    def __init__(self, depth: int = 40, growth_rate: int = 12, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        n = (depth - 4) // 3
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=3, padding=1, bias=False)
        for b in (1, 2, 3):
            block = nn.Sequential()
            for i in range(n):
                block.add_module(str(i), DenseLayer(planes, growth_rate))
                planes += growth_rate
            self.add_module(f"dense{b}", block)
            if b < 3:
                self.add_module(f"trans{b}", Transition(planes, planes))
        self.bn = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(planes, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans1(self.dense1(self.conv1(x)))
        x = self.dense3(self.trans2(self.dense2(x)))
        x = self.avgpool(self.relu(self.bn(x)))
        return self.classifier(torch.flatten(x, 1))

    def prunable_layers(self):
        """Every dense layer's growth channels; observed at the conv itself, since the
        pre-activation net concatenates the raw conv output (METHOD.md section 2). The
        consumer (APIB's response) is the next conv that reads them first: the next dense
        layer's, the transition's, or the classifier after the last block."""
        convs = [f"dense{b}.{i}.conv1" for b in (1, 2, 3) for i in range(len(getattr(self, f"dense{b}")))]
        consumers = []
        for b in (1, 2, 3):
            n = len(getattr(self, f"dense{b}"))
            consumers += [f"dense{b}.{i + 1}.conv1" for i in range(n - 1)]
            consumers.append(f"trans{b}.conv1" if b < 3 else "classifier")
        return [layer(c, c, u) for c, u in zip(convs, consumers)]


def densenet40(num_classes: int = 10, in_channels: int = 3) -> DenseNet:
    return DenseNet(40, 12, num_classes=num_classes, in_channels=in_channels)
