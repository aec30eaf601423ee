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
    """Kept channels of several criteria at one budget, as `compare_selections` returns them.

    Parameters
    ----------
    methods : list of str
        The entries compared, in order (criterion names, or "name:allocation").
    kept : dict of str to dict of str to list of int
        ``kept[entry][layer]``: the channel indices the entry keeps in that layer.
    reports : dict of str to PruneReport
        Each entry's report.

    See Also
    --------
    jaccard : The overlap of two kept sets.
    """

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
    """Run several criteria at one MACs budget on the same model and data; return their kept channels.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model (not modified).
    data : iterable of (images, labels)
        Re-iterable batches, as for `paperprune.prune`: images (B, C, H, W), labels (B,).
    methods : sequence of str, default all of `paperprune.criteria.METHODS`
        At least two different entries: a criterion name, run under `options`' allocation
        (default "global"), or "name:global" / "name:uniform" (`paperprune.select.split_entry`).
    flops_reduction : float in (0, 1), default 0.5
        The MACs reduction every criterion is pruned to.
    progress : bool, default True
        Show a progress bar over the criteria.
    **options
        Any keyword of `paperprune.prune` (samples_per_class, nonnegative, structure, seed,
        allocation, tolerance, ...). Each criterion gets the options that apply to it
        (`paperprune.options.applies`), so one set of options serves every criterion.

    Returns
    -------
    Comparison
        ``kept[entry][layer]``: the kept channel indices; ``reports[entry]``: the `PruneReport`;
        `Comparison.overlap` gives the (M, M) Jaccard overlaps of the M entries' kept sets.

    Raises
    ------
    PaperpruneError
        For fewer than two different entries, an unknown criterion, or any input `prune` refuses.

    Notes
    -----
    Every criterion runs through `paperprune.prune` with the same calibration set, so the
    budgets match to the budget rule's tolerance (METHOD.md section 2, "Automatic budget"); a
    kept set is the set of (layer, channel) pairs a criterion keeps. The class-agnostic
    criteria are best compared under both allocations (METHOD.md section 2, "Allocation").

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from paperprune.compare import compare_selections
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(
    ...     nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    ...     nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    >>> images, labels = torch.randn(40, 3, 8, 8), torch.arange(40) % 4
    >>> cmp = compare_selections(model, [(images, labels)], methods=["stlp", "classwise", "l1:uniform"],
    ...                          flops_reduction=0.4, samples_per_class=10, tolerance=0.05,
    ...                          progress=False)
    >>> cmp.methods, cmp.layers
    (['stlp', 'classwise', 'l1:uniform'], ['0', '3'])
    >>> all(abs(r.macs_reduction - 0.4) <= 0.05 for r in cmp.reports.values())
    True
    >>> overlap = cmp.overlap()
    >>> overlap.shape, bool((overlap.diagonal() == 1).all()), bool((overlap == overlap.T).all())
    ((3, 3), True, True)
    """
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
