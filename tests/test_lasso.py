"""Structured-lasso solvers (paperprune.lasso) against cvxpy, NNLS and closed-form thresholds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

cp = pytest.importorskip("cvxpy")
from scipy.optimize import nnls  # noqa: E402

from paperprune.lasso import (ClassGraph, ClassTree, class_graph_from_embeddings,  # noqa: E402
                              class_tree_from_embeddings, class_tree_from_taxonomy, lasso_path, sglp_objective,
                              solve_sglp, solve_stlp, stlp_objective, tree_prox)
from paperprune.utils import PaperpruneError  # noqa: E402

C, K = 12, 5
TIGHT = dict(solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11, tol_ktratio=1e-9)


@pytest.fixture(scope="module")
def problem():
    """Q = Phi^T Phi (unit diagonal, PSD), R = Phi^T Y in [0, 1]: a normalised-HSIC-like problem."""
    rng = np.random.default_rng(0)
    Phi = np.abs(rng.standard_normal((2 * C, C)) + 0.5)
    Phi /= np.linalg.norm(Phi, axis=0)
    Y = np.abs(rng.standard_normal((2 * C, K)) + 0.5)
    Y /= np.linalg.norm(Y, axis=0)
    return torch.tensor(Phi.T @ Phi), torch.tensor(Phi.T @ Y), Phi, Y


@pytest.fixture(scope="module")
def graph():
    edges = [[0, 1], [1, 2], [0, 3], [3, 4], [2, 4], [1, 3]]
    return ClassGraph(torch.tensor(edges), torch.tensor([0.9, 0.5, 0.7, 0.3, 0.6, 0.8], dtype=torch.float64),
                      torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64), num_classes=K)


@pytest.fixture(scope="module")
def tree():
    groups = [[0], [1], [2], [3], [4], [0, 1], [0, 1, 2], [3, 4], [0, 1, 2, 3, 4]]
    return ClassTree(groups, torch.tensor([0.4, 0.3, 0.6, 0.5, 0.2, 0.7, 0.5, 0.8, 0.3], dtype=torch.float64))


def _cvx_value(Q, R, lam, *, graph=None, gamma=0.0, tree=None):
    q, U = np.linalg.eigh(Q.numpy())
    F = (U * np.sqrt(np.clip(q, 0, None))).T
    B = cp.Variable(tuple(R.shape), nonneg=True)
    obj = 0.5 * cp.sum_squares(F @ B) - cp.sum(cp.multiply(R.numpy(), B))
    if graph is not None:
        D = graph.incidence(R.shape[1]).numpy()
        obj = obj + lam * cp.sum(B) + gamma * cp.sum(cp.abs(B @ D.T) @ graph.weights.numpy())
    if tree is not None:
        obj = obj + lam * sum(w * cp.sum(cp.norm(B[:, g], 2, axis=1)) for g, w in zip(tree.groups, tree.weights.tolist()))
    prob = cp.Problem(cp.Minimize(obj))
    prob.solve(**TIGHT)
    return prob.value


@pytest.mark.parametrize("lam,gamma", [(0.02, 0.05), (0.1, 0.3), (0.3, 0.1), (0.1, 0.0)])
def test_sglp_matches_cvxpy(problem, graph, lam, gamma):
    Q, R, *_ = problem
    res = solve_sglp(Q, R, graph, lam, gamma)
    ref = _cvx_value(Q, R, lam, graph=graph, gamma=gamma)
    assert res.converged and res.residual <= 1e-6
    assert res.B.min() >= 0
    assert abs(res.objective - ref) <= 1e-5 * abs(ref)
    assert res.objective == pytest.approx(sglp_objective(res.B, Q, R, graph, lam, gamma))
    assert set(res.certificate) == {"primal_residual", "dual_residual", "screened_violation", "rho", "working_set",
                                    "rounds"}
    assert res.residual == max(res.certificate[k] for k in ("primal_residual", "dual_residual", "screened_violation"))


@pytest.mark.parametrize("lam", [0.02, 0.1, 0.3])
def test_stlp_matches_cvxpy(problem, tree, lam):
    Q, R, *_ = problem
    res = solve_stlp(Q, R, tree, lam)
    ref = _cvx_value(Q, R, lam, tree=tree)
    assert res.converged and res.residual <= 1e-6
    assert res.B.min() >= 0
    assert abs(res.objective - ref) <= 1e-5 * abs(ref)
    assert res.objective == pytest.approx(stlp_objective(res.B, Q, R, tree, lam))


def test_sglp_zero_threshold(problem, graph):
    """B = 0 is optimal iff lam >= max R when gamma = 0 (the KKT condition at 0); any gamma keeps it zero."""
    Q, R, *_ = problem
    lam0 = float(R.max())
    assert torch.count_nonzero(solve_sglp(Q, R, graph, 1.001 * lam0, 0.0).B) == 0
    assert torch.count_nonzero(solve_sglp(Q, R, graph, 1.001 * lam0, 0.7).B) == 0
    assert torch.count_nonzero(solve_sglp(Q, R, graph, 0.98 * lam0, 0.0).B) > 0


def test_stlp_zero_threshold(problem, tree):
    Q, R, *_ = problem
    # root-only weights: the penalty is lam sum_k ||B_k||, zero iff lam >= max_k ||R_k+||
    root_only = ClassTree(tree.groups, torch.tensor([0.0] * 8 + [1.0], dtype=torch.float64))
    lam0 = float(R.clamp_min(0).norm(dim=1).max())
    assert torch.count_nonzero(solve_stlp(Q, R, root_only, 1.001 * lam0).B) == 0
    assert torch.count_nonzero(solve_stlp(Q, R, root_only, 0.98 * lam0).B) > 0
    # general tree: ||b_G||_2 >= ||b_G||_1 / sqrt|G| gives Omega(b) >= sum_c a_c b_c on b >= 0,
    # a_c = sum_{v containing c} w_v / sqrt|G_v|, so lam >= max R_kc / a_c is sufficient for B = 0
    m = tree.mask.double()
    a = (tree.weights / m.sum(1).sqrt()) @ m
    bound = float((R / a).max())
    assert torch.count_nonzero(solve_stlp(Q, R, tree, 1.001 * bound).B) == 0


def test_unpenalised_is_nnls(problem, graph, tree):
    """lam = gamma = 0: both problems reduce to K independent NNLS fits, min ||Phi b - y_c||, b >= 0."""
    Q, R, Phi, Y = problem
    ref = np.stack([nnls(Phi, Y[:, c])[0] for c in range(K)], axis=1)
    ref_obj = sglp_objective(torch.tensor(ref), Q, R, graph, 0.0, 0.0)
    for res in (solve_sglp(Q, R, graph, 0.0, 0.0), solve_stlp(Q, R, tree, 0.0)):
        assert res.converged
        assert res.objective == pytest.approx(ref_obj, rel=1e-8)
        np.testing.assert_allclose(res.B.numpy(), ref, atol=1e-4)


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
@pytest.mark.parametrize("nonnegative", [True, False])
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


def test_float32_agrees(problem, graph, tree):
    Q, R, *_ = problem
    for solve, args in ((solve_sglp, (graph, 0.1, 0.3)), (solve_stlp, (tree, 0.1))):
        r64 = solve(Q, R, *args)
        r32 = solve(Q.float(), R.float(), *args)
        assert r32.B.dtype == torch.float32 and r32.converged
        assert r32.objective == pytest.approx(r64.objective, rel=1e-4)
        np.testing.assert_allclose(r32.B.double().numpy(), r64.B.numpy(), atol=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(problem, graph, tree):
    Q, R, *_ = problem
    for solve, args in ((solve_sglp, (graph, 0.1, 0.3)), (solve_stlp, (tree, 0.1))):
        cpu = solve(Q, R, *args)
        gpu = solve(Q.cuda(), R.cuda(), *args)
        assert gpu.B.is_cuda
        assert gpu.objective == pytest.approx(cpu.objective, rel=1e-6)


def test_warm_start(problem, graph, tree):
    Q, R, *_ = problem
    for solve, args in ((solve_sglp, (graph, 0.05, 0.1)), (solve_stlp, (tree, 0.05))):
        cold = solve(Q, R, *args)
        warm = solve(Q, R, *args, B0=cold.B)
        assert warm.converged and warm.iterations < cold.iterations
        assert warm.objective == pytest.approx(cold.objective, rel=1e-7, abs=1e-12)


def test_lasso_path(problem, graph):
    Q, R, *_ = problem
    lams = [0.3, 0.1, 0.03]
    path = lasso_path(lambda lam, B0: solve_sglp(Q, R, graph, lam, 0.5 * lam, B0=B0), lams)
    for lam, res in zip(lams, path):
        assert res.objective == pytest.approx(solve_sglp(Q, R, graph, lam, 0.5 * lam).objective, rel=1e-6)
    kept = [int((r.B.norm(dim=1) > 1e-6).sum()) for r in path]  # ADMM reaches exact zeros asymptotically
    assert kept == sorted(kept)  # smaller lam keeps at least as many channels here
    with pytest.raises(PaperpruneError, match="decreasing"):
        lasso_path(lambda lam, B0: solve_sglp(Q, R, graph, lam, 0.0, B0=B0), [0.1, 0.2])


def test_validation(problem, graph, tree):
    Q, R, *_ = problem
    f = torch.float64
    with pytest.raises(PaperpruneError, match=r"\(E, 2\)"):
        ClassGraph(torch.tensor([0, 1]), torch.tensor([1.0]), torch.tensor([1.0]))
    with pytest.raises(PaperpruneError, match="> 0"):
        ClassGraph(torch.tensor([[0, 1]]), torch.tensor([-0.5]), torch.tensor([1.0]))
    with pytest.raises(PaperpruneError, match="shape"):
        ClassGraph(torch.tensor([[0, 1]]), torch.tensor([0.5, 0.5]), torch.tensor([1.0]))
    with pytest.raises(PaperpruneError, match="signs"):
        ClassGraph(torch.tensor([[0, 1]]), torch.tensor([0.5]), torch.tensor([2.0]))
    with pytest.raises(PaperpruneError, match="self-loop"):
        ClassGraph(torch.tensor([[1, 1]]), torch.tensor([0.5]), torch.tensor([1.0]))
    with pytest.raises(PaperpruneError, match="out of range"):
        ClassGraph(torch.tensor([[0, 7]]), torch.tensor([0.5]), torch.tensor([1.0]), num_classes=5)
    with pytest.raises(PaperpruneError, match="out of range"):
        solve_sglp(Q, R, ClassGraph(torch.tensor([[0, 7]]), torch.tensor([0.5]), torch.tensor([1.0])), 0.1, 0.1)
    with pytest.raises(PaperpruneError, match=">= 0"):
        ClassTree([[0], [1]], torch.tensor([0.5, -1.0], dtype=f))
    with pytest.raises(PaperpruneError, match="laminar"):
        ClassTree([[0, 1], [1, 2]], torch.tensor([1.0, 1.0], dtype=f))
    with pytest.raises(PaperpruneError, match="out of range"):
        ClassTree([[0, 9]], torch.tensor([1.0], dtype=f), num_classes=5)
    with pytest.raises(PaperpruneError, match="empty"):
        ClassTree([[0], []], torch.tensor([1.0, 1.0], dtype=f))
    with pytest.raises(PaperpruneError, match="one per group"):
        ClassTree([[0], [1]], torch.tensor([1.0], dtype=f))
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


def test_tree_precomputation(tree):
    # one-class groups become leaf weights; the other levels are disjoint and every node comes after
    # the groups below it
    single = [v for v, g in enumerate(tree.groups) if len(g) == 1]
    expect = torch.zeros(K, dtype=torch.float64)
    for v in single:
        expect[tree.groups[v][0]] += tree.weights[v]
    assert torch.equal(tree.leaf_weights, expect)
    seen = torch.zeros(tree.num_nodes, dtype=torch.bool)
    seen[single] = True
    for nodes, m, w, outside in tree.levels:
        assert (m.sum(0) <= 1).all() and torch.equal(outside, 1 - m.sum(0))
        for v in nodes.tolist():
            desc = [u for u in range(tree.num_nodes) if u != v and set(tree.groups[u]) < set(tree.groups[v])]
            assert seen[desc].all()
        seen[nodes] = True
    assert seen.all()
    assert [len(n) for n, *_ in tree.levels] == [2, 1, 1]  # {0,1},{3,4}; {0,1,2}; the root
    assert tree.order.tolist()[-1] == 8  # the root is last
    t32 = tree.to(dtype=torch.float32)
    assert t32.weights.dtype == torch.float32 and t32.levels[0][1].dtype == torch.float32
    # zero-weight groups are skipped: they do not change the prox
    zero_root = ClassTree(tree.groups, torch.cat([tree.weights[:-1], torch.zeros(1, dtype=torch.float64)]))
    assert [len(n) for n, *_ in zero_root.levels] == [2, 1]


def test_working_set_certificate(problem, graph, tree):
    """Rows outside the working set are certified at zero: their KKT violation is reported and tiny,
    and forcing the working set to every row (a huge lam path start) gives the same optimum."""
    Q, R, *_ = problem
    for solve, args in ((solve_sglp, (graph, 0.3, 0.1)), (solve_stlp, (tree, 0.3))):
        res = solve(Q, R, *args)
        kept = int((res.B.norm(dim=1) > 0).sum())
        assert kept <= res.certificate["working_set"] <= Q.shape[0]
        assert res.certificate["screened_violation"] <= 1e-6
        full = solve(Q, R, *args, B0=torch.full_like(R, 1e-3))  # the warm start's support is every row
        assert full.certificate["working_set"] == Q.shape[0]
        assert full.objective == pytest.approx(res.objective, rel=1e-6)


def _planted_embeddings(seed=0):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((2, 40))
    return np.stack([a + 0.2 * rng.standard_normal(40) for _ in range(3)]
                    + [b + 0.2 * rng.standard_normal(40) for _ in range(3)])


def test_tree_from_embeddings_planted_blocks():
    tree = class_tree_from_embeddings(_planted_embeddings())
    assert tree.num_nodes == 2 * 6 - 1 and tree.num_classes == 6
    assert tree.groups[-1] == list(range(6))
    assert [0, 1, 2] in tree.groups and [3, 4, 5] in tree.groups  # the top split separates the blocks
    # Kim & Xing weights: the root's weight is g_root = 0 and every leaf's path weights sum to 1
    assert float(tree.weights[-1]) == 0.0
    np.testing.assert_allclose((tree.weights @ tree.mask.double()).numpy(), np.ones(6), atol=1e-12)
    assert (tree.weights >= 0).all()


def test_graph_from_embeddings_planted_blocks():
    emb = _planted_embeddings()
    same = lambda e: (e[:, 0] < 3) == (e[:, 1] < 3)  # noqa: E731
    g = class_graph_from_embeddings(emb, rho=0.5)
    assert g.num_edges == 6 and bool(same(g.edges).all()) and bool((g.signs == 1).all())
    corr = np.corrcoef(emb)
    np.testing.assert_allclose(g.weights.numpy(), np.abs(corr[g.edges[:, 0], g.edges[:, 1]]))
    gk = class_graph_from_embeddings(emb, knn=2)
    assert gk.num_edges == 6 and bool(same(gk.edges).all())
    anti = class_graph_from_embeddings(np.concatenate([emb[:3], -emb[:3]]), rho=0.5)
    assert bool((anti.signs[~same(anti.edges)] == -1).all()) and bool((anti.signs[same(anti.edges)] == 1).all())
    with pytest.raises(PaperpruneError, match="knn"):
        class_graph_from_embeddings(emb, knn=6)
    with pytest.raises(PaperpruneError, match="constant"):
        class_graph_from_embeddings(np.ones((3, 4)))


def test_tree_from_taxonomy():
    tree = class_tree_from_taxonomy({"tops": [0, 2], "footwear": [1, 3, 4]}, 6)
    assert tree.groups == [[0], [1], [2], [3], [4], [5], [0, 2], [1, 3, 4], [0, 1, 2, 3, 4, 5]]
    np.testing.assert_allclose(tree.weights.numpy(), [0.5] * 5 + [1.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose((tree.weights @ tree.mask.double()).numpy(), np.ones(6))
    with pytest.raises(PaperpruneError, match="disjoint"):
        class_tree_from_taxonomy({"a": [0, 1], "b": [1, 2]}, 3)
    with pytest.raises(PaperpruneError, match="out of range"):
        class_tree_from_taxonomy({"a": [0, 5]}, 3)


@pytest.mark.parametrize("lam", [0.02, 0.1])
def test_working_set_rounds_match_cvxpy(problem, graph, tree, lam, monkeypatch):
    """With the working set grown two rows at a time, the solvers take several rounds on a strict
    subset of rows before certifying the rest at zero, and still reach cvxpy's optimum (layers of
    more than 2 * _GROW_MIN channels take this path; smaller ones start from every violating row)."""
    import paperprune.lasso as lasso

    monkeypatch.setattr(lasso, "_GROW_MIN", 2)
    Q, R, *_ = problem
    for solve, args, ref in ((solve_sglp, (graph, lam, 0.5 * lam), _cvx_value(Q, R, lam, graph=graph, gamma=0.5 * lam)),
                             (solve_stlp, (tree, lam), _cvx_value(Q, R, lam, tree=tree))):
        res = solve(Q, R, *args)
        assert res.converged and res.certificate["rounds"] >= 3
        assert res.certificate["screened_violation"] <= 1e-6
        assert abs(res.objective - ref) <= 1e-5 * abs(ref)


def test_fusion_violation_is_an_upper_bound(graph):
    """The sGLP zero-row check bounds min_{|Y_e| <= gamma w_e} ||min(H + Y D, 0)|| from above (cvxpy's
    value), is 0 where H >= 0, and never exceeds the bound of Y = 0, ||min(H, 0)||."""
    from paperprune.lasso import _fusion_violation

    rng = np.random.default_rng(3)
    H = torch.tensor(rng.standard_normal((20, K)) * 0.3 + 0.1)
    H[0] = H[0].abs()
    D = graph.incidence(K)
    gw = 0.4 * graph.weights
    bound = _fusion_violation(H, D, gw, 1.0 / float(torch.linalg.matrix_norm(D, ord=2)) ** 2)
    assert bound[0] == 0
    assert (bound <= H.clamp_max(0).norm(dim=1) + 1e-12).all()
    for h, b in zip(H.numpy(), bound.tolist()):
        Y = cp.Variable(D.shape[0])
        prob = cp.Problem(cp.Minimize(cp.norm(cp.minimum(h + D.numpy().T @ Y, 0), 2)), [cp.abs(Y) <= gw.numpy()])
        prob.solve()
        assert b >= prob.value - 1e-7
    assert (bound < H.clamp_max(0).norm(dim=1) - 1e-3).any()  # the multipliers do tighten some rows


def test_graph_to_and_fusion_step(graph):
    """ClassGraph.to is a no-op when nothing changes and converts weights and signs otherwise;
    the fusion basis's largest eigenvalue minus one is ||D||_2^2, which sets the zero-row check's step."""
    from paperprune.lasso import _fusion_basis

    assert graph.to(dtype=torch.float64) is graph and graph.to("cpu") is graph
    g32 = graph.to(dtype=torch.float32)
    assert g32 is not graph and g32.weights.dtype == g32.signs.dtype == torch.float32
    assert torch.equal(g32.edges, graph.edges) and torch.allclose(g32.weights.double(), graph.weights)
    D = graph.incidence(K)
    shift = _fusion_basis(D)[2]
    assert float(shift.max()) - 1 == pytest.approx(float(torch.linalg.matrix_norm(D, ord=2)) ** 2, rel=1e-12)
