"""The uniform allocation (METHOD.md section 2, "Allocation"): every prunable layer keeps the
same fraction of its channels, the fraction bisected to the FLOPs target, the criterion choosing
which channels; and the global allocation unchanged. Random-weight paper models, L1 and random
scores (no statistics to compute), checked against L1 norms computed here from the conv
weights."""
from __future__ import annotations

import pytest
import torch

from paperprune import prune
from paperprune.compare import compare_selections
from paperprune.criteria import Calibration, create_criterion
from paperprune.models import create_model
from paperprune.pipeline import model_parts
from paperprune.select import UniformAllocation, allocate, select_channels
from paperprune.surgery import MacsPredictor

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = (3, 32, 32)
OMEGA = 4


def _prepared(arch: str, method: str):
    torch.manual_seed(0)
    model = create_model(arch, num_classes=4, in_channels=3).eval()
    layers, classifier, _, _ = model_parts(model, None, None, None, SIZE)
    criterion = create_criterion(method, seed=0)
    criterion.prepare(model, layers, Calibration(torch.zeros(1, *SIZE), torch.zeros(1, dtype=torch.long), 4, {},
                                                 classifier))
    return model, layers, criterion


@pytest.mark.parametrize("arch", ["vgg16", "resnet56", "resnet110", "googlenet", "densenet40", "resnet50"])
def test_uniform_reaches_the_target_with_one_fraction_in_every_layer(arch):
    model, layers, criterion = _prepared(arch, "l1")
    predictor = MacsPredictor(model, layers, SIZE)
    sel = select_channels(allocate(criterion, "uniform"), predictor, 0.5, omega=OMEGA, progress=False)
    assert abs(1.0 - sel.macs / sel.base_macs - 0.5) <= 0.01
    fraction = 1.0 - sel.level
    for layer in layers:
        conv = model.get_submodule(layer.conv)
        full, kept = conv.out_channels, sel.keep[layer.name]
        # the same fraction of every layer, up to rounding (and one channel of a split tie), at least omega
        assert abs(len(kept) - max(min(OMEGA, full), round(fraction * full))) <= 1, layer.name
        # which channels: the layer's largest filter L1 norms, computed here from the weights
        norms = conv.weight.detach().abs().sum(dim=(1, 2, 3))
        assert set(kept.tolist()) == set(torch.topk(norms, len(kept)).indices.tolist()), layer.name


def test_uniform_through_prune_records_its_allocation_and_fraction():
    torch.manual_seed(0)
    model = create_model("resnet56", num_classes=4, in_channels=3)
    data = [(torch.randn(8, *SIZE), torch.arange(8) % 4)]
    pruned, report = prune(model, data, method="random", flops_reduction=0.4, input_size=SIZE, samples_per_class=2,
                           allocation="uniform", progress=False)
    assert report.allocation == "uniform" and report.to_dict()["allocation"] == "uniform"
    assert abs(report.macs_reduction - 0.4) <= 0.01 and "(uniform)" in report.summary()
    fraction = report.criterion["fraction_kept"]
    assert all(abs(row["width_after"] - max(OMEGA, round(fraction * row["width_before"]))) <= 1
               for row in report.layers)
    assert "threshold" not in report.criterion
    from paperprune.flops import count_flops_params

    assert count_flops_params(pruned, SIZE)[0] == report.macs_after


def test_global_is_the_criterion_itself_and_the_default():
    """`allocate(c, "global")` hands the criterion to the budget rule unchanged, so global selections are
    the one-level rule: a channel kept iff its layer-normalised L1 norm exceeds the level (or the floor)."""
    model, layers, criterion = _prepared("resnet56", "l1")
    assert allocate(criterion, "global") is criterion
    assert isinstance(allocate(criterion, "uniform"), UniformAllocation)
    torch.manual_seed(0)
    data = [(torch.randn(8, *SIZE), torch.arange(8) % 4)]
    _, default = prune(model, data, method="l1", flops_reduction=0.5, input_size=SIZE, samples_per_class=2,
                       progress=False)
    _, named = prune(model, data, method="l1", flops_reduction=0.5, input_size=SIZE, samples_per_class=2,
                     allocation="global", progress=False)
    assert default.layers == named.layers and default.allocation == "global"
    for row, layer in zip(default.layers, layers):
        norms = model.get_submodule(layer.conv).weight.detach().abs().sum(dim=(1, 2, 3)).double()
        above = (norms / norms.max() > default.level).nonzero().flatten().tolist()
        if len(above) >= OMEGA:
            assert row["kept"] == above, row["name"]
    assert len({round(r["width_after"] / r["width_before"], 2) for r in default.layers}) > 1  # global: ratios vary


def test_compare_selections_holds_a_criterion_under_both_allocations():
    torch.manual_seed(0)
    model = create_model("resnet56", num_classes=4, in_channels=3)
    data = [(torch.randn(8, *SIZE), torch.arange(8) % 4)]
    cmp = compare_selections(model, data, methods=["l1", "l1:uniform"], flops_reduction=0.5, input_size=SIZE,
                             samples_per_class=2, progress=False)
    assert cmp.methods == ["l1", "l1:uniform"]
    assert cmp.reports["l1"].allocation == "global" and cmp.reports["l1:uniform"].allocation == "uniform"
    assert cmp.overlap()[0, 1] < 1.0


def test_uniform_ranks_by_the_criterion_at_its_weakest_level():
    """A lasso criterion's ranking changes with lam; the uniform allocation takes it at the weakest lam
    (the criterion's lowest level), once, whatever fraction it is asked for."""

    class Lasso:  # ranks reversed above level 0: the ranking at the weakest level (-1) is channel 5 first
        name, channels = "lasso", {"a": 6}
        asked: list = []

        def bounds(self):
            return -1.0, 3.0

        def select(self, level):
            self.asked.append(level)
            rank = torch.arange(6, dtype=torch.float64)
            return {"a": (rank > 2, rank if level < 0 else -rank)}

        def describe(self, level):
            return {"lam": 10.0 ** level, "threshold": None}

    uniform = UniformAllocation(Lasso())
    assert uniform.select(0.5)["a"][0].tolist() == [False, False, False, True, True, True]
    assert uniform.select(1 / 6)["a"][0].tolist() == [False, True, True, True, True, True]
    assert Lasso.asked == [-1.0]
    assert uniform.describe(0.5) == {"lam": 0.1, "fraction_kept": 0.5}
