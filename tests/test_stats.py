"""paperprune.stats on fixtures with known answers: aggregation over seeds, binomial noise,
packing of per-image correctness, and the paired bootstrap against its analytic limit."""
from __future__ import annotations

import math

import numpy as np
import pytest

from paperprune.stats import (
    aggregate,
    binomial_std,
    pack_correct,
    paired_bootstrap,
    unpack_correct,
)
from paperprune.utils import PaperpruneError


def test_binomial_std_known_values():
    assert binomial_std(90.0, 10000) == pytest.approx(0.3)
    assert binomial_std(50.0, 100) == pytest.approx(5.0)
    assert binomial_std(100.0, 7) == 0.0
    with pytest.raises(PaperpruneError, match="n=0"):
        binomial_std(90.0, 0)


def test_aggregate_groups_seeds():
    rows = [{"arch": "r56", "method": "l1", "seed": s, "top1": v} for s, v in ((2, 90.0), (0, 92.0), (1, 94.0))]
    rows += [{"arch": "r56", "method": "sglp", "seed": 0, "top1": 93.5}]
    out = aggregate(rows, by=("arch", "method"), value="top1")
    assert out == [
        {"arch": "r56", "method": "l1", "n": 3, "mean": 92.0, "std": 2.0, "min": 90.0, "max": 94.0, "seeds": [0, 1, 2]},
        {"arch": "r56", "method": "sglp", "n": 1, "mean": 93.5, "std": None, "min": 93.5, "max": 93.5, "seeds": [0]},
    ]
    with pytest.raises(PaperpruneError, match="a row lacks top1"):
        aggregate([{"arch": "r56", "method": "l1"}], by=("arch", "method"), value="top1")


def test_pack_round_trip_and_size():
    rng = np.random.default_rng(0)
    correct = rng.random(10001) < 0.9
    packed = pack_correct(correct)
    assert packed["n"] == 10001 and len(packed["bits"]) == 4 * math.ceil(math.ceil(10001 / 8) / 3)
    assert np.array_equal(unpack_correct(packed), correct)


def test_paired_bootstrap_identical_methods_give_zero():
    a = np.random.default_rng(1).random((3, 500)) < 0.8
    res = paired_bootstrap(a, a.copy(), n_boot=500)
    assert (res["diff"], res["low"], res["high"]) == (0.0, 0.0, 0.0)
    assert (res["seeds"], res["images"]) == (3, 500)


def test_paired_bootstrap_matches_the_analytic_interval():
    """b is right on k more images than a (same elsewhere), one seed: the difference is exactly
    k/n, and the bootstrap interval approaches k/n -+ 1.96 sqrt(p (1 - p) / n) with p = k/n."""
    n, k = 4000, 200
    rng = np.random.default_rng(2)
    a = rng.random(n) < 0.7
    wrong = np.flatnonzero(~a)[:k]
    b = a.copy()
    b[wrong] = True
    res = paired_bootstrap(a, b, n_boot=4000, seed=3)
    p = k / n
    half = 100 * 1.96 * math.sqrt(p * (1 - p) / n)
    assert res["diff"] == pytest.approx(100 * p)
    assert res["low"] == pytest.approx(100 * p - half, abs=0.12 * half)
    assert res["high"] == pytest.approx(100 * p + half, abs=0.12 * half)


def test_paired_bootstrap_pairs_images():
    """Two methods that share most errors: the paired interval is far narrower than the interval
    of two independent accuracies, and it excludes 0 for a real 1-point gain."""
    n = 10000
    rng = np.random.default_rng(4)
    a = np.stack([rng.random(n) < 0.9 for _ in range(3)])
    b = a.copy()
    for s in range(3):
        b[s, np.flatnonzero(~a[s])[:100]] = True  # +1 point on every seed
    res = paired_bootstrap(a, b, n_boot=1000)
    assert res["diff"] == pytest.approx(1.0)
    assert 0.0 < res["low"] < 1.0 < res["high"] < 2.0
    unpaired = 2 * 1.96 * math.hypot(binomial_std(90.0, 3 * n), binomial_std(91.0, 3 * n))  # ~0.96 points
    assert res["high"] - res["low"] < 0.5 * unpaired


def test_paired_bootstrap_seed_spread_widens_the_interval():
    """With a gain on one seed only, resampling seeds must widen the interval to reach 0."""
    n = 2000
    a = np.zeros((3, n), dtype=bool)
    b = a.copy()
    b[0, :300] = True  # +15 points on seed 0, nothing on seeds 1 and 2
    res = paired_bootstrap(a, b, n_boot=2000)
    assert res["diff"] == pytest.approx(5.0)
    assert res["low"] == pytest.approx(0.0, abs=1e-9) and res["high"] > 13.0


def test_paired_bootstrap_rejects_mismatched_shapes():
    with pytest.raises(PaperpruneError, match=r"one shape \(seeds, images\); got \(2, 10\) and \(3, 10\)"):
        paired_bootstrap(np.zeros((2, 10)), np.zeros((3, 10)))
