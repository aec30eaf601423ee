"""The budget rule on its own: a score criterion over fake layers and an exact linear cost model."""
import pytest
import torch

from paperprune.criteria import ScoreCriterion, create_criterion
from paperprune.select import apply_floor, round_up, select_channels
from paperprune.utils import PaperpruneError


class FixedScores(ScoreCriterion):
    name = "fixed"

    def __init__(self, scores):
        super().__init__()
        self._given = scores

    def channel_scores(self, model, layers, calibration):
        return self._given


class LinearCost:
    """MACs = fixed + sum_l cost_l * width_l; params = sum of widths (a stand-in for MacsPredictor)."""

    def __init__(self, costs, fixed=1000):
        self.costs, self.fixed = costs, fixed

    def __call__(self, widths):
        return self.fixed + sum(self.costs[n] * w for n, w in widths.items()), sum(widths.values())


def make(seed=0, sizes=(16, 32, 64, 64)):
    gen = torch.Generator().manual_seed(seed)
    scores = {f"layer{i}": torch.rand(c, generator=gen, dtype=torch.float64) for i, c in enumerate(sizes)}
    costs = {f"layer{i}": 50 * (i + 1) for i in range(len(sizes))}
    crit = FixedScores(scores)
    crit.prepare(None, None, None)
    return crit, LinearCost(costs), scores


def test_apply_floor_keeps_mask_or_tops_up_by_rank():
    mask = torch.tensor([False, True, False, False])
    rank = torch.tensor([0.9, 0.1, 0.5, 0.7])
    assert apply_floor(mask, rank, 1).tolist() == [1]
    # top up: the masked channel first, then the best ranked
    assert apply_floor(mask, rank, 3).tolist() == [0, 1, 3]
    assert apply_floor(torch.zeros(2, dtype=torch.bool), torch.zeros(2), 5).tolist() == [0, 1]


@pytest.mark.parametrize("target", [0.2, 0.5, 0.8])
def test_bisection_hits_target_within_one_percent(target):
    crit, cost, scores = make()
    sel = select_channels(crit, cost, target, omega=2, progress=False)
    base = cost({n: s.numel() for n, s in scores.items()})[0]
    achieved = 1 - cost(sel.widths)[0] / base
    assert abs(achieved - target) <= 0.01
    assert sel.macs == cost(sel.widths)[0] and sel.base_macs == base
    for name, idx in sel.keep.items():
        assert idx.numel() >= 2
        # kept channels are the top-scored ones in each layer (global threshold on normalised scores)
        kept_min = scores[name][idx].min()
        dropped = torch.ones(scores[name].numel(), dtype=torch.bool)
        dropped[idx] = False
        if dropped.any() and idx.numel() > 2:
            assert scores[name][dropped].max() <= kept_min


def test_unreachable_targets_are_clear_errors():
    crit, cost, _ = make()
    with pytest.raises(PaperpruneError, match="unreachable.*omega=60"):
        select_channels(crit, cost, 0.9, omega=60, progress=False)
    for bad in (0.0, 1.0, -0.2, 1.5, "half"):
        with pytest.raises(PaperpruneError, match="flops_reduction"):
            select_channels(crit, cost, bad, progress=False)
    with pytest.raises(PaperpruneError, match="omega"):
        select_channels(crit, cost, 0.5, omega=0, progress=False)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(PaperpruneError, match="known methods: random, l1, hrank, apib, classwise, sglp, stlp"):
        create_criterion("magnitude")


def test_random_criterion_is_seeded_and_options_are_routed():
    from torch import nn

    from paperprune.models import PrunableLayer

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    layers = [PrunableLayer("0", "0", "1")]
    a, b = create_criterion("random", seed=3, gamma_ratio=0.5), create_criterion("random", seed=3)
    c = create_criterion("random", seed=4)
    for crit in (a, b, c):
        crit.prepare(model, layers, None)
    assert torch.equal(a.scores["0"], b.scores["0"])
    assert not torch.equal(a.scores["0"], c.scores["0"])
    assert create_criterion("sglp", gamma_ratio=0.25, seed=1).gamma_ratio == 0.25


def test_any_cost_is_bisected_and_named_in_its_errors():
    crit, macs, _ = make()

    def quadratic(widths):
        return 10.0 + sum(w * w for w in widths.values())

    sel = select_channels(crit, macs, 0.5, cost=quadratic, target_name="latency_reduction", omega=2, progress=False)
    assert abs(1 - sel.cost / sel.base_cost - 0.5) <= 0.01 and sel.cost == quadratic(sel.widths)
    assert sel.macs == macs(sel.widths)[0]
    with pytest.raises(PaperpruneError, match=r"latency_reduction=1\.2 is not a fraction.*of the predicted latency"):
        select_channels(crit, macs, 1.2, cost=quadratic, target_name="latency_reduction", progress=False)
    with pytest.raises(PaperpruneError, match=r"latency_reduction=0\.990 is unreachable.*of the predicted latency"):
        select_channels(crit, macs, 0.99, cost=quadratic, target_name="latency_reduction", omega=8, progress=False)


def test_round_to_keeps_multiples_filled_by_rank():
    crit, macs, scores = make()
    multiples = {"layer0": 4, "layer1": 8, "layer2": 16, "layer3": 1}
    sel = select_channels(crit, macs, 0.5, round_to=multiples, omega=2, tolerance=0.03, progress=False)
    for name, idx in sel.keep.items():
        assert idx.numel() % multiples[name] == 0 or idx.numel() == scores[name].numel()
        assert set(idx.tolist()) == set(torch.argsort(-scores[name])[:idx.numel()].tolist())
    assert [round_up(w, 8, 20) for w in (1, 8, 9, 17)] == [8, 8, 16, 20]
