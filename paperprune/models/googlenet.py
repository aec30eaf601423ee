"""GoogLeNet for 32x32 inputs, the CIFAR variant HRank uses (kuangliu's pytorch-cifar).

Stem conv3x3 3->192, nine Inception modules (a3 b3 | pool | a4 b4 c4 d4 e4 | pool | a5 b5),
AvgPool2d(8), Linear(1024, K). Each Inception has four branches concatenated:
branch1x1 (1x1), branch3x3 (1x1 reduce -> 3x3), branch5x5 (1x1 reduce -> 3x3 -> 3x3, the
"5x5" factorised) and branch_pool (maxpool3x3 -> 1x1). Convs have biases (HRank's code).
Baseline 6.15M params, 1.52B MACs (measured 1521.8M). Each conv has its own BN and
nn.ReLU so every branch-inner channel can be observed.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..layers import init_weights, layer

# (in, n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_planes), HRank / kuangliu
INCEPTION_CFG = OrderedDict(
    [
        ("inception_a3", (192, 64, 96, 128, 16, 32, 32)),
        ("inception_b3", (256, 128, 128, 192, 32, 96, 64)),
        ("inception_a4", (480, 192, 96, 208, 16, 48, 64)),
        ("inception_b4", (512, 160, 112, 224, 24, 64, 64)),
        ("inception_c4", (512, 128, 128, 256, 24, 64, 64)),
        ("inception_d4", (512, 112, 144, 288, 32, 64, 64)),
        ("inception_e4", (528, 256, 160, 320, 32, 128, 128)),
        ("inception_a5", (832, 256, 160, 320, 32, 128, 128)),
        ("inception_b5", (832, 384, 192, 384, 48, 128, 128)),
    ]
)
#: stride-2 max pools between the Inception stages: name of the module they follow -> pool
POOL_AFTER = {"inception_b3": "maxpool1", "inception_e4": "maxpool2"}


def _conv_bn_relu(layers: list[tuple[str, int, int, int]]) -> nn.Sequential:
    """Sequential of (suffix, in, out, kernel) -> conv{s}, bn{s}, relu{s}."""
    mods = OrderedDict()
    for suffix, cin, cout, k in layers:
        mods[f"conv{suffix}"] = nn.Conv2d(cin, cout, kernel_size=k, padding=k // 2)
        mods[f"bn{suffix}"] = nn.BatchNorm2d(cout)
        mods[f"relu{suffix}"] = nn.ReLU(inplace=True)
    return nn.Sequential(mods)


class Inception(nn.Module):
    def __init__(self, in_planes, n1x1, n3x3red, n3x3, n5x5red, n5x5, pool_planes):
        super().__init__()
        self.branch1x1 = _conv_bn_relu([("1", in_planes, n1x1, 1)])
        self.branch3x3 = _conv_bn_relu([("1", in_planes, n3x3red, 1), ("2", n3x3red, n3x3, 3)])
        self.branch5x5 = _conv_bn_relu(
            [("1", in_planes, n5x5red, 1), ("2", n5x5red, n5x5, 3), ("3", n5x5, n5x5, 3)]
        )
        self.branch_pool = nn.Sequential(
            OrderedDict(
                [("pool", nn.MaxPool2d(3, stride=1, padding=1))]
                + list(_conv_bn_relu([("1", in_planes, pool_planes, 1)]).named_children())
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1x1, self.branch3x3, self.branch5x5, self.branch_pool)
        return torch.cat([b(x) for b in branches], 1)

    #: (conv, observe, consumer) of the branch-inner convs: their outputs never reach the concat.
    INNER = (
        ("branch3x3.conv1", "branch3x3.relu1", "branch3x3.conv2"),
        ("branch5x5.conv1", "branch5x5.relu1", "branch5x5.conv2"),
        ("branch5x5.conv2", "branch5x5.relu2", "branch5x5.conv3"),
    )


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.pre_layers = _conv_bn_relu([("", in_channels, 192, 3)])
        for name, cfg in INCEPTION_CFG.items():
            self.add_module(name, Inception(*cfg))
            if name in POOL_AFTER:
                self.add_module(POOL_AFTER[name], nn.MaxPool2d(3, stride=2, padding=1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1024, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre_layers(x)
        for name in INCEPTION_CFG:
            x = getattr(self, name)(x)
            if name in POOL_AFTER:
                x = getattr(self, POOL_AFTER[name])(x)
        return self.classifier(torch.flatten(self.avgpool(x), 1))

    def prunable_layers(self):
        """The inner convs of the 3x3 and 5x5 branches (METHOD.md section 2), 3 per module."""
        return [layer(f"{m}.{c}", f"{m}.{o}", f"{m}.{u}") for m in INCEPTION_CFG for c, o, u in Inception.INNER]


def googlenet(num_classes: int = 10, in_channels: int = 3) -> GoogLeNet:
    return GoogLeNet(num_classes=num_classes, in_channels=in_channels)
