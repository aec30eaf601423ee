"""Selections at a matched budget (paperprune.compare), and what the class structure changes on a
planted layer: a channel vital to one superclass but low in total relevance."""
import warnings

import numpy as np
import pytest
import torch

from paperprune.compare import compare_selections, jaccard
from paperprune.lab.data import class_balanced_batch, dataset_info, load_tensors
from paperprune.ib import layer_statistics
from paperprune.models import PrunableLayer
from paperprune.lab.tutorial import VITAL, PlantedNet  # the planted layer tutorial 04 shows
from paperprune.utils import PaperpruneError

LAYERS = [PrunableLayer("conv", "conv", "relu", "classifier")]


def _calibration(seed, per_class=20):
    info = dataset_info("synthetic")
    x, y = class_balanced_batch(*load_tensors("synthetic", "train"), per_class, seed=seed)
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


def test_the_label_supervised_lassos_keep_the_vital_channel_and_the_others_do_not():
    """Channel 0 has about half the total relevance ||R_k|| of the best copies yet is the only channel that
    tells superclass 0 apart. At 3 of 12 channels, over four calibration draws, every solve converged at the
    default max_iter (the copies differ, so Q is well conditioned): the class-wise lasso, sGLP-IB and sTLP-IB
    keep it on (nearly) every draw, L1, HRank and APIB (whose response is the classifier's output, not the
    labels) on (nearly) none. Counts with a one-draw margin, not exact sets: the second and third kept
    channel can be near ties on some draw."""
    model = PlantedNet(*_calibration(0))
    images, labels = _calibration(0)
    norms = layer_statistics(model, LAYERS, images, labels, 9, dtype=torch.float64)["conv"].relevance.norm(dim=1)
    assert norms[VITAL] < 0.6 * norms[[1, 6]].min()
    # the copies' relevance falls with their index, as COPY_QUANTILES builds it
    assert bool((norms[1:6].diff() < 0).all() and (norms[6:11].diff() < 0).all())
    methods = ("l1", "hrank", "apib", "classwise", "sglp", "stlp")
    keeps_vital = dict.fromkeys(methods, 0)
    for seed in range(4):
        images, labels = _calibration(seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*stopped at max_iter")
            cmp = compare_selections(model, [(images, labels)], methods=list(methods), flops_reduction=0.75,
                                     layers=LAYERS, samples_per_class=20, omega=1, progress=False)
        for method in methods:
            assert len(cmp.kept[method]["conv"]) == 3
            keeps_vital[method] += VITAL in cmp.kept[method]["conv"]
    assert keeps_vital["l1"] == 0  # the weights do not depend on the draw
    assert max(keeps_vital["hrank"], keeps_vital["apib"]) <= 1, keeps_vital
    assert min(keeps_vital[m] for m in ("classwise", "sglp", "stlp")) >= 3, keeps_vital


def test_the_controls_problem_is_the_regression_and_its_l21_lasso_is_sklearns():
    """The controls' Q and R are design^T design and design^T targets (the regression of METHOD.md section 2),
    and the l2,1 row-coupled lasso (a tree of one group, all classes) solves the same problem as scikit-learn's
    MultiTaskLasso on that design (alpha = lam / rows), to solver tolerance."""
    from sklearn.linear_model import MultiTaskLasso

    from paperprune.lasso import solve_stlp
    from paperprune.structure import ClassTree
    from paperprune.lab.tutorial import planted_controls

    images, labels = _calibration(0, per_class=8)  # 72 samples: a design of 72^2 rows
    controls = planted_controls(PlantedNet(*_calibration(0)), LAYERS[0], images, labels, 9)
    X, Y = controls.design, controls.targets
    torch.testing.assert_close(controls.Q, X.T @ X, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(controls.R, X.T @ Y, atol=1e-10, rtol=1e-8)
    lam = 0.5 * float(controls.R.norm(dim=1).max())  # a lam that keeps a few rows
    B = solve_stlp(controls.Q, controls.R, ClassTree([list(range(9))], torch.ones(1, dtype=torch.float64), 9),
                   lam, tol=1e-10, max_iter=100000).B
    sk = MultiTaskLasso(alpha=lam / X.shape[0], fit_intercept=False, tol=1e-12, max_iter=100000)
    W = torch.from_numpy(sk.fit(X.numpy(), Y.numpy()).coef_.T)
    kept = B.norm(dim=1) > 1e-7
    assert 1 <= int(kept.sum()) < 12
    assert torch.equal(kept, W.norm(dim=1) > 1e-7)
    torch.testing.assert_close(B, W, atol=1e-6 * float(B.abs().max()), rtol=0)


def test_the_controls_keep_exactly_the_budget_and_what_they_keep():
    """Each control keeps exactly 3 channels; on the planted layer every label-supervised lasso, with or
    without a structure, with a shuffled one, row-coupled or with one label kernel, keeps the vital channel
    on both draws (what tutorial 04 reports)."""
    from paperprune.lab.tutorial import planted_controls

    for seed in (0, 1):
        images, labels = _calibration(seed)
        kept = planted_controls(PlantedNet(*_calibration(0)), LAYERS[0], images, labels, 9,
                                shuffle_seed=seed).selections(3)
        assert set(kept) >= {"l2,1 lasso (rows, no structure)", "one label kernel", "sGLP-IB, shuffled classes",
                             "sTLP-IB, shuffled classes"}
        assert all(len(k) == 3 and VITAL in k for k in kept.values()), kept


def _degenerate(images, labels):
    """PlantedNet with every copy made an exact duplicate of its detector's first copy: Q of rank 4."""
    model = PlantedNet(images, labels)
    with torch.no_grad():
        for first, rest in ((1, slice(2, 6)), (6, slice(7, 11))):
            model.conv.weight[rest] = model.conv.weight[first]
            model.conv.bias[rest] = model.conv.bias[first]
            model.bn.running_mean[rest] = model.bn.running_mean[first]
            model.bn.running_var[rest] = model.bn.running_var[first]
    return model


def test_a_short_solve_on_the_planted_layer_is_named_with_its_cause():
    """At a small max_iter the planted layer's solve stops early: the warning names the layer with its
    measured Q (full rank, and its condition number; or, for near-duplicate channels, its rank), and
    `unconverged_layers` records it."""
    images, labels = _calibration(0)
    for model, cause in ((PlantedNet(images, labels), r"Q of full rank 12, condition number \d\.\de\+0[2-3]"),
                         (_degenerate(images, labels), "Q of rank 4 for 12 channels")):
        with pytest.warns(UserWarning, match=rf"stopped at max_iter=50 .* conv \({cause}\)"):
            cmp = compare_selections(model, [(images, labels)], methods=["l1", "sglp"], flops_reduction=0.75,
                                     layers=LAYERS, samples_per_class=20, omega=1, max_iter=50, progress=False)
        assert cmp.reports["sglp"].criterion["unconverged_layers"] == ["conv"]


def test_a_stalled_layers_rank_is_computed_once_per_prepare(monkeypatch):
    """describe() warns at every level whose solve stalled (once per curves point); the rank of the stalled
    layer's Q behind the message is computed once, and again only after a new prepare."""
    from paperprune.criteria import Calibration, create_criterion

    images, labels = _calibration(0)
    model = _degenerate(images, labels)
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
