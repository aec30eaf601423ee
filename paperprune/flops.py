"""MACs and parameter counts under the pruning literature's conventions (METHOD.md section 4).

"FLOPs" in the tables are multiply-accumulates: conv MACs = output elements x
(in_channels / groups) x kh x kw, linear MACs = in x out per output row, no bias adds;
parameters = conv and linear weights and biases (BN excluded). This reproduces the
published CIFAR baselines (HRankPlus / CHIP READMEs).

`bn=True` follows fvcore's default `FlopCountAnalysis` in eval mode, which the published
ResNet-50 4.11B uses: batch norm with affine costs 2 per element, and
`adaptive_avg_pool2d` costs 1 per input element (both are fvcore's default op handles);
BN's affine weights and biases are then counted as parameters too (the 25.56M of
torchvision's ResNet-50). Element-wise adds, ReLU and max pooling are free in both.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from .utils import PaperpruneError, as_number

__all__ = ["check_input_size", "count_flops_params", "count_params", "layer_macs"]


def _module_macs(module: nn.Module, inputs, output: torch.Tensor, bn: bool) -> int:
    if isinstance(module, _ConvNd):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return output.numel() * per_output
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if bn and isinstance(module, _BatchNorm):
        return output.numel() * (2 if module.affine else 1)
    if bn and isinstance(module, nn.AdaptiveAvgPool2d):
        return inputs[0].numel()
    return 0


def _counted(module: nn.Module, bn: bool) -> bool:
    if isinstance(module, (_ConvNd, nn.Linear)):
        return True
    return bn and isinstance(module, (_BatchNorm, nn.AdaptiveAvgPool2d))


def check_input_size(input_size) -> tuple[int, int, int]:
    """`input_size` as (C, H, W) of positive ints (numpy/torch ints accepted), else a clear error."""
    try:
        size = tuple(as_number(v, "input_size", int) for v in input_size)
    except (TypeError, PaperpruneError):
        size = ()
    if len(size) != 3 or min(size) < 1:
        raise PaperpruneError(f"input_size={input_size!r} must be (channels, height, width) of one image, "
                              "e.g. (3, 32, 32)")
    return size


@torch.no_grad()
def layer_macs(model: nn.Module, input_size, *, bn: bool = False) -> dict[str, int]:
    """MACs of every counted module (conv, linear; BN and adaptive avg-pool if `bn`), keyed
    by module path, from one forward of a zero input of batch 1 in eval mode. A module
    called several times sums its calls. The training flag is restored afterwards."""
    input_size = check_input_size(input_size)  # before the hooks: a refusal must leave the model as it was
    counts: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if _counted(module, bn):
            counts[name] = 0

            def hook(mod, inputs, output, name=name):
                counts[name] += _module_macs(mod, inputs, output, bn)

            handles.append(module.register_forward_hook(hook))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros((1, *input_size), device=device, dtype=dtype))
    except RuntimeError as e:
        first = next((m for m in model.modules() if isinstance(m, _ConvNd)), None)
        takes = f" (its first conv takes {first.in_channels} channels)" if first is not None else ""
        raise PaperpruneError(f"input_size={input_size} does not fit {type(model).__name__}{takes}: "
                              f"{str(e).splitlines()[0]}") from None
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return counts


def count_params(model: nn.Module, *, bn: bool = False) -> int:
    """Weights and biases of conv and linear layers (and BN affine parameters if `bn`)."""
    kinds = (_ConvNd, nn.Linear, _BatchNorm) if bn else (_ConvNd, nn.Linear)
    return sum(
        p.numel()
        for m in model.modules()
        if isinstance(m, kinds)
        for p in m.parameters(recurse=False)
    )


def count_flops_params(model: nn.Module, input_size, *, bn: bool = False) -> tuple[int, int]:
    """(MACs, params) of `model` on one input of shape `input_size` = (C, H, W)
    (METHOD.md section 4); `bn=True` is fvcore's convention (ResNet-50: 4.11B, 25.56M)."""
    return sum(layer_macs(model, input_size, bn=bn).values()), count_params(model, bn=bn)
