"""paperprune's criteria as a Torch-Pruning importance: sGLP-IB and sTLP-IB inside a Torch-Pruning pipeline.

`Importance(model, data, method=...)` is a `torch_pruning.importance.Importance`: prepared once
on a class-balanced calibration set drawn from `data` (the statistics of METHOD.md section 2),
it gives one score per channel of every group Torch-Pruning's pruner asks about:

- the lasso criteria (`apib`, `classwise`, `sglp`, `stlp`): the row norms of B at the weakest
  lam (lam_lo, METHOD.md section 2 "Automatic budget"), the channel scores of METHOD.md
  section 2, with a 1e-12 multiple of the channel's relevance to order the rows the lasso zeroed;
- `l1`, `hrank`, `random`: the criterion's scores, divided by their layer's maximum.

Groups are matched by the conv whose output channels they remove (or the linear layer whose output
features, an MLP's hidden width, they remove). Which convs are scored:
the model's own prunable layers, `layers=`, or those `paperprune.discover` finds (by default
the inner widths and the widths read by grouped convs, which Torch-Pruning keeps aligned);
every other group (residual widths above all) gets None, which Torch-Pruning's pruners skip.

    import torch_pruning as tp
    imp = paperprune.tp.Importance(model, loader, method="stlp", samples_per_class=10)
    pruner = tp.pruner.MetaPruner(model, example_inputs, importance=imp, pruning_ratio=0.5,
                                  ignored_layers=[model.fc])
    pruner.step()
"""
from __future__ import annotations

import torch
import torch_pruning
from torch import nn

from .discover import unit_width
from .utils import PaperpruneError

__all__ = ["Importance"]


class Importance(torch_pruning.importance.Importance):
    """A Torch-Pruning importance from a paperprune criterion: one score per channel of a group.

    Prepared once on a class-balanced calibration set drawn from `data`; called by a Torch-Pruning
    pruner with a dependency group, it returns the scores of the group's channels (higher is
    kept), or None for a group it does not score, which the pruner skips.

    Parameters
    ----------
    model : torch.nn.Module
        The model the pruner will cut (put in eval mode while preparing, then restored).
    data : iterable of (images, labels)
        Batches as for `paperprune.prune`: images (B, C, H, W), labels (B,).
    method : {"stlp", "sglp", "classwise", "apib", "hrank", "l1", "random"}, default "stlp"
        The criterion (`paperprune.criteria`).
    samples_per_class : int, default 20
        Calibration images drawn per class.
    num_classes : int, optional
        K; read from the classifier when omitted.
    classifier : str, optional
        Module name of the layer producing the logits.
    layers : dict of str to str, or sequence of PrunableLayer, optional
        The convs to score, as for `paperprune.prune`; default the model's own prunable layers,
        else those `paperprune.discover` finds of the kinds in `include`.
    input_size : tuple of int, optional
        (C, H, W) of one input, for tracing; default from the first batch.
    include : tuple of str, default ("inner", "grouped")
        Group kinds (`paperprune.discover.KINDS`) scored when the model lists no layers.
    level : float, default 0.0
        The criterion's level the scores are read at (lasso criteria: lam = lam_lo * exp(level)).
    **options
        Criterion options (seed, gamma_ratio, nonnegative, structure, rho, knn, ...).

    Attributes
    ----------
    method : str
        The criterion.
    scores : dict of torch.nn.Module to torch.Tensor, shape (C,)
        Each scored conv's channel scores.
    names : dict of torch.nn.Module to str
        Each scored conv's layer name.

    Notes
    -----
    Scores of the lasso criteria (`apib`, `classwise`, `sglp`, `stlp`) are the row norms of B at
    the weakest lam (lam_lo), the channel scores of METHOD.md section 2 ("Penalties", "Automatic
    budget"), plus a 1e-12 multiple of the channel's relevance to order the rows the lasso
    zeroed; those of `l1`, `hrank` and `random` are the criterion's scores divided by their
    layer's maximum. Groups are matched by the conv whose output channels they remove; every
    other group (residual widths above all, METHOD.md section 2, "Prunable layers") gets None.
    The scores belong to the widths they were prepared on: prune in one step
    (``iterative_steps=1``) or prepare again after each step.

    Examples
    --------
    >>> import torch
    >>> import torch_pruning
    >>> from torch import nn
    >>> import paperprune
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(
    ...     nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    ...     nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    >>> images, labels = torch.randn(40, 3, 8, 8), torch.arange(40) % 4
    >>> imp = paperprune.tp.Importance(model, [(images, labels)], method="stlp", samples_per_class=10)
    >>> sorted(imp.names.values()), [tuple(s.shape) for s in imp.scores.values()]
    (['0', '3'], [(16,), (16,)])
    >>> pruner = torch_pruning.pruner.MetaPruner(model, images[:1], importance=imp, pruning_ratio=0.5,
    ...                                          ignored_layers=[model[8]])
    >>> pruner.step()
    >>> [m.out_channels for m in model if isinstance(m, nn.Conv2d)], tuple(model(images).shape)
    ([8, 8], (40, 4))
    """

    def __init__(self, model: nn.Module, data, method: str = "stlp", *, samples_per_class: int = 20,
                 num_classes: int | None = None, classifier: str | None = None, layers=None, input_size=None,
                 include=("inner", "grouped"), level: float = 0.0, **options):
        from .criteria import Calibration, create_criterion
        from .discover import discover
        from .pipeline import check_data, first_shape, gather_calibration, model_parts

        from .options import check_options

        criterion = create_criterion(method, **options)
        check_options(dict(options, method=method))
        data = check_data(model, data)
        if layers is None and not hasattr(type(model), "prunable_layers"):
            if input_size is None:
                input_size, data = first_shape(data)
            found = discover(model, input_size, include=include)
            layers, classifier = found.layers, classifier or found.classifier
            if not layers:
                raise PaperpruneError(f"found no group to score in {type(model).__name__} ({found.describe()}); "
                                      "pass layers= or include more kinds")
        layers, classifier, num_classes, data = model_parts(model, layers, classifier, data, input_size,
                                                            num_classes)
        device = next(model.parameters()).device
        images, labels = gather_calibration(data, num_classes, samples_per_class, device)
        was_training = model.training
        try:
            criterion.prepare(model.eval(), layers, Calibration(images, labels, num_classes, {}, classifier))
        finally:
            model.train(was_training)
        chosen = criterion.select(float(level))
        self.method = method
        self.scores = {model.get_submodule(layer.conv): chosen[layer.name][1].detach().float().cpu()
                       for layer in layers}
        self.names = {model.get_submodule(layer.conv): layer.name for layer in layers}

    def __call__(self, group) -> torch.Tensor | None:
        """Scores of the group's channels in the order of its root indices; None for a group not scored."""
        root = group[0]
        for item in group.items:
            module = item.dep.target.module
            if module not in self.scores or not group._DG.is_out_channel_pruning_fn(item.dep.handler):
                continue
            scores = self.scores[module]
            if unit_width(module) != scores.numel():
                raise PaperpruneError(
                    f"{self.names[module]!r} has {unit_width(module)} channels but the importance was prepared "
                    f"on {scores.numel()}; prepare it again after each pruning step (iterative_steps=1)")
            position = {int(r): j for j, r in enumerate(root.root_idxs)}
            out = torch.zeros(len(root.idxs))
            for idx, r in zip(item.idxs, item.root_idxs):
                out[position[int(r)]] = scores[int(idx)]
            return out
        return None
