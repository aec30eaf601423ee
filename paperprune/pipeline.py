"""`paperprune.prune`: one call from a trained model and data to a smaller model and a report."""
from __future__ import annotations

import copy
import itertools
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .criteria import LASSO, Calibration, create_criterion
from .discover import channel_axis, unit_width
from .features import check_images, first_conv
from .ib import check_block_samples, check_statistics
from .lasso import SOLVER_MAX_ITER
from .select import TargetMissed, allocate, check_allocation, select_channels
from .utils import PaperpruneError, as_number, resolve_device

__all__ = ["PruneReport", "prune"]


@dataclass
class PruneReport:
    """What `prune` did: per-layer widths and kept channels, MACs and parameters before and after,
    the level reached, timings.

    Parameters
    ----------
    method : str
        The criterion (`paperprune.criteria.METHODS`).
    flops_reduction_target : float or None
        The MACs reduction asked for; None under a latency budget.
    level : float
        The criterion's level reached by the budget rule (lasso criteria: lam = lam_lo * exp(level)).
    criterion : dict
        The criterion's description at that level (`Criterion.describe`): lam and gamma, the lasso's
        own support, unconverged layers, ...
    layers : list of dict
        One row per prunable layer: ``name``, ``width_before``, ``width_after`` and ``kept``, the
        kept channel indices in increasing order.
    macs_before, macs_after, params_before, params_after : int
        Conv and linear MACs and parameters (METHOD.md section 4) of the input and the pruned model.
    samples_per_class : int
        Calibration images asked for per class.
    num_calibration : int
        Calibration images drawn, N.
    budget_steps : int
        Bisection steps the budget rule took.
    timings : dict of str to float
        Seconds per stage: ``statistics_s``, ``selection_s``, ``surgery_s``, and where they ran
        ``latency_table_s``, ``adapt_bn_s``, ``latency_measure_s``.
    latency : dict or None
        Under a latency budget, `paperprune.latency.latency_record`: target, predicted and measured
        reductions, table key, MACs.
    adapted_bn_images : int
        Images the pruned model's BatchNorm statistics were re-estimated on (0: not re-estimated).
    allocation : {"global", "uniform"}
        How the budget was shared between layers (`paperprune.select.ALLOCATIONS`).
    images_per_class : list of int
        Calibration images drawn per class (fewer than `samples_per_class` where the data held fewer).

    Attributes
    ----------
    macs_reduction, params_reduction : float
        1 - after / before.

    Notes
    -----
    MACs and parameters follow METHOD.md section 4 (conv and linear layers, BatchNorm excluded);
    `level` and `criterion` are those of the budget rule (METHOD.md section 2, "Automatic budget"
    and "Allocation"). `to_dict` is the form run records store.

    Examples
    --------
    >>> from paperprune.pipeline import PruneReport
    >>> report = PruneReport(method="l1", flops_reduction_target=0.5, level=0.3, criterion={},
    ...                      layers=[{"name": "conv1", "width_before": 16, "width_after": 8,
    ...                               "kept": [0, 2, 4, 6, 8, 10, 12, 14]}],
    ...                      macs_before=4000, macs_after=2000, params_before=500, params_after=300,
    ...                      samples_per_class=10, num_calibration=40, budget_steps=12)
    >>> report.macs_reduction, report.params_reduction
    (0.5, 0.4)
    >>> print(report.summary())
    l1: MACs 0.00M -> 0.00M (-50.0%), params 0.001M -> 0.000M (-40.0%), level 0.3
      conv1                               16 ->     8
    >>> sorted(report.to_dict())[:4]
    ['adapted_bn_images', 'allocation', 'budget_steps', 'criterion']
    """

    method: str
    flops_reduction_target: float | None
    level: float
    criterion: dict
    layers: list[dict]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    samples_per_class: int
    num_calibration: int
    budget_steps: int
    timings: dict[str, float] = field(default_factory=dict)
    #: with a latency budget: paperprune.latency.latency_record (target, predicted and measured latency, each
    #: measured correction step, table key, MACs)
    latency: dict | None = None
    #: images the pruned model's BatchNorm statistics were re-estimated on (0: not re-estimated)
    adapted_bn_images: int = 0
    #: how the budget was shared between layers: "global" or "uniform" (paperprune.select.ALLOCATIONS)
    allocation: str = "global"
    #: calibration images drawn per class (at most samples_per_class; fewer where the data held fewer)
    images_per_class: list[int] = field(default_factory=list)

    @property
    def macs_reduction(self) -> float:
        return 1.0 - self.macs_after / self.macs_before

    @property
    def params_reduction(self) -> float:
        return 1.0 - self.params_after / self.params_before

    def to_dict(self) -> dict:
        d = asdict(self)
        d["macs_reduction"] = self.macs_reduction
        d["params_reduction"] = self.params_reduction
        return d

    def summary(self) -> str:
        allocation = "" if self.allocation == "global" else f" ({self.allocation})"
        lines = [f"{self.method}{allocation}: MACs {self.macs_before / 1e6:.2f}M -> {self.macs_after / 1e6:.2f}M "
                 f"(-{100 * self.macs_reduction:.1f}%), params {self.params_before / 1e6:.3f}M -> "
                 f"{self.params_after / 1e6:.3f}M (-{100 * self.params_reduction:.1f}%), level {self.level:.4g}"]
        if self.latency:
            lat = self.latency
            lines.append(f"latency ({lat['mode']}, batch {lat['batch_size']}): target -{100 * lat['target_reduction']:.1f}%, "
                         f"predicted -{100 * lat['predicted_reduction']:.1f}%, measured "
                         f"{lat['measured_before_us'] / 1e3:.2f} -> {lat['measured_after_us'] / 1e3:.2f} ms "
                         f"(-{100 * lat['measured_reduction']:.1f}%"
                         + (f", step {lat['chosen_step']} of {sum('miss' in s for s in lat['steps'])} measured)"
                            if "chosen_step" in lat else ")")
                         + (f" MISSED the target by more than {lat['tolerance']}" if lat.get("missed") else ""))
        if self.images_per_class:
            lines.append(f"calibration: {self.num_calibration} images, {min(self.images_per_class)} to "
                         f"{max(self.images_per_class)} per class (asked {self.samples_per_class})")
        lines += [f"  {row['name']:<32} {row['width_before']:>5} -> {row['width_after']:>5}" for row in self.layers]
        return "\n".join(lines)


def resolve_layers(model: nn.Module, layers=None) -> list:
    """The prunable layers: the model's own list, or the user's (PrunableLayer, (conv, observe) or {conv: observe})."""
    from .models import PrunableLayer, prunable_layers

    if layers is None:
        try:
            return prunable_layers(model)
        except PaperpruneError:
            raise PaperpruneError(
                f"{type(model).__name__} does not list its prunable layers; pass them to prune as "
                "layers={conv: observe, ...} (module names; observe = the module whose output is the conv's "
                "channels after BN and ReLU)") from None
    if isinstance(layers, str):
        raise PaperpruneError(f"layers={layers!r} is one string; pass {{conv: observe}} pairs of module names, e.g. "
                              f"layers={{{layers!r}: 'the module after its BN and ReLU'}}, or leave layers out to "
                              "have them found")
    if not layers:
        raise PaperpruneError(f"layers={layers!r} names no layer; pass at least one {{conv: observe}} pair, or leave "
                              "layers out to have them found")
    if isinstance(layers, dict):
        layers = list(layers.items())
    resolved = []
    for item in layers:
        if isinstance(item, PrunableLayer):
            layer = item
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
            layer = PrunableLayer(name=item[0], conv=item[0], observe=item[1])
        else:
            raise PaperpruneError(
                f"prunable layer {item!r} not understood; give PrunableLayer objects, (conv, observe) "
                "pairs of module names, or a {conv: observe} dict (observe = the module whose output "
                "is the channel's feature map after BN and ReLU)")
        for path in (layer.conv, layer.observe):
            try:
                model.get_submodule(path)
            except AttributeError:
                raise PaperpruneError(f"prunable layer {layer.name!r}: the model has no module {path!r}") from None
        if not isinstance(model.get_submodule(layer.conv), (nn.Conv2d, nn.Linear)):
            raise PaperpruneError(f"prunable layer {layer.name!r}: {layer.conv!r} is not an nn.Conv2d (or the "
                                  "nn.Linear whose output features are an MLP's hidden width)")
        resolved.append(layer)
    return resolved


def model_parts(model: nn.Module, layers, classifier: str | None, data, input_size,
                num_classes: int | None = None) -> tuple[list, str, int, object]:
    """(layers, classifier, num_classes, data) for `prune`: the model's own prunable layers and its
    `classifier` (the six paper models), else what `paperprune.discover` finds through Torch-Pruning's
    DependencyGraph (the inner widths, the layer producing the logits); `layers=` and `classifier=`
    override either, and are checked (`check_observed`, `check_head`). Tracing needs an input
    shape: `input_size`, else the first batch of `data`, which is put back when `data` is a
    one-shot iterator."""
    from .discover import discover

    own = hasattr(type(model), "prunable_layers")
    if own and classifier is None:
        classifier = "classifier"
    if first_conv(model) is None:
        raise PaperpruneError(f"{type(model).__name__} has no convolution; paperprune prunes the output "
                              "channels of convolutions (filters), so there is nothing to prune")
    if input_size is None:
        input_size, data = first_shape(data)
    given = layers
    if (own or layers is not None) and classifier is not None:
        layers = resolve_layers(model, layers)
    else:
        found = discover(model, input_size)
        if layers is None and not own:
            layers = _found_layers(model, found)
        else:
            layers = resolve_layers(model, layers)
        if classifier is None:
            if found.classifier is None:
                raise PaperpruneError(
                    f"found no layer producing the logits of {type(model).__name__} (an nn.Linear, or a conv whose "
                    "channels are the classes before global pooling); pass classifier= naming it (the class "
                    "embeddings are that layer's input)")
            classifier = found.classifier
    if given is not None:
        check_observed(model, [layer for layer, item in zip(layers, _items(given)) if not hasattr(item, "observe")],
                       input_size)
    return layers, classifier, check_head(model, classifier, num_classes, input_size), data


def _items(layers) -> list:
    return list(layers.items()) if isinstance(layers, dict) else list(layers)


def _found_layers(model: nn.Module, found) -> list:
    """Discovery's layers, or the reason there are none to prune."""
    grouped = {conv: cause for conv, (kind, cause) in found.skipped.items() if kind == "grouped"}
    if grouped:
        conv, cause = next(iter(grouped.items()))
        raise PaperpruneError(
            f"{type(model).__name__}: {len(grouped)} widths are read by grouped convolutions among other channels "
            f"(e.g. {conv!r} feeds {cause!r}), which can only lose the same number of channels in each group; "
            "paperprune's per-layer selection cannot keep those groups aligned. Prune them with Torch-Pruning's "
            "MetaPruner and paperprune.tp.Importance, or pass layers=paperprune.discover.discover(model, "
            "input_size).layers to prune only the other widths")
    if not found.layers:
        raise PaperpruneError(
            f"found no prunable layer in {type(model).__name__} ({found.describe()}): every conv's width is "
            "tied to a residual add or a concatenation, which the lineage keeps (METHOD.md section 2); pass "
            "layers={conv: observe, ...} to choose layers yourself")
    return found.layers


def _forward(model: nn.Module, example: torch.Tensor, hooks: dict) -> torch.Tensor:
    """One eval-mode forward of `example` with forward hooks {module: hook}; modes restored."""
    modes = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(h) for m, h in hooks.items()]
    try:
        with torch.no_grad():
            return model.eval()(example)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.train(training)


def check_head(model: nn.Module, classifier: str, num_classes, input_size) -> int:
    """The number of classes, after checking that `classifier` produces the model's logits: an nn.Linear
    with K outputs, or a conv with K channels before global pooling, where the model's output is (B, K);
    a `num_classes` given must be that K."""
    from .discover import example_input
    from .options import closest

    heads = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    fix = "name the layer producing the logits (an nn.Linear, or a conv whose channels are the classes)"
    try:
        head = model.get_submodule(classifier)
    except AttributeError:
        raise PaperpruneError(f"classifier={classifier!r}: the model has no such module{closest(classifier, heads)}; "
                              f"{fix}") from None
    if not isinstance(head, (nn.Linear, nn.modules.conv._ConvNd)):
        raise PaperpruneError(f"classifier={classifier!r} is a {type(head).__name__}; {fix}")
    k = head.out_features if isinstance(head, nn.Linear) else head.out_channels
    seen = []
    out = _forward(model, example_input(model, input_size), {head: lambda m, i, o: seen.append(o)})
    shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
    if not seen or not torch.is_tensor(out) or out.dim() != 2 or out.shape[1] != k:
        what = "is not called in the forward pass" if not seen else f"gives {k} {'outputs' if isinstance(head, nn.Linear) else 'channels'}"
        raise PaperpruneError(f"classifier={classifier!r} {what}, but the model's output has shape {shape}: it does "
                              f"not produce the logits; {fix}")
    if num_classes is not None:
        given = as_number(num_classes, "num_classes", int)
        if given != k:
            raise PaperpruneError(f"num_classes={num_classes!r} does not match the classifier {classifier!r}, which "
                                  f"produces {k} logits; leave num_classes out (it is read from the classifier)")
    return k


def check_observed(model: nn.Module, layers, input_size) -> None:
    """Refuse a (conv, observe) pair whose observed module does not carry the conv's own channels: moving
    one channel of the conv's output must move that channel of the observed output, and only that one."""
    from .discover import example_input

    example = torch.randn(2, *example_input(model, input_size).shape[1:], generator=torch.Generator().manual_seed(0))
    example = example.to(example_input(model, input_size))
    for layer in layers:
        conv, observe = model.get_submodule(layer.conv), model.get_submodule(layer.observe)
        axis = channel_axis(conv)

        def observed(delta):
            got = []

            def shift(m, i, o):
                if delta:
                    o = o.clone()
                    o.select(axis, 0).add_(delta * (1.0 + o.abs().max()))
                    return o

            def keep(m, i, o):
                got.append(o.movedim(axis, 1) if torch.is_tensor(o) and o.dim() >= 2 else o)
            _forward(model, example, {conv: shift, observe: keep})
            return got[0] if got else None

        plain = observed(0.0)
        bad = f"layer {layer.name!r}: observe={layer.observe!r} "
        fix = (f"; observe the module whose output is {layer.conv!r}'s own channels after its BN and activation "
               "(e.g. its ReLU)")
        if not torch.is_tensor(plain) or plain.dim() < 2 or plain.shape[1] != unit_width(conv):
            shape = tuple(plain.movedim(1, axis).shape) if torch.is_tensor(plain) and plain.dim() >= 2 else None
            raise PaperpruneError(f"{bad}gives {'no tensor' if shape is None else f'shape {shape}'}, not the "
                                  f"{unit_width(conv)} channels of {layer.conv!r}{fix}")
        moved = set()
        for delta in (10.0, -10.0):
            diff = (observed(delta) - plain).abs().flatten(2).amax(-1).amax(0)
            moved |= set((diff > 1e-6 * (1.0 + plain.abs().max())).nonzero().flatten().tolist())
        if moved != {0}:
            what = "does not depend on" if not moved else "mixes"
            raise PaperpruneError(f"{bad}{what} the channels of {layer.conv!r} (moving its channel 0 moved observed "
                                  f"channels {sorted(moved)[:6]}){fix}")


def check_data(model: nn.Module, data, *, passes: int = 1) -> object:
    """Check `data`'s first batch against `model` before any tracing; returns `data` ready to be read
    from its start. A `torch.utils.data.Dataset` (single samples) is refused for a DataLoader over it,
    and a one-shot iterator where `passes` > 1 (calibration, then adaptive BN) for a re-iterable one."""
    from torch.utils.data import Dataset, IterableDataset

    if isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        raise PaperpruneError(f"data is a {type(data).__name__} (single samples); pass batches: "
                              "torch.utils.data.DataLoader(dataset, batch_size=64)")
    try:
        iterator = iter(data)
    except TypeError:
        raise PaperpruneError(f"data is a {type(data).__name__}, not an iterable of (images, labels) batches; pass a "
                              "DataLoader or a list of (images, labels) tuples") from None
    if iterator is data and passes > 1:
        raise PaperpruneError(f"data is a one-shot {type(data).__name__}, but it is read {passes} times (calibration, "
                              "then adapt_bn's images); pass a re-iterable one (a DataLoader or a list of batches)")
    try:
        batch = next(iterator)
    except StopIteration:
        raise PaperpruneError("data yielded no samples for calibration") from None
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        raise PaperpruneError(f"data must yield (images, labels) batches; its first item is a {type(batch).__name__}")
    check_images(model, batch[0])
    return itertools.chain([batch], iterator) if iterator is data else data


def first_shape(data) -> tuple[tuple[int, ...], object]:
    """The (C, H, W) of `data`'s first batch, and `data` ready to be read again from its start."""
    iterator = iter(data)
    try:
        batch = next(iterator)
    except StopIteration:
        raise PaperpruneError("data yielded no samples for calibration") from None
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2 and torch.is_tensor(batch[0])):
        raise PaperpruneError("data must yield (images, labels) batches")
    shape = tuple(batch[0].shape[1:])
    return shape, (itertools.chain([batch], iterator) if iterator is data else data)


def gather_calibration(data, num_classes: int, samples_per_class: int, device, *, all_classes: bool = True,
                       in_channels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Take the first `samples_per_class` images of every class from an iterable of (images, labels).

    Every class of the model must contribute at least 2 samples (the Gaussian kernels of METHOD.md
    section 2 need 2); with `all_classes=False` (criteria that ignore labels) classes may be absent.
    Images must be finite float (B, C, H, W) batches with `in_channels` channels, labels 1-D class
    indices in [0, num_classes).
    """
    samples_per_class = as_number(samples_per_class, "samples_per_class", int)
    if samples_per_class < 2:
        raise PaperpruneError(f"samples_per_class={samples_per_class!r}: need at least 2 per class for kernels")
    images, labels = [], []
    counts = torch.zeros(num_classes, dtype=torch.long)
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise PaperpruneError("data must yield (images, labels) batches")
        x, y = _checked_batch(batch[0], batch[1], num_classes, in_channels)
        onehot = torch.nn.functional.one_hot(y, num_classes)
        rank_in_class = (onehot.cumsum(0) * onehot).sum(1) - 1 + counts[y]
        take = rank_in_class < samples_per_class
        if take.any():
            images.append(x[take.to(x.device)].to(device))
            labels.append(y[take])
            counts += torch.bincount(y[take], minlength=num_classes)
        if bool((counts >= samples_per_class).all()):
            break
    if not images:
        raise PaperpruneError("data yielded no samples for calibration")
    few = [(c, int(n)) for c, n in enumerate(counts.tolist()) if n < 2]
    if all_classes and few:
        shown = ", ".join(f"class {c}: {n}" for c, n in few[:8]) + (", ..." if len(few) > 8 else "")
        raise PaperpruneError(
            f"{len(few)} of the model's {num_classes} classes have fewer than 2 calibration samples ({shown}); "
            "the class-wise statistics need at least 2 of every class: pass data that covers every class "
            f"(samples_per_class={samples_per_class} are taken from each)")
    images = torch.cat(images)
    if not bool(torch.isfinite(images).all()):
        raise PaperpruneError("the calibration images hold non-finite values (NaN or Inf); check the data and "
                              "its normalisation (a zero std?)")
    return images, torch.cat(labels).to(device)


def _checked_batch(x, y, num_classes: int, in_channels: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One (images, labels) batch, checked: what is wrong is named, with the fix."""
    if not torch.is_tensor(x) or x.dim() != 4 or not x.is_floating_point():
        raise PaperpruneError(f"images must be float tensors (B, C, H, W); got "
                              f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
    if in_channels is not None and x.shape[1] != in_channels:
        raise PaperpruneError(f"images have {x.shape[1]} channels but the model's first conv takes {in_channels}; "
                              "pass data of the model's input format")
    if not torch.is_tensor(y) or y.dim() != 1 or len(y) != len(x):
        hint = " (one-hot labels? pass labels.argmax(1))" if torch.is_tensor(y) and y.dim() == 2 else ""
        raise PaperpruneError(f"labels must be a 1-D tensor of class indices, one per image; got shape "
                              f"{tuple(getattr(y, 'shape', ()))} for {len(x)} images{hint}")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise PaperpruneError(f"labels must be integer class indices, got non-integer {y.dtype} values")
    y = y.long().cpu()
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.numel():
        raise PaperpruneError(f"label {int(bad[0])} outside the model's {num_classes} classes; labels must lie "
                              f"in [0, {num_classes - 1}]")
    return x, y


def prune(model: nn.Module, data, method: str = "stlp", flops_reduction: float | None = None,
          input_size: tuple[int, ...] | None = None, *, layers=None, num_classes: int | None = None,
          samples_per_class: int = 20, omega: int = 4, gamma_ratio: float = 0.5,
          nonnegative: bool = False, structure: str = "embedding", response: str = "class", rho: float = 0.5,
          knn: int | None = None, max_iter: int = SOLVER_MAX_ITER,
          taxonomy: dict[str, list[int]] | None = None,
          classifier: str | None = None, seed: int = 0,
          tolerance: float = 0.01, device=None, progress: bool = True,
          latency_reduction: float | None = None, latency_mode: str = "eager", latency_batch_size: int = 64,
          latency_rounding: bool = False, adapt_bn: int = 0, statistics: str = "exact",
          block_size: int | None = None, permutations: int | None = None,
          allocation: str = "global") -> tuple[nn.Module, PruneReport]:
    """Prune a trained CNN to a MACs (or latency) budget with one channel-selection criterion.

    A class-balanced calibration set is drawn from `data`; the criterion `method` is prepared on it
    (for the lasso criteria: the statistics Q (C, C) and R (C, K) of every prunable layer and the
    structured lasso over B (C, K)); one global level (lam for the lasso criteria) is bisected until
    the pruned model's MACs reduction is within `tolerance` of `flops_reduction`; the channels kept
    at that level are cut from a deep copy of `model` with everything coupled to them. The input
    model is not modified.

    Parameters
    ----------
    model : torch.nn.Module
        Trained CNN taking float images (B, C, H, W) and returning logits (B, K). The six built-in
        models (`paperprune.create_model`) list their prunable layers and classifier; for any other
        CNN both are found through Torch-Pruning's DependencyGraph (`paperprune.discover`).
    data : iterable of (images, labels)
        Batches (a DataLoader, a list of tuples, any iterable; re-iterable when `adapt_bn` > 0):
        images (B, C, H, W) float, normalised as the model expects; labels (B,) integer class
        indices in [0, K). A class-balanced calibration set is drawn from the first batches.
    method : {"stlp", "sglp", "classwise", "apib", "hrank", "l1", "random"}, default "stlp"
        Channel-selection criterion (`paperprune.criteria`).
    flops_reduction : float in (0, 1), optional
        Fraction of the MACs to remove; 0.5 when neither this nor `latency_reduction` is given.
    input_size : tuple of int, optional
        (C, H, W) of one input; default: read from the first batch of `data`.
    layers : dict of str to str, or sequence of PrunableLayer or (str, str), optional
        Prunable layers of a user's CNN as {conv: observe} module names, `observe` being the module
        whose output is the conv's channels after BN and activation. Default: the model's own list,
        else what `paperprune.discover` finds (the inner widths).
    num_classes : int, optional
        K; read from the classifier and checked against it when given.
    samples_per_class : int, default 20
        Calibration images drawn per class; N = K * samples_per_class.
    omega : int, default 4
        Per-layer floor: every prunable layer keeps at least `omega` channels.
    gamma_ratio : float, default 0.5
        Structure penalty weight gamma = gamma_ratio * lam (sGLP-IB, sTLP-IB).
    nonnegative : bool, default False
        Solve with B >= 0 (HSIC Lasso's form), an ablation of the signed default.
    structure : {"embedding", "taxonomy"}, default "embedding"
        Class graph (sGLP-IB) and tree (sTLP-IB) from the class-mean embeddings, or from the
        dataset's known taxonomy (`taxonomy`).
    response : {"class", "class+output"}, default "class"
        Class kernels only, or also APIB's response (the consuming layer's output kernel) as one
        more column of R, for the class-wise criteria.
    rho : float in [0, 1), default 0.5
        Class graph edge where |corr| > rho.
    knn : int, optional
        Instead of `rho`, join each class to its `knn` most correlated classes.
    max_iter : int, default `paperprune.lasso.SOLVER_MAX_ITER`
        Lasso solver iterations per solve; a solve stopped there is listed in
        ``report.criterion["unconverged_layers"]`` and warned about.
    taxonomy : dict of str to list of int, optional
        Superclass name to its classes, for ``structure="taxonomy"``.
    classifier : str, optional
        Module name of the layer producing the logits (its input is the class embedding).
    seed : int, default 0
        Seeds the `random` criterion and the block partitions.
    tolerance : float, default 0.01
        Accepted distance between the achieved and the target reduction.
    device : str or torch.device, optional
        Where statistics and solves run; default: the model's device.
    progress : bool, default True
        Show progress bars.
    latency_reduction : float in (0, 1), optional
        Budget latency instead of MACs (not both): fraction of the measured latency to remove. The
        level is bisected against a `paperprune.latency.LatencyModel` measured on `device`, then
        corrected by measuring each pruned candidate beside the unpruned model
        (`paperprune.latency.calibrate`: at most 3 candidates, stopping within 0.02 of the target;
        each step in ``report.latency["steps"]``, a warning naming a miss after the last). Each
        step bisects the predicted reduction to within `paperprune.latency.PREDICTED_TOLERANCE`
        (0.0025) of the one it asks for, or `tolerance` where no kept set lands that near.
    latency_mode : {"eager", "deployed"}, default "eager"
        How latency is measured (`paperprune.latency`).
    latency_batch_size : int, default 64
        Batch size latency is measured at.
    latency_rounding : bool, default False
        Round kept widths up to the multiples the latency table shows to be nearly free.
    adapt_bn : int, default 0
        Re-estimate the pruned model's BatchNorm statistics on the first `adapt_bn` images of
        `data`, read again from its start (so `data` must be re-iterable); 0 leaves them as trained.
    statistics : {"exact", "block"}, default "exact"
        How the lasso criteria estimate Q and R: exact, O(N^2) per channel, or the block
        estimator, O(N B M) per channel in one streamed forward pass, the better choice when N is
        large (docs/usage-statistics.md). "block" is refused for a criterion without statistics.
    block_size : int, optional
        Samples per block B for ``statistics="block"`` (default 20); must divide N. Refused with
        ``statistics="exact"``, as is `permutations`.
    permutations : int, optional
        Random partitions M for ``statistics="block"`` (default 3).
    allocation : {"global", "uniform"}, default "global"
        One level shared by every layer (per-layer ratios fall out of the criterion), or the same
        kept fraction in every layer with the criterion's scores choosing which channels (for the
        lasso criteria: B's row norms at the weakest lam).

    Returns
    -------
    pruned : torch.nn.Module
        A pruned deep copy of `model`, on `device`, in the input model's training mode.
    report : PruneReport
        Widths and kept channel indices per layer, MACs and parameters before and after, the
        level reached, the criterion's description and timings.

    Raises
    ------
    PaperpruneError
        On bad input: the message names the value and the fix.

    Notes
    -----
    Reconstruction choices, with their METHOD.md sections:

    - Statistics: Gaussian channel kernels with the median bandwidth, one-vs-rest class kernels,
      centred and Frobenius-normalised (section 2, "Statistics"); block estimator (section 2b).
    - Objective: multi-task HSIC regression, signed by default (section 2, "Objective"); the
      tree-guided group lasso of sTLP-IB and the graph-guided fused lasso of sGLP-IB (section 2,
      "Penalties"); the class graph and tree from class-mean embeddings of the classifier's input
      (section 2, "Class structure").
    - Budget: one global lam bisected to the MACs target, gamma tied to lam, floor omega
      (section 2, "Automatic budget"); `allocation` (section 2, "Allocation").
    - Prunable layers: inner widths only, residual widths kept (section 2, "Prunable layers").
    - MACs and parameters: conv and linear layers (section 4).

    `adapt_bn` is adaptive BN, which EagleEye (Li et al., ECCV 2020) uses to score pruned
    candidates; it recovers much of the accuracy a cut loses before any fine-tuning
    (`paperprune.features.adapt_batchnorm`; its effect on the curves in `paperprune.lab.curves`).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import paperprune
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(
    ...     nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    ...     nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    >>> images, labels = torch.randn(40, 3, 8, 8), torch.arange(40) % 4

    A channel of this two-layer net carries about 6% of its MACs, hence the wider `tolerance`:

    >>> pruned, report = paperprune.prune(model, [(images, labels)], method="stlp",
    ...                                   flops_reduction=0.4, samples_per_class=10,
    ...                                   tolerance=0.05, progress=False)
    >>> [(row["name"], row["width_before"]) for row in report.layers]
    [('0', 16), ('3', 16)]
    >>> abs(report.macs_reduction - 0.4) <= 0.05
    True
    >>> pruned(images).shape, model[0].out_channels
    (torch.Size([40, 4]), 16)
    """
    from .flops import count_flops_params
    from .latency import PREDICTED_TOLERANCE, LatencyModel, calibrate, check_budget, latency_record
    from .options import check_options
    from .surgery import MacsPredictor, prune_channels

    samples_per_class, omega, seed = (as_number(v, n, int) for v, n in ((samples_per_class, "samples_per_class"),
                                                                       (omega, "omega"), (seed, "seed")))
    gamma_ratio, rho, tolerance = (as_number(v, n) for v, n in ((gamma_ratio, "gamma_ratio"), (rho, "rho"),
                                                                (tolerance, "tolerance")))
    knn = as_number(knn, "knn", int, optional=True)
    max_iter = as_number(max_iter, "max_iter", int)
    adapt_bn = as_number(adapt_bn, "adapt_bn", int)
    allocation = check_allocation(allocation)
    if adapt_bn < 0:
        raise PaperpruneError(f"adapt_bn={adapt_bn}: give the number of images to re-estimate BatchNorm "
                              "statistics on (e.g. 256), or 0 to leave them as trained")
    if adapt_bn and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise PaperpruneError(f"adapt_bn={adapt_bn}: the model has no BatchNorm layer to re-estimate; "
                              "leave adapt_bn at 0")
    nonfinite = [n for n, t in model.state_dict().items()
                 if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if nonfinite:
        raise PaperpruneError(f"the model holds non-finite weights ({len(nonfinite)} tensor(s), e.g. "
                              f"{nonfinite[0]!r}); its training diverged: retrain it (e.g. with a smaller "
                              "learning rate)")
    statistics, block_size, permutations = check_statistics(statistics, block_size, permutations)
    if statistics == "block" and method not in LASSO:
        raise PaperpruneError(f"statistics='block' applies to the lasso criteria ({', '.join(LASSO)}); "
                              f"{method!r} computes no HSIC statistics: leave statistics at 'exact'")
    criterion = create_criterion(method, seed=seed, gamma_ratio=gamma_ratio, nonnegative=nonnegative,
                                 structure=structure, response=response, rho=rho, knn=knn,
                                 max_iter=max_iter, statistics=statistics, block_size=block_size,
                                 permutations=permutations)
    check_options(dict(method=method, rho=rho, knn=knn, gamma_ratio=gamma_ratio, nonnegative=nonnegative,
                       structure=structure, response=response, max_iter=max_iter, statistics=statistics))
    flops_reduction = check_budget(flops_reduction, latency_reduction, latency_mode, latency_batch_size, omega,
                                   latency_rounding)
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    data = check_data(model, data, passes=2 if adapt_bn else 1)
    layers, classifier, num_classes, data = model_parts(model, layers, classifier, data, input_size, num_classes)
    if statistics == "block":
        check_block_samples(samples_per_class * num_classes, block_size)
    timings = {}
    was_training = model.training
    model = copy.deepcopy(model).to(device).eval()

    start = time.perf_counter()
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    images, labels = gather_calibration(data, num_classes, samples_per_class, device,
                                        all_classes=method not in ("random", "l1", "hrank"),
                                        in_channels=None if first_conv is None else first_conv.in_channels)
    drawn = torch.bincount(labels.cpu(), minlength=num_classes).tolist()
    if min(drawn) < samples_per_class:
        warnings.warn(f"samples_per_class={samples_per_class}, but the data held only {min(drawn)} images of its "
                      f"smallest class: calibrated on {len(labels)} images ({min(drawn)} to {max(drawn)} per class; "
                      "report.images_per_class)", stacklevel=2)
    input_size = tuple(input_size) if input_size is not None else tuple(images.shape[1:])
    criterion.prepare(model, layers, Calibration(images, labels, num_classes, taxonomy or {}, classifier))
    timings["statistics_s"] = time.perf_counter() - start

    start = time.perf_counter()
    predictor = MacsPredictor(model, layers, input_size)
    latency = multiples = None
    if latency_reduction is not None:
        latency = LatencyModel.build(model, layers, input_size, batch_size=latency_batch_size, mode=latency_mode,
                                     device=device, progress=progress)
        multiples = latency.multiples() if latency_rounding else None
        unpruned = copy.deepcopy(model)  # the surgery below cuts `model` in place
        timings["latency_table_s"] = time.perf_counter() - start
    budgeted = allocate(criterion, allocation)

    def select(target, tol=tolerance):
        return select_channels(budgeted, predictor, target, cost=latency, round_to=multiples, omega=omega,
                               tolerance=tol, progress=progress,
                               target_name="flops_reduction" if latency is None else "latency_reduction")

    def select_predicted(asked):  # a calibration step: as near the asked prediction as the kept sets allow
        try:
            return select(asked, min(tolerance, PREDICTED_TOLERANCE))
        except TargetMissed:
            return select(asked)

    steps = None
    if latency is None:
        selection = select(flops_reduction)
    else:  # predicted, then corrected by measuring the pruned candidates (paperprune.latency.calibrate)
        selection, steps = calibrate(select_predicted, lambda s: prune_channels(copy.deepcopy(unpruned), layers, s.keep,
                                                                      input_size),
                                     lambda candidate: latency.measure_side_by_side(unpruned, candidate),
                                     float(latency_reduction))
    timings["selection_s"] = time.perf_counter() - start - timings.get("latency_table_s", 0.0)

    start = time.perf_counter()
    before = {layer.name: unit_width(model.get_submodule(layer.conv)) for layer in layers}
    pruned = prune_channels(model, layers, selection.keep, input_size)
    timings["surgery_s"] = time.perf_counter() - start
    macs, params = count_flops_params(pruned, input_size)
    if macs != selection.macs or params != selection.params:
        raise RuntimeError(f"internal error: the pruned model has {macs} MACs / {params} params but the budget "
                           f"rule predicted {selection.macs} / {selection.params}")
    if adapt_bn:
        from .features import adapt_batchnorm

        start = time.perf_counter()
        adapt_batchnorm(pruned, data, adapt_bn, device)
        timings["adapt_bn_s"] = time.perf_counter() - start
    record = None if latency is None else latency_record(latency, selection, latency_reduction, steps, multiples)
    pruned.train(was_training)
    report = PruneReport(
        method=method, flops_reduction_target=None if flops_reduction is None else float(flops_reduction),
        level=float(selection.level),
        criterion=budgeted.describe(selection.level),
        layers=[{"name": n, "width_before": before[n], "width_after": selection.widths[n],
                 "kept": [int(i) for i in selection.keep[n]]} for n in before],
        macs_before=selection.base_macs, macs_after=macs, params_before=selection.base_params, params_after=params,
        samples_per_class=samples_per_class, num_calibration=int(labels.numel()), budget_steps=selection.steps,
        timings=timings, latency=record, adapted_bn_images=adapt_bn, allocation=allocation,
        images_per_class=drawn)
    return pruned, report
