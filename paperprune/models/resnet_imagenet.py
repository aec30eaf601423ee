"""ResNet-50 for ImageNet: torchvision's architecture with hookable ReLUs.

torchvision's Bottleneck calls one `self.relu` module three times, so a hook on it fires
three times per block. `Bottleneck` here keeps torchvision's parameter names (conv1, bn1,
conv2, bn2, conv3, bn3, downsample), so torchvision state_dicts load strictly, and adds
relu1/relu2/relu3, each called once. `classifier` is a property aliasing torchvision's
`fc` (an alias, so the state_dict keeps the `fc.*` keys). No weights are ever downloaded.
Baseline 25.56M params (25,557,032 incl. BN; published 25.55M), 4.11B FLOPs with BN
counted (METHOD.md section 4).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from ..layers import layer


class Bottleneck(tv_resnet.Bottleneck):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        del self.relu
        self.relu1 = nn.ReLU(inplace=True)
        self.relu2 = nn.ReLU(inplace=True)
        self.relu3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


class ResNet(tv_resnet.ResNet):
    """torchvision ResNet with `classifier` (== `fc`) and `prunable_layers()`."""

    @property
    def classifier(self) -> nn.Linear:
        return self.fc

    def __setattr__(self, name, value):
        # nn.Module.__setattr__ would register a module under "classifier" and bypass the
        # property; route the alias to `fc` so there is only ever one head.
        super().__setattr__("fc" if name == "classifier" else name, value)

    def prunable_layers(self):
        """conv1 and conv2 of every bottleneck, observed after BN and ReLU (METHOD.md
        section 2); block outputs (residual widths) are kept."""
        return [
            layer(f"{s}.{i}.{c}", f"{s}.{i}.relu{c[-1]}", f"{s}.{i}.conv{int(c[-1]) + 1}")
            for s in ("layer1", "layer2", "layer3", "layer4")
            for i in range(len(getattr(self, s)))
            for c in ("conv1", "conv2")
        ]


def resnet50(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    model = ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
