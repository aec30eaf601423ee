"""Channel surgery, exact MACs/params prediction and pruned-model checkpoints.

Reconstruction, not from the paper (its abstract says nothing about surgery): a prunable
layer (METHOD.md section 2, "Prunable layers") loses output channels of its conv;
everything coupled to them (its BatchNorm, the consumers' input channels, through
concatenations for DenseNet, depthwise convs and squeeze-excitation gates) follows. The
coupling is found by Torch-Pruning's DependencyGraph (Fang et al., DepGraph, CVPR 2023);
this module does no dependency tracking of its own. It only checks the group
(`paperprune.discover.classify_group`): by the lineage's convention a prunable layer never
changes a width added to another conv's output (residual widths are kept), and channels read
by a grouped, non-depthwise conv are removed in equal numbers from each of its groups
(`paperprune.discover.channel_groups`); each group's part of that conv's weight is then cut by
its own kept channels (Torch-Pruning's handler assumes the same positions in every group).

Pruned-model files (`save_pruned`, format version 2) hold every module's attributes and the
state dict, Torch-Pruning's `tp.state_dict` pattern restricted to what weights_only loads;
version 1 files (the built-in models' widths) still load.

The MACs/params convention is METHOD.md section 4, the one
`paperprune.flops.count_flops_params` counts: conv + linear MACs and parameters; with
`bn=True` (fvcore's, for ResNet-50's 4.11B) also 2 MACs per affine BatchNorm output
element, 1 per adaptive-average-pool input element, and BatchNorm affine parameters.
"""
from __future__ import annotations

import collections
import math
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch_pruning as tp

from .discover import (channel_groups, check_input_size, classify_group, dependency_graph, example_input,
                       tolerant_concat_mapping, unit_width)
from .utils import PaperpruneError, atomic_torch_save

__all__ = ["COUNTED", "FORMAT", "FORMAT_VERSION", "CountedLayer", "MacsPredictor", "load_pruned", "prune_channels",
           "save_pruned", "widths"]

FORMAT = "paperprune-pruned-model"
FORMAT_VERSION = 2

_CONV = nn.modules.conv._ConvNd
_BN = nn.modules.batchnorm._BatchNorm
#: the module types whose MACs are counted
COUNTED = (_CONV, nn.Linear)
_RECORDED = (_CONV, nn.Linear, _BN, nn.AdaptiveAvgPool2d)


def _layer_convs(model: nn.Module, layers) -> dict[str, nn.Module]:
    """Map each prunable layer's name to its root module (METHOD.md section 2): a conv, or the linear layer
    whose output features are an MLP's hidden width (`paperprune.discover`)."""
    convs = {}
    for layer in layers:
        try:
            conv = model.get_submodule(layer.conv)
        except AttributeError:
            raise PaperpruneError(f"prunable layer {layer.name!r}: the model has no module {layer.conv!r}; "
                                  f"pass layers from paperprune.models.prunable_layers(model)") from None
        if not isinstance(conv, (_CONV, nn.Linear)):
            raise PaperpruneError(f"prunable layer {layer.name!r}: module {layer.conv!r} is a "
                                  f"{type(conv).__name__}, not a convolution or a linear layer")
        if isinstance(conv, _CONV) and conv.groups != 1 and conv.groups == conv.in_channels == conv.out_channels:
            raise PaperpruneError(
                f"prunable layer {layer.name!r}: {layer.conv!r} is a depthwise convolution (groups={conv.groups}); "
                f"its channels are pruned together with the conv that feeds them, never on their own. Name that "
                f"conv instead (paperprune.discover.discover(model, input_size) lists the groups)")
        if layer.name in convs:
            raise PaperpruneError(f"prunable layer name {layer.name!r} appears twice in layers")
        convs[layer.name] = conv
    return convs


class _Graph:
    """A Torch-Pruning DependencyGraph of `model`, traced once, plus the layer guard.

    The tracing forward (batch of one, eval mode; modes restored afterwards) also records,
    for `MacsPredictor`, the output positions per channel of every conv/linear/BatchNorm
    and the input positions per channel and input channels of every adaptive average pool,
    summed over calls, and the autograd node each pool produced (pools are parameter-free,
    so the graph knows them only by that node).
    """

    def __init__(self, model: nn.Module, input_size):
        self.model = model
        self.positions: dict[nn.Module, int] = {}
        self.pool_channels: dict[nn.Module, int] = {}
        pool_grad_fns = {}

        def record(module, inputs, output):
            x = inputs[0] if isinstance(module, nn.AdaptiveAvgPool2d) else output
            channels = module.out_features if isinstance(module, nn.Linear) else x.shape[1]
            self.positions[module] = self.positions.get(module, 0) + x.numel() // channels
            if isinstance(module, nn.AdaptiveAvgPool2d):
                pool_grad_fns[output.grad_fn] = module
                self.pool_channels[module] = x.shape[1]

        hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, _RECORDED)]
        modes = {m: m.training for m in model.modules()}
        try:
            self.dg = dependency_graph(model, example_input(model, input_size).requires_grad_(True))
        finally:
            for h in hooks:
                h.remove()
            for m, training in modes.items():
                m.train(training)
        self.names = {m: n for n, m in model.named_modules()}
        self.pools = {node: pool_grad_fns[node.grad_fn] for node in self.dg.module2node.values()
                      if node.grad_fn in pool_grad_fns}

    def group(self, name: str, conv: nn.Module, idxs: Sequence[int]):
        """The dependency group of removing output channels `idxs` of `conv`, checked to stay inside the layer.

        Allowed members (`paperprune.discover.classify_group`): BatchNorms, element-wise ops,
        concatenations, depthwise convs and squeeze-excitation gates carrying the channels,
        and the input channels of their consumers. Refused: a width added to another conv's
        output (a residual width, kept by METHOD.md section 2's convention), and a removal that
        is not the same number of channels in each part a grouped conv reads (`channel_groups`).
        """
        if conv not in self.dg.module2node:
            raise PaperpruneError(f"prunable layer {name!r}: its conv is not used in the model's forward pass")
        handler = tp.prune_linear_out_channels if isinstance(conv, nn.Linear) else tp.prune_conv_out_channels
        with tolerant_concat_mapping():
            group = self.dg.get_pruning_group(conv, handler, idxs=list(idxs))
        kind, cause = classify_group(group, conv, self.names)
        if kind == "residual":
            raise PaperpruneError(
                f"layer {name!r} is not prunable on its own: its output channels are added to those of {cause!r} "
                f"(a residual connection), so removing them changes {cause!r} too. Residual widths are kept "
                f"(METHOD.md section 2); drop it from layers, or leave layers= out to let paperprune find the "
                f"prunable ones.")
        parts = channel_groups(group, conv, self.names)  # refuses a grouped conv reading them among others
        if parts > 1:
            counts = np.bincount(np.asarray(list(idxs), dtype=np.int64) // (conv.out_channels // parts),
                                 minlength=parts)
            if len(set(counts.tolist())) > 1:
                raise PaperpruneError(
                    f"layer {name!r}: the grouped convolution {cause!r} (groups={self.model.get_submodule(cause).groups}"
                    f") reads its channels in {parts} parts of {conv.out_channels // parts}, and each part must lose "
                    f"as many; this removal takes {sorted(set(counts.tolist()))} from them. Keep the same number of "
                    "channels in every part (paperprune.prune's budget rule does)")
        return group


def _grouped_weights(group) -> list[tuple[nn.Module, torch.Tensor, list[int]]]:
    """(conv, weight, kept inputs) of every grouped, non-depthwise conv whose input channels `group` removes."""
    out = []
    for dep, idxs in group:
        module = dep.target.module
        if dep.handler == tp.prune_conv_in_channels and module.groups > 1 and module.groups != module.in_channels:
            kept = sorted(set(range(module.in_channels)) - set(idxs))
            out.append((module, module.weight.detach().clone(), kept))
    return out


def _cut_grouped(conv: nn.Module, weight: torch.Tensor, kept: list[int]) -> None:
    """Set `conv`'s weight to the old `weight` with group g's outputs reading group g's own kept inputs."""
    groups, per = conv.groups, weight.shape[1]
    local = (torch.tensor(kept, device=weight.device) % per).view(groups, -1)
    index = local.repeat_interleave(weight.shape[0] // groups, dim=0)
    index = index.view(*index.shape, *[1] * (weight.dim() - 2)).expand(-1, -1, *weight.shape[2:])
    cut = weight.gather(1, index)
    conv.weight = nn.Parameter(cut, requires_grad=conv.weight.requires_grad)


def _removed_channels(name: str, conv: nn.Module, kept) -> list[int]:
    """Validate kept channel indices of one layer; return the removed ones (sorted)."""
    idx = torch.as_tensor(kept)
    if idx.numel() == 0:
        raise PaperpruneError(f"keep[{name!r}] keeps zero channels; every layer must keep at least one")
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise PaperpruneError(f"keep[{name!r}] must hold integer channel indices, got dtype {idx.dtype}")
    if idx.ndim != 1:
        raise PaperpruneError(f"keep[{name!r}] must be a 1-D list of channel indices, got shape {tuple(idx.shape)}")
    width = unit_width(conv)
    idx = idx.long().cpu()
    if int(idx.min()) < 0 or int(idx.max()) >= width:
        raise PaperpruneError(f"keep[{name!r}] has indices outside [0, {width}): "
                              f"min {int(idx.min())}, max {int(idx.max())}")
    if idx.unique().numel() != idx.numel():
        raise PaperpruneError(f"keep[{name!r}] has duplicate channel indices")
    mask = torch.ones(width, dtype=torch.bool)
    mask[idx] = False
    return mask.nonzero().flatten().tolist()


def prune_channels(model: nn.Module, layers, keep: Mapping[str, torch.Tensor | Sequence[int]], input_size) -> nn.Module:
    """Keep only channels `keep[name]` of each named prunable layer, in place; return `model`.

    Kept channels keep their original order. Layers not in `keep` are untouched. All
    indices and all groups are validated before anything is cut. Parameters are replaced
    by new tensors: build optimizers after surgery. `input_size` is recorded on the model
    (`paperprune_input_size`, which `save_pruned` stores).
    """
    size = check_input_size(input_size)
    convs = _layer_convs(model, layers)
    unknown = sorted(set(keep) - set(convs))
    if unknown:
        raise PaperpruneError(f"keep names unknown layers {unknown}; known layers: {sorted(convs)[:8]}"
                              f"{' ...' if len(convs) > 8 else ''}")
    removed = {name: _removed_channels(name, convs[name], kept) for name, kept in keep.items()}
    removed = {name: idxs for name, idxs in removed.items() if idxs}
    model.paperprune_input_size = size
    if not removed:
        return model
    graph = _Graph(model, input_size)
    for name, idxs in removed.items():
        group = graph.group(name, convs[name], idxs)
        if not graph.dg.check_pruning_group(group):
            raise PaperpruneError(f"layer {name!r}: the removal would empty a coupled module; keep more channels")
    for name, idxs in removed.items():
        group = graph.group(name, convs[name], idxs)
        grouped = _grouped_weights(group)
        group.prune(record_history=False)
        for conv, weight, kept in grouped:
            _cut_grouped(conv, weight, kept)
    return model


def widths(model: nn.Module, layers) -> dict[str, int]:
    """Current width of every prunable layer: its conv's output channels (a linear root's output features)."""
    return {name: unit_width(conv) for name, conv in _layer_convs(model, layers).items()}


@dataclass(frozen=True)
class CountedLayer:
    """One conv/linear as `MacsPredictor` counts it: with r the removed channel counts of the
    prunable layers (in `MacsPredictor.names` order), it reads (in_channels - a_in . r) / divisor
    input channels per output and has out_channels - a_out . r outputs. `divisor` is the groups of a
    grouped (not depthwise) conv, else 1, and then in_channels is already per group (depthwise: 1)."""

    name: str
    in_channels: int
    out_channels: int
    divisor: int
    a_in: np.ndarray
    a_out: np.ndarray


class MacsPredictor:
    """Exact (MACs, params) of `model` with its prunable layers cut to given widths, without surgery.

    Reconstruction. Every conv/linear m contributes s_m * in_m * out_m MACs and
    k_m * in_m * out_m (+ out_m bias) parameters, where s_m (output positions times kernel
    area) comes from one traced forward and in_m, out_m are affine in the removed channel
    counts r: in_m = in0_m - A_m . r, out_m = out0_m - B_m . r. Column l of A and B is how
    many input/output channels of m one channel of layer l carries, read from layer l's
    dependency group (so DenseNet concatenations and flatten-to-linear are counted the way
    the surgery cuts them). With `bn=True` BatchNorms (2 MACs per element if affine, 1
    otherwise, plus 2 affine parameters per channel) and adaptive average pools (1 MAC
    per input element) are added, their channel counts affine in r the same way: the
    `count_flops_params(..., bn=True)` convention. A call is a few small integer mat-vecs.
    A grouped (not depthwise) conv with G groups has in_m = (in0_m - A_m . r) / G inputs per
    output, exact for the widths the budget rule keeps (`channel_groups`: equal parts per group).

    Public: `names`, `full_widths`, `channel_groups` ({layer: parts its width is kept in}) and
    `counted()` (each conv/linear's widths as affine functions of r, e.g. for a latency model).
    """

    def __init__(self, model: nn.Module, layers, input_size, *, bn: bool = False):
        convs = _layer_convs(model, layers)
        self.names = list(convs)
        self.bn = bool(bn)
        self.full_widths = {name: unit_width(conv) for name, conv in convs.items()}
        self._index = {name: j for j, name in enumerate(self.names)}

        graph = _Graph(model, input_size)
        counted = [m for m in graph.positions if isinstance(m, COUNTED)]
        self._counted_names = [graph.names[m] for m in counted]
        norms = [m for m in graph.positions if isinstance(m, _BN)] if self.bn else []
        pools = [m for m in graph.positions if isinstance(m, nn.AdaptiveAvgPool2d)] if self.bn else []
        rows = {m: i for i, m in enumerate(counted)}
        channel_rows = {m: i for i, m in enumerate(norms + pools)}

        def ints(values):
            return np.array(list(values), dtype=np.int64)

        self._div = ints(m.groups if isinstance(m, _CONV) and 1 < m.groups < m.in_channels else 1 for m in counted)
        self._in0 = ints(m.in_channels // m.groups if isinstance(m, _CONV) else m.in_features for m in counted)
        self._in0 *= self._div
        self._out0 = ints(m.out_channels if isinstance(m, _CONV) else m.out_features for m in counted)
        self._kernel = ints(math.prod(m.kernel_size) if isinstance(m, _CONV) else 1 for m in counted)
        self._macs_factor = ints(graph.positions[m] for m in counted) * self._kernel
        self._bias = ints(m.bias is not None for m in counted)
        # conv/linear modules whose weights the forward uses without calling them (an attention's out_proj,
        # applied by a functional call): no MACs are counted for them, their parameters are (count_params)
        self._idle_params = sum(p.numel() for m in model.modules() if isinstance(m, COUNTED)
                                and m not in graph.positions for p in m.parameters(recurse=False))
        self._ch0 = ints([m.num_features for m in norms] + [graph.pool_channels[m] for m in pools])
        self._ch_macs = ints([graph.positions[m] * (2 if m.affine else 1) for m in norms]
                             + [graph.positions[m] for m in pools])
        self._ch_params = ints([2 if m.affine else 0 for m in norms] + [0] * len(pools))

        self._a_in = np.zeros((len(counted), len(self.names)), dtype=np.int64)
        self._a_out = np.zeros_like(self._a_in)
        self._a_ch = np.zeros((len(norms) + len(pools), len(self.names)), dtype=np.int64)
        in_fns = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
        self.channel_groups = {}
        for j, (name, conv) in enumerate(convs.items()):
            width = unit_width(conv)
            group = graph.group(name, conv, range(width))
            self.channel_groups[name] = channel_groups(group, conv, graph.names)
            for dep, idxs in group:
                target = graph.pools.get(dep.target, dep.target.module)
                if target in rows:
                    coeff = self._a_in if dep.handler in in_fns else self._a_out
                    coeff[rows[target], j] += self._per_channel(name, target, graph, len(idxs), width)
                elif target in channel_rows:
                    self._a_ch[channel_rows[target], j] += self._per_channel(name, target, graph, len(idxs), width)

    @staticmethod
    def _per_channel(name, target, graph, count, width) -> int:
        if count % width:
            raise PaperpruneError(f"layer {name!r}: its {width} channels map to {count} channels of "
                                  f"{graph.names.get(target)!r}, not a whole number each; cannot predict MACs exactly")
        return count // width

    def counted(self) -> list[CountedLayer]:
        """Every conv/linear this predictor counts, in the order of the traced forward (first call)."""
        return [CountedLayer(name, int(self._in0[i]), int(self._out0[i]), int(self._div[i]),
                             self._a_in[i].copy(), self._a_out[i].copy()) for i, name in enumerate(self._counted_names)]

    def removed(self, widths: Mapping[str, int]) -> np.ndarray:
        """Removed channel counts per layer; layers missing from `widths` keep their full width."""
        r = np.zeros(len(self.names), dtype=np.int64)
        for name, w in widths.items():
            j = self._index.get(name)
            if j is None:
                raise PaperpruneError(f"widths names unknown layer {name!r}; known layers: {self.names[:8]}"
                                      f"{' ...' if len(self.names) > 8 else ''}")
            full = self.full_widths[name]
            if not 1 <= int(w) <= full:
                raise PaperpruneError(f"width {w} for layer {name!r} is outside [1, {full}]")
            r[j] = full - int(w)
        return r

    def __call__(self, widths: Mapping[str, int]) -> tuple[int, int]:
        r = self.removed(widths)
        c_in = self._in0 - self._a_in @ r
        c_out = self._out0 - self._a_out @ r
        weights = c_in * c_out // self._div
        macs = int(self._macs_factor @ weights)
        params = int(self._kernel @ weights + self._bias @ c_out) + self._idle_params
        if self.bn:
            channels = self._ch0 - self._a_ch @ r
            macs += int(self._ch_macs @ channels)
            params += int(self._ch_params @ channels)
        return macs, params


_SAFE = (int, float, bool, str, type(None))


def _attributes(model: nn.Module) -> dict[str, dict]:
    """Torch-Pruning's `tp.state_dict` 'attributions' (every module's public plain attributes:
    channel and feature counts, groups, ...), restricted to the values `weights_only` loads."""
    out = {}
    for name, module in model.named_modules():
        out[name] = {key: value for key, value in vars(module).items()
                     if not key.startswith("_") and key != "training"
                     and (isinstance(value, _SAFE)
                          or isinstance(value, (tuple, list)) and all(isinstance(v, _SAFE) for v in value))}
    return out


def _structure(model: nn.Module) -> dict[str, str]:
    return {name: type(module).__name__ for name, module in model.named_modules()}


def _first_difference(expected: dict[str, str], given: dict[str, str], where: str) -> str:
    for name in list(expected) + list(given):
        if expected.get(name) != given.get(name):
            return (f"module {name or '(root)'!r} is {expected.get(name, 'absent')} in {where}, "
                    f"{given.get(name, 'absent')} in the model given")
    return "no difference"


def _arch_record(model: nn.Module, arch, num_classes, in_channels) -> dict:
    """arch/num_classes/in_channels: given, else carried by the model (create_model records them); a
    named built-in architecture is checked against `model` (module names and types, classes, input channels)."""
    from .models import create_model

    carried = getattr(model, "paperprune_arch", None) or {}
    arch = arch if arch is not None else carried.get("arch")
    if arch is None:
        return {"arch": None, "num_classes": num_classes, "in_channels": in_channels}
    num_classes = num_classes if num_classes is not None else carried.get("num_classes")
    in_channels = in_channels if in_channels is not None else carried.get("in_channels")
    reference = create_model(arch, num_classes=num_classes or 10, in_channels=in_channels or 3)
    if _structure(reference) != _structure(model):
        raise PaperpruneError(f"the model is not a {arch!r} ({_first_difference(_structure(reference), _structure(model), arch)}); "
                              f"pass the arch it was built as, or leave arch= out")
    head, first = model.get_submodule("classifier"), next(m for m in model.modules() if isinstance(m, _CONV))
    num_classes = head.out_features if num_classes is None else num_classes
    in_channels = first.in_channels if in_channels is None else in_channels
    if head.out_features != int(num_classes) or first.in_channels != int(in_channels):
        raise PaperpruneError(f"num_classes={num_classes!r}, in_channels={in_channels!r} do not match the model "
                              f"({head.out_features} classes, {first.in_channels} input channels)")
    return {"arch": str(arch), "num_classes": int(num_classes), "in_channels": int(in_channels)}


def save_pruned(model: nn.Module, path: str | os.PathLike, *, arch: str | None = None,
                num_classes: int | None = None, in_channels: int | None = None, input_size=None) -> Path:
    """Write a pruned model to one file that `load_pruned` rebuilds, without pickled Python objects.

    Parameters
    ----------
    model : torch.nn.Module
        The pruned model (from `prune`, or cut by any other means), not its state dict.
    path : str or os.PathLike
        The file to write, atomically (a complete file or none); its directory is created.
    arch : str, optional
        Built-in architecture name (`paperprune.list_models`); default: the one `create_model`
        recorded on the model, checked against it. A model from elsewhere needs none.
    num_classes : int, optional
        K; default: the recorded one.
    in_channels : int, optional
        Input channels of the first conv; default: the recorded one.
    input_size : tuple of int, optional
        (C, H, W) of one input; default: the size `prune` recorded on the model.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    PaperpruneError
        If `model` is not an nn.Module (a state dict, say) or `path` is a directory.

    See Also
    --------
    load_pruned : Rebuild the model from the file.

    Notes
    -----
    The pattern of Torch-Pruning's ``tp.state_dict``, restricted to what ``torch.load(...,
    weights_only=True)`` reads: every module's plain attributes (ints, floats, bools, strings;
    a conv's ``in_channels``, ``out_channels``, ``groups``, ...), the state dict as CPU tensors and
    the module names and types, which `load_pruned` checks against the model it loads into
    (format ``FORMAT``, version ``FORMAT_VERSION``). Which channels a prunable layer loses
    follows METHOD.md section 2, "Prunable layers".

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> from torch import nn
    >>> import paperprune
    >>> def make():
    ...     return nn.Sequential(
    ...         nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    ...         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    ...         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    >>> _ = torch.manual_seed(0)
    >>> images, labels = torch.randn(40, 3, 8, 8), torch.arange(40) % 4
    >>> pruned, _ = paperprune.prune(make(), [(images, labels)], method="stlp", flops_reduction=0.4,
    ...                              samples_per_class=10, tolerance=0.05, progress=False)
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = paperprune.save_pruned(pruned, Path(folder.name) / "pruned.pt")
    >>> path.name
    'pruned.pt'
    >>> loaded = paperprune.load_pruned(path, model=make)
    >>> [p.shape for p in loaded.parameters()] == [p.shape for p in pruned.parameters()]
    True
    >>> sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in make().parameters())
    True
    >>> torch.allclose(loaded(images), pruned.eval()(images))
    True
    >>> folder.cleanup()
    """
    if isinstance(model, Mapping):
        raise PaperpruneError(f"save_pruned was given a {type(model).__name__} (a state dict?), not the pruned "
                              "nn.Module; pass the model itself, save_pruned(model, path): the file records its "
                              "module structure and widths, which a state dict does not hold")
    if not isinstance(model, nn.Module):
        raise PaperpruneError(f"save_pruned needs the pruned nn.Module, got a {type(model).__name__}")
    path = Path(path)
    if path.is_dir():
        raise PaperpruneError(f"{str(path)!r} is a directory; give a file name, e.g. {str(path / 'pruned.pt')!r}")
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise PaperpruneError(f"cannot write {str(path)!r}: {str(blocking)!r} is a file, not a directory; "
                              f"choose a path in a directory")
    record = {"format": FORMAT, "version": FORMAT_VERSION,
              **_arch_record(model, arch, num_classes, in_channels)}
    size = input_size if input_size is not None else getattr(model, "paperprune_input_size", None)
    state = model.state_dict()
    record.update({
        "input_size": list(check_input_size(size)) if size is not None else None,
        "model_class": type(model).__name__,
        "modules": _structure(model),
        "attributes": _attributes(model),
        "state_dict": {k: v.detach().cpu() for k, v in state.items()},
        # per-module state-dict versions (torchvision's MNASNet refuses a state dict without them)
        "metadata": {k: dict(v) for k, v in getattr(state, "_metadata", {}).items()},
    })
    return atomic_torch_save(record, path)


def _plain(error: Exception) -> str:
    """The first line of an error's text, without terminal colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().split("\n")[0]


def _read_record(path: Path) -> dict:
    if not path.is_file():
        raise PaperpruneError(f"no pruned model file at {str(path)!r}")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # not pickled objects, but no checkpoint at all
            raise PaperpruneError(f"{str(path)!r} is not a paperprune pruned model (torch.load failed: "
                                  f"{_plain(e)}); the file is damaged or of another kind") from None
        raise PaperpruneError(
            f"{str(path)!r} is not a paperprune pruned model: it holds pickled Python objects (a whole model saved "
            "with torch.save(model)?); load_pruned does not unpickle them (that can run any code). If you trust "
            "the file: model = torch.load(path, weights_only=False), then paperprune.save_pruned(model, new_path)"
        ) from None
    except Exception as e:
        raise PaperpruneError(f"{str(path)!r} is not a paperprune pruned model (torch.load failed: {_plain(e)}); "
                              f"the file is damaged or of another kind") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise PaperpruneError(f"{str(path)!r} is not a paperprune pruned model (no format={FORMAT!r} field); "
                              f"write one with paperprune.save_pruned")
    if record.get("version") not in (1, FORMAT_VERSION):
        raise PaperpruneError(f"{str(path)!r} has format version {record.get('version')!r}; "
                              f"this paperprune reads versions 1 and {FORMAT_VERSION}")
    fields = ("arch", "num_classes", "in_channels", "input_size", "state_dict")
    fields += ("widths",) if record["version"] == 1 else ("modules", "attributes")
    missing = [k for k in fields if k not in record]
    if missing or not all(isinstance(record[k], dict) for k in fields[4:]):
        raise PaperpruneError(f"{str(path)!r} is missing fields {missing} or has malformed "
                              f"{'/'.join(fields[4:])}; the file is damaged")
    return record


def _resize(model: nn.Module, state: dict) -> None:
    """Give every parameter and buffer the saved shape (new tensors; load_state_dict fills them)."""
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        module = model.get_submodule(owner)
        for table in (module._parameters, module._buffers):
            old = table.get(leaf)
            if old is not None and old.shape != value.shape:
                new = torch.empty(value.shape, dtype=old.dtype, device=old.device)
                table[leaf] = nn.Parameter(new, requires_grad=old.requires_grad) if table is module._parameters else new


def load_pruned(path: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model written by `save_pruned`: on CPU, in eval mode, with the saved floating dtype.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by `save_pruned`.
    model : torch.nn.Module or callable, optional
        For a model other than the six built-in ones (which `create_model` rebuilds): an unpruned
        instance of the same architecture, restored in place, or a function returning one. Its
        module names and types must be those saved.

    Returns
    -------
    torch.nn.Module
        The pruned model with the saved widths and weights.

    Raises
    ------
    PaperpruneError
        If the file is missing, damaged, of another kind (a pickled whole model is refused: unpickling
        can run any code) or of an unknown version, or `model` has another module structure.

    See Also
    --------
    save_pruned : Write the file.

    Notes
    -----
    As Torch-Pruning's ``tp.load_state_dict``: the saved module attributes are set on the unpruned
    model, every parameter and buffer takes its saved shape, and the state dict loads strictly.
    The file is read with ``torch.load(..., weights_only=True)``. Version 1 files (built-in models
    only, the widths of the prunable layers of METHOD.md section 2, "Prunable layers") are
    rebuilt by cutting each layer to its saved width before loading.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> import paperprune
    >>> from paperprune.models import prunable_layers
    >>> from paperprune.surgery import prune_channels
    >>> model = paperprune.create_model("resnet56", num_classes=4, in_channels=1).eval()
    >>> first = prunable_layers(model)[0]
    >>> _ = prune_channels(model, [first], {first.name: torch.arange(8)}, (1, 32, 32))
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = paperprune.save_pruned(model, Path(folder.name) / "resnet56-pruned.pt")
    >>> loaded = paperprune.load_pruned(path)
    >>> type(loaded).__name__, loaded.get_submodule(first.conv).out_channels
    ('CifarResNet', 8)
    >>> x = torch.randn(2, 1, 32, 32)
    >>> torch.allclose(loaded(x), model(x))
    True
    >>> folder.cleanup()
    """
    from .models import create_model

    path = Path(path)
    record = _read_record(path)
    if record["version"] == 1:
        if model is not None:
            raise PaperpruneError(f"{str(path)!r} is a version-1 file (built-in models only); load it without model=")
        return _load_v1(path, record)
    rebuilt = None
    if model is None:
        if record["arch"] is None:
            raise PaperpruneError(f"{str(path)!r} holds a pruned {record.get('model_class')}, not one of paperprune's "
                                  f"built-in models; pass model= an unpruned instance of it (or a function making one)")
        rebuilt = record["arch"]
        model = create_model(rebuilt, num_classes=record["num_classes"], in_channels=record["in_channels"])
    elif not isinstance(model, nn.Module) and callable(model):
        model = model()
    if not isinstance(model, nn.Module):
        raise PaperpruneError(f"model={model!r} is neither an nn.Module nor a function returning one")
    if _structure(model) != record["modules"]:
        given = "given" if rebuilt is None else f"rebuilt {rebuilt!r}"
        raise PaperpruneError(f"{str(path)!r} holds a pruned {record.get('model_class')}, which the {given} "
                              f"{type(model).__name__} is not: {_first_difference(record['modules'], _structure(model), 'the file')}")
    dtypes = {v.dtype for v in record["state_dict"].values() if v.is_floating_point()}
    model.to("cpu")
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    for name, attrs in record["attributes"].items():
        module = model.get_submodule(name)
        for key, value in attrs.items():
            setattr(module, key, value)
    state = collections.OrderedDict(record["state_dict"])
    state._metadata = collections.OrderedDict(record.get("metadata") or {})
    try:
        _resize(model, state)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError) as e:
        raise PaperpruneError(f"{str(path)!r}: weights do not match the {type(model).__name__}: {e}") from None
    if record["arch"] is not None:
        model.paperprune_arch = {k: record[k] for k in ("arch", "num_classes", "in_channels")}
    return model.eval()


def _load_v1(path: Path, record: dict) -> nn.Module:
    """Version 1 (widths of the prunable layers, built-in models only): create_model, cut every
    prunable layer to its saved width (first channels; the saved weights replace them), load strictly."""
    from .models import create_model, prunable_layers

    model = create_model(record["arch"], num_classes=record["num_classes"], in_channels=record["in_channels"])
    layers = prunable_layers(model)
    full = widths(model, layers)
    saved = record["widths"]
    if set(saved) != set(full):
        raise PaperpruneError(f"{str(path)!r}: saved layers do not match {record['arch']!r}'s prunable layers "
                              f"(extra {sorted(set(saved) - set(full))[:5]}, missing {sorted(set(full) - set(saved))[:5]})")
    bad = {n: w for n, w in saved.items() if not (isinstance(w, int) and 1 <= w <= full[n])}
    if bad:
        raise PaperpruneError(f"{str(path)!r}: widths outside [1, full width] for {sorted(bad)[:5]}")
    keep = {n: torch.arange(w) for n, w in saved.items() if w < full[n]}
    prune_channels(model, layers, keep, record["input_size"])
    dtypes = {v.dtype for v in record["state_dict"].values() if v.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    try:
        model.load_state_dict(record["state_dict"], strict=True)
    except RuntimeError as e:
        raise PaperpruneError(f"{str(path)!r}: weights do not match the rebuilt {record['arch']!r}: {e}") from None
    return model.eval()
