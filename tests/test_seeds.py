"""paperprune.lab.seeds against independent computations: scipy's t-interval, the analytic limit of the
two-level bootstrap, and the coverage of seed-level vs image-only intervals on a fixture whose
between-seed variance is known (METHOD.md section 6)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from paperprune.lab.seeds import NO_INTERVAL, paired_difference, summarize, two_level_bootstrap, unpaired_difference
from paperprune.utils import PaperpruneError


def test_summarize_matches_scipy_t_interval():
    x = np.array([91.2, 90.4, 92.9, 89.7, 91.8, 90.0])
    s = summarize(x, 0.9)
    low, high = stats.ttest_1samp(x, 0.0).confidence_interval(0.9)
    assert (s.n, s.interval) == (6, "t")
    assert s.mean == pytest.approx(x.mean()) and s.std == pytest.approx(np.std(x, ddof=1))
    assert (s.low, s.high) == (pytest.approx(low), pytest.approx(high))


def test_summarize_one_seed_has_no_interval():
    s = summarize([93.1])
    assert (s.n, s.mean, s.std, s.low, s.high) == (1, 93.1, None, None, None)
    assert s.interval_text() == NO_INTERVAL == "n = 1: no interval"


def test_paired_difference_is_the_paired_t_interval():
    a = {3: 90.1, 1: 88.0, 2: 91.5, 0: 89.9}
    b = {0: 90.5, 1: 89.1, 2: 90.2, 3: 91.0}
    d = paired_difference(a, b)
    seeds = sorted(a)
    res = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
    low, high = res.confidence_interval(0.95)
    assert d.seeds == (0, 1, 2, 3)
    assert d.mean == pytest.approx(np.mean([a[s] - b[s] for s in seeds]))
    assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))


@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_unpaired_difference_is_welchs_t_interval(confidence):
    a = np.array([79.4, 85.1, 70.2, 88.0, 81.3, 76.9, 90.4, 74.8, 83.3, 79.9])
    b = np.array([80.0, 82.5, 78.1, 81.9, 79.4, 83.0, 77.7, 80.6])
    d = unpaired_difference(a, b, confidence)
    low, high = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    assert (d.n, d.interval, d.std) == (18, "Welch t", None)
    assert d.mean == pytest.approx(a.mean() - b.mean())
    assert (d.low, d.high) == (pytest.approx(low), pytest.approx(high))


def test_unpaired_difference_without_two_seeds_a_side_has_no_interval():
    for a, b in (([90.0], [88.0, 89.0]), ([90.0, 91.0], [88.0]), ([90.0, 90.0], [88.0, 88.0])):
        d = unpaired_difference(a, b)
        assert d.mean == pytest.approx(np.mean(a) - np.mean(b)) and (d.low, d.high) == (None, None)
    with pytest.raises(PaperpruneError, match="b must be a non-empty 1-D sequence"):
        unpaired_difference([1.0, 2.0], [])


def test_paired_difference_refuses_other_seeds():
    with pytest.raises(PaperpruneError, match=r"the seeds differ \(only in a: \[2\], only in b: \[5\]\)"):
        paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 2.0, 5: 3.0})
    with pytest.raises(PaperpruneError, match="3 seeds in a but 2 in b"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(PaperpruneError, match="confidence=1.5"):
        summarize([1.0, 2.0], 1.5)


def test_two_level_bootstrap_identical_criteria_give_zero():
    a = np.random.default_rng(1).random((3, 500)) < 0.8
    r = two_level_bootstrap(a, a.copy(), n_boot=500)
    assert (r.mean, r.low, r.high, r.n) == (0.0, 0.0, 0.0, 3)


def test_two_level_bootstrap_without_seed_spread_is_the_binomial_interval():
    """Every seed: a right on k more of n images than b. The seed level then resamples copies, and
    the image level gives the mean of S independent Binomial(n, k/n)/n: half-width 1.96 sqrt(p (1 - p) / (n S))."""
    seeds, n, k = 4, 3000, 150
    rng = np.random.default_rng(2)
    b = rng.random((seeds, n)) < 0.7
    a = b.copy()
    for s in range(seeds):
        a[s, np.flatnonzero(~b[s])[:k]] = True
    r = two_level_bootstrap(a, b, n_boot=4000, seed=3)
    p = k / n
    half = 100 * 1.96 * math.sqrt(p * (1 - p) / (n * seeds))
    assert r.mean == pytest.approx(100 * p)
    assert r.low == pytest.approx(100 * p - half, abs=0.1 * half)
    assert r.high == pytest.approx(100 * p + half, abs=0.1 * half)


def test_two_level_bootstrap_seed_spread_widens_the_interval():
    """A gain on one seed of three only: resampling seeds reaches 0 (the draws without seed 0)."""
    a = np.zeros((3, 2000), dtype=bool)
    b = a.copy()
    a[0, :300] = True  # +15 points on seed 0, nothing on seeds 1 and 2
    r = two_level_bootstrap(a, b, n_boot=2000)
    assert r.mean == pytest.approx(5.0)
    assert r.low == pytest.approx(0.0, abs=1e-9) and r.high > 13.0


def test_two_level_bootstrap_refuses_mismatches():
    with pytest.raises(PaperpruneError, match="2 seeds in a but 3 in b"):
        two_level_bootstrap(np.zeros((2, 10)), np.zeros((3, 10)))
    with pytest.raises(PaperpruneError, match=r"only in a: \[1\]"):
        two_level_bootstrap({0: [1, 0], 1: [1, 1]}, {0: [1, 0], 2: [0, 0]})
    with pytest.raises(PaperpruneError, match="different numbers of test images"):
        two_level_bootstrap([[1, 0, 1]], [[1, 0]])
    assert two_level_bootstrap([[1, 0, 1, 1]], [[1, 0, 0, 1]]).interval_text() == NO_INTERVAL


def _simulate(rng, reps, seeds, images, delta, s_between):
    """Per replication and seed, per-image correctness of a and b: the seed draws its true accuracy
    difference a - b from N(delta, s_between) (points), images are iid within the seed."""
    base = 0.8 + rng.normal(0.0, 0.02, size=(reps, seeds, 1))
    true = (delta + rng.normal(0.0, s_between, size=(reps, seeds, 1))) / 100.0
    a = rng.random((reps, seeds, images)) < base + true / 2
    b = rng.random((reps, seeds, images)) < base - true / 2
    return a, b


def test_seed_level_interval_covers_and_image_only_does_not():
    """Coverage of the true mean difference over 400 simulated studies of 5 seeds x 1,000 images,
    with a between-seed sd of 3 points: the paired t-interval over seeds covers about 95%; an
    interval from the test images alone (its normal limit: the binomial noise of the per-image
    differences, seeds fixed) covers far less, because it cannot see the between-seed spread."""
    rng = np.random.default_rng(7)
    reps, seeds, images, delta = 400, 5, 1000, 1.0
    a, b = _simulate(rng, reps, seeds, images, delta, s_between=3.0)
    d = 100.0 * (a.astype(float) - b.astype(float))  # (reps, seeds, images)
    covered_seed = covered_image = 0
    for r in range(reps):
        per_seed = d[r].mean(axis=1)
        s = paired_difference(a[r].mean(axis=1) * 100.0, b[r].mean(axis=1) * 100.0)
        assert s.mean == pytest.approx(per_seed.mean())
        covered_seed += s.low <= delta <= s.high
        se_images = math.sqrt((d[r].var(axis=1, ddof=1) / images).sum()) / seeds
        covered_image += abs(per_seed.mean() - delta) <= 1.96 * se_images
    assert 0.92 <= covered_seed / reps <= 0.98
    assert covered_image / reps < 0.75
