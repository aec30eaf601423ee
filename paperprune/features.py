"""A model against its images: the images it takes (`check_images`), adaptive BatchNorm."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .utils import PaperpruneError

__all__ = ["adapt_batchnorm", "check_images", "first_conv"]


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, data: Iterable, images: int, device) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance on the first `images` images of
    `data` (train-mode forwards, cumulative average, no gradient); weights are untouched. In place;
    the model is returned in eval mode."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if images < 1 or not bns:
        raise PaperpruneError(f"adapt_batchnorm needs images >= 1 and a model with BatchNorm layers; got "
                              f"images={images} and {len(bns)} BatchNorm layers")
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches seen
    model.train()
    seen = 0
    for x, _ in data:
        x = x[: images - seen].to(device)
        model(x)
        seen += len(x)
        if seen >= images:
            break
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    if seen < images:
        raise PaperpruneError(f"adapt_batchnorm: the data held {seen} images, fewer than images={images}")
    return model.eval()


def first_conv(model: nn.Module) -> nn.Module | None:
    """The model's first convolution in module order (its stem): what the images must fit."""
    return next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)


def check_images(model: nn.Module, x, what: str = "images") -> None:
    """Refuse `x` unless it is a float (B, C, H, W) tensor with the channels of the model's first conv;
    the message names what was expected, what came, and the usual fix (channels last, no channel axis)."""
    conv = first_conv(model)
    channels = None if conv is None else conv.in_channels
    expected = f"float (B, {channels if channels else 'C'}, H, W) tensors"
    if not torch.is_tensor(x):
        raise PaperpruneError(f"{what} must be a torch.Tensor ({expected}); got a {type(x).__name__}")
    shape = tuple(x.shape)
    hint = ""
    if x.dim() == 3 and channels == 1:
        hint = "; images without a channel axis: pass images.unsqueeze(1)"
    elif x.dim() == 3 and channels and x.shape[0] == channels:
        hint = "; a single image, not a batch: pass image.unsqueeze(0) or batches from a DataLoader"
    elif x.dim() == 4 and channels and x.shape[1] != channels and x.shape[-1] == channels:
        hint = "; channels-last batches: pass images.permute(0, 3, 1, 2)"
    elif x.dim() == 4 and channels and x.shape[1] != channels:
        hint = (f"; pass data of the model's input format (e.g. "
                f"{'images.mean(1, keepdim=True) for grey' if channels == 1 else 'images.expand(-1, 3, -1, -1) for RGB'})")
    if x.dim() == 4 and channels and x.shape[1] != channels:
        raise PaperpruneError(f"{what} have {x.shape[1]} channels (shape {shape}) but the model's first conv takes "
                              f"{channels}: it expects {expected}{hint}")
    if x.dim() != 4:
        raise PaperpruneError(f"{what} have shape {shape} but the model expects {expected}{hint}")
    if not x.is_floating_point():
        raise PaperpruneError(f"{what} are {x.dtype} {shape}; the model expects {expected}: convert them, e.g. "
                              "images.float() / 255 and the normalisation the model was trained with")
