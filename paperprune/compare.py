"""What the criteria change: the channels several criteria keep at one matched budget, and how
much their kept sets overlap (Jaccard), per layer and over the whole model.

Every criterion is run through `paperprune.prune` with the same model, calibration data and
options, so the budgets match to the budget rule's tolerance (METHOD.md section 2, "Automatic
budget"); a kept set is the set of (layer, channel) pairs a criterion keeps. A criterion entry
"l1:uniform" runs l1 under the uniform allocation (METHOD.md section 2, "Allocation"), so one
comparison can hold a criterion under both allocations.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from .criteria import METHODS, check_method
from .pipeline import PruneReport, prune
from .options import applies
from .select import split_entry
from .utils import PaperpruneError

__all__ = ["Comparison", "compare_selections", "jaccard"]



def jaccard(a, b) -> float:
    """|a & b| / |a | b| of two sets (1.0 for two empty sets)."""
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else 1.0


@dataclass
class Comparison:
    """Kept channels of several criteria at one budget. `kept[method][layer]` lists the kept
    channel indices; `reports[method]` is that criterion's PruneReport."""

    methods: list[str]
    kept: dict[str, dict[str, list[int]]]
    reports: dict[str, PruneReport]

    @property
    def layers(self) -> list[str]:
        return list(self.kept[self.methods[0]])

    def kept_set(self, method: str, layer: str | None = None) -> set:
        """The (layer, channel) pairs `method` keeps, in one layer or in all of them."""
        names = self.layers if layer is None else [layer]
        return {(name, c) for name in names for c in self.kept[method][name]}

    def overlap(self, layer: str | None = None) -> np.ndarray:
        """(M, M) Jaccard overlaps of the methods' kept sets, in `layer` or over the whole model."""
        if layer is not None and layer not in self.kept[self.methods[0]]:
            raise PaperpruneError(f"layer={layer!r} is not a prunable layer here; choose one of {self.layers}")
        sets = [self.kept_set(m, layer) for m in self.methods]
        return np.array([[jaccard(a, b) for b in sets] for a in sets])

    def overlap_by_layer(self) -> dict[str, np.ndarray]:
        return {name: self.overlap(name) for name in self.layers}


def compare_selections(model: nn.Module, data, methods=METHODS, flops_reduction: float = 0.5,
                       progress: bool = True, **options) -> Comparison:
    """Run every criterion in `methods` at the same `flops_reduction` with the same `options`
    (any keyword of `paperprune.prune`: samples_per_class, nonnegative, structure, seed, allocation,
    ...) and return their kept sets, keyed by the entries given. An entry is a criterion name, under
    `options`' allocation (default "global"), or "name:global" / "name:uniform" (`split_entry`). Each
    criterion gets the options that apply to it (`paperprune.options.applies`: the lasso's, the class
    graph's, ... go only where they mean something), so one set of options serves every criterion."""
    methods = list(methods)
    if len(methods) < 2 or len(set(methods)) != len(methods):
        raise PaperpruneError(f"methods={methods!r}: give at least two different criteria to compare")
    default = options.pop("allocation", "global")
    entries = {entry: split_entry(entry, default) for entry in methods}
    for method, _ in entries.values():
        check_method(method)
    kept, reports = {}, {}
    for entry in tqdm(methods, desc="criteria", disable=not progress):
        method, allocation = entries[entry]
        mine = {k: v for k, v in options.items() if applies(k, {**options, "method": method})}
        _, report = prune(model, data, method=method, flops_reduction=flops_reduction, progress=False,
                          allocation=allocation, **mine)
        reports[entry] = report
        kept[entry] = {row["name"]: row["kept"] for row in report.layers}
    return Comparison(methods=methods, kept=kept, reports=reports)
