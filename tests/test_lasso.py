"""Structured-lasso solvers (paperprune.lasso), signed and non-negative, against cvxpy,
least squares, NNLS and closed-form thresholds (METHOD.md section 2)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

cp = pytest.importorskip("cvxpy")
from scipy.optimize import nnls  # noqa: E402

from paperprune import lasso  # noqa: E402
from paperprune.lasso import (  # noqa: E402
    lasso_path, sglp_objective, solution_norm_bound, solve_sglp, solve_stlp, stlp_objective, tree_prox)
from paperprune.structure import ClassGraph, ClassTree, class_tree_from_embeddings  # noqa: E402
from paperprune.utils import PaperpruneError  # noqa: E402

C, K = 12, 5
TIGHT = dict(solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11, tol_ktratio=1e-9)
SIGNS = pytest.mark.parametrize("nonnegative", [False, True], ids=["signed", "nonneg"])


def _regression(Phi, Y):
    """Q = Phi^T Phi, R = Phi^T Y: the two halves of one regression, as Q and R are (METHOD.md section 2)."""
    return torch.tensor(Phi.T @ Phi), torch.tensor(Phi.T @ Y), Phi, Y


@pytest.fixture(scope="module")
def problem():
    """Q = Phi^T Phi (unit diagonal, PSD, full rank), R = Phi^T Y in [0, 1]: a normalised-HSIC-like problem."""
    rng = np.random.default_rng(0)
    Phi = np.abs(rng.standard_normal((2 * C, C)) + 0.5)
    Phi /= np.linalg.norm(Phi, axis=0)
    Y = np.abs(rng.standard_normal((2 * C, K)) + 0.5)
    Y /= np.linalg.norm(Y, axis=0)
    return _regression(Phi, Y)


@pytest.fixture(scope="module", params=["singular", "near-singular"])
def degenerate(request):
    """Redundant channels as trained layers have them: channel 1 duplicates channel 0 (singular Q)
    or nearly (1e-4 apart), channel 2 is dead (zero row of Q and R), channel 3 mixes 4 and 5."""
    rng = np.random.default_rng(5)
    Phi = rng.standard_normal((2 * C, C)) + 0.3
    Phi[:, 1] = Phi[:, 0] + (1e-4 * rng.standard_normal(2 * C) if request.param == "near-singular" else 0)
    Phi[:, 2] = 0
    Phi[:, 3] = 0.6 * Phi[:, 4] + 0.4 * Phi[:, 5]
    norms = np.linalg.norm(Phi, axis=0)
    Phi /= np.where(norms > 0, norms, 1)
    Y = rng.standard_normal((2 * C, K))
    Y /= np.linalg.norm(Y, axis=0)
    return _regression(Phi, Y)


def _cvx_value(Q, R, lam, *, nonnegative, graph=None, gamma=0.0, tree=None):
    """The optimal value by cvxpy (Clarabel), the fused terms built from the edge list and signs."""
    q, U = np.linalg.eigh(Q.numpy())
    F = (U * np.sqrt(np.clip(q, 0, None))).T
    B = cp.Variable(tuple(R.shape), nonneg=nonnegative)
    obj = 0.5 * cp.sum_squares(F @ B) - cp.sum(cp.multiply(R.numpy(), B))
    if graph is not None:
        fused = sum(w * cp.sum(cp.abs(B[:, c] - s * B[:, d]))
                    for (c, d), w, s in zip(graph.edges.tolist(), graph.weights.tolist(), graph.signs.tolist()))
        obj = obj + lam * cp.sum(cp.abs(B)) + gamma * fused
    if tree is not None:
        obj = obj + lam * sum(w * cp.sum(cp.norm(B[:, g], 2, axis=1)) for g, w in zip(tree.groups, tree.weights.tolist()))
    prob = cp.Problem(cp.Minimize(obj))
    prob.solve(**TIGHT)
    return prob.value


def _assert_optimal(res, ref, nonnegative):
    assert res.converged and res.residual <= 1e-6
    if nonnegative:
        assert res.B.min() >= 0
    assert abs(res.objective - ref) <= 1e-5 * abs(ref)
    assert ref < -1e-4  # a problem whose optimum is not B = 0


@SIGNS
@pytest.mark.parametrize("lam,gamma", [(0.02, 0.05), (0.1, 0.3), (0.3, 0.1), (0.1, 0.0)])
def test_sglp_matches_cvxpy(problem, graph, lam, gamma, nonnegative):
    Q, R, *_ = problem
    res = solve_sglp(Q, R, graph, lam, gamma, nonnegative=nonnegative)
    _assert_optimal(res, _cvx_value(Q, R, lam, nonnegative=nonnegative, graph=graph, gamma=gamma), nonnegative)
    assert res.objective == pytest.approx(sglp_objective(res.B, Q, R, graph, lam, gamma))
    assert set(res.certificate) == {"primal_residual", "dual_residual", "screened_violation", "rho", "working_set",
                                    "rounds"}
    assert res.residual == max(res.certificate[k] for k in ("primal_residual", "dual_residual", "screened_violation"))


@SIGNS
@pytest.mark.parametrize("lam", [0.02, 0.1, 0.3])
def test_stlp_matches_cvxpy(problem, tree, lam, nonnegative):
    Q, R, *_ = problem
    res = solve_stlp(Q, R, tree, lam, nonnegative=nonnegative)
    _assert_optimal(res, _cvx_value(Q, R, lam, nonnegative=nonnegative, tree=tree), nonnegative)
    assert res.objective == pytest.approx(stlp_objective(res.B, Q, R, tree, lam))


@SIGNS
@pytest.mark.parametrize("scale", [0.005, 0.3], ids=["small-lam", "large-lam"])
def test_degenerate_q_matches_cvxpy(degenerate, graph, tree, scale, nonnegative):
    """Singular and near-singular Q (duplicate, dead and mixed channels), small and large lam. The
    near-duplicate pair (Q's smallest non-zero eigenvalue 2e-9) converges slowly in the directions
    that barely move the objective: up to ~20,000 plain ADMM iterations to the 1e-6 residual here, about
    1,100 accelerated (`test_acceleration_cuts_the_iterations_of_a_near_singular_q`)."""
    Q, R, *_ = degenerate
    lam = scale * float(R.abs().max())
    sg = solve_sglp(Q, R, graph, lam, 0.5 * lam, nonnegative=nonnegative, max_iter=50000)
    _assert_optimal(sg, _cvx_value(Q, R, lam, nonnegative=nonnegative, graph=graph, gamma=0.5 * lam), nonnegative)
    st = solve_stlp(Q, R, tree, lam, nonnegative=nonnegative, max_iter=50000)
    _assert_optimal(st, _cvx_value(Q, R, lam, nonnegative=nonnegative, tree=tree), nonnegative)
    assert not sg.B[2].any() and not st.B[2].any()  # the dead channel stays at zero


def test_sglp_on_a_complete_100_class_graph_matches_cvxpy():
    """CIFAR-100's case: class embeddings that all correlate above rho give the complete graph (4,950 edges
    for 100 classes, as the paper profile's smoke model has); the solver's cost per iteration grows with the
    edges, its answer must not change. Four channels keep the reference solve small."""
    from paperprune.structure import class_graph_from_embeddings

    rng = np.random.default_rng(3)
    emb = rng.standard_normal(64) + 0.3 * rng.standard_normal((100, 64))  # one shared direction: all correlate
    graph = class_graph_from_embeddings(emb, rho=0.5)
    assert graph.num_edges == 100 * 99 // 2
    Phi = np.abs(rng.standard_normal((12, 4)) + 0.5)
    Phi /= np.linalg.norm(Phi, axis=0)
    Y = np.abs(rng.standard_normal((12, 100)) + 0.5)
    Y /= np.linalg.norm(Y, axis=0)
    Q, R, *_ = _regression(Phi, Y)
    lam, gamma = 0.1 * float(R.abs().max()), 0.002 * float(R.abs().max())
    res = solve_sglp(Q, R, graph, lam, gamma)
    B = cp.Variable(tuple(R.shape))
    D = graph.incidence(100).numpy()
    q, U = np.linalg.eigh(Q.numpy())
    F = (U * np.sqrt(np.clip(q, 0, None))).T
    obj = (0.5 * cp.sum_squares(F @ B) - cp.sum(cp.multiply(R.numpy(), B)) + lam * cp.sum(cp.abs(B))
           + gamma * cp.sum(cp.multiply(graph.weights.numpy()[None, :], cp.abs(B @ D.T))))
    prob = cp.Problem(cp.Minimize(obj))
    prob.solve(**TIGHT)
    _assert_optimal(res, prob.value, nonnegative=False)
    assert res.objective == pytest.approx(sglp_objective(res.B, Q, R, graph, lam, gamma))


def test_signed_solutions_use_negative_coefficients(problem, graph, tree):
    """The signed default is not the non-negative problem in disguise: with redundant channels the
    optimum has negative entries and a strictly lower objective than the B >= 0 optimum."""
    Q, R, *_ = problem
    for solve, args in ((solve_sglp, (graph, 0.02, 0.05)), (solve_stlp, (tree, 0.02))):
        signed, nonneg = solve(Q, R, *args), solve(Q, R, *args, nonnegative=True)
        assert signed.B.min() < -1e-3
        assert signed.objective < nonneg.objective - 1e-4


@SIGNS
def test_sglp_zero_threshold(problem, graph, nonnegative):
    """B = 0 is optimal iff lam >= max R (signed: max |R|) when gamma = 0 (the KKT condition at 0);
    any gamma keeps it zero."""
    Q, R, *_ = problem
    lam0 = float(R.max() if nonnegative else R.abs().max())
    assert torch.count_nonzero(solve_sglp(Q, R, graph, 1.001 * lam0, 0.0, nonnegative=nonnegative).B) == 0
    assert torch.count_nonzero(solve_sglp(Q, R, graph, 1.001 * lam0, 0.7, nonnegative=nonnegative).B) == 0
    assert torch.count_nonzero(solve_sglp(Q, R, graph, 0.98 * lam0, 0.0, nonnegative=nonnegative).B) > 0


@SIGNS
def test_stlp_zero_threshold(problem, tree, nonnegative):
    Q, R, *_ = problem
    # root-only weights: the penalty is lam sum_k ||B_k||, zero iff lam >= max_k ||R_k|| (||R_k+|| on B >= 0)
    root_only = ClassTree(tree.groups, torch.tensor([0.0] * 8 + [1.0], dtype=torch.float64))
    lam0 = float((R.clamp_min(0) if nonnegative else R).norm(dim=1).max())
    assert torch.count_nonzero(solve_stlp(Q, R, root_only, 1.001 * lam0, nonnegative=nonnegative).B) == 0
    assert torch.count_nonzero(solve_stlp(Q, R, root_only, 0.98 * lam0, nonnegative=nonnegative).B) > 0
    # general tree: ||b_G||_2 >= ||b_G||_1 / sqrt|G| gives Omega(b) >= sum_c a_c |b_c|,
    # a_c = sum_{v containing c} w_v / sqrt|G_v|, so lam >= max |R_kc| / a_c is sufficient for B = 0
    m = tree.mask.double()
    a = (tree.weights / m.sum(1).sqrt()) @ m
    bound = float((R.abs() / a).max())
    assert torch.count_nonzero(solve_stlp(Q, R, tree, 1.001 * bound, nonnegative=nonnegative).B) == 0


def test_unpenalised_is_least_squares(problem, graph, tree):
    """lam = gamma = 0: both problems reduce to K independent fits min ||Phi b - y_c||, by least
    squares when signed and by NNLS when b >= 0."""
    Q, R, Phi, Y = problem
    refs = {False: np.linalg.lstsq(Phi, Y, rcond=None)[0],
            True: np.stack([nnls(Phi, Y[:, c])[0] for c in range(K)], axis=1)}
    for nonnegative, ref in refs.items():
        ref_obj = sglp_objective(torch.tensor(ref), Q, R, graph, 0.0, 0.0)
        for res in (solve_sglp(Q, R, graph, 0.0, 0.0, nonnegative=nonnegative),
                    solve_stlp(Q, R, tree, 0.0, nonnegative=nonnegative)):
            assert res.converged
            assert res.objective == pytest.approx(ref_obj, rel=1e-8)
            np.testing.assert_allclose(res.B.numpy(), ref, atol=1e-4)
    assert refs[False].min() < 0  # the signed fit is a different problem here


def test_negative_edges_fuse_only_when_signed(problem, graph):
    """With B >= 0 a negative edge is no fusion: gamma w |B_kc + B_kd| = gamma w (B_kc + B_kd), so the
    solution equals that of the positive-edges-only graph with R[:, c] and R[:, d] lowered by gamma w.
    The signed problem must not have that equivalence: its negative edges pull B_kc towards -B_kd."""
    Q, R, *_ = problem
    lam, gamma = 0.02, 0.2
    pos = graph.signs > 0
    positive_only = ClassGraph(graph.edges[pos], graph.weights[pos], graph.signs[pos], num_classes=K)
    shifted = R.clone()
    for (c, d), w in zip(graph.edges[~pos].tolist(), graph.weights[~pos].tolist()):
        shifted[:, c] -= gamma * w
        shifted[:, d] -= gamma * w
    gap = {}
    for nonnegative in (True, False):
        full = solve_sglp(Q, R, graph, lam, gamma, nonnegative=nonnegative, tol=1e-9)
        reduced = solve_sglp(Q, shifted, positive_only, lam, gamma, nonnegative=nonnegative, tol=1e-9)
        gap[nonnegative] = float((full.B - reduced.B).abs().max())
    assert gap[True] < 1e-6
    assert gap[False] > 1e-2


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
@SIGNS
def test_tree_prox_matches_cvxpy(tree, nonnegative):
    rng = np.random.default_rng(1)
    X = torch.tensor(rng.standard_normal((6, K)))
    t = 0.4
    out = tree_prox(X, tree, t, nonnegative=nonnegative)
    for k in range(X.shape[0]):
        b = cp.Variable(K, nonneg=nonnegative)
        pen = sum(w * cp.norm(b[g], 2) for g, w in zip(tree.groups, tree.weights.tolist()))
        prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(b - X[k].numpy()) + t * pen))
        prob.solve(**TIGHT)
        ours = 0.5 * float(((out[k] - X[k]) ** 2).sum()) + t * sum(
            w * float(out[k, g].norm()) for g, w in zip(tree.groups, tree.weights.tolist()))
        assert ours <= prob.value + 1e-10  # the prox objective is 1-strongly convex: ours is the minimiser
        np.testing.assert_allclose(out[k].numpy(), b.value, atol=1e-6)
    if nonnegative:
        assert out.min() >= 0
    else:
        assert out.min() < 0


def _sequential_prox(x, groups, weights, t, nonnegative):
    """The prox of t sum_v w_v ||x_{G_v}|| on one row as Jenatton et al. (JMLR 2011) define it: one group
    soft-thresholding at a time, every group after the groups inside it (equal sets: the later index first)."""
    x = np.maximum(x, 0) if nonnegative else x.copy()
    for v in sorted(range(len(groups)), key=lambda v: (len(groups[v]), -v)):
        g = groups[v]
        norm = np.linalg.norm(x[g])
        x[g] *= max(0.0, 1 - t * weights[v] / norm) if norm > 0 else 0.0
    return x


@SIGNS
def test_tree_prox_on_many_classes_matches_the_sequential_definition(nonnegative):
    """From `lasso._SPARSE_CLASSES` classes on, the prox runs on the tree's nodes (norms up, factors down); it
    must equal the group-by-group definition on a deep tree from embeddings, with a repeated group and one of
    weight 0 added, at thresholds that zero some groups and not others."""
    rng = np.random.default_rng(3)
    Kb = 150
    assert Kb >= lasso._SPARSE_CLASSES
    emb = np.eye(12)[rng.integers(0, 12, Kb)] @ rng.standard_normal((12, 16)) + 0.5 * rng.standard_normal((Kb, 16))
    base = class_tree_from_embeddings(torch.tensor(emb))
    inner = [g for g in base.groups if 2 < len(g) < Kb]
    tree = ClassTree(base.groups + [list(max(inner, key=len)), list(min(inner, key=len))],
                     torch.cat([base.weights, torch.tensor([0.3, 0.0], dtype=base.weights.dtype)]), Kb)
    assert len(tree.levels) > 5
    X = torch.tensor(rng.standard_normal((4, Kb)))
    groups, weights = tree.groups, tree.weights.tolist()
    for t in (0.05, 0.3, 1.5):
        out = tree_prox(X, tree, t, nonnegative=nonnegative).numpy()
        ref = np.stack([_sequential_prox(x, groups, weights, t, nonnegative) for x in X.numpy()])
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-14)
        assert 0 < (ref == 0).mean() < 1 or t == 0.05


@SIGNS
def test_solution_norm_bound(problem, graph, tree, nonnegative):
    """The bound never exceeds the norm of the solution (solved to tolerance) of the tree, graph and plain
    lasso problems, is positive at a weak lam, and is 0 from lam = max |R| on for the plain lasso, whose
    solution is 0 there."""
    Q, R, *_ = problem
    empty = ClassGraph(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=Q.dtype), torch.zeros(0, dtype=Q.dtype))
    for lam in (0.02, 0.1, 0.3, float(R.abs().max())):
        cases = {"tree": (solution_norm_bound(Q, R, lam, tree=tree, nonnegative=nonnegative),
                          solve_stlp(Q, R, tree, lam, nonnegative=nonnegative, tol=1e-9)),
                 "graph": (solution_norm_bound(Q, R, lam, graph=graph, gamma=0.5 * lam, nonnegative=nonnegative),
                           solve_sglp(Q, R, graph, lam, 0.5 * lam, nonnegative=nonnegative, tol=1e-9)),
                 "plain": (solution_norm_bound(Q, R, lam, nonnegative=nonnegative),
                           solve_sglp(Q, R, empty, lam, 0.0, nonnegative=nonnegative, tol=1e-9))}
        for name, (bound, res) in cases.items():
            assert res.converged
            assert bound <= float(res.B.norm()) * (1 + 1e-9), (name, lam)
            if lam == 0.02:
                assert bound > 0, name
        if lam == float(R.abs().max()):
            assert cases["plain"][0] == 0 and float(cases["plain"][1].B.abs().max()) == 0


@SIGNS
def test_float32_agrees(problem, graph, tree, nonnegative):
    """float32 reaches the float64 optimum to 1e-5 relative objective, and cvxpy's too."""
    Q, R, *_ = problem
    for solve, args, ref in (
            (solve_sglp, (graph, 0.1, 0.3), _cvx_value(Q, R, 0.1, nonnegative=nonnegative, graph=graph, gamma=0.3)),
            (solve_stlp, (tree, 0.1), _cvx_value(Q, R, 0.1, nonnegative=nonnegative, tree=tree))):
        r64 = solve(Q, R, *args, nonnegative=nonnegative)
        r32 = solve(Q.float(), R.float(), *args, nonnegative=nonnegative)
        assert r32.B.dtype == torch.float32 and r32.converged
        assert abs(r32.objective - ref) <= 1e-5 * abs(ref)
        np.testing.assert_allclose(r32.B.double().numpy(), r64.B.numpy(), atol=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@SIGNS
def test_cuda_matches_cpu(problem, graph, tree, nonnegative):
    Q, R, *_ = problem
    for solve, args in ((solve_sglp, (graph, 0.1, 0.3)), (solve_stlp, (tree, 0.1))):
        cpu = solve(Q, R, *args, nonnegative=nonnegative)
        gpu = solve(Q.cuda(), R.cuda(), *args, nonnegative=nonnegative)
        gpu32 = solve(Q.float().cuda(), R.float().cuda(), *args, nonnegative=nonnegative)
        assert gpu.B.is_cuda and gpu32.converged
        assert gpu.objective == pytest.approx(cpu.objective, rel=1e-6)
        assert gpu32.objective == pytest.approx(cpu.objective, rel=1e-5)


@SIGNS
def test_warm_start(problem, graph, tree, nonnegative):
    Q, R, *_ = problem
    for solve, args in ((solve_sglp, (graph, 0.05, 0.1)), (solve_stlp, (tree, 0.05))):
        cold = solve(Q, R, *args, nonnegative=nonnegative)
        warm = solve(Q, R, *args, nonnegative=nonnegative, B0=cold.B)
        assert warm.converged and warm.iterations < cold.iterations
        assert warm.objective == pytest.approx(cold.objective, rel=1e-7, abs=1e-12)
    # a signed warm start is used as it is; under B >= 0 its negative entries are clipped
    neg = -torch.full_like(R, 0.1)
    assert solve_stlp(Q, R, tree, 0.05, B0=neg).objective == pytest.approx(
        solve_stlp(Q, R, tree, 0.05).objective, rel=1e-6)
    assert solve_stlp(Q, R, tree, 0.05, B0=neg, nonnegative=True).B.min() >= 0


def test_lasso_path(problem, graph):
    Q, R, *_ = problem
    lams = [0.3, 0.1, 0.03]
    path = lasso_path(lambda lam, B0: solve_sglp(Q, R, graph, lam, 0.5 * lam, B0=B0), lams)
    for lam, res in zip(lams, path):
        assert res.objective == pytest.approx(solve_sglp(Q, R, graph, lam, 0.5 * lam).objective, rel=1e-6)
    kept = [int((r.B.norm(dim=1) > 1e-6).sum()) for r in path]  # ADMM reaches exact zeros asymptotically
    assert kept[0] < kept[-1]
    with pytest.raises(PaperpruneError, match="decreasing"):
        lasso_path(lambda lam, B0: solve_sglp(Q, R, graph, lam, 0.0, B0=B0), [0.1, 0.2])


def test_signed_support_reaches_full_width(degenerate, graph, tree):
    """As lam -> 0 the signed support grows to span Q (METHOD.md section 2): at least rank(Q) channels,
    every non-dead one when Q is only near-singular, while the non-negative support stops at the NNLS
    support. (An exactly dependent channel, as channel 3 of the singular instance, may stay at zero:
    the lasso picks one of several equal fits.)"""
    Q, R, *_ = degenerate
    rank = int(torch.linalg.matrix_rank(Q))
    lam = 1e-3 * float(R.abs().max())
    for solve, args in ((solve_sglp, (graph, lam, 0.5 * lam)), (solve_stlp, (tree, lam))):
        signed = solve(Q, R, *args, max_iter=50000)
        nonneg = solve(Q, R, *args, max_iter=50000, nonnegative=True)
        support = signed.B.norm(dim=1) > 0
        assert int(support.sum()) >= rank and not support[2]
        if rank == C - 1:
            assert int(support.sum()) == C - 1
        assert int((nonneg.B.norm(dim=1) > 0).sum()) < int(support.sum())


def test_solver_validation(problem, graph, tree):
    Q, R, *_ = problem
    f = torch.float64
    with pytest.raises(PaperpruneError, match="out of range"):
        solve_sglp(Q, R, ClassGraph(torch.tensor([[0, 7]]), torch.tensor([0.5]), torch.tensor([1.0])), 0.1, 0.1)
    with pytest.raises(PaperpruneError, match="classes but R"):
        solve_stlp(Q, R, ClassTree([[0], [1]], torch.tensor([1.0, 1.0], dtype=f)), 0.1)
    with pytest.raises(PaperpruneError, match="square"):
        solve_stlp(R, R, tree, 0.1)
    with pytest.raises(PaperpruneError, match="rows like Q"):
        solve_sglp(Q, R[:5], graph, 0.1, 0.1)
    with pytest.raises(PaperpruneError, match="lam"):
        solve_stlp(Q, R, tree, -1.0)
    with pytest.raises(PaperpruneError, match="gamma"):
        solve_sglp(Q, R, graph, 0.1, float("nan"))
    with pytest.raises(PaperpruneError, match="B0"):
        solve_stlp(Q, R, tree, 0.1, B0=torch.zeros(3, 3, dtype=f))
    with pytest.raises(PaperpruneError, match="dtype"):
        solve_stlp(Q.float(), R, tree, 0.1)


@SIGNS
def test_working_set_certificate(problem, graph, tree, nonnegative):
    """Rows outside the working set are certified at zero: their KKT violation is reported and tiny,
    and forcing the working set to every row (a huge lam path start) gives the same optimum."""
    Q, R, *_ = problem
    for solve, args in ((solve_sglp, (graph, 0.3, 0.1)), (solve_stlp, (tree, 0.3))):
        res = solve(Q, R, *args, nonnegative=nonnegative)
        kept = int((res.B.norm(dim=1) > 0).sum())
        assert kept <= res.certificate["working_set"] <= Q.shape[0]
        assert res.certificate["screened_violation"] <= 1e-6
        full = solve(Q, R, *args, nonnegative=nonnegative, B0=torch.full_like(R, 1e-3))  # every row in the set
        assert full.certificate["working_set"] == Q.shape[0]
        assert full.objective == pytest.approx(res.objective, rel=1e-6)


@SIGNS
@pytest.mark.parametrize("lam", [0.02, 0.1])
def test_working_set_rounds_match_cvxpy(problem, graph, tree, lam, nonnegative, monkeypatch):
    """With the working set grown two rows at a time, the solvers take several rounds on a strict
    subset of rows before certifying the rest at zero, and still reach cvxpy's optimum."""
    import paperprune.lasso as lasso

    monkeypatch.setattr(lasso, "_GROW_MIN", 2)
    Q, R, *_ = problem
    for solve, args, ref in (
            (solve_sglp, (graph, lam, 0.5 * lam),
             _cvx_value(Q, R, lam, nonnegative=nonnegative, graph=graph, gamma=0.5 * lam)),
            (solve_stlp, (tree, lam), _cvx_value(Q, R, lam, nonnegative=nonnegative, tree=tree))):
        res = solve(Q, R, *args, nonnegative=nonnegative)
        assert res.converged and res.certificate["rounds"] >= 2
        assert res.certificate["screened_violation"] <= 1e-6
        assert abs(res.objective - ref) <= 1e-5 * abs(ref)


@SIGNS
def test_fusion_violation_is_an_upper_bound(graph, nonnegative):
    """The sGLP zero-row check bounds min_{|Y_e| <= gamma w_e} dist(H + Y D, the l1 term's
    subdifferential at 0) from above (cvxpy's value), is 0 where H lies inside it, and never exceeds
    the bound of Y = 0."""
    from paperprune.lasso import _fusion_violation

    lam = 0.15
    rng = np.random.default_rng(3)
    H = torch.tensor(rng.standard_normal((20, K)) * 0.3 + 0.1)
    H[0] = H[0].abs() if nonnegative else H[0].clamp(-lam, lam)

    def outside(V):
        return V.add(lam).clamp_max(0) if nonnegative else V.sign() * (V.abs() - lam).clamp_min(0)

    D = graph.incidence(K)
    gw = 0.4 * graph.weights
    bound = _fusion_violation(H, (D, D.T), gw, 1.0 / float(torch.linalg.matrix_norm(D, ord=2)) ** 2, outside)
    assert bound[0] == 0
    assert (bound <= outside(H).norm(dim=1) + 1e-12).all()
    for h, b in zip(H.numpy(), bound.tolist()):
        Y, u = cp.Variable(D.shape[0]), cp.Variable(K)
        inside = [u >= -lam] if nonnegative else [cp.abs(u) <= lam]  # the subdifferential, negated
        prob = cp.Problem(cp.Minimize(cp.norm(h + D.numpy().T @ Y - u, 2)), [cp.abs(Y) <= gw.numpy(), *inside])
        prob.solve()
        assert b >= prob.value - 1e-7
    assert (bound < outside(H).norm(dim=1) - 1e-3).any()  # the multipliers do tighten some rows


@SIGNS
def test_fusion_violation_certifies_zero_rows_held_by_long_chains_of_multipliers(nonnegative):
    """On a path over 300 classes (the worst-conditioned graph: ||D||_2^2 / lambda_min(D D^T) ~ 4 10^4), rows
    whose zero is optimal only through the fusion multipliers (H = u - Y* D with Y* and u strictly inside
    their boxes, so that Y = Y* certifies them) get the bound 0, although Y = 0 leaves every one of them
    violating; with a `target` the check stops once the bounds' norm is at most it, still above the exact
    bounds."""
    from paperprune.lasso import _fusion_violation

    classes, lam, gw = 300, 0.15, 0.4
    edges = torch.stack([torch.arange(classes - 1), torch.arange(1, classes)], 1)
    path = ClassGraph(edges, torch.ones(classes - 1, dtype=torch.float64), torch.ones(classes - 1, dtype=torch.float64),
                      num_classes=classes)
    D = path.incidence(classes)
    rng = np.random.default_rng(0)
    Y_star = torch.tensor(rng.uniform(-0.5, 0.5, (20, classes - 1)) * gw)
    u = torch.tensor(rng.uniform(-0.5, 1.0, (20, classes)) * lam if nonnegative else
                     rng.uniform(-0.5, 0.5, (20, classes)) * lam)
    H = u - Y_star @ D

    def outside(V):
        return V.add(lam).clamp_max(0) if nonnegative else V.sign() * (V.abs() - lam).clamp_min(0)

    assert (outside(H).norm(dim=1) > 0).all()
    step = 1.0 / float(torch.linalg.matrix_norm(D, ord=2)) ** 2
    weights = torch.full((classes - 1,), gw, dtype=torch.float64)
    assert (_fusion_violation(H, (D, D.T), weights, step, outside) == 0).all()
    start = float(outside(H).norm())
    loose = _fusion_violation(H, (D, D.T), weights, step, outside, target=0.01 * start)
    assert 0 < float(loose.norm()) <= 0.01 * start


def test_fusion_step(graph, monkeypatch):
    """The fusion basis's largest eigenvalue minus one is ||D||_2^2, which sets the zero-row check's step; the
    sparse system of many classes reports the same norm, and its solve inverts 2 I + D^T D."""
    import paperprune.lasso as lasso

    D = graph.incidence(K)
    norm2 = float(torch.linalg.matrix_norm(D, ord=2)) ** 2
    shift = lasso._fusion_basis(graph, K, D.device, D.dtype)[-1]
    assert float(shift.max()) - 1 == pytest.approx(norm2, rel=1e-12)
    monkeypatch.setattr(lasso, "_SPLIT_CLASSES", 1)
    system = lasso._fusion_basis(graph, K, D.device, D.dtype)
    assert system.norm2 == pytest.approx(norm2, rel=1e-8)
    V = torch.tensor(np.random.default_rng(0).standard_normal((3, K)))
    expected = torch.linalg.solve(2 * torch.eye(K, dtype=D.dtype) + D.T @ D, V.T).T
    torch.testing.assert_close(system.solve(V), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(system.Dp.to_dense(), torch.cat([torch.eye(K, dtype=D.dtype), D]))
    torch.testing.assert_close(system.DT.to_dense(), D.T)


@pytest.fixture(scope="module")
def sparse_graph_problem():
    """20 classes on a 2-nearest-class graph (sparse: about 2 edges per class) and 12 channels, the shape of
    the many-class case at a size cvxpy solves in seconds."""
    from paperprune.structure import class_graph_from_embeddings

    rng = np.random.default_rng(11)
    classes = 20
    emb = np.repeat(rng.standard_normal((5, 16)), 4, axis=0) + 0.5 * rng.standard_normal((classes, 16))
    graph = class_graph_from_embeddings(emb, knn=2)
    Phi = np.abs(rng.standard_normal((2 * C, C)) + 0.5)
    Phi /= np.linalg.norm(Phi, axis=0)
    Y = np.abs(rng.standard_normal((2 * C, classes)) + 0.5)
    Y /= np.linalg.norm(Y, axis=0)
    Q, R, *_ = _regression(Phi, Y)
    return Q, R, graph


def _distance_bound(Q, values, ref):
    """Bound on ||B_1 - B_2||_F from objective values: F is lambda_min(Q)-strongly convex, so
    ||B - B*||_F <= sqrt(2 (F(B) - F*) / lambda_min), and F* >= ref - 1e-10 (1 + |ref|) (cvxpy's value, within
    the tight tolerances' duality gap)."""
    low = ref - 1e-10 * (1 + abs(ref))
    lam_min = float(torch.linalg.eigvalsh(Q)[0])
    assert lam_min > 1e-3  # Q positive definite: the optimum is unique
    return sum(math.sqrt(2 * max(v - low, 0.0) / lam_min) for v in values)


@SIGNS
def test_sglp_split_matches_exact_update(sparse_graph_problem, nonnegative, monkeypatch):
    """Many classes run consensus ADMM with the sparse solve (`_admm_split`), few the exact B-update in the
    dense eigenbasis (`_admm`). Both forced onto one sparse-graph problem reach cvxpy's optimum and each other:
    objectives within 1e-9 relative (both stop at relative residuals <= 1e-9), B within the strong-convexity
    bound of `_distance_bound`, and both paths give the same support."""
    import paperprune.lasso as lasso

    Q, R, graph = sparse_graph_problem
    lam = 0.2 * float(R.abs().max())
    ref = _cvx_value(Q, R, lam, nonnegative=nonnegative, graph=graph, gamma=0.5 * lam)
    runs = {}
    for threshold in (10 ** 6, 1):  # the exact update, then the split one
        monkeypatch.setattr(lasso, "_SPLIT_CLASSES", threshold)
        runs[threshold] = solve_sglp(Q, R, graph, lam, 0.5 * lam, nonnegative=nonnegative, tol=1e-9)
    exact, split = runs.values()
    for res in (exact, split):
        _assert_optimal(res, ref, nonnegative)
    assert split.objective == pytest.approx(exact.objective, rel=1e-9)
    gap = float(torch.linalg.norm(split.B - exact.B))
    assert gap <= _distance_bound(Q, [exact.objective, split.objective], ref)
    assert torch.equal(split.B.norm(dim=1) > 1e-6, exact.B.norm(dim=1) > 1e-6)


@SIGNS
def test_sglp_split_warm_start(sparse_graph_problem, nonnegative, monkeypatch):
    """On the split path a warm start from the solution at a larger lam (as the budget bisection and
    `lasso_path` start) reaches the cold solve's optimum: objectives within 1e-9 relative, B within the
    strong-convexity bound. (ADMM converges linearly, so a nearby start saves few iterations: none here.)"""
    import paperprune.lasso as lasso

    monkeypatch.setattr(lasso, "_SPLIT_CLASSES", 1)
    Q, R, graph = sparse_graph_problem
    top = float(R.abs().max())
    start = solve_sglp(Q, R, graph, 0.25 * top, 0.125 * top, nonnegative=nonnegative, tol=1e-9)
    lam = 0.2 * top
    cold = solve_sglp(Q, R, graph, lam, 0.5 * lam, nonnegative=nonnegative, tol=1e-9)
    warm = solve_sglp(Q, R, graph, lam, 0.5 * lam, nonnegative=nonnegative, tol=1e-9, B0=start.B)
    assert cold.converged and warm.converged
    assert warm.objective == pytest.approx(cold.objective, rel=1e-9)
    ref = _cvx_value(Q, R, lam, nonnegative=nonnegative, graph=graph, gamma=0.5 * lam)
    assert float(torch.linalg.norm(warm.B - cold.B)) <= _distance_bound(Q, [cold.objective, warm.objective], ref)


def test_sglp_split_float32_and_cuda(sparse_graph_problem, monkeypatch):
    """The split path in float32 (its SuperLU factor in single precision) reaches the float64 optimum to 1e-5
    relative objective, as `test_float32_agrees` asks of the exact path; on CUDA (the dense inverse in place
    of SuperLU) it matches the CPU."""
    import paperprune.lasso as lasso

    monkeypatch.setattr(lasso, "_SPLIT_CLASSES", 1)
    Q, R, graph = sparse_graph_problem
    lam = 0.2 * float(R.abs().max())
    r64 = solve_sglp(Q, R, graph, lam, 0.5 * lam)
    r32 = solve_sglp(Q.float(), R.float(), graph, lam, 0.5 * lam)
    assert r32.B.dtype == torch.float32 and r32.converged
    assert r32.objective == pytest.approx(r64.objective, rel=1e-5)
    if torch.cuda.is_available():
        gpu = solve_sglp(Q.cuda(), R.cuda(), graph, lam, 0.5 * lam)
        assert gpu.B.is_cuda and gpu.objective == pytest.approx(r64.objective, rel=1e-6)


def test_sglp_split_solves_on_one_blas_thread(sparse_graph_problem, monkeypatch):
    """SuperLU's solves on the split path run with numpy/scipy's BLAS on one thread (torch's OpenMP workers,
    spin-waiting between operations, would otherwise share the cores with OpenBLAS's threads), and the
    caller's BLAS threads and torch's are as they were afterwards. Observed inside each solve through a
    wrapper around the factor scipy returns."""
    import scipy.sparse.linalg
    from threadpoolctl import threadpool_info, threadpool_limits

    import paperprune.lasso as lasso

    seen = []

    def blas_threads():
        return {info["filepath"]: info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}

    class Recording:
        def __init__(self, lu):
            self.lu = lu

        def solve(self, b):
            seen.append(blas_threads())
            return self.lu.solve(b)

    factor = scipy.sparse.linalg.splu
    monkeypatch.setattr(scipy.sparse.linalg, "splu", lambda *a, **k: Recording(factor(*a, **k)))
    monkeypatch.setattr(lasso, "_SPLIT_CLASSES", 1)
    monkeypatch.setattr(lasso, "_FUSION_CACHE", {})
    Q, R, graph = sparse_graph_problem
    lam = 0.2 * float(R.abs().max())
    threads = torch.get_num_threads()
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        result = solve_sglp(Q, R, graph, lam, 0.5 * lam)
        after = blas_threads()
    assert 2 in before.values()  # a library that would have run the solve on 2 threads
    assert result.converged and len(seen) == result.iterations
    assert all(set(counts.values()) == {1} for counts in seen)
    assert after == before and torch.get_num_threads() == threads



def test_anderson_finds_a_slow_linear_fixed_point():
    """`_Anderson` on x <- M x + b with three eigenvalues of M at 0.997-0.999 (plain iteration loses under 1%
    of the error per step): within 1e-6 of numpy's solution of (I - M) x = b after 100 steps, where 300
    plain steps leave over half the error."""
    from paperprune.lasso import _Anderson

    rng = np.random.default_rng(0)
    n = 50
    U, _ = np.linalg.qr(rng.standard_normal((n, n)))
    M = torch.tensor((U * np.concatenate([[0.999, 0.998, 0.997], rng.uniform(0, 0.5, n - 3)])) @ U.T)
    b = torch.tensor(rng.standard_normal(n))
    exact = torch.tensor(np.linalg.solve(np.eye(n) - M.numpy(), b.numpy()))
    accelerated, plain, anderson = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64), _Anderson()
    for _ in range(100):
        accelerated = anderson.step(accelerated, M @ accelerated + b)
    for _ in range(300):
        plain = M @ plain + b
    assert float(torch.linalg.norm(accelerated - exact)) <= 1e-6 * float(torch.linalg.norm(exact))
    assert float(torch.linalg.norm(plain - exact)) >= 0.5 * float(torch.linalg.norm(exact))


def test_anderson_steps_plainly_when_the_residual_grows():
    """The safeguard: a step whose residual F(x) - x is larger than the last one's returns F(x) itself and
    restarts the history; a step after a falling residual extrapolates."""
    from paperprune.lasso import _Anderson

    anderson = _Anderson()
    x0, x1 = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])
    assert torch.equal(anderson.step(x0, torch.tensor([1.0, 0.0])), torch.tensor([1.0, 0.0]))  # no history
    grown = torch.tensor([4.0, 1.0])  # residual (3, 1): larger than (1, 0)
    assert torch.equal(anderson.step(x1, grown), grown) and anderson.count == 0
    anderson = _Anderson()
    anderson.step(x0, torch.tensor([1.0, 0.0]))
    assert not torch.equal(anderson.step(x1, torch.tensor([1.5, 0.0])), torch.tensor([1.5, 0.0]))


def test_accelerated_solves_match_cvxpy(problem, graph, tree, sparse_graph_problem, monkeypatch):
    """With acceleration from the first iteration, sGLP-IB (exact and split updates) and sTLP-IB, signed and
    B >= 0, still reach cvxpy's optimum: the extrapolated steps leave the fixed point, and with it the
    certificate, unchanged."""
    import paperprune.lasso as lasso

    monkeypatch.setattr(lasso, "_ANDERSON_AFTER", 0)
    Q, R, *_ = problem
    Qs, Rs, sparse = sparse_graph_problem
    for nonnegative in (False, True):
        res = solve_sglp(Q, R, graph, 0.1, 0.3, nonnegative=nonnegative)
        _assert_optimal(res, _cvx_value(Q, R, 0.1, nonnegative=nonnegative, graph=graph, gamma=0.3), nonnegative)
        res = solve_stlp(Q, R, tree, 0.1, nonnegative=nonnegative)
        _assert_optimal(res, _cvx_value(Q, R, 0.1, nonnegative=nonnegative, tree=tree), nonnegative)
        monkeypatch.setattr(lasso, "_SPLIT_CLASSES", 1)
        lam = 0.2 * float(Rs.abs().max())
        res = solve_sglp(Qs, Rs, sparse, lam, 0.5 * lam, nonnegative=nonnegative)
        _assert_optimal(res, _cvx_value(Qs, Rs, lam, nonnegative=nonnegative, graph=sparse, gamma=0.5 * lam),
                        nonnegative)
        monkeypatch.setattr(lasso, "_SPLIT_CLASSES", 200)


@SIGNS
@pytest.mark.parametrize("degenerate", ["near-singular"], indirect=True)
def test_acceleration_cuts_the_iterations_of_a_near_singular_q(degenerate, graph, tree, nonnegative, monkeypatch):
    """On the near-singular Q of `degenerate` (its smallest non-zero eigenvalue 2e-9) at a small lam, plain
    ADMM needs 2,600-20,000 iterations (measured: sGLP 5,190 signed and 2,640 with B >= 0, sTLP 20,280 and
    15,150); accelerated after `_ANDERSON_AFTER`, fewer than half as many (1,130, 900, 430, 360), to the
    same cvxpy optimum."""
    import paperprune.lasso as lasso

    Q, R, *_ = degenerate
    lam = 0.005 * float(R.abs().max())
    runs = {}
    for after in (10 ** 9, lasso._ANDERSON_AFTER):
        monkeypatch.setattr(lasso, "_ANDERSON_AFTER", after)
        runs[after] = (solve_sglp(Q, R, graph, lam, 0.5 * lam, nonnegative=nonnegative, max_iter=50000),
                       solve_stlp(Q, R, tree, lam, nonnegative=nonnegative, max_iter=50000))
    (sg_plain, st_plain), (sg_fast, st_fast) = runs.values()
    ref = _cvx_value(Q, R, lam, nonnegative=nonnegative, graph=graph, gamma=0.5 * lam)
    _assert_optimal(sg_fast, ref, nonnegative)
    _assert_optimal(st_fast, _cvx_value(Q, R, lam, nonnegative=nonnegative, tree=tree), nonnegative)
    assert sg_plain.converged and st_plain.converged
    assert sg_fast.iterations < 0.5 * sg_plain.iterations and st_fast.iterations < 0.5 * st_plain.iterations


def test_docstring_examples():
    """The examples in paperprune.lasso's docstrings run and print what they show."""
    import doctest

    import paperprune.lasso

    result = doctest.testmod(paperprune.lasso, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
