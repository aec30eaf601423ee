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


class Counting(FixedScores):
    """FixedScores that records the levels asked for; `dead` leading channels of every layer are never kept."""

    def __init__(self, scores, dead=0):
        super().__init__(scores)
        self.asked, self.dead = [], dead

    def select(self, level):
        self.asked.append(level)
        chosen = super().select(level)
        for mask, _ in chosen.values():
            mask[:self.dead] = False
        return chosen


def test_the_weakest_level_is_evaluated_only_when_needed():
    """The weakest setting (the slowest lasso to solve) is asked for only when no bisection step falls
    below the target; it still refuses a target it overshoots even there."""
    crit, cost, scores = make()
    counting = Counting(scores)
    counting.prepare(None, None, None)
    lo, hi = counting.bounds()
    sel = select_channels(counting, cost, 0.5, omega=2, progress=False)
    assert lo not in counting.asked and counting.asked[0] == hi and sel.steps == len(counting.asked) - 1
    dead = Counting(scores, dead=12)  # 12 of 16-64 channels never kept: even the weakest level removes > 0.3
    dead.prepare(None, None, None)
    with pytest.raises(PaperpruneError, match="unreachable for fixed: even at its weakest setting"):
        select_channels(dead, cost, 0.05, omega=2, progress=False)
    assert dead.asked[-1] == lo


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


def tied(levels=3, sizes=(64, 64, 128, 128), seed=0):
    """Integer scores 1..levels (HRank's mean ranks on tiny maps are like this): after normalising by the
    layer maximum most channels share one of a few values, so the kept set jumps between levels."""
    gen = torch.Generator().manual_seed(seed)
    scores = {f"layer{i}": torch.randint(1, levels + 1, (c,), generator=gen).double() for i, c in enumerate(sizes)}
    for s in scores.values():
        s[0] = levels  # every layer's maximum is `levels`, so equal integers tie across layers too
    crit = FixedScores(scores)
    crit.prepare(None, None, None)
    return crit, LinearCost({name: 40 for name in scores}, fixed=500), scores


@pytest.mark.parametrize("target", [0.4, 0.5, 0.8])
def test_tied_scores_land_within_tolerance_by_a_deterministic_split(target):
    """HRank on VGG-16: with tied scores no level meets the target; the tie is split by the
    documented secondary key, and the result is within 1%, keeps the score order, and is reproducible."""
    crit, cost, scores = tied()
    reductions = set()
    for level in torch.linspace(-1, 1, 401).tolist():  # what levels alone can reach: a few jumps
        widths = {n: max(2, int(m.sum())) for n, (m, _) in crit.select(level).items()}
        reductions.add(round(1 - cost(widths)[0] / cost(crit.channels)[0], 6))
    assert all(abs(r - target) > 0.01 for r in reductions)
    sel = select_channels(crit, cost, target, omega=2, progress=False)
    assert abs(1 - sel.macs / sel.base_macs - target) <= 0.01
    assert sel.tie_split > 0
    boundary = set()
    for name, idx in sel.keep.items():
        dropped = torch.ones(scores[name].numel(), dtype=torch.bool)
        dropped[idx] = False
        if dropped.any():
            assert scores[name][dropped].max() <= scores[name][idx].min()  # lower scores go first
            boundary.add(float(scores[name][dropped].max()))
    assert len(boundary) == 1  # every layer is cut inside the same tied value
    value = boundary.pop()
    fractions = []
    for name, idx in sel.keep.items():  # tied channels leave every layer at the same pace
        at = scores[name] == value
        fractions.append(1 - int(at[idx].sum()) / int(at.sum()))
    assert max(fractions) - min(fractions) <= 2 / min(int((s == value).sum()) for s in scores.values())
    again = select_channels(crit, cost, target, omega=2, progress=False)
    assert all(torch.equal(again.keep[n], sel.keep[n]) for n in sel.keep)


def test_ties_split_no_further_than_the_bracket_allows():
    """A target inside a tie that even the whole tie cannot reach is still a clear error."""
    crit, cost, _ = tied(levels=1)  # every channel ties: only 'all' or the floor
    with pytest.raises(PaperpruneError, match="unreachable"):
        select_channels(crit, cost, 0.99, omega=8, progress=False)
    sel = select_channels(crit, cost, 0.5, omega=2, progress=False)
    assert abs(1 - sel.macs / sel.base_macs - 0.5) <= 0.01 and sel.tie_split > 0


def test_keep_in_parts_keeps_equal_counts_chosen_per_part():
    """Layers read by a grouped conv: each of the P contiguous parts keeps ceil(width / P)
    channels, the criterion's own (mask) first, then by rank; positions differ between parts."""
    from paperprune.select import keep_in_parts

    rank = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.2, 0.8, 0.3, 0.6])
    mask = torch.tensor([True, False, False, False, False, True, True, True])
    kept = keep_in_parts(mask, rank, 4, 2)  # parts [0..3] and [4..7], 2 each
    assert kept.tolist() == [0, 3, 5, 7]  # part 0: the masked 0, then rank 0.7; part 1: three masked, best two
    assert keep_in_parts(mask, rank, 5, 2).tolist() == [0, 2, 3, 5, 6, 7]  # 5 rounds up to 3 per part
    assert keep_in_parts(torch.zeros(8, dtype=torch.bool), torch.zeros(8), 2, 4).tolist() == [0, 2, 4, 6]
