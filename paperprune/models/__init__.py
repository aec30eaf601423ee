"""Model registry (timm style) and the prunable-layer convention (METHOD.md sections 2-3).

The six architectures are HRank's set (VGG-16, ResNet-56/110, GoogLeNet, DenseNet-40 on
32x32 inputs; torchvision ResNet-50 on 224x224). The paper's abstract only says "six model
architectures"; which ones and which layers are prunable is reconstruction from the
lineage (APIB / HRank / CHIP), see METHOD.md section 2 "Prunable layers".
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..layers import PrunableLayer
from ..utils import PaperpruneError


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


__all__ = ["PrunableLayer", "create_model", "list_models", "prunable_layers", "input_size"]
