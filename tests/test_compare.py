"""Selections at a matched budget (paperprune.compare), and what the class structure changes on a
planted layer: a channel vital to one superclass but low in total relevance."""
import warnings

import numpy as np
import pytest
import torch

from paperprune.compare import compare_selections, jaccard
from paperprune.data import class_balanced_batch, dataset_info, load_tensors
from paperprune.ib import layer_statistics
from paperprune.models import PrunableLayer
from paperprune.tutorial import PLANTED_MAX_ITER, VITAL, PlantedNet  # the planted layer tutorial 04 shows
from paperprune.utils import PaperpruneError

LAYERS = [PrunableLayer("conv", "conv", "relu", "classifier")]


def _calibration(seed):
    info = dataset_info("synthetic")
    x, y = class_balanced_batch(*load_tensors("synthetic", "train"), 20, seed=seed)
    mean, std = torch.tensor(info.mean).view(1, -1, 1, 1), torch.tensor(info.std).view(1, -1, 1, 1)
    return (x.float() / 255 - mean) / std, y


def test_jaccard_and_overlap_known_answers():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5 and jaccard(set(), set()) == 1.0 and jaccard({1}, set()) == 0.0
    images, labels = _calibration(0)
    model = PlantedNet(*_calibration(0))
    cmp = compare_selections(model, [(images, labels)], methods=["l1", "random"], flops_reduction=0.75,
                             layers=LAYERS, samples_per_class=20, omega=1, progress=False)
    a, b = set(cmp.kept["l1"]["conv"]), set(cmp.kept["random"]["conv"])
    assert len(a) == len(b) == 3 and a == {3, 6, 8}  # the largest filters: the five-copy detectors' extremes
    expect = np.array([[1.0, jaccard(a, b)], [jaccard(a, b), 1.0]])
    np.testing.assert_array_equal(cmp.overlap(), expect)
    np.testing.assert_array_equal(cmp.overlap_by_layer()["conv"], expect)
    with pytest.raises(PaperpruneError, match="at least two"):
        compare_selections(model, [(images, labels)], methods=["l1"], layers=LAYERS)
    with pytest.raises(PaperpruneError, match="layer='nope'"):
        cmp.overlap("nope")


def test_the_graph_and_the_tree_keep_the_vital_channel():
    """Channel 0 has a third of the others' total relevance ||R_k|| yet is the only channel that
    tells superclass 0 apart. At 3 of 12 channels, over three calibration seeds (signed default),
    with every lasso solve converged: sGLP-IB and sTLP-IB keep it for all three seeds, APIB for
    seed 2 only, and L1, HRank and the plain class-wise lasso for none: they spend the budget on
    copies of the strong detectors. (Measured, not designed in: the class-wise relevance alone
    does not rescue the channel; the graph's and the tree's coupling of related classes does.)
    Stopped early the solves share weight between copies: at the old default of 3,000 iterations
    sGLP-IB kept the channel for no seed and sTLP-IB for seeds 0 and 1 (the claim of an earlier
    version of this test), hence the error on an unconverged solve."""
    model = PlantedNet(*_calibration(0))
    images, labels = _calibration(0)
    norms = layer_statistics(model, LAYERS, images, labels, 9, dtype=torch.float64)["conv"].relevance.norm(dim=1)
    assert norms[VITAL] < 0.5 * norms[1:11].min()
    kept_vital = {m: [] for m in ("l1", "hrank", "apib", "classwise", "sglp", "stlp")}
    for seed in (0, 1, 2):
        images, labels = _calibration(seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*stopped at max_iter")
            cmp = compare_selections(model, [(images, labels)], methods=list(kept_vital), flops_reduction=0.75,
                                     layers=LAYERS, samples_per_class=20, omega=1, max_iter=PLANTED_MAX_ITER,
                                     progress=False)
        for method in kept_vital:
            assert len(cmp.kept[method]["conv"]) == 3
            if VITAL in cmp.kept[method]["conv"]:
                kept_vital[method].append(seed)
    assert kept_vital == {"l1": [], "hrank": [], "apib": [2], "classwise": [], "sglp": [0, 1, 2], "stlp": [0, 1, 2]}


def test_a_short_solve_on_the_planted_layer_is_named_with_its_cause():
    """At a small max_iter the planted layer's solve stops early: the warning names the layer and the
    measured rank of its Q (4 for 12 channels: the five-copy detectors), and `unconverged_layers` records it."""
    model = PlantedNet(*_calibration(0))
    images, labels = _calibration(0)
    with pytest.warns(UserWarning, match=r"stopped at max_iter=50 .* conv \(Q of rank 4 for 12 channels\)"):
        cmp = compare_selections(model, [(images, labels)], methods=["l1", "sglp"], flops_reduction=0.75,
                                 layers=LAYERS, samples_per_class=20, omega=1, max_iter=50, progress=False)
    assert cmp.reports["sglp"].criterion["unconverged_layers"] == ["conv"]


def test_a_stalled_layers_rank_is_computed_once_per_prepare(monkeypatch):
    """describe() warns at every level whose solve stalled (once per curves point); the rank of the stalled
    layer's Q behind the message is computed once, and again only after a new prepare."""
    from paperprune.criteria import Calibration, create_criterion

    images, labels = _calibration(0)
    model = PlantedNet(images, labels)
    criterion = create_criterion("sglp", max_iter=50)
    calibration = Calibration(images, labels, dataset_info("synthetic").num_classes)
    criterion.prepare(model, LAYERS, calibration)
    calls = []
    eigvalsh = torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda A: calls.append(A.shape) or eigvalsh(A))
    with pytest.warns(UserWarning, match=r"conv \(Q of rank 4 for 12 channels\)"):
        for level in (1.0, 2.0, 1.0):
            criterion.describe(level)
    assert calls == [(12, 12)]
    criterion.prepare(model, LAYERS, calibration)
    with pytest.warns(UserWarning, match="rank 4"):
        criterion.describe(1.0)
    assert calls == [(12, 12)] * 2
