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
from .ib import check_block_samples, check_statistics
from .lasso import SOLVER_MAX_ITER
from .select import allocate, check_allocation, select_channels
from .utils import PaperpruneError, as_number, resolve_device


@dataclass
class PruneReport:
    """What `prune` did: per-layer widths (and the kept channel indices), MACs and params before and
    after, lam, timings."""

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
        input_size, data = _first_shape(data)
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
    from .options import closest
    from .surgery import _example_input

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
    out = _forward(model, _example_input(model, input_size), {head: lambda m, i, o: seen.append(o)})
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
    from .surgery import _example_input

    example = torch.randn(2, *_example_input(model, input_size).shape[1:], generator=torch.Generator().manual_seed(0))
    example = example.to(_example_input(model, input_size))
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


def _first_shape(data) -> tuple[tuple[int, ...], object]:
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
    """Prune `model` to remove `flops_reduction` of its MACs (default 0.5) with the criterion `method`.

    `data` is any iterable of (images, labels) batches (a DataLoader); a class-balanced
    calibration set of `samples_per_class` per class is drawn from it. The input model is not
    modified: a pruned deep copy is returned with a `PruneReport`. `layers` names the
    prunable layers of a user's own CNN (see `resolve_layers`) and `classifier` its final
    nn.Linear (whose input is the class embedding); the six paper models know theirs, and for
    any other CNN both are found through Torch-Pruning's DependencyGraph (`model_parts`).

    The lasso criteria solve the signed problem unless `nonnegative=True` (the B >= 0
    ablation, METHOD.md section 2); `structure` picks the class tree of sTLP-IB and the class
    graph of sGLP-IB ('embedding' or the dataset's 'taxonomy'), `rho` and `knn` the graph's
    edges (|corr| > rho, or each class's knn most correlated classes); `response="class+output"`
    adds APIB's response (the consuming layer's output) to the class-wise criteria's class kernels.
    `max_iter` bounds the lasso solver's iterations per solve; a solve that stops there is named in
    the report's `criterion["unconverged_layers"]` and warned about.

    `latency_reduction` budgets latency instead of MACs (not both): the same level is bisected
    against a `paperprune.latency.LatencyModel` measured on `device` at `latency_batch_size` in
    `latency_mode` ("eager" or "deployed"), then corrected by measuring each pruned candidate beside
    the unpruned model (`paperprune.latency.calibrate`: at most 3 candidates, stopping within 0.02 of
    the target; each step in `report.latency["steps"]`, a warning naming a miss after the last);
    `latency_rounding` rounds kept widths up to the multiples the table shows to be nearly free.

    `statistics` is how the lasso criteria estimate Q and R: "exact" (METHOD.md section 2, the
    default, O(N^2) per channel) or "block" (section 2b: blocks of `block_size` samples, default
    20, over `permutations` seeded random partitions, default 3, in one streamed forward pass;
    O(N B M) per channel and memory of one batch's blocks). Block is the better choice when N is
    large: many classes, or many calibration images per class (docs/usage-statistics.md).
    `block_size` must divide the N = classes x samples_per_class calibration samples; block
    options are refused with "exact", and "block" with a criterion that has no statistics.
    `allocation` shares the budget between layers (METHOD.md section 2, "Allocation";
    `paperprune.select`): "global" (default) bisects the criterion's one level across layers, so per-layer ratios fall
    out of the criterion; "uniform" keeps the same fraction of channels in every layer, bisected to
    the target, the criterion's scores choosing which channels (for the lasso criteria, B's row
    norms at the weakest lam).

    `adapt_bn` > 0 re-estimates the pruned model's BatchNorm running statistics on the first
    `adapt_bn` images of `data` (iterated again from its start, so pass a re-iterable loader):
    adaptive BN, which EagleEye (Li et al., ECCV 2020) uses to score pruned candidates; it
    recovers much of the accuracy a cut loses before any fine-tuning (see `paperprune.lab.curves`).
    """
    from .flops import count_flops_params
    from .latency import LatencyModel, calibrate, check_budget, latency_record
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

    def select(target):
        return select_channels(budgeted, predictor, target, cost=latency, round_to=multiples, omega=omega,
                               tolerance=tolerance, progress=progress,
                               target_name="flops_reduction" if latency is None else "latency_reduction")

    steps = None
    if latency is None:
        selection = select(flops_reduction)
    else:  # predicted, then corrected by measuring the pruned candidates (paperprune.latency.calibrate)
        selection, steps = calibrate(select, lambda s: prune_channels(copy.deepcopy(unpruned), layers, s.keep,
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
