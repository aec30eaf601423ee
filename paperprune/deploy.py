"""Inference preparation, applied identically to a base and a pruned model so their latencies compare.

`prepare_for_inference(model, example_input)` returns an eval-mode copy with every BatchNorm
folded into the conv or linear layer before it (`fold_batchnorm`), in channels_last memory
format, compiled by torch.compile (inductor, weights frozen into the graph) for inputs shaped
like `example_input`. The input model is left untouched.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import logging
import shutil

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .utils import PaperpruneError

__all__ = ["DEPLOY_MODE", "check_compiler", "fold_batchnorm", "prepare_for_inference"]

#: The deployment path `prepare_for_inference` applies, as recorded next to deployed latencies.
DEPLOY_MODE = "fold-bn+channels_last+inductor-freezing"

_FOLDABLE = ((nn.Conv2d, nn.BatchNorm2d, fuse_conv_bn_eval), (nn.Linear, nn.BatchNorm1d, fuse_linear_bn_eval))


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` in which each BatchNorm whose input is the output of a Conv2d
    (BatchNorm1d: a Linear) used by nothing else is folded into that layer and replaced by nn.Identity.

    Other BatchNorms (e.g. DenseNet's pre-activation ones) are kept. The module structure and
    names stay as they were. Exact up to floating-point rounding.
    """
    if not isinstance(model, nn.Module):
        raise PaperpruneError(f"fold_batchnorm needs a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as e:  # noqa: BLE001 - any tracing failure is the same user-facing limitation
        raise PaperpruneError(f"cannot fold BatchNorm: torch.fx could not trace {type(model).__name__} "
                              f"({type(e).__name__}: {e})") from None
    modules = dict(model.named_modules())
    calls = collections.Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
            continue
        prev = node.args[0]
        if prev.op != "call_module" or len(prev.users) != 1 or calls[prev.target] != 1 or calls[node.target] != 1:
            continue
        layer, bn = modules[prev.target], modules[node.target]
        for layer_type, bn_type, fuse in _FOLDABLE:
            if type(layer) is layer_type and type(bn) is bn_type:
                if bn.running_mean is None:
                    raise PaperpruneError(f"cannot fold {node.target}: it has no running statistics "
                                          "(track_running_stats=False)")
                _set_submodule(model, prev.target, fuse(layer, bn))
                _set_submodule(model, node.target, nn.Identity())
    return model


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def check_compiler() -> None:
    """torch.compile's CPU backend (inductor) builds C++ kernels: fail early, with the fix, when the
    compiler it would use is missing."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        compiler = get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - inductor's own search failed; the fix is the same
        raise PaperpruneError(f"no C++ compiler for torch.compile ({e}); install one (apt-get install g++) or "
                              "skip the deployed latency (--no-deployed-latency)") from None
    if shutil.which(compiler.split()[0]) is None:
        raise PaperpruneError(f"torch.compile needs the C++ compiler {compiler!r}, which is not on PATH; install it "
                              "(apt-get install g++) or skip the deployed latency (--no-deployed-latency)")


@contextlib.contextmanager
def _quiet_torch_logs():
    """Keep torch.compile's own log (dynamo's and inductor's tracebacks of a failure) out of the user's
    terminal: the failure reaches the user as one PaperpruneError."""
    loggers = [logging.getLogger(name) for name in ("torch._dynamo", "torch._inductor", "torch.fx",
                                                    "torch._subclasses", "torch")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def prepare_for_inference(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """`fold_batchnorm(model)` in channels_last memory format, compiled by torch.compile (inductor,
    one graph, static shapes, parameters frozen into the graph as constants) for `example_input`.

    Compiles now, by one forward of `example_input` under torch.inference_mode, so a failure raises
    here. Call the result under torch.inference_mode with inputs of that shape, dtype and device
    (anything else compiles again); later changes to the weights of `model` are not seen.
    """
    from torch._inductor import config as inductor_config

    from .features import check_images, first_conv

    if first_conv(model) is not None:  # a network on images; a latency unit may be a lone linear layer
        check_images(model, example_input, "example_input")
    elif not torch.is_tensor(example_input) or not example_input.is_floating_point():
        raise PaperpruneError(f"example_input must be a float tensor of the model's input; got "
                              f"{getattr(example_input, 'dtype', type(example_input).__name__)}")
    model = fold_batchnorm(model)
    devices = {p.device for p in model.parameters()} - {example_input.device}
    if devices:
        raise PaperpruneError(f"example_input is on {example_input.device} but the model's parameters are on "
                              f"{', '.join(sorted(map(str, devices)))}; move both to the device you will run on")
    model = model.to(memory_format=torch.channels_last)
    # isolate_recompiles (present in torch 2.14): each prepared model has its own graphs, so dynamo's per-class
    # recompile limit never applies; freezing is read by dynamo as well as by inductor, hence the
    # global patch while compiling (torch.compile(options={"freezing": True}) leaves the weights unfrozen).
    try:
        compiled = torch.compile(model, fullgraph=True, dynamic=False, isolate_recompiles=True)
        with inductor_config.patch(freezing=True), torch.inference_mode(), _quiet_torch_logs():
            compiled(example_input)
    except Exception as e:  # noqa: BLE001 - whatever inductor raises, the user needs the same message
        reason = str(e).strip().split("\n")[0]
        raise PaperpruneError(f"torch.compile (inductor) failed on {type(model).__name__} for an input of shape "
                              f"{tuple(example_input.shape)}: {type(e).__name__}: {reason}") from e
    return compiled
