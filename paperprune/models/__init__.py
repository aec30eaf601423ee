"""Model registry (timm style) and the prunable-layer convention (METHOD.md sections 2-3).

The six architectures are HRank's set (VGG-16, ResNet-56/110, GoogLeNet, DenseNet-40 on
32x32 inputs; torchvision ResNet-50 on 224x224). The paper's abstract only says "six model
architectures"; which ones and which layers are prunable is reconstruction from the
lineage (APIB / HRank / CHIP), see METHOD.md section 2 "Which layers are prunable".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..utils import PaperpruneError


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


def _builders() -> dict[str, Callable[..., nn.Module]]:
    from .densenet import densenet40
    from .googlenet import googlenet
    from .resnet_cifar import resnet56, resnet110
    from .resnet_imagenet import resnet50
    from .vgg import vgg16

    return {
        "vgg16": vgg16,
        "resnet56": resnet56,
        "resnet110": resnet110,
        "googlenet": googlenet,
        "densenet40": densenet40,
        "resnet50": resnet50,
    }


def list_models() -> list[str]:
    """Names accepted by `create_model`."""
    return list(_builders())


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, pretrained: str | None = None) -> nn.Module:
    """Build a model by name; `in_channels` changes only the first conv.

    `pretrained` names shipped weights to load (e.g. "fashion-mnist" for resnet56; see
    `paperprune.models.pretrained`), offline; None gives an untrained model.
    """
    builders = _builders()
    if name not in builders:
        raise PaperpruneError(
            f"unknown model {name!r}; choose one of: {', '.join(builders)}"
        )
    if int(num_classes) < 1 or int(in_channels) < 1:
        raise PaperpruneError(
            f"num_classes={num_classes!r} and in_channels={in_channels!r} must be positive integers"
        )
    model = builders[name](num_classes=int(num_classes), in_channels=int(in_channels))
    if pretrained is not None:
        from .pretrained import load_pretrained

        load_pretrained(model, name, pretrained, num_classes, in_channels)
    model.paperprune_arch = {"arch": name, "num_classes": int(num_classes), "in_channels": int(in_channels)}
    return model


def prunable_layers(model: nn.Module) -> list[PrunableLayer]:
    """The model's prunable layers, in forward order (`model.prunable_layers()`)."""
    method = getattr(type(model), "prunable_layers", None)
    if method is None:
        raise PaperpruneError(
            f"{type(model).__name__} has no prunable_layers() method; build it with "
            f"paperprune.create_model ({', '.join(list_models())}) or pass the layers "
            "explicitly as a list of PrunableLayer(name, conv, observe)"
        )
    return list(model.prunable_layers())


def input_size(info) -> tuple[int, int, int]:
    """(C, H, W) of a dataset's images, from a `paperprune.lab.data.DatasetInfo`."""
    return (int(info.in_channels), int(info.image_size), int(info.image_size))


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


__all__ = ["PrunableLayer", "create_model", "list_models", "prunable_layers", "input_size"]
