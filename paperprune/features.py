"""Features of a model under calibration data: adaptive BatchNorm."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .utils import PaperpruneError

__all__ = ["adapt_batchnorm"]


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

