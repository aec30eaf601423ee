"""The automatic budget rule (METHOD.md section 2, "Automatic budget").

One global level is shared by every prunable layer: for the lasso criteria it is lam (gamma
is tied to it by a fixed ratio), for the score criteria a threshold on layer-normalised
scores. The level is bisected until the model's MACs after keeping the selected channels are
within `tolerance` of the requested reduction; a per-layer floor `omega` keeps at least omega
channels in every layer. Per-layer ratios are never set by hand: they fall out of the
criterion. This carries APIB's scheme (Guo et al., ICCV 2023) over to the class-wise
criteria; it is reconstruction, not taken from the paper, which states only that the
pruning is automatic.

"Within 1%" is read as |achieved reduction - requested reduction| <= 0.01, both fractions of
the unpruned model's MACs.

The same bisection serves any cost that shrinks with the widths: `select_channels(...,
cost=LatencyModel)` budgets predicted latency instead of MACs (paperprune.latency),
and `round_to` rounds each layer's kept width up to a multiple (the device's efficient one,
from the latency table), the criterion's ranking choosing the channels that fill it.

Allocation (METHOD.md section 2, "Allocation"). `allocation="global"` (the default) is the one
level above. `allocation="uniform"` is the protocol of the L1-norm and HRank papers (Li et al.,
ICLR 2017; Lin et al., CVPR 2020): every prunable layer keeps the same fraction r of its
channels (round(r C) of C, at least omega), the criterion's scores choosing which;
`UniformAllocation` wraps a prepared criterion so that its level is 1 - r, and the same
bisection and tolerance find r. For the lasso criteria the scores are B's row norms at the
weakest lam (the criterion's ranking at its lowest level; under `nonnegative=True` ties at zero
are broken by relevance, as the top-up does): every layer keeps its channels of largest norm,
which uses the lasso's ranking but not its automatic per-layer ratios.

Two additions of this project (reconstruction):

- Layers whose channels a grouped conv reads (`predictor.channel_groups`, from
  paperprune.discover.channel_groups) keep the same number of channels in each of their P
  equal parts: the kept width is rounded up to a multiple of P and each part keeps its
  criterion-selected channels first, then its best ranked, down to its share (`keep_in_parts`).
- Ties. When many channels share one score (HRank's integer ranks, L1 on duplicated
  filters), the kept set jumps at one level and no level lands within tolerance. The
  bisection then ends with a bracket: the level below the target (set L) and above it (set
  H). The channels of L not in H are removed from L one at a time in a fixed order until the
  target is met (`_split_ties`): lowest criterion rank first; among equal ranks, layers lose
  their tied channels at the same pace (the j-th of a layer's n tied channels at position
  j/n), then earlier layers first, then higher channel index first. The order is
  deterministic and independent of the target. Layers kept in parts or rounded to multiples
  stay at L's set in this step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .utils import PaperpruneError, as_number

__all__ = ["ALLOCATIONS", "Selection", "TargetMissed", "UniformAllocation", "allocate", "check_allocation",
           "entry_name", "select_channels", "split_entry"]


class TargetMissed(PaperpruneError):
    """`select_channels` found no kept set within its tolerance of the target (the set jumps past it there)."""


@dataclass
class Selection:
    """The outcome of the budget rule: kept channel indices per layer and what they cost."""

    keep: dict[str, torch.Tensor]
    widths: dict[str, int]
    level: float
    macs: int
    params: int
    base_macs: int
    base_params: int
    steps: int
    cost: float | None = None
    base_cost: float | None = None
    #: channels removed beyond the level's set by splitting a tie (module docstring); 0 when none
    tie_split: int = 0


#: how the budget is shared between layers (METHOD.md section 2, "Allocation"; module docstring)
ALLOCATIONS = ("global", "uniform")


def check_allocation(allocation) -> str:
    """`allocation` if it is one of ALLOCATIONS, else a PaperpruneError naming the value and the choices."""
    if not isinstance(allocation, str) or allocation not in ALLOCATIONS:
        raise PaperpruneError(f"allocation={allocation!r} is not known; use 'global' (one level across layers, "
                              "APIB's scheme) or 'uniform' (the same fraction of channels kept in every layer, "
                              "the L1-norm and HRank papers' protocol)")
    return allocation


def split_entry(entry: str, default: str = "global") -> tuple[str, str]:
    """(method, allocation) of a criterion entry as the curves and comparisons name it: "l1" is l1 under
    `default`, "l1:uniform" l1 under the uniform allocation. The method is checked by the caller."""
    method, sep, allocation = str(entry).partition(":")
    return method, check_allocation(allocation) if sep else check_allocation(default)


def entry_name(method: str, allocation: str | None = "global") -> str:
    """The entry of `method` under `allocation` ("l1", "l1:uniform"); None (records from before the
    allocation was recorded) reads as global."""
    return method if allocation in (None, "global") else f"{method}:{allocation}"


class UniformAllocation:
    """A prepared criterion under the uniform allocation: at level u every layer keeps the round((1 - u) C)
    channels of its C that the criterion ranks highest (ties by channel index), for `select_channels` to
    bisect u in [0, 1] (the floor omega and grouped widths are applied there, as for any criterion).

    The ranking is the criterion's at its weakest level (`criterion.bounds()[0]`): the scores of the
    score criteria, B's row norms at the weakest lam for the lasso criteria.
    """

    def __init__(self, criterion) -> None:
        self.criterion = criterion
        self.name = f"{criterion.name} (uniform)"
        self.channels = criterion.channels
        self._ranks: dict[str, torch.Tensor] | None = None

    def bounds(self) -> tuple[float, float]:
        return 0.0, 1.0

    def ranks(self) -> dict[str, torch.Tensor]:
        """The criterion's ranking per layer (computed once, at its weakest level)."""
        if self._ranks is None:
            weakest = self.criterion.bounds()[0]
            self._ranks = {name: rank.detach().double().cpu() for name, (_, rank) in
                           self.criterion.select(weakest).items()}
        return self._ranks

    def select(self, level: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        fraction = 1.0 - level
        out = {}
        for name, rank in self.ranks().items():
            keep = min(rank.numel(), int(math.floor(fraction * rank.numel() + 0.5)))
            mask = torch.zeros(rank.numel(), dtype=torch.bool)
            mask[torch.argsort(-rank, stable=True)[:keep]] = True
            out[name] = (mask, rank)
        return out

    def describe(self, level: float) -> dict:
        """The criterion's own description at its weakest level (where its ranking comes from), without a
        threshold, and the fraction of channels each layer keeps before the floor."""
        described = dict(self.criterion.describe(self.criterion.bounds()[0]))
        described.pop("threshold", None)
        return described | {"fraction_kept": 1.0 - level}


def allocate(criterion, allocation: str = "global"):
    """The prepared `criterion` as `select_channels` should bisect it under `allocation`: itself for
    "global", wrapped in `UniformAllocation` for "uniform"."""
    return UniformAllocation(criterion) if check_allocation(allocation) == "uniform" else criterion


def apply_floor(mask: torch.Tensor, rank: torch.Tensor, omega: int) -> torch.Tensor:
    """Indices of the kept channels: those in `mask`, topped up to `omega` by `rank`.

    Ties in `rank` are broken by channel index, so the result is deterministic.
    """
    floor = min(omega, mask.numel())
    if int(mask.sum()) >= floor:
        return mask.nonzero().flatten()
    order = torch.argsort(-(rank.detach().double().cpu() + mask.double().cpu() * 1e300), stable=True)
    return order[:floor].sort().values


def keep_in_parts(mask: torch.Tensor, rank: torch.Tensor, width: int, parts: int) -> torch.Tensor:
    """Indices keeping ceil(width / parts) channels in each of `parts` contiguous equal parts of the
    layer: in each part the channels in `mask` first, then the best ranked; ties by channel index."""
    size = mask.numel() // parts
    share = min(size, -(-width // parts))
    rank, mask = rank.detach().double().cpu(), mask.cpu()
    kept = []
    for p in range(parts):
        part = slice(p * size, (p + 1) * size)
        by_rank = torch.argsort(-rank[part], stable=True)
        order = by_rank[torch.argsort(~mask[part][by_rank], stable=True)]
        kept.append(order[:share] + p * size)
    return torch.cat(kept).sort().values


def validate_target(flops_reduction: float, omega: int, name: str = "flops_reduction") -> None:
    """Check a reduction (a fraction in (0, 1), reported under `name`) and the floor omega;
    numpy and 0-d torch scalars count as the numbers they hold."""
    what = "of the predicted latency" if name == "latency_reduction" else "of the MACs"
    fix = f"pass e.g. 0.5 to remove half {what}"
    try:
        value = as_number(flops_reduction, name)
    except PaperpruneError:
        raise PaperpruneError(f"{name}={flops_reduction!r} is not a number; {fix}") from None
    if not 0.0 < value < 1.0:
        raise PaperpruneError(f"{name}={value!r} is not a fraction in (0, 1); {fix}")
    try:
        floor = as_number(omega, "omega", int)
    except PaperpruneError:
        floor = 0
    if floor < 1:
        raise PaperpruneError(f"omega={omega!r} must be an integer >= 1 (the per-layer floor of kept channels)")


def check_floor(predictor, channels: dict[str, int], flops_reduction: float, omega: int,
                tolerance: float = 0.01) -> None:
    """Fail early when keeping only `omega` channels per layer cannot reach the reduction."""
    validate_target(flops_reduction, omega)
    base = predictor(dict(channels))[0]
    floor = predictor({name: min(omega, c) for name, c in channels.items()})[0]
    if 1.0 - floor / base < flops_reduction - tolerance:
        raise PaperpruneError(
            f"flops_reduction={flops_reduction:.3f} is unreachable: keeping only the floor omega={omega} "
            f"channels per layer removes {1.0 - floor / base:.3f} of the MACs; lower omega or ask for a "
            "smaller reduction")


def round_up(width: int, multiple: int, full: int) -> int:
    """`width` rounded up to a multiple of `multiple`, at most `full`."""
    return min(full, -(-width // multiple) * multiple)


def select_channels(criterion, predictor, flops_reduction: float, *, cost=None, round_to=None,
                    target_name: str = "flops_reduction", omega: int = 4, tolerance: float = 0.01,
                    max_steps: int = 60, progress: bool = True) -> Selection:
    """Bisect the criterion's global level until the cost's reduction is within `tolerance`.

    `criterion` has `channels` ({layer: C}), `bounds() -> (lo, hi)` and
    `select(level) -> {name: (mask, rank)}` with fewer channels kept at higher levels;
    `predictor(widths) -> (macs, params)` counts the model cut to those widths
    (paperprune.surgery.MacsPredictor). `cost(widths) -> float` is what the reduction is of
    (default: the MACs; e.g. a paperprune.latency.LatencyModel), `target_name` how the
    reduction is called in messages. `round_to` ({layer: multiple}) rounds each kept width up.
    """
    validate_target(flops_reduction, omega, target_name)
    what = "of the MACs" if cost is None else "of the predicted latency"
    base_macs, base_params = predictor(dict(criterion.channels))
    cost = cost or (lambda widths: float(predictor(widths)[0]))
    base_cost = float(cost(dict(criterion.channels)))
    target = float(flops_reduction)
    round_to = round_to or {}
    parts = getattr(predictor, "channel_groups", None) or {}

    def evaluate(level: float):
        keep, ranks = {}, {}
        for name, (mask, rank) in criterion.select(level).items():
            width = round_up(max(omega, int(mask.sum())), round_to.get(name, 1), mask.numel())
            if parts.get(name, 1) > 1:
                keep[name] = keep_in_parts(mask, rank, width, parts[name])
            else:
                keep[name] = apply_floor(mask, rank, width)
            ranks[name] = rank
        return _result(keep, ranks)

    def _result(keep, ranks):
        widths = {name: int(idx.numel()) for name, idx in keep.items()}
        value = float(cost(widths))
        return keep, widths, value, ranks, 1.0 - value / base_cost

    lo, hi = criterion.bounds()
    at_hi = evaluate(hi)
    if at_hi[-1] < target - tolerance:
        raise PaperpruneError(
            f"{target_name}={target:.3f} is unreachable: keeping only the floor omega={omega} "
            f"channels per layer (or what {criterion.name} keeps at its strongest setting) removes "
            f"{at_hi[-1]:.3f} {what}; lower omega or ask for a smaller reduction")

    def weakest():  # evaluated only when the bisection needs it: the weakest lasso is the slowest to solve
        at_lo = evaluate(lo)
        if at_lo[-1] > target + tolerance:
            raise PaperpruneError(
                f"{target_name}={target:.3f} is unreachable for {criterion.name}: even at its weakest "
                f"setting (level {lo:.3g}) it removes {at_lo[-1]:.3f} {what}; ask for a larger reduction"
                + ("" if criterion.name in ("l1", "random") else " or use a larger calibration set"))
        return at_lo

    best, best_level, steps, bracket = _bisect(evaluate, lo, hi, weakest, at_hi, target, tolerance, max_steps,
                                               f"budget {criterion.name}", progress)
    split = 0
    if abs(best[-1] - target) > tolerance:
        (lo, below), (_, above) = bracket
        fixed = {name for name in below[0] if parts.get(name, 1) > 1 or round_to.get(name, 1) > 1}
        tied, count = _split_ties(below, above, _result, target, omega, fixed, list(criterion.channels))
        if abs(tied[-1] - target) < abs(best[-1] - target):
            best, best_level, split = tied, lo, count
    if abs(best[-1] - target) > tolerance:
        raise TargetMissed(
            f"{criterion.name} could not reach {target_name}={target:.3f} within {tolerance}: "
            f"the closest level {best_level:.4g} removes {best[-1]:.4f} (the kept set jumps there, and splitting "
            "the tie by rank could not close the gap); try a slightly different target or a larger calibration set")
    keep, widths, value = best[:3]
    macs, params = predictor(widths)
    return Selection(keep=keep, widths=widths, level=best_level, macs=int(macs), params=int(params),
                     base_macs=int(base_macs), base_params=int(base_params), steps=steps, cost=value,
                     base_cost=base_cost, tie_split=split)


def _split_ties(below, above, result, target, omega, fixed, order):
    """Remove the channels of `below`'s set that `above`'s lacks, one at a time in the module
    docstring's order, until the reduction reaches `target`; returns the closest result and how
    many channels it removed. `result(keep, ranks)` evaluates a kept set."""
    keep, ranks = {n: idx.clone() for n, idx in below[0].items()}, below[3]
    candidates = []
    for li, name in enumerate(order):
        if name in fixed:
            continue
        lost = sorted(set(keep[name].tolist()) - set(above[0][name].tolist()))
        rank = ranks[name].detach().double().cpu()
        lost.sort(key=lambda c: (float(rank[c]), -c))
        candidates += [(float(rank[c]), (j + 1) / len(lost), li, -c, name, c) for j, c in enumerate(lost)]
    candidates.sort(key=lambda t: t[:4])
    floor = {n: min(omega, len(ranks[n])) for n in keep}
    best, removed, count, split = below, {n: set() for n in keep}, 0, 0
    for *_, name, channel in candidates:
        if len(keep[name]) - len(removed[name]) <= floor[name]:
            continue
        removed[name].add(channel)
        count += 1
        now = result({n: idx[~torch.isin(idx, torch.tensor(sorted(removed[n]), dtype=idx.dtype))] if removed[n]
                      else idx for n, idx in keep.items()}, ranks)
        if abs(now[-1] - target) < abs(best[-1] - target):
            best, split = now, count
        if now[-1] >= target:
            break
    return best, split


def _bisect(evaluate, lo, hi, weakest, at_hi, target, tolerance, max_steps, desc, progress):
    """Bisection on the level; results are (..., reduction) tuples; returns the closest, its level, steps,
    and the final bracket ((level, result) below the target, (level, result) above it). The result at
    `lo` comes from `weakest()`, called only if no level tried falls below the target and none is within
    `tolerance` (then the bracket's lower end may stay (lo, None))."""
    bracket = [(lo, None), (hi, at_hi)]
    best, best_level = at_hi, hi
    steps = 0
    bar = tqdm(total=max_steps, desc=desc, disable=not progress, leave=False)
    try:
        while abs(best[-1] - target) > tolerance and steps < max_steps:
            steps += 1
            mid = 0.5 * (lo + hi)
            result = evaluate(mid)
            if abs(result[-1] - target) < abs(best[-1] - target):
                best, best_level = result, mid
            if result[-1] < target:
                lo, bracket[0] = mid, (mid, result)
            else:
                hi, bracket[1] = mid, (mid, result)
            bar.update(1)
            bar.set_postfix(reduction=f"{result[-1]:.4f}", target=f"{target:.4f}")
    finally:
        bar.close()
    if bracket[0][1] is None and abs(best[-1] - target) > tolerance:
        at_lo = weakest()
        bracket[0] = (lo, at_lo)
        if abs(at_lo[-1] - target) < abs(best[-1] - target):
            best, best_level = at_lo, lo
    return best, best_level, steps, bracket
