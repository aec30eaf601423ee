"""The prunable-layer convention (METHOD.md sections 2-3): what a prunable layer names, and the
helpers the model builders share."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["PrunableLayer", "init_weights", "layer"]


@dataclass(frozen=True)
class PrunableLayer:
    """One prunable layer: `conv` is the module whose output channels may be removed (a conv, or
    the nn.Linear whose output features are an MLP's hidden width, channels last),
    `observe` the module whose forward output is those channels as the next layer consumes
    them (after BN and ReLU; the conv itself for DenseNet's pre-activation layers), and
    `consumer` the module that consumes them (the next conv, or the first linear layer):
    its output is APIB's response kernel (METHOD.md section 2, "The APIB baseline").
    `activation`, when set, is applied to `observe`'s output to give those channels: the name
    of a module of the model (an activation module reused elsewhere, e.g. torchvision's
    BasicBlock.relu) or of a torch.nn.functional function ('torch.nn.functional.relu')."""

    name: str
    conv: str
    observe: str
    consumer: str | None = None
    activation: str | None = None


def layer(conv: str, observe: str, consumer: str) -> PrunableLayer:
    """Shorthand used by the model modules: name == conv."""
    return PrunableLayer(name=conv, conv=conv, observe=observe, consumer=consumer)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs, unit/zero BN, as in HRank's and torchvision's code."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
