"""VGG-16 with BN for 32x32 inputs, HRank's CIFAR variant (METHOD.md section 3).

Reconstruction of HRank's `vgg_16_bn`: cfg [64,64,M,128,128,M,256x3,M,512x3,M,512x3], conv3x3
with bias + BN + ReLU, no pool after the last block, AvgPool2d(2) on the 2x2 map, then the
head Linear(512,512)-BN1d-ReLU-Linear(512,K). Baseline 14.98M params, 313.46M conv+linear
MACs (published 313.73M). Module names follow HRank (`features.conv{i}` etc.); HRank's
`classifier.linear2` is `classifier` here (INTERFACES.md: the final Linear).
"""
from __future__ import annotations

import torch
from torch import nn

from ..layers import init_weights, layer

CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class VGG(nn.Module):
    def __init__(self, cfg=CFG, num_classes: int = 10, in_channels: int = 3, hidden: int = 512):
        super().__init__()
        self.features = nn.Sequential()
        channels = in_channels
        for i, v in enumerate(cfg):
            if v == "M":
                self.features.add_module(f"pool{i}", nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                self.features.add_module(f"conv{i}", nn.Conv2d(channels, v, kernel_size=3, padding=1))
                self.features.add_module(f"norm{i}", nn.BatchNorm2d(v))
                self.features.add_module(f"relu{i}", nn.ReLU(inplace=True))
                channels = v
        self.avgpool = nn.AvgPool2d(2)
        self.linear1 = nn.Linear(channels, hidden)
        self.norm1 = nn.BatchNorm1d(hidden)
        self.relu1 = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(hidden, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(self.relu1(self.norm1(self.linear1(x))))

    def prunable_layers(self):
        """Every conv's output channels, observed after its BN and ReLU (METHOD.md section 2)."""
        names = [n for n, m in self.features.named_children() if isinstance(m, nn.Conv2d)]
        consumers = [f"features.{n}" for n in names[1:]] + ["linear1"]
        return [layer(f"features.{n}", f"features.relu{n[4:]}", c) for n, c in zip(names, consumers)]


def vgg16(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(CFG, num_classes=num_classes, in_channels=in_channels)
