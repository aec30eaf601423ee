"""Prunable channel groups of any CNN, found through Torch-Pruning's DependencyGraph.

METHOD.md section 2 ("Prunable layers") names the lineage's layers for the six paper
models; this module finds the same kind of width in a network nobody listed. The coupling of
channels (BatchNorms, depthwise convs, squeeze-excitation gates, consumers, concatenations,
residual adds) comes from Torch-Pruning's DependencyGraph (Fang et al., DepGraph, CVPR
2023); nothing here tracks dependencies itself. For every convolution but the depthwise ones
the group of removing its output channels is classified (`classify_group`):

- `inner`: the channels reach only BatchNorms, element-wise ops, depthwise convs (pruned
  with the conv that feeds them) and the input channels of their consumers; an output tie
  through a multiplication (a squeeze-excitation gate) stays inside the group. Prunable by
  default: these are the widths the lineage prunes.
- `residual`: the width is added to another conv's output (a residual add): kept.
- `coupled`: an MLP's hidden features that reach more than activations and the next linear
  layers (below): kept.
- `concat`: the channels are concatenated with others (DenseNet, Inception outputs): kept
  by default, as the lineage keeps them for torchvision-style Inception and DenseNet.
- `grouped`: a grouped (not depthwise) conv (RegNet's, ResNeXt's) reads them, or writes them.
  It can only lose the same number of input (output) channels in each of its groups, so the
  layer is kept in `channel_groups` equal parts: the budget rule keeps as many channels in every
  part, the criterion choosing which (`paperprune.select`), and the surgery cuts each part of the
  grouped conv's weight by its own kept channels. Prunable by default when the grouped conv
  reads exactly the layer's channels, in order; otherwise the layer is left out (a grouped conv
  after a concatenation makes the group 'concat', and surgery refuses it by `channel_groups`).
  A width written by a grouped conv and read by an ordinary one (the ResNeXt bottleneck's middle
  width) is pruned as its own layer, in the writer's groups, beside the width the writer reads.

The hidden width of an MLP is found the same way: for every linear layer applied to tokens
(N, L, C) or channels-last maps (N, H, W, C) whose output features pass one or more channel-wise
activations into linear layers reading exactly them (`_mlp_candidate`), the group of removing
its output features is built. It is `inner` when it holds nothing but the activations, the next
linear layers' input features and the reshapes of applying them to tokens; `coupled` (kept) when
anything else takes part (a LayerNorm over the features, a split into attention heads, a
flatten); residual streams stay whole as for convs. A classifier head's hidden layers, on (N, C)
vectors, are not considered. The layer's `conv` is then that linear layer, its channels last
(`channel_axis`).

Each prunable group becomes a `PrunableLayer`: `conv` the group's root conv, `observe` (and
`activation`) the point where the channels are as the next layer consumes them (after BN,
the non-linearity, a depthwise conv and a gate), `consumer` the first conv or linear layer
that reads them there. The observation point follows the graph from the root conv through
BatchNorms, activations, depthwise convs and gates; when the last tensor is made by a
module that runs once per forward, that module is observed; when it is made by a reused
module (torchvision's BasicBlock reuses `self.relu`) or by a functional call (`F.relu`), the
module before it is observed and the activation re-applied (`PrunableLayer.activation`).
"""
from __future__ import annotations

import math
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping as _tp_index_mapping

from .models import PrunableLayer
from .utils import PaperpruneError

__all__ = ["FUNCTIONAL", "KINDS", "Discovery", "channel_axis", "channel_groups", "check_input_size",
           "classify_group", "dependency_graph", "discover", "example_input", "tolerant_concat_mapping",
           "unit_width"]

KINDS = ("inner", "concat", "grouped", "residual", "coupled")

_CONV = nn.modules.conv._ConvNd
_BN = nn.modules.batchnorm._BatchNorm
_OUT_FNS = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)

#: activations re-applied by name when they are functional calls (grad_fn name -> function)
FUNCTIONAL = {"ReluBackward0": "relu", "SiluBackward0": "silu", "HardswishBackward0": "hardswish",
              "GeluBackward0": "gelu", "SigmoidBackward0": "sigmoid", "TanhBackward0": "tanh",
              "HardsigmoidBackward0": "hardsigmoid", "MishBackward0": "mish"}
#: channel-wise unary ops the observation walk passes through (their parameters, if any, live in a module)
_UNARY = set(FUNCTIONAL) | {"HardtanhBackward0", "LeakyReluBackward0", "EluBackward0", "PreluKernelBackward0",
                             "SoftplusBackward0"}


def unit_width(module: nn.Module) -> int:
    """The prunable width of a layer's root module: a conv's output channels, a linear layer's output features."""
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def channel_axis(module: nn.Module) -> int:
    """Where the root module puts its channels in its output: 1 for a conv (N, C, ...), -1 for a linear
    layer (N, ..., C): tokens (N, L, C) or channels-last maps (N, H, W, C)."""
    return -1 if isinstance(module, nn.Linear) else 1


def check_input_size(input_size) -> tuple[int, ...]:
    """`input_size` as a (C, H, W) tuple of positive ints, or a PaperpruneError naming it."""
    try:
        size = tuple(int(s) for s in input_size)
    except (TypeError, ValueError):
        raise PaperpruneError(f"input_size={input_size!r} is not a shape; pass (C, H, W), e.g. (3, 32, 32)") from None
    if len(size) != 3 or min(size) < 1:
        raise PaperpruneError(f"input_size={input_size!r} must be three positive ints (C, H, W), e.g. (3, 32, 32)")
    return size


def example_input(model: nn.Module, input_size) -> torch.Tensor:
    """A zero batch of one image of `input_size` (C, H, W), in the dtype and on the device of the model's
    parameters: what tracing a model runs on."""
    size = check_input_size(input_size)
    p = next(model.parameters(), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.get_default_dtype()
    device = p.device if p is not None else torch.device("cpu")
    return torch.zeros(1, *size, dtype=dtype, device=device)


def _is_depthwise(module) -> bool:
    return isinstance(module, _CONV) and module.groups > 1 and module.groups == module.in_channels == module.out_channels


def _op(node) -> str:
    return node.grad_fn.name() if node.grad_fn is not None else ""


def classify_group(group, root: nn.Module, names: dict) -> tuple[str, str | None]:
    """(kind, the module that causes it) of a Torch-Pruning group rooted at conv `root`'s output channels.

    Kinds, most binding first: 'residual' (another conv's or a parameter's output channels
    are tied through an addition), 'concat' (a concatenation carries them), 'grouped' (a
    grouped, non-depthwise conv consumes them), else 'inner'.
    """
    ties, grouped, concat, adds = [], None, None, False
    for dep, _ in group:
        node, target = dep.target, dep.target.module
        if target is root:
            continue
        if node.type == tp.ops.OPTYPE.PARAMETER or isinstance(target, nn.Parameter):
            return "residual", names.get(target, node.name)
        if node.type == tp.ops.OPTYPE.CONCAT:
            concat = concat or node.name
        if node.type == tp.ops.OPTYPE.ELEMENTWISE and _op(node).startswith(("AddBackward", "SubBackward")):
            adds = True
        if isinstance(target, (_CONV, nn.Linear)) and not _is_depthwise(target):
            if dep.handler in _OUT_FNS:
                ties.append(names.get(target, node.name))
            elif isinstance(target, _CONV) and target.groups > 1:
                grouped = grouped or names.get(target, node.name)
    if ties and adds:
        return "residual", ties[0]
    if concat:
        return "concat", concat
    if grouped:
        return "grouped", grouped
    if isinstance(root, _CONV) and root.groups > 1 and not _is_depthwise(root):
        return "grouped", names.get(root)
    return "inner", None


def channel_groups(group, root: nn.Module, names: dict) -> int:
    """In how many equal parts conv `root`'s output channels must be kept (1 if no grouped conv reads or
    writes them; `root`'s own groups when it is a grouped conv).

    A grouped, non-depthwise conv with G groups that reads exactly `root`'s channels, in order,
    splits them into G contiguous parts; every part must keep as many channels (any of them:
    each part of the conv's weight is cut by its own). Several such readers: the least common
    multiple. A grouped conv reading the channels shifted or among others is refused: which of
    its groups a channel falls in is then not this layer's to decide.
    """
    parts = root.groups if isinstance(root, _CONV) and root.groups > 1 and not _is_depthwise(root) else 1
    for item in group.items:
        module = item.dep.target.module
        if module is root or item.dep.handler in _OUT_FNS or not isinstance(module, _CONV) \
                or module.groups == 1 or _is_depthwise(module):
            continue
        if module.in_channels != root.out_channels or list(item.idxs) != list(item.root_idxs):
            raise PaperpruneError(
                f"layer {names.get(root, '?')!r}: the grouped convolution {names.get(module, '?')!r} (groups="
                f"{module.groups}) reads its {root.out_channels} channels among {module.in_channels} of its inputs, "
                "so equal numbers per group cannot be kept by this layer alone. Drop it from layers, or prune this "
                "model with Torch-Pruning's MetaPruner and paperprune.tp.Importance, which keeps groups aligned.")
        parts = math.lcm(parts, module.groups)
    return parts


@dataclass
class Discovery:
    """What `discover` found: the prunable layers, the classifier, and every conv left out with its kind."""

    layers: list[PrunableLayer]
    classifier: str | None
    skipped: dict[str, tuple[str, str | None]]

    def describe(self) -> str:
        counts = {k: sum(1 for kind, _ in self.skipped.values() if kind == k) for k in KINDS}
        kept = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        return f"{len(self.layers)} prunable layers; left out: {kept or 'none'}; classifier {self.classifier!r}"


@contextmanager
def tolerant_concat_mapping():
    """Let Torch-Pruning leave a concatenation of inputs of unknown width unmapped (around building a
    DependencyGraph and every `get_pruning_group`, which redoes the index mapping).

    Torch-Pruning 1.6's `update_concat_index_mapping` adds up its inputs' inferred widths before it
    checks them for None, its answer when the inference gives up (a depth limit of 500 steps, which
    Swin-S's and Swin-B's 18-block stage exceed): a TypeError for the whole trace. The function's
    next lines return without an index mapping when a width is None; this makes the sum's failure
    take the same return. Every other error is raised; the original is restored on exit.
    """
    original = _tp_index_mapping.update_concat_index_mapping

    def tolerant(graph, node):
        try:
            return original(graph, node)
        except TypeError as e:
            if "NoneType" not in str(e):
                raise

    _tp_index_mapping.update_concat_index_mapping = tolerant
    try:
        yield
    finally:
        _tp_index_mapping.update_concat_index_mapping = original


def dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's DependencyGraph of `model` traced on `example` (discovery and surgery both need it),
    or a PaperpruneError naming what failed: a wrong input size, or a graph beyond Torch-Pruning's tracer,
    which no `layers=` can work around."""
    try:
        with torch.enable_grad(), tolerant_concat_mapping():
            return tp.DependencyGraph().build_dependency(model, example_inputs=(example,), verbose=False)
    except PaperpruneError:
        raise
    except Exception as e:
        raise PaperpruneError(
            f"Torch-Pruning could not trace {type(model).__name__} on an input of shape {tuple(example.shape)} "
            f"({type(e).__name__}: {e}). Check input_size; if it is right, this network's graph is beyond "
            "Torch-Pruning's tracer, which both discovery and paperprune's surgery need, so paperprune cannot "
            "prune it (layers= does not help).") from None


class _Trace:
    """One Torch-Pruning trace of `model`, plus which module produced each traced tensor and how often it ran."""

    def __init__(self, model: nn.Module, example: torch.Tensor):
        self.names = {m: n for n, m in model.named_modules()}
        self.producers: dict = {}
        self.calls: dict[nn.Module, int] = {}
        self.order: list[nn.Module] = []
        self.dims: dict[nn.Module, int] = {}

        def record(module, inputs, output):
            self.calls[module] = self.calls.get(module, 0) + 1
            if inputs and torch.is_tensor(inputs[0]):
                self.dims.setdefault(module, inputs[0].dim())
            if module not in self.order:
                self.order.append(module)
            if torch.is_tensor(output) and output.grad_fn is not None:
                self.producers.setdefault(output.grad_fn, []).append(module)

        self.output_shape: tuple[int, ...] = ()

        def output(module, inputs, out):
            self.output_shape = tuple(out.shape) if torch.is_tensor(out) else ()

        hooks = [m.register_forward_hook(record) for m in model.modules() if m is not model]
        hooks.append(model.register_forward_hook(output))
        modes = {m: m.training for m in model.modules()}
        try:
            self.dg = dependency_graph(model, example)
        finally:
            for h in hooks:
                h.remove()
            for m, training in modes.items():
                m.train(training)
        self.node_of = {node.grad_fn: node for node in self.dg.module2node.values() if node.grad_fn is not None}

    def once(self, node) -> str | None:
        """A module that returned `node`'s tensor and ran once per forward (innermost first)."""
        if isinstance(node.module, nn.Module) and node.module in self.names and self.calls.get(node.module) == 1:
            return self.names[node.module]
        for module in self.producers.get(node.grad_fn, ()):
            if self.calls.get(module) == 1:
                return self.names[module]
        return None


def _channelwise(node, members) -> bool:
    """Is `node` a channel-wise step of the group (BN, unary activation, depthwise conv, gate)?"""
    if node not in members:
        return False
    module = node.module
    if isinstance(module, _BN) or _is_depthwise(module):
        return True
    return node.type == tp.ops.OPTYPE.ELEMENTWISE and (_op(node) in _UNARY or _op(node).startswith("MulBackward"))


def _reaches(start, goal, limit: int = 64) -> bool:
    """Does a short path lead from `start` to `goal` (a gate's side branch back to its product)?"""
    seen, todo = {start}, deque([start])
    while todo and len(seen) < limit:
        node = todo.popleft()
        if node is goal:
            return True
        for out in node.outputs:
            if out not in seen:
                seen.add(out)
                todo.append(out)
    return False


def _walk(root, members) -> list:
    """The chain of channel-wise nodes from the root conv to where the channels are consumed."""
    chain = [root]
    while True:
        outs = list(dict.fromkeys(chain[-1].outputs))
        nxt = None
        if len(outs) == 1 and _channelwise(outs[0], members):
            nxt = outs[0]
            if _op(nxt).startswith("MulBackward") and len(set(nxt.inputs)) > 1:
                nxt = None  # a product with a tensor that is not gated by this chain
        elif len(outs) == 2:  # a gate: x * g(x), e.g. squeeze-excitation
            muls = [o for o in outs if _op(o).startswith("MulBackward") and o in members]
            if len(muls) == 1:
                side = outs[1 - outs.index(muls[0])]
                if _reaches(side, muls[0]):
                    nxt = muls[0]
        if nxt is None or nxt in chain:
            return chain
        chain.append(nxt)


def _observation(trace: _Trace, name: str, chain) -> tuple[str, str | None]:
    """(observe, activation) for the last tensor of `chain` (see the module docstring)."""
    last = chain[-1]
    observe = trace.once(last)
    if observe is not None:
        return observe, None
    before = trace.once(chain[-2]) if len(chain) > 1 else None
    reused = [m for m in trace.producers.get(last.grad_fn, ()) if m in trace.names]
    if before is not None and reused:
        return before, trace.names[reused[0]]
    if before is not None and _op(last) in FUNCTIONAL:
        return before, "torch.nn.functional." + FUNCTIONAL[_op(last)]
    raise PaperpruneError(
        f"layer {name!r}: its channels are last transformed by {_op(last) or last.name}, which is neither a module "
        "that runs once nor a functional activation paperprune can re-apply; make that activation an nn.Module "
        "of its own, or pass layers={conv: observe, ...} to prune")


def _consumer(trace: _Trace, start, consumers: set) -> str | None:
    """The first conv/linear reading the group's channels, breadth-first from the observation point."""
    seen, todo = {start}, deque([start])
    while todo:
        node = todo.popleft()
        found = [o.module for o in node.outputs if o.module in consumers]
        if found:
            return trace.names[min(found, key=lambda m: trace.order.index(m) if m in trace.order else 1 << 30)]
        for out in node.outputs:
            if out not in seen:
                seen.add(out)
                todo.append(out)
    return None


def _classifier(trace: _Trace) -> str | None:
    """The layer producing the logits: breadth-first back from the model's output, the last nn.Linear,
    or a conv whose channels are the K logits (a conv classifier before global pooling, as SqueezeNet's)."""
    outputs = [n for n in trace.dg.module2node.values() if not n.outputs]
    seen, todo = set(outputs), deque(outputs)
    while todo:
        node = todo.popleft()
        if isinstance(node.module, nn.Linear) and node.module in trace.names:
            return trace.names[node.module]
        if isinstance(node.module, _CONV):
            logits = trace.output_shape[-1] if len(trace.output_shape) == 2 else None
            ok = node.module.out_channels == logits and node.module in trace.names
            return trace.names[node.module] if ok else None
        for inp in node.inputs:
            if inp not in seen:
                seen.add(inp)
                todo.append(inp)
    return None


def discover(model: nn.Module, input_size, *, include=("inner", "grouped")) -> Discovery:
    """The prunable layers of `model` (any CNN taking one (B, C, H, W) tensor, MLP hidden widths
    included) and its classifier.

    `include` lists the group kinds to prune (module docstring): the default is the lineage's
    convention, inner widths, those read by grouped convs included (kept in equal parts per
    group, `channel_groups`); add 'concat' to prune concatenated widths too. Residual widths are
    never listed. Eval mode and a batch of one are used for tracing; the model's modes are restored.
    """
    if isinstance(include, str):
        raise PaperpruneError(f"include={include!r} is one string; pass a tuple of kinds, e.g. include=({include!r},)")
    unknown = set(include) - set(KINDS[:3])
    if unknown:
        raise PaperpruneError(f"include={tuple(include)!r}: unknown kinds {sorted(unknown)}; choose from "
                              f"{KINDS[:3]} (residual widths are never pruned, METHOD.md section 2)")
    trace = _Trace(model, example_input(model, input_size))
    classifier = _classifier(trace)
    layers, skipped, covered = [], {}, set()
    with tolerant_concat_mapping():
        for module in trace.order:
            name = trace.names[module]
            if module not in trace.dg.module2node or module in covered or name == classifier:
                continue
            if isinstance(module, _CONV) and not _is_depthwise(module):  # depthwise convs, gates: with their feeder
                layer, kind, cause = _conv_layer(trace, module, include, covered)
            elif isinstance(module, nn.Linear) and trace.dims.get(module, 2) > 2 and _mlp_candidate(trace, module):
                layer, kind, cause = _linear_layer(trace, module, include, covered)
            else:
                continue
            if layer is None:
                skipped[name] = (kind, cause)
            else:
                layers.append(layer)
    return Discovery(layers=layers, classifier=classifier, skipped=skipped)


def _conv_layer(trace: _Trace, conv: nn.Module, include, covered: set):
    """(layer or None, kind, cause) of the group removing `conv`'s output channels."""
    name = trace.names[conv]
    stream = _token_stream(trace.dg.module2node[conv])
    if stream is not None:
        return None, "residual", stream
    group = trace.dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
    covered |= {dep.target.module for dep, _ in group if dep.handler in _OUT_FNS}
    kind, cause = classify_group(group, conv, trace.names)
    if kind not in include:
        return None, kind, cause
    try:
        channel_groups(group, conv, trace.names)
    except PaperpruneError:  # a grouped conv reads them among others: the parts are not this layer's
        return None, kind, cause
    members = {dep.target for dep, _ in group}
    chain = _walk(trace.dg.module2node[conv], members)
    return _layer(trace, name, group, chain), kind, cause


#: autograd steps that change a tensor's layout, not its values (channels to tokens and back)
_LAYOUT = {"PermuteBackward0", "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0",
           "TransposeBackward0", "CloneBackward0", "FlattenBackward0"}


def _token_stream(start, limit: int = 64) -> str | None:
    """The addition that makes `start`'s channels a transformer's residual stream, if any: following the
    graph forward past no conv, linear layer or concatenation, a layout change (channels to tokens) and
    then an addition of two tensors. None if there is none within `limit` nodes.

    A patch-embedding conv (Swin's, ConvNeXt's stem) writes the residual stream; its Torch-Pruning group
    spans every block, and building it expands index lists through each flatten mapping of the stream
    (past 12 GiB for Swin V2). Such a conv is residual, so it is classified by this walk instead.
    """
    seen, todo = {start}, deque([(start, False)])
    while todo and len(seen) < limit:
        node, reshaped = todo.popleft()
        for out in node.outputs:
            module = out.module
            if out in seen or out.type == tp.ops.OPTYPE.CONCAT or isinstance(module, nn.Linear) \
                    or (isinstance(module, _CONV) and not _is_depthwise(module)):
                continue
            if _op(out).startswith("AddBackward") and len(set(out.inputs)) > 1:
                if reshaped:
                    return out.name
                continue  # an addition before any layout change: Torch-Pruning's group decides
            seen.add(out)
            todo.append((out, reshaped or out.type == tp.ops.OPTYPE.RESHAPE or _op(out) in _LAYOUT))
    return None


def _linear_layer(trace: _Trace, linear: nn.Linear, include, covered: set):
    """(layer or None, kind, cause) of the group removing the output features of `linear`, a linear layer
    applied to tokens or channels-last maps (an MLP's first layer): 'inner' when the features pass only
    channel-wise activations on their way to the input features of linear layers of the same width."""
    name = trace.names[linear]
    group = trace.dg.get_pruning_group(linear, tp.prune_linear_out_channels, idxs=list(range(linear.out_features)))
    covered |= {dep.target.module for dep, _ in group if dep.handler in _OUT_FNS}
    kind, cause = classify_group(group, linear, trace.names)
    members = {dep.target for dep, _ in group}
    chain = _walk(trace.dg.module2node[linear], members)
    if kind == "inner":
        kind, cause = _mlp_kind(group, linear, chain, trace.names)
    if kind not in include or kind == "grouped":
        return None, kind, cause
    return _layer(trace, name, group, chain), kind, cause


#: the autograd steps of a linear layer applied to a (N, ..., C) tensor (flatten, matrix product, reshape)
_LINEAR_STEPS = {"AddmmBackward0", "MmBackward0", "TBackward0", "ViewBackward0", "UnsafeViewBackward0",
                 "ReshapeAliasBackward0", "MatmulBackward0"}


def _mlp_candidate(trace: _Trace, linear: nn.Linear, limit: int = 16) -> bool:
    """Does `linear`'s output pass one or more channel-wise activations, and then only the steps of
    applying a linear layer, into linear layers reading exactly its features? (An MLP's first layer: its
    group is worth building; a residual stream's writers, whose groups span whole stages, are not.)"""
    node = trace.dg.module2node[linear]
    outs, activations = list(dict.fromkeys(node.outputs)), 0
    while len(outs) == 1 and _op(outs[0]) in _UNARY:
        node, activations = outs[0], activations + 1
        outs = list(dict.fromkeys(node.outputs))
    todo, seen, readers = deque(outs), set(outs), 0
    while todo and len(seen) < limit:
        node = todo.popleft()
        module = node.module
        if isinstance(module, nn.Linear):
            if module.in_features != linear.out_features:
                return False
            readers += 1
            continue
        if node.type != tp.ops.OPTYPE.RESHAPE and _op(node) not in _LINEAR_STEPS:
            return False
        for out in node.outputs:
            if out not in seen:
                seen.add(out)
                todo.append(out)
    return activations > 0 and readers > 0 and not todo


def _mlp_kind(group, root: nn.Linear, chain, names: dict) -> tuple[str, str | None]:
    """'inner' if every member of `root`'s group is the root, a channel-wise step of `chain`, a linear
    layer reading exactly these features, or a step of applying such a layer to tokens; else ('coupled',
    the first other member): a LayerNorm over the features, a split into attention heads, a flatten, ..."""
    for dep, _ in group:
        node, target = dep.target, dep.target.module
        if target is root or node in chain:
            continue
        if isinstance(target, nn.Linear) and dep.handler is tp.prune_linear_in_channels \
                and target.in_features == root.out_features:
            continue
        if node.type == tp.ops.OPTYPE.RESHAPE or _op(node) in _LINEAR_STEPS:
            continue
        return "coupled", names.get(target, f"{node.name}")
    return "inner", None


def _layer(trace: _Trace, name: str, group, chain) -> PrunableLayer:
    """The PrunableLayer of a group: observed at the end of its channel-wise chain, read by its first consumer."""
    observe, activation = _observation(trace, name, chain)
    consumers = {dep.target.module for dep, _ in group if dep.handler not in _OUT_FNS
                 and isinstance(dep.target.module, (_CONV, nn.Linear)) and not _is_depthwise(dep.target.module)}
    return PrunableLayer(name=name, conv=name, observe=observe, consumer=_consumer(trace, chain[-1], consumers),
                         activation=activation)
