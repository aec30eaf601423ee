"""A measured latency model: the whole model's latency for any assignment of prunable widths.

Reconstruction, not from the paper (which budgets MACs only, METHOD.md section 2, "Automatic
budget"); the lookup-table idea is HALP's (Shen et al., NeurIPS 2022).

What is measured. Every conv/linear whose input or output width depends on a prunable layer
(read from `paperprune.surgery.MacsPredictor`'s dependency matrices: its width is affine in
the removed channel counts) is a *unit*: the conv followed by a BatchNorm and a ReLU (a linear
alone), run on its own on an input of the shape it sees in the model at the requested batch
size, in the requested mode ("eager": PyTorch eager; "deployed":
`paperprune.deploy.prepare_for_inference`, so the BatchNorm is folded and the unit compiled).
A unit is timed on a grid of output widths with the input full, and of input widths with the
output full (each grid about `GRID_POINTS` widths at a power-of-two step, each also plus one,
so a cost staircase over channels (oneDNN's blocks of 8 or 16) shows as jumps between paired
points instead of being smeared by the interpolation).
Identical units (same shapes) are timed once. The whole unpruned model is timed once; the
"rest" (everything that does not depend on a prunable width) is that time minus the units'
full-width times. In mode "deployed" the whole model can be faster than its units timed alone
(inductor fuses across them; measured on ResNet-56 here, 145 ms against 157 ms of units): the
rest is then 0 and the units count at scale s = whole / sum of units (else s = 1). An additive
negative rest instead under-predicted every pruned model (mean error -10.8% over 20 random
widths, against -7.7% scaled, recomputed from benchmarks/results/latency-resnet56.json).

The prediction for widths w: rest + s * sum over units of t(in, C_out) * t(C_in, out) / t(C_in,
C_out), each factor interpolated linearly in its grid. This is exact when a unit's cost is a
product of an input and an output factor (e.g. in * ceil16(out)); its errors are that
assumption (VGG's convs have both widths pruned), units timed in isolation instead of inside
the model (cache state, inductor's fusion across units), elementwise work outside units
(residual adds, pools) counted at full width, and timing noise. `LatencyModel.errors`
measures the result against whole-model latencies of models cut to given widths.

Times are the shortest of 15 forwards after 3 warm-up ones. With one torch thread on CPU they are the
calling thread's CPU time (`time.thread_time`), not wall time: on a shared machine other jobs
preempt the thread for milliseconds at a time, which made 5-forward wall-time medians of
millisecond units useless (errors of 50% on a 2-core machine at load 9); CPU time is what the
forward costs on a core of its own. With more threads, or on CUDA, wall time (`clock_name`).
In mode "deployed" a unit's input is channels_last, as it is inside the deployed model.

Memory placement. On a CPU, where a model's weights land in memory changes its speed: a long-running
process hands a fresh copy of a model memory that other tensors freed, mostly in 4 KiB pages, and a
large model then runs slower (TLB misses being the likely cause). Measured side by side with a pruned copy, six fresh
copies of an unpruned VGG-16 from torch's allocator ran in 394-416 ms and measured a 67.6-69.4%
reduction; packed onto memory advised for huge pages, 375-384 ms and 66.2-66.9%; two packed copies
made once and reused, 355-364 ms and 65.1-65.8% (`benchmarks/results/latency-placement.md`): packing
halves the spread and the bias, and does not remove them. So every copy this module measures
(`measure_side_by_side`, `LatencyModel.measure`, a table's units and whole model) has its parameters and
buffers packed into one fresh anonymous mapping advised for huge pages (`_pack_on_huge_pages`; Linux's
madvise, with transparent huge pages in mode "always" or "madvise"). `huge_pages_available` reports
whether the kernel gives them; the table's key records it, and `LatencyModel.build` warns on a CPU
without them.

Side effect of mode "deployed": every compile of the process runs through one dynamo frame
(torch/_dynamo/external_utils.py `inner`), and dynamo refuses a frame's 257th compilation
(`config.accumulated_recompile_limit`, 256; with `fullgraph=True` a FailOnRecompileLimitHit),
even when the compiled modules are gone. A table compiles one module per grid point (about 300
for VGG-16), so `measure_us` calls `torch._dynamo.reset()` after each: every torch.compile'd
function of the process then recompiles on its next call (correct, slower once). Without the
reset the table itself would fail, and so would every later torch.compile of the process
(`tests/test_latency.py::test_deployed_measuring_leaves_torch_compile_usable`).

Tables are cached as JSON under `cache_dir` (default `$PAPERPRUNE_CACHE/latency`, else
`~/.cache/paperprune/latency`), one file per key: the model's structure, input size, device,
batch size, mode, torch threads, clock, library versions and the timing function.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .utils import PaperpruneError, atomic_write_json

__all__ = ["MODES", "LatencyModel", "calibrate", "check_budget", "huge_pages_available", "latency_record",
           "measure_us", "median_interval", "time_forward"]

MODES = ("eager", "deployed")
#: About how many widths each unit's grid holds per dimension.
GRID_POINTS = 8
#: Candidate efficient multiples; `LatencyModel.multiples` picks among them from the table.
MULTIPLES = (2, 4, 8, 16, 32, 64)
#: Rounding up to a multiple is taken when the added channels cost at most this fraction of
#: what channels cost on average in that layer.
FREE_FRACTION = 0.25
TABLE_VERSION = 3


def check_mode(mode) -> str:
    if mode not in MODES:
        raise PaperpruneError(f"latency_mode={mode!r} is not one of {', '.join(map(repr, MODES))}; "
                              "'eager' times PyTorch eager, 'deployed' times paperprune.deploy.prepare_for_inference")
    return mode


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or int(batch_size) < 1:
        raise PaperpruneError(f"latency_batch_size={batch_size!r} must be an integer >= 1 (the batch the latency "
                              "is measured at, e.g. 64)")
    return int(batch_size)


def default_cache_dir() -> Path:
    return Path(os.environ.get("PAPERPRUNE_CACHE", Path.home() / ".cache" / "paperprune")).expanduser() / "latency"


def clock_name(device) -> str:
    """The clock `time_forward` reads: the calling thread's CPU time for single-threaded CPU execution
    (preemption by other jobs on a shared machine does not inflate it), else wall time."""
    return "thread_cpu" if torch.device(device).type == "cpu" and torch.get_num_threads() == 1 else "wall"


#: where Linux says whether (and how) it gives transparent huge pages
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages_available() -> bool | None:
    """Whether memory advised for huge pages gets them: Linux's transparent huge pages in mode "always" or
    "madvise" (True) or "never" (False); None where the setting cannot be read (not Linux). See the module
    docstring, "Memory placement"."""
    try:
        setting = THP_SETTING.read_text()
    except OSError:
        return None
    return "[never]" not in setting


def _pack_on_huge_pages(model: nn.Module) -> nn.Module:
    """Move the CPU parameters and buffers of `model` (in place) into one fresh anonymous mapping advised for
    huge pages, each at a 64-byte boundary (a model on another device is returned as it is); where madvise or
    its MADV_HUGEPAGE is missing, the mapping is plain. The tensors keep the mapping alive."""
    import mmap

    tensors = [t for t in itertools.chain(model.parameters(), model.buffers()) if t.device.type == "cpu"]
    sizes = [-(-t.numel() * t.element_size() // 64) * 64 for t in tensors]
    if not tensors or sum(sizes) == 0:
        return model
    memory = mmap.mmap(-1, sum(sizes), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # shared would be shmem
    if hasattr(memory, "madvise") and hasattr(mmap, "MADV_HUGEPAGE"):
        memory.madvise(mmap.MADV_HUGEPAGE)
    buffer, offset = torch.frombuffer(memory, dtype=torch.uint8), 0
    with torch.no_grad():
        for t, size in zip(tensors, sizes):
            view = buffer[offset:offset + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
            view.copy_(t)
            t.data = view
            offset += size
    return model


def time_forward(module, example: torch.Tensor, *, repeats: int = 15, warmup: int = 3) -> float:
    """Shortest time (microseconds, on the `clock_name` clock) of `repeats` calls `module(example)` under
    inference_mode, after `warmup` calls: other jobs only ever add time."""
    cuda = example.device.type == "cuda"
    clock = time.thread_time if clock_name(example.device) == "thread_cpu" else time.perf_counter
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            start = clock()
            module(example)
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(1e6 * (clock() - start))
    return float(min(times))


def measure_us(module: nn.Module, example: torch.Tensor, mode: str, *, repeats: int = 15, warmup: int = 3) -> float:
    """`time_forward` of `module` (after `prepare_for_inference` for `example` in mode "deployed").
    The default timing function of `LatencyModel`. In mode "deployed" it ends with
    `torch._dynamo.reset()` (module docstring, "Side effect")."""
    from .deploy import prepare_for_inference

    module = module.to(example.device).eval()
    if mode != "deployed":
        return time_forward(module, example, repeats=repeats, warmup=warmup)
    try:
        return time_forward(prepare_for_inference(module, example), example, repeats=repeats, warmup=warmup)
    finally:
        torch._dynamo.reset()  # needed, with a process-wide side effect: see the module docstring


def width_grid(full: int, paired: bool) -> list[int]:
    """About GRID_POINTS widths from 1 to `full` at a power-of-two step; with `paired`, each also plus one."""
    step = 2 ** max(0, math.ceil(math.log2(full / GRID_POINTS))) if full > GRID_POINTS else 1
    widths = {1, full} | set(range(step, full + 1, step))
    if paired:
        widths |= {w + 1 for w in widths if w < full}
    return sorted(widths)


@dataclass(frozen=True)
class Unit:
    """One conv (+BN+ReLU) or linear at the shape it runs at in the model, widths free."""

    kind: str
    in_channels: int
    out_channels: int
    kernel: tuple = ()
    stride: tuple = ()
    padding: tuple = ()
    dilation: tuple = ()
    bias: bool = False
    spatial: tuple = ()

    @property
    def key(self) -> str:
        return json.dumps([self.kind, self.in_channels, self.out_channels, self.kernel, self.stride, self.padding,
                           self.dilation, self.bias, self.spatial])

    def module(self, cin: int, cout: int) -> nn.Module:
        if self.kind == "linear":
            return nn.Linear(cin, cout, bias=self.bias)
        conv = nn.Conv2d(cin, cout, self.kernel, self.stride, self.padding, self.dilation, bias=self.bias)
        return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())

    def example(self, batch_size: int, cin: int, device, mode: str) -> torch.Tensor:
        """A random input; channels_last in mode "deployed", as the unit's input is inside a deployed model."""
        x = torch.randn(batch_size, cin, *self.spatial, device=device)
        return x.contiguous(memory_format=torch.channels_last) if mode == "deployed" and x.dim() == 4 else x


def _units(model: nn.Module, layers, input_size):
    """The varying units (`MacsPredictor.counted()` rows whose widths depend on a prunable layer)."""
    from .surgery import COUNTED, MacsPredictor

    predictor = MacsPredictor(model, layers, input_size)
    shapes, calls = {}, {}
    names = {m: n for n, m in model.named_modules()}

    def record(module, inputs, output):
        shapes.setdefault(names[module], tuple(inputs[0].shape[2:]))
        calls[names[module]] = calls.get(names[module], 0) + 1

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, COUNTED)]
    modes = {m: m.training for m in model.modules()}
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_size, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():
            m.train(training)
    units = []
    for row in predictor.counted():
        if not (row.a_in.any() or row.a_out.any()):
            continue
        m = model.get_submodule(row.name)
        if isinstance(m, nn.Linear):
            unit = Unit("linear", m.in_features, m.out_features, bias=m.bias is not None)
        elif isinstance(m, nn.Conv2d) and m.groups == 1 and isinstance(m.padding, tuple):
            unit = Unit("conv", m.in_channels, m.out_channels, tuple(m.kernel_size), tuple(m.stride),
                        tuple(m.padding), tuple(m.dilation), m.bias is not None, shapes[row.name])
        else:
            raise PaperpruneError(f"the latency model times Conv2d (groups=1, numeric padding) and Linear units; "
                                  f"{row.name!r} is a {m!r} whose width depends on a prunable layer: budget MACs "
                                  "(flops_reduction=) for this model")
        units.append({"name": row.name, "unit": unit, "calls": calls[row.name], "a_in": row.a_in,
                      "a_out": row.a_out, "in0": row.in_channels, "out0": row.out_channels})
    return predictor, units


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return f"cpu {names[0] if names else platform.processor() or platform.machine()} x{os.cpu_count()}"


def _timer_name(timer) -> str:
    return f"{getattr(timer, '__module__', '?')}.{getattr(timer, '__qualname__', type(timer).__qualname__)}"


class LatencyModel:
    """Predicted latency (microseconds) of a model with its prunable layers cut to any widths.

    The cost a latency budget bisects: `predict(widths)` is the whole model's latency at one
    batch size, in one mode, on one device, read from a table of measured units (module
    docstring) in a few small numpy ops. Build it with `LatencyModel.build`, which measures the
    table or loads it from the cache; the constructor only assembles a built table.

    Parameters
    ----------
    table : dict
        The measured table (`build` writes and reads it): `full_us`, the whole unpruned model's
        time; `units`, per distinct unit its time at full width and its curves over input and
        output widths; `key` and `key_hash`, what the table is valid for.
    predictor : paperprune.surgery.MacsPredictor
        The model's prunable layers (names, full widths) and how each width reaches each unit.
    units : list of dict
        The varying units (`_units`): module name, `Unit`, calls per forward, dependency rows.
    device : torch.device or str
        The device the table was measured on (and `measure*` run on).

    Attributes
    ----------
    names, full_widths : list of str, dict of str to int
        The prunable layers and their unpruned widths.
    full_us : float
        The unpruned model's measured latency.
    rest_us, unit_scale : float
        The latency outside the units, and the factor the units count at (1 unless the whole
        model is faster than its units alone; module docstring).

    Returns
    -------
    LatencyModel
        ``latency(widths)`` / ``latency.predict(widths)`` -> float microseconds, with layers
        missing from `widths` at full width; `measure_side_by_side(base, pruned)` measures two
        models as the table would; `errors` compares predictions with measured models.

    Notes
    -----
    Reconstruction, not from the paper, which budgets MACs (METHOD.md section 2c: one global
    level bisected until the cost is within 1% of the target; section 4 for the MACs). A latency
    budget bisects the same level with this model as the cost, then `calibrate` corrects the
    prediction by measuring the pruned candidates. The prediction is exact for units whose cost
    is a product of an input and an output factor; its errors on real hardware are listed in the
    module docstring and measured by `errors`.

    Examples
    --------
    A deterministic stand-in timer (parameters x batch, a product of input and output factors,
    so the prediction is exact) instead of the clock:

    >>> import copy, tempfile, torch
    >>> from torch import nn
    >>> from paperprune.latency import LatencyModel
    >>> from paperprune.pipeline import resolve_layers
    >>> from paperprune.surgery import prune_channels
    >>> model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    ...                       nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    ...                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    >>> layers = resolve_layers(model, {"0": "2", "3": "5"})
    >>> def params_us(module, example, mode):
    ...     return float(sum(p.numel() for p in module.parameters()) * len(example))
    >>> latency = LatencyModel.build(model, layers, (1, 8, 8), batch_size=4, timer=params_us,
    ...                              cache_dir=tempfile.mkdtemp(), progress=False)
    >>> latency.full_widths, latency.key["batch_size"], latency.key["mode"]
    ({'0': 8, '3': 16}, 4, 'eager')
    >>> round(latency.predict({"0": 4, "3": 8}) / latency.full_us, 3)
    0.307
    >>> cut = prune_channels(copy.deepcopy(model), layers, {"0": torch.arange(4), "3": torch.arange(8)}, (1, 8, 8))
    >>> latency.predict({"0": 4, "3": 8}) == params_us(cut, torch.zeros(4, 1, 8, 8), "eager")
    True
    """

    def __init__(self, table: dict, predictor, units: list[dict], device):
        self.table = table
        self.device = torch.device(device)
        self.key = table["key"]
        self.key_hash = table["key_hash"]
        self.names = list(predictor.names)
        self.full_widths = dict(predictor.full_widths)
        self.full_us = float(table["full_us"])
        self._units = units
        self._curves = []
        rest = self.full_us
        for u in units:
            points = table["units"][u["unit"].key]
            full = points["full"]
            curve_in = np.array(points["in"], dtype=float).reshape(-1, 2)
            curve_out = np.array(points["out"], dtype=float).reshape(-1, 2)
            self._curves.append((full, curve_in, curve_out))
            rest -= u["calls"] * full
        #: a whole model faster than its units timed alone (inductor fuses across them) has no work
        #: outside them; the units then count at the whole model's share of their sum
        self.rest_us = max(rest, 0.0)
        self.unit_scale = (self.full_us - self.rest_us) / (self.full_us - rest)

    @classmethod
    def build(cls, model: nn.Module, layers, input_size, *, batch_size: int = 64, mode: str = "eager",
              device=None, timer=None, cache_dir=None, progress: bool = True) -> "LatencyModel":
        """Measure (or load from the cache) the table of `model` on `device` for `batch_size` and `mode`.

        `timer(module, example, mode) -> microseconds` times one forward (default `measure_us`);
        tests inject a deterministic one. `model` is not modified.
        """
        check_mode(mode)
        batch_size = check_batch_size(batch_size)
        timer = timer or measure_us
        device = torch.device(device) if device is not None else next(model.parameters()).device
        model = _copy_to(model, device)
        input_size = tuple(int(s) for s in input_size)
        predictor, units = _units(model, layers, input_size)
        import torchvision

        from .version import __version__
        from .deploy import DEPLOY_MODE

        structure = hashlib.sha256(f"{type(model).__qualname__}|{model!r}|{[(l.name, l.conv) for l in layers]}|"
                                   f"{input_size}|{next(model.parameters()).dtype}".encode()).hexdigest()[:16]
        key = {"structure": structure, "model": type(model).__name__, "input_size": list(input_size),
               "device": _device_name(device), "batch_size": batch_size,
               "mode": DEPLOY_MODE if mode == "deployed" else "eager", "threads": torch.get_num_threads(),
               "torch": torch.__version__, "torchvision": torchvision.__version__, "paperprune": __version__,
               "timer": _timer_name(timer), "clock": clock_name(device), "grid_points": GRID_POINTS,
               "huge_pages": huge_pages_available() if device.type == "cpu" else None, "table_version": TABLE_VERSION}
        if key["huge_pages"] is False and timer is measure_us:
            warnings.warn(f"CPU latency measured without transparent huge pages ({THP_SETTING} says never): where "
                          "a copy of the model lands in memory moves its measured latency more (a VGG-16's measured "
                          "reduction over 1.8 points here, benchmarks/results/latency-placement.md). For steadier "
                          f"measurements allow them: echo madvise | sudo tee {THP_SETTING}", stacklevel=2)
        key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{key['model']}-{key_hash}.json"
        table = _read_table(path, key)
        if table is None:
            table = _measure(model, units, input_size, batch_size, mode, device, timer, progress)
            table.update(key=key, key_hash=key_hash)
            atomic_write_json(path, table)
        table["path"] = str(path)
        return cls(table, predictor, units, device)

    def _check(self, widths: dict) -> np.ndarray:
        unknown = sorted(set(widths) - set(self.names))
        if unknown:
            raise PaperpruneError(f"widths name unknown layers {unknown}")
        removed = []
        for name in self.names:
            w = int(widths.get(name, self.full_widths[name]))
            if not 1 <= w <= self.full_widths[name]:
                raise PaperpruneError(f"width {w} of layer {name!r} is outside [1, {self.full_widths[name]}]")
            removed.append(self.full_widths[name] - w)
        return np.array(removed, dtype=np.int64)

    def predict(self, widths: dict) -> float:
        """Predicted latency in microseconds; layers missing from `widths` are at full width."""
        r = self._check(widths)
        units = 0.0
        for u, (full, curve_in, curve_out) in zip(self._units, self._curves):
            cin, cout = u["in0"] - int(u["a_in"] @ r), u["out0"] - int(u["a_out"] @ r)
            t_in = np.interp(cin, curve_in[:, 0], curve_in[:, 1]) if len(curve_in) else full
            t_out = np.interp(cout, curve_out[:, 0], curve_out[:, 1]) if len(curve_out) else full
            units += u["calls"] * t_in * t_out / full
        return float(self.rest_us + self.unit_scale * units)

    __call__ = predict

    def layer_curve(self, name: str) -> np.ndarray:
        """Predicted latency with layer `name` at widths 1..C and every other layer full."""
        return np.array([self.predict({name: w}) for w in range(1, self.full_widths[name] + 1)])

    def multiples(self) -> dict[str, int]:
        """Per layer, the largest of MULTIPLES (1 if none) such that rounding widths up to it is nearly free.

        For a candidate q, over all widths w the added latency c(ceil_q(w)) - c(w) is compared with
        what the added channels cost at the layer's average per-channel latency; q qualifies when
        that ratio is at most FREE_FRACTION. A staircase of period q in the table gives ~0, a smooth
        cost 1.
        """
        result = {}
        for name in self.names:
            c, full = self.layer_curve(name), self.full_widths[name]
            slope = (c[-1] - c[0]) / max(1, full - 1)
            best = 1
            for q in MULTIPLES:
                if q >= full or slope <= 0:
                    break
                w = np.arange(1, full + 1)
                up = np.minimum(full, -(-w // q) * q)
                extra = float(((up - w) * slope).sum())
                if extra > 0 and float((c[up - 1] - c[w - 1]).sum()) <= FREE_FRACTION * extra:
                    best = q
            result[name] = best
        return result

    def measure_side_by_side(self, base: nn.Module, pruned: nn.Module, **kwargs) -> dict:
        """`measure_side_by_side` of `base` and `pruned` at this table's batch size, mode and device."""
        example = torch.randn(self.key["batch_size"], *self.key["input_size"], device=self.device)
        return measure_side_by_side(base, pruned, example, self._mode, **kwargs)

    def measure(self, model: nn.Module, timer=None) -> float:
        """Latency (microseconds) of `model` as measured for this table (same batch, mode and device)."""
        timer = timer or measure_us
        device = self.device
        example = torch.randn(self.key["batch_size"], *self.key["input_size"], device=device)
        return float(timer(_copy_to(model, device), example, self._mode))

    @property
    def _mode(self) -> str:
        return "eager" if self.key["mode"] == "eager" else "deployed"

    def errors(self, model: nn.Module, layers, assignments, timer=None, progress: bool = True) -> list[dict]:
        """Predicted against measured latency of `model` cut to each width assignment (first channels kept)."""
        from .surgery import prune_channels

        rows = []
        for widths in tqdm(assignments, desc="latency model error", disable=not progress, leave=False):
            predicted = self.predict(widths)
            cut = prune_channels(_copy_to(model, "cpu"), layers, {n: torch.arange(w) for n, w in widths.items()},
                                 self.key["input_size"])
            measured = self.measure(cut, timer)
            rows.append({"predicted_us": predicted, "measured_us": measured,
                         "relative_error": predicted / measured - 1.0})
        return rows


def _copy_to(model: nn.Module, device) -> nn.Module:
    """An eval-mode copy of `model` on `device`, on a CPU packed onto huge pages (`_pack_on_huge_pages`)."""
    import copy

    return _pack_on_huge_pages(copy.deepcopy(model).to(device).eval())


def _read_table(path: Path, key: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        table = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return table if table.get("key") == key else None


def _measure(model, units, input_size, batch_size, mode, device, timer, progress) -> dict:
    """Time the whole model once and every distinct unit on its grids."""
    jobs = {}
    for u in units:
        unit = u["unit"]
        points = jobs.setdefault(unit.key, {"unit": unit, "in": set(), "out": set()})
        if u["a_in"].any():
            points["in"] |= set(width_grid(unit.in_channels, paired=True))
        if u["a_out"].any():
            points["out"] |= set(width_grid(unit.out_channels, paired=True))
    for job in jobs.values():
        cin0, cout0 = job["unit"].in_channels, job["unit"].out_channels
        job["points"] = {(cin0, cout0)} | {(w, cout0) for w in job["in"]} | {(cin0, w) for w in job["out"]}
    total = 1 + sum(len(job["points"]) for job in jobs.values())
    bar = tqdm(total=total, desc=f"latency table ({mode})", disable=not progress, leave=False)
    try:
        full_us = float(timer(model, torch.randn(batch_size, *input_size, device=device), mode))
        bar.update(1)
        table = {"units": {}}
        for key, job in jobs.items():
            unit = job["unit"]
            cin0, cout0 = unit.in_channels, unit.out_channels
            at = {}
            for cin, cout in sorted(job["points"]):
                at[cin, cout] = float(timer(_pack_on_huge_pages(unit.module(cin, cout).to(device)),
                                            unit.example(batch_size, cin, device, mode), mode))
                bar.update(1)
            table["units"][key] = {"full": at[cin0, cout0], "in": [[w, at[w, cout0]] for w in sorted(job["in"])],
                                   "out": [[w, at[cin0, w]] for w in sorted(job["out"])]}
    finally:
        bar.close()
    table["full_us"] = full_us
    return table


def check_budget(flops_reduction, latency_reduction, latency_mode, latency_batch_size, omega,
                 latency_rounding: bool = False):
    """Validate `prune`'s budget values before any work; returns the MACs target (0.5 when neither is
    given), or None for a latency budget. Which options go with which budget is
    `paperprune.options.check_options`'s to check."""
    from .options import check_options
    from .select import validate_target

    check_options(dict(flops_reduction=flops_reduction, latency_reduction=latency_reduction,
                       latency_mode=latency_mode, latency_batch_size=latency_batch_size,
                       latency_rounding=latency_rounding))
    if latency_reduction is None:
        flops_reduction = 0.5 if flops_reduction is None else flops_reduction
        validate_target(flops_reduction, omega)
        return flops_reduction
    validate_target(latency_reduction, omega, "latency_reduction")
    check_mode(latency_mode)
    check_batch_size(latency_batch_size)
    if latency_mode == "deployed":
        from .deploy import check_compiler

        check_compiler()
    return None


#: a latency budget is met when the measured reduction lies within this (absolute) of the target
LATENCY_TOLERANCE = 0.02
#: at most this many pruned models are measured to correct the prediction (`calibrate`)
MEASURED_STEPS = 3
#: each step of `prune`'s latency budget bisects the predicted reduction to within this of the one asked (prune's
#: `tolerance` where that is finer, or where no kept set lands this near): measured reductions moved 1.3-1.7 points
#: per point of predicted reduction in the landing benchmark, where the default 0.01 put a step's prediction up to
#: 1.0 point from the one asked, 1.3 points of measured latency
PREDICTED_TOLERANCE = 0.0025
#: `measure_side_by_side`: untimed forwards of each model first, then timed rounds (one forward of each
#: model per round, the order alternating); at least MEASURE_ROUNDS, more (up to MEASURE_MAX_ROUNDS) while the
#: 95% interval of the median per-round reduction reaches further than MEASURE_PRECISION from it (half the
#: tolerance a landing is judged by, so that timing noise alone rarely decides it)
MEASURE_WARMUP = 3
MEASURE_ROUNDS = 7
MEASURE_MAX_ROUNDS = 41
MEASURE_PRECISION = LATENCY_TOLERANCE / 2


def forward_us(module, example: torch.Tensor) -> float:
    """One forward of `module(example)` (microseconds, on the `clock_name` clock)."""
    return time_forward(module, example, repeats=1, warmup=0)


def median_interval(values, level: float = 0.95) -> tuple[float, float]:
    """The distribution-free interval of the median of `values`: the order statistics x_(j) and x_(n+1-j)
    with j the largest count that Binomial(n, 1/2) falls below with probability at most (1 - level) / 2
    (at least 1: the full range for n < 9 at 95%)."""
    from scipy import stats

    x = np.sort(np.asarray(values, dtype=float))
    j = max(1, int(stats.binom.ppf((1 - level) / 2, x.size, 0.5)))
    return float(x[j - 1]), float(x[x.size - j])


def measure_side_by_side(base: nn.Module, pruned: nn.Module, example: torch.Tensor, mode: str, *,
                         rounds: int = MEASURE_ROUNDS, warmup: int = MEASURE_WARMUP,
                         max_rounds: int = MEASURE_MAX_ROUNDS, precision: float = MEASURE_PRECISION,
                         timer=forward_us) -> dict:
    """Latency of `base` and `pruned`, measured together so that both see the same machine state.

    Parameters
    ----------
    base, pruned : nn.Module
        The unpruned and the pruned model (not modified; copies are run in eval mode).
    example : torch.Tensor
        The input, shape (batch, *input_size), on the device to measure on.
    mode : str
        "eager" or "deployed" (each model run through `paperprune.deploy.prepare_for_inference`).
    rounds, warmup : int
        `warmup` untimed forwards of each model, then at least `rounds` rounds of one timed forward of
        each, the order alternating from round to round.
    max_rounds, precision : int, float
        More rounds are run, up to `max_rounds`, while the 95% interval of the median per-round
        reduction (`median_interval`) reaches further than `precision` from it.
    timer : callable
        ``timer(module, example) -> microseconds`` for one forward (default `forward_us`); tests
        inject a deterministic one.

    Returns
    -------
    dict
        `before_us`, `after_us`: the median over the rounds of each model's time; `reduction`: the
        median over the rounds of 1 - after / before within the round; `reduction_interval`: its 95%
        interval; `reduction_range`: the smallest and largest per-round reduction (the measurement's
        spread); `rounds` (as run), `warmup`.

    Notes
    -----
    The median over interleaved rounds keeps one preempted or cache-cold forward from moving the
    result, and the reduction is paired within each round, so slow drifts of the machine (other
    jobs, clock) cancel. Where the rounds scatter (a shared virtual machine), the rounds go on until
    the median is known to `precision`, or `max_rounds`. In mode
    "deployed" it ends with `torch._dynamo.reset()` (module docstring, "Side effect").
    """
    from .deploy import prepare_for_inference

    if rounds < 1 or warmup < 0 or max_rounds < rounds:
        raise PaperpruneError(f"rounds={rounds}, warmup={warmup}, max_rounds={max_rounds}: give rounds >= 1, "
                              "warmup >= 0 and max_rounds >= rounds")
    models = [_copy_to(m, example.device) for m in (base, pruned)]
    try:
        if mode == "deployed":
            models = [prepare_for_inference(m, example) for m in models]
        times = [[], []]
        with torch.inference_mode():
            for m in models:
                for _ in range(warmup):
                    m(example)
        per_round: list[float] = []
        while len(per_round) < rounds or (len(per_round) < max_rounds and _spread(per_round) > precision):
            for i in ((0, 1) if len(per_round) % 2 == 0 else (1, 0)):
                times[i].append(float(timer(models[i], example)))
            per_round.append(1.0 - times[1][-1] / times[0][-1])
    finally:
        if mode == "deployed":
            torch._dynamo.reset()  # needed, with a process-wide side effect: see the module docstring
    before, after = (float(np.median(t)) for t in times)
    return {"before_us": before, "after_us": after, "reduction": float(np.median(per_round)),
            "reduction_interval": list(median_interval(per_round)),
            "reduction_range": [min(per_round), max(per_round)], "rounds": len(per_round), "warmup": warmup}


def _spread(values) -> float:
    """How far the 95% interval of the median of `values` reaches from it."""
    lo, hi = median_interval(values)
    median = float(np.median(values))
    return max(median - lo, hi - median)


def _next_ask(points: list[tuple[float, float]], target: float) -> tuple[float, str]:
    """The predicted reduction to ask for next, from the measured (predicted, measured) reductions so far.

    One point: the line through the unpruned model (0, 0) and it (the prediction off by a factor;
    a measured reduction <= 0, no line: twice the predicted one).
    More: the secant through the two points measured nearest the target, unless their predicted
    reductions nearly coincide or the secant's slope is not within a factor 2 of the proportional
    one (then it is fitting timing noise): the proportional line through the nearest point.
    """
    near = sorted(points, key=lambda pm: abs(pm[1] - target))
    (p0, m0), steps0 = near[0], points.index(near[0]) + 1
    proportional = (target * p0 / m0 if m0 > 0 else 2 * p0,
                    f"proportional: predicted x {p0:.4f}/{m0:.4f}, the line through (0, 0) and step {steps0}")
    if len(near) < 2:
        return proportional
    (p1, m1) = near[1]
    steps1 = points.index(near[1]) + 1
    if abs(p1 - p0) < 1e-3 or m0 <= 0:
        return proportional
    slope = (m1 - m0) / (p1 - p0)
    if not 0.5 <= slope / (m0 / p0) <= 2.0:
        return proportional
    return p0 + (target - m0) / slope, f"secant through steps {steps0} and {steps1} (slope {slope:.3f})"


def _same_selection(a, b) -> bool:
    """Whether two selections keep the same channels (selections without `keep` never match)."""
    keep_a, keep_b = getattr(a, "keep", None), getattr(b, "keep", None)
    return (keep_a is not None and keep_b is not None and keep_a.keys() == keep_b.keys()
            and all(torch.equal(keep_a[name], keep_b[name]) for name in keep_a))


def calibrate(select, build, measure, target: float, *, tolerance: float = LATENCY_TOLERANCE,
              steps: int = MEASURED_STEPS) -> tuple[object, list[dict]]:
    """A latency budget corrected by measurement: the pruned model whose measured reduction is nearest `target`.

    The budget rule bisects the predicted latency; each step measures the chosen model against the
    unpruned one and moves the target on the prediction, until the measured reduction, and its 95%
    interval where the measurement gives one (`reduction_interval`), lie within `tolerance` of `target`,
    or `steps` models were measured. A miss after the last step is warned
    about, naming the target, what was measured and the model kept.

    Parameters
    ----------
    select : callable
        ``select(predicted_target) -> Selection``: the budget rule on predicted latency
        (`paperprune.select.select_channels` with a `LatencyModel` cost); a PaperpruneError
        means the predicted target is out of reach.
    build : callable
        ``build(selection) -> model``: the pruned model.
    measure : callable
        ``measure(model) -> dict`` with `before_us`, `after_us`, `reduction` and optionally
        `reduction_interval`: the unpruned and the pruned model measured side by side
        (`LatencyModel.measure_side_by_side`).
    target : float
        The latency reduction asked for, a fraction in (0, 1).
    tolerance : float
        How close (absolute) the measured reduction must come to `target`.
    steps : int
        At most this many models are measured.

    Returns
    -------
    selection : Selection
        The selection measured nearest the target.
    history : list of dict
        One record per step: `step`, `target`, `asked_predicted` (the predicted reduction asked of the
        budget rule), `correction` (how that was derived from the earlier steps), then either
        `predicted_reduction`, the measurement's keys (`measured_reduction` = its `reduction`,
        `before_us`, `after_us`, `reduction_range`, ...), `miss` (measured - target) and `chosen`
        (true for the step returned), or `refused` (the budget rule's message), or `same_as` (the step
        whose selection the correction chose again: the correction is finer than the budget rule's
        steps, so the loop ends instead of measuring the same model again).

    Notes
    -----
    Reconstruction of this project, not from the paper (METHOD.md section 2c bisects one global
    level against the MACs; here the cost is the predicted latency). The measured reduction is
    read as a function of the predicted one: the first step asks the prediction for `target`;
    the next asks where the line through (0, 0) and the first measurement meets `target` (a
    predictor off by a factor is corrected in one step); later ones use the secant through the
    two measurements nearest the target (`_next_ask`).
    """
    history, points, chosen, measured_steps = [], [], None, []
    asked, correction = float(target), "none: the target itself"
    for step in range(1, steps + 1):
        row = {"step": step, "target": float(target), "asked_predicted": asked, "correction": correction}
        try:
            selection = select(asked)
        except PaperpruneError as e:
            if chosen is None:
                raise
            history.append({**row, "refused": str(e)})
            break
        same = next((h["step"] for h, earlier in measured_steps if _same_selection(selection, earlier)), None)
        if same is not None:  # the correction is finer than the budget rule's steps: nothing new to measure
            history.append({**row, "same_as": same})
            break
        measured = measure(build(selection))
        measured_steps.append((row, selection))
        predicted = 1.0 - selection.cost / selection.base_cost
        row.update(predicted_reduction=predicted, measured_reduction=float(measured["reduction"]),
                   **{k: v for k, v in measured.items() if k != "reduction"},
                   miss=float(measured["reduction"]) - float(target), chosen=False)
        history.append(row)
        if chosen is None or abs(row["miss"]) < abs(chosen[1]["miss"]):
            chosen = (selection, row)
        lo, hi = measured.get("reduction_interval", (measured["reduction"],) * 2)
        if abs(row["miss"]) <= tolerance and target - tolerance <= lo and hi <= target + tolerance:
            break  # the measurement's interval lies within the tolerance: noise is unlikely to have decided it
        points.append((predicted, row["measured_reduction"]))
        asked, correction = _next_ask(points, float(target))
        asked = min(max(asked, 0.01), 0.99)
    selection, row = chosen
    row["chosen"] = True
    if abs(row["miss"]) > tolerance:
        warnings.warn(
            f"latency_reduction={float(target):.3f} missed: after {len([h for h in history if 'miss' in h])} measured "
            f"models the nearest (step {row['step']}) measured {row['measured_reduction']:.3f} less latency, "
            f"{abs(row['miss']):.3f} from the target (tolerance {tolerance}); measured per step: "
            + ", ".join(f"{h['measured_reduction']:.3f}" if "miss" in h
                        else f"same model as step {h['same_as']}" if "same_as" in h else "refused" for h in history)
            + ". The prediction could not be corrected on this model and machine (timing noise or a target beyond "
            "what pruning reaches); report.latency['steps'] holds each step", stacklevel=3)
    return selection, history


def latency_record(latency: LatencyModel, selection, target: float, steps: list[dict],
                   multiples: dict | None) -> dict:
    """What a latency-budgeted prune records: the target, the predicted and the measured latency of the model
    kept (its `calibrate` step, chosen), every step, the table's key and the MACs that resulted.
    `missed` is true when the measured reduction lies more than LATENCY_TOLERANCE from the target."""
    chosen = next(step for step in steps if step.get("chosen"))
    return {"target_reduction": float(target), "missed": abs(chosen["miss"]) > LATENCY_TOLERANCE,
            "tolerance": LATENCY_TOLERANCE, "steps": steps, "chosen_step": chosen["step"],
            "mode": latency.key["mode"], "batch_size": latency.key["batch_size"], "device": latency.key["device"],
            "threads": latency.key["threads"], "clock": latency.key["clock"],
            "huge_pages": latency.key.get("huge_pages"), "table_key": latency.key_hash,
            "table": latency.table.get("path"), "key": latency.key,
            "predicted_before_us": selection.base_cost, "predicted_after_us": selection.cost,
            "predicted_reduction": 1.0 - selection.cost / selection.base_cost,
            "measured_before_us": chosen["before_us"], "measured_after_us": chosen["after_us"],
            "measured_reduction": chosen["measured_reduction"],
            "prediction_error": selection.cost / chosen["after_us"] - 1.0,
            "macs_before": selection.base_macs, "macs_after": selection.macs,
            "macs_reduction": 1.0 - selection.macs / selection.base_macs, "multiples": multiples}
