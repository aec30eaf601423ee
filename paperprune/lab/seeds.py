"""Statistics over seeds: the one place every interval the project shows comes from (METHOD.md section 6).

The unit of replication is the seed (the calibration draw; where there is training, also the
fine-tune's data order and initialisation), not the test image. Seeds of one configuration
are summarised by n, the mean and the sample standard deviation (ddof = 1) with a t-interval
for the mean (n - 1 degrees of freedom, `summarize`). Two criteria run on the same seeds and
test images are compared by their per-seed paired differences a - b, with the same t-interval
(`paired_difference`), or by a two-level bootstrap that resamples seeds and then the test
images within each resampled seed (`two_level_bootstrap`). Configurations whose seeds draw
different samples (e.g. 10 and 50 calibration images per class) share nothing to pair by, and
are compared by the difference of their means with Welch's t-interval (`unpaired_difference`),
which is wider than a paired one would be.

A bootstrap over test images alone sees only within-seed test noise: the spread between seeds
(which calibration sample was drawn) is invisible to it, so its interval is too narrow whenever
that spread is real (tests/test_seeds.py measures its coverage on a fixture with known
between-seed variance). It is not offered here.

With n = 1 there is no spread to estimate and no interval: `SeedSummary.low` and `high` are
None and `SeedSummary.interval_text()` says so. With n = 2 or 3 the t quantile is large (12.7
and 4.3 at 95%); that width is the honest price of few seeds, not a defect.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from ..utils import PaperpruneError

__all__ = ["SeedSummary", "NO_INTERVAL", "paired_difference", "summarize", "two_level_bootstrap",
           "unpaired_difference"]

#: how a summary of one seed shows its (absent) interval
NO_INTERVAL = "n = 1: no interval"


@dataclass(frozen=True)
class SeedSummary:
    """n seeds summarised: mean, sample std (ddof = 1; None for n = 1) and an interval for the mean.

    `low`/`high` bound the `confidence` interval of the mean (None for n = 1); `interval` names
    how it was computed ("t" with n - 1 degrees of freedom, or "two-level bootstrap"); `seeds`
    lists the seeds when they are known.
    """

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None
    confidence: float
    interval: str
    seeds: tuple | None = None

    def interval_text(self, decimals: int = 2, signed: bool = False) -> str:
        """The interval as text, `[low, high]` with `decimals` (a leading sign with `signed`), or
        NO_INTERVAL for n = 1."""
        if self.low is None:
            return NO_INTERVAL
        fmt = f"{'+' if signed else ''}.{decimals}f"
        return f"[{self.low:{fmt}}, {self.high:{fmt}}]"

    def to_dict(self) -> dict:
        return asdict(self)


def _confidence(confidence: float) -> float:
    if not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise PaperpruneError(f"confidence={confidence!r} must be a fraction in (0, 1), e.g. 0.95")
    return float(confidence)


def _values(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or not np.isfinite(arr).all():
        raise PaperpruneError(f"{name} must be a non-empty 1-D sequence of finite numbers (one per seed); got "
                              f"shape {arr.shape}")
    return arr


def summarize(values: Sequence[float], confidence: float = 0.95, *, seeds: Sequence | None = None) -> SeedSummary:
    """n, mean, sample std (ddof = 1) and the t-interval of the mean of one value per seed.

    The interval is mean +- t_{(1 + confidence) / 2, n - 1} * std / sqrt(n), Student's t with
    n - 1 degrees of freedom (`scipy.stats.t`). One seed gives no std and no interval.

    Parameters
    ----------
    values : sequence of float, shape (n,)
        One value per seed (e.g. top-1 in percent), finite.
    confidence : float
        Coverage of the interval, in (0, 1).
    seeds : sequence, optional
        The seeds the values belong to, recorded in the summary.

    Returns
    -------
    SeedSummary
        With ``interval="t"``; ``std``, ``low`` and ``high`` None when n = 1.

    Notes
    -----
    METHOD.md section 6: the seed is the unit of replication.

    Examples
    --------
    >>> s = summarize([90.0, 91.0, 92.0])
    >>> s.n, s.mean, s.std
    (3, 91.0, 1.0)
    >>> s.interval_text()  # 91 +- 4.303 / sqrt(3)
    '[88.52, 93.48]'
    >>> summarize([90.0]).interval_text()
    'n = 1: no interval'
    """
    arr = _values(values, "values")
    confidence = _confidence(confidence)
    if seeds is not None and len(seeds) != arr.size:
        raise PaperpruneError(f"{len(seeds)} seeds given for {arr.size} values; give one seed per value")
    n, mean = int(arr.size), float(arr.mean())
    seeds = tuple(seeds) if seeds is not None else None
    if n == 1:
        return SeedSummary(1, mean, None, None, None, confidence, "t", seeds)
    std = float(arr.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
    return SeedSummary(n, mean, std, mean - half, mean + half, confidence, "t", seeds)


def _paired(a, b, what: str) -> tuple[list, list, tuple | None]:
    """Values of a and b in one seed order: mappings are matched by seed (the same seeds or an
    error naming the difference), sequences by position (the same length or an error)."""
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
            raise PaperpruneError(f"{what}: give both as {{seed: value}} mappings, or both as sequences in one seed "
                                  "order")
        if set(a) != set(b):
            raise PaperpruneError(f"{what}: the seeds differ (only in a: {sorted(set(a) - set(b))}, only in b: "
                                  f"{sorted(set(b) - set(a))}); pair runs of the same seeds")
        seeds = tuple(sorted(a))
        return [a[s] for s in seeds], [b[s] for s in seeds], seeds
    if len(a) != len(b):
        raise PaperpruneError(f"{what}: {len(a)} seeds in a but {len(b)} in b; pair runs of the same seeds")
    return list(a), list(b), None


def paired_difference(a, b, confidence: float = 0.95) -> SeedSummary:
    """The mean of the per-seed differences a - b with its t-interval (n - 1 degrees of freedom).

    Both criteria ran on the same seeds (and scored on the same test images), so the seed's own
    effect cancels in the difference; the interval is `summarize` of the differences.

    Parameters
    ----------
    a, b : mapping {seed: float} or sequence of float, shape (n,)
        One value per seed of each criterion. Mappings are paired by seed and must hold the same
        seeds; sequences are paired by position and must have one length.
    confidence : float
        Coverage of the interval, in (0, 1).

    Returns
    -------
    SeedSummary
        Of the differences a - b (``seeds`` set when mappings were given).

    Raises
    ------
    PaperpruneError
        When the seeds (or lengths) of a and b differ.

    Notes
    -----
    METHOD.md section 6.

    Examples
    --------
    >>> d = paired_difference({0: 91.0, 1: 92.5, 2: 90.0}, {0: 90.0, 1: 91.0, 2: 89.5})
    >>> d.mean, d.seeds
    (1.0, (0, 1, 2))
    >>> d.interval_text(signed=True)
    '[-0.24, +2.24]'
    """
    a, b, seeds = _paired(a, b, "paired_difference")
    diff = _values(a, "a") - _values(b, "b")
    return summarize(diff, confidence, seeds=seeds)


def unpaired_difference(a, b, confidence: float = 0.95) -> SeedSummary:
    """The difference of the means of two independent sets of seeds, a - b, with Welch's t-interval.

    mean(a) - mean(b) +- t_{(1 + confidence) / 2, df} * sqrt(s_a^2 / n_a + s_b^2 / n_b), with the
    Welch-Satterthwaite degrees of freedom df = (s_a^2/n_a + s_b^2/n_b)^2 / ((s_a^2/n_a)^2 / (n_a - 1)
    + (s_b^2/n_b)^2 / (n_b - 1)): no equal variances assumed.

    Parameters
    ----------
    a, b : sequence of float, shapes (n_a,) and (n_b,)
        One value per seed of each configuration; the seeds need not match (the samples differ).
    confidence : float
        Coverage of the interval, in (0, 1).

    Returns
    -------
    SeedSummary
        ``n``: n_a + n_b; ``mean``: the difference of the means; ``std``: None (each side has its
        own, `summarize`); ``low``/``high``: the interval, None when either side has one seed or both
        are constant; ``interval="Welch t"``.

    Notes
    -----
    Use it only where no pairing exists: where both sides ran on the same seeds and test images,
    `paired_difference` removes the seed's own effect and is the narrower, right interval.

    Examples
    --------
    >>> d = unpaired_difference([91.0, 92.0, 93.0], [88.0, 90.0, 89.0, 91.0])
    >>> round(d.mean, 2), d.n, d.interval
    (2.5, 7, 'Welch t')
    >>> d.interval_text(signed=True)
    '[+0.27, +4.73]'
    """
    a, b = _values(a, "a"), _values(b, "b")
    confidence = _confidence(confidence)
    n = int(a.size + b.size)
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return SeedSummary(n, diff, None, None, None, confidence, "Welch t")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    if va + vb == 0:
        return SeedSummary(n, diff, None, None, None, confidence, "Welch t")
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2.0, df)) * math.sqrt(va + vb)
    return SeedSummary(n, diff, None, diff - half, diff + half, confidence, "Welch t")


def _correctness(rows, what: str) -> list[np.ndarray]:
    out = []
    for row in rows:
        arr = np.asarray(row)
        if arr.ndim != 1 or arr.size == 0 or not np.isin(arr, (0, 1)).all():
            raise PaperpruneError(f"{what}: each seed needs a non-empty 1-D array of per-image 0/1 correctness")
        out.append(arr.astype(np.float64))
    if not out:
        raise PaperpruneError(f"{what}: no seed given")
    return out


def two_level_bootstrap(correct_a, correct_b, *, confidence: float = 0.95, n_boot: int = 10000,
                        seed: int = 0) -> SeedSummary:
    """Top-1 difference a - b (percentage points) with a two-level bootstrap interval.

    Each draw resamples n seeds with replacement, then, within each drawn seed, that seed's test
    images with replacement (the same images for a and b, so the pairing by image is kept), and
    takes the mean over the drawn seeds of the accuracy difference. Per seed the per-image
    difference takes the values +1, 0 and -1, so an image resample's sum is exactly the
    multinomial draw of their counts; the bootstrap draws those counts directly.

    Parameters
    ----------
    correct_a, correct_b : mapping {seed: array} or sequence of arrays, each of shape (images,)
        Per-image correctness (0/1 or bool) of each criterion, one array per seed; a (seeds,
        images) array works too. The same seeds (matched by key, or by position) and, within a
        seed, the same test images in one order for a and b.
    confidence : float
        Coverage of the percentile interval, in (0, 1).
    n_boot : int
        Bootstrap draws, at least 100.
    seed : int
        Seed of the bootstrap's random generator (the result is reproducible).

    Returns
    -------
    SeedSummary
        ``mean``: the observed difference (mean over seeds of 100 x per-seed accuracy difference);
        ``std``: the sample std of the per-seed differences; ``low``/``high``: the percentile
        interval (None for one seed: one seed has no between-seed spread to resample);
        ``interval="two-level bootstrap"``.

    Notes
    -----
    METHOD.md section 6. With few seeds the seed level has few distinct resamples (10 for n = 3)
    and no small-sample inflation; prefer `paired_difference` there.

    Examples
    --------
    >>> a = {0: [1, 1, 0, 1], 1: [1, 0, 1, 1]}
    >>> b = {0: [1, 0, 0, 1], 1: [1, 0, 0, 1]}
    >>> r = two_level_bootstrap(a, b, n_boot=1000)
    >>> r.mean, r.n, r.interval
    (25.0, 2, 'two-level bootstrap')
    >>> r.low <= 25.0 <= r.high
    True
    """
    confidence = _confidence(confidence)
    if int(n_boot) < 100:
        raise PaperpruneError(f"n_boot={n_boot!r}: give at least 100 bootstrap draws, e.g. 10000")
    a, b, seeds = _paired(correct_a, correct_b, "two_level_bootstrap")
    rows_a, rows_b = _correctness(a, "correct_a"), _correctness(b, "correct_b")
    shapes = [(x.size, y.size) for x, y in zip(rows_a, rows_b) if x.size != y.size]
    if shapes:
        raise PaperpruneError(f"two_level_bootstrap: a seed's a and b were scored on different numbers of test "
                              f"images {shapes[0]}; pair them on one test set")
    diffs = [x - y for x, y in zip(rows_a, rows_b)]
    per_seed = np.array([100.0 * d.mean() for d in diffs])
    n = len(diffs)
    if n == 1:
        return SeedSummary(1, float(per_seed[0]), None, None, None, confidence, "two-level bootstrap", seeds)
    rng = np.random.default_rng(seed)
    n_boot = int(n_boot)
    picks = rng.integers(0, n, size=(n_boot, n))
    draws = np.zeros(n_boot)
    for s, d in enumerate(diffs):
        p = np.array([(d > 0).mean(), (d == 0).mean(), (d < 0).mean()])
        slots = picks == s
        k = int(slots.sum())
        if k:
            counts = rng.multinomial(d.size, p, size=k)
            draws += np.bincount(np.nonzero(slots)[0], weights=100.0 * (counts[:, 0] - counts[:, 2]) / d.size,
                                 minlength=n_boot)
    draws /= n
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return SeedSummary(n, float(per_seed.mean()), float(per_seed.std(ddof=1)), float(low), float(high), confidence,
                       "two-level bootstrap", seeds)
