"""paperprune.lab.stats on fixtures with known answers: aggregation over seeds, binomial noise,
and packing of per-image correctness (intervals over seeds: tests/test_seeds.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from paperprune.lab.stats import aggregate, binomial_std, pack_correct, unpack_correct
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
