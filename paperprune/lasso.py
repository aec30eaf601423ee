"""Structured-lasso solvers for sGLP-IB and sTLP-IB (METHOD.md section 2).

What comes from the paper (arXiv 2502.09125, abstract only): the two scheme names, sGLP-IB
(sparse graph-structured lasso pruning) and sTLP-IB (sparse tree-guided lasso pruning), and the
idea of a structured lasso over filters guided by class-wise relatedness and the Information
Bottleneck. Everything in this module is reconstruction:

- the per-layer problem, a multi-task HSIC lasso with one task per class,
  f(B) = 1/2 tr(B^T Q B) - tr(R^T B) over B of shape (C, K), follows APIB (Guo et al.,
  ICCV 2023), whose code fits a signed lasso; B is signed by default and `nonnegative=True`
  adds HSIC Lasso's constraint B >= 0 (Yamada et al. 2014) as an ablation. With B >= 0 a
  negative graph edge fuses nothing: |B_kc + B_kd| = B_kc + B_kd is plain extra shrinkage;
- the graph penalty is the graph-guided fused lasso and the tree penalty the tree-guided group
  lasso of Kim & Xing (2009; ICML 2010), including the node weights built from cluster heights;
- both solvers are scaled, over-relaxed ADMM (Boyd et al. 2011) with an exact B-update (a
  Sylvester system diagonalised once), rho started from sqrt(lambda_min lambda_max) of Q
  (Ghadimi et al. 2015) and rebalanced from the residuals, Anderson-accelerated (Walker & Ni 2011)
  once a solve runs past a few hundred iterations; from 200 classes on, sGLP gives the
  fusion to a consensus copy of B whose update is one sparse solve with 2 I + D^T D (SuperLU,
  factored once per graph), where the exact update would cost 2 C K^2 per iteration; the sTLP
  X-update is the exact tree-structured prox of Jenatton et al. (JMLR 2011). Chen et al.
  (AoAS 2012) propose smoothing proximal gradient for the graph penalty; ADMM reaches the 1e-5
  relative objective gap the tests demand, which SPG's smoothing bias makes costly, and on these
  ill-conditioned Q (one Perron eigenvalue far above the rest) needs 2-3x fewer iterations than FISTA;
- a working set of rows (glmnet's strong rules, Celer) solves each problem on the channels that
  can be non-zero, checking the KKT condition of the others; pruned layers keep few channels.

The solvers use torch (and scipy for the sparse factorisation on the CPU), run in float32 or
float64 on whichever device Q and R live on, and never loop over channels or classes in Python
(the tree prox loops over tree levels, the working set over rounds).
"""
from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .structure import ClassGraph, ClassTree
from .utils import PaperpruneError

__all__ = [
    "LassoResult",
    "sglp_objective",
    "stlp_objective",
    "tree_prox",
    "solve_sglp",
    "solve_stlp",
    "lasso_path",
    "solution_norm_bound",
    "SOLVER_MAX_ITER",
]

#: the solvers' default iteration budget per solve (also the lasso criteria's, `paperprune.criteria`)
SOLVER_MAX_ITER = 20000


# --------------------------------------------------------------------------- objectives and prox


@dataclass
class LassoResult:
    """Solution of one per-layer problem.

    `residual` is the relative optimality residual the stopping rule compared with `tol`;
    `certificate` holds the solver-specific quantities behind it (see each solver).
    """

    B: torch.Tensor
    objective: float
    iterations: int
    converged: bool
    residual: float
    certificate: dict[str, float]


@dataclass
class _AdmmRun:
    """What one `_admm` call ends with: X = S[:, :K] (feasible), the unscaled multiplier Y, the
    final rho, the iterations run, and the relative residuals of the last check."""

    X: torch.Tensor
    Y: torch.Tensor
    rho: float
    iterations: int
    converged: bool
    primal: float
    dual: float


def _smooth(B, Q, R):
    return 0.5 * (B * (Q @ B)).sum() - (R * B).sum()


def sglp_objective(B, Q, R, graph: ClassGraph, lam: float, gamma: float) -> float:
    """sGLP-IB objective F(B) = 1/2 tr(B^T Q B) - tr(R^T B) + lam sum|B|
    + gamma sum_e w_e sum_k |B[k,c_e] - s_e B[k,d_e]| (METHOD.md section 2). The constraint of
    the `nonnegative` variant is not part of the value."""
    fused = 0.0
    if graph.num_edges:
        g = graph.to(B.device, B.dtype)
        diff = B[:, g.edges[:, 0]] - g.signs * B[:, g.edges[:, 1]]
        fused = (g.weights * diff.abs().sum(0)).sum()
    return float(_smooth(B, Q, R) + lam * B.abs().sum() + gamma * fused)


def _tree_penalty(B, tree: ClassTree):
    t = tree.to(B.device, B.dtype)
    norms = torch.sqrt((B * B) @ t.mask.to(B.dtype).T)  # (C, V)
    return (norms * t.weights).sum()


def stlp_objective(B, Q, R, tree: ClassTree, lam: float) -> float:
    """sTLP-IB objective F(B) = 1/2 tr(B^T Q B) - tr(R^T B) + lam sum_k sum_v w_v ||B[k, G_v]||_2
    (METHOD.md section 2). The constraint of the `nonnegative` variant is not part of the value."""
    return float(_smooth(B, Q, R) + lam * _tree_penalty(B, tree))


def tree_prox(X: torch.Tensor, tree: ClassTree, threshold: float, *, nonnegative: bool = False) -> torch.Tensor:
    """Exact prox of threshold * sum_v w_v ||x_{G_v}||_2 (plus the indicator of x >= 0 when
    `nonnegative`) applied to every row of X (C, K).

    Jenatton et al. (JMLR 2011): for laminar groups the prox is the composition of group
    soft-thresholdings x_G <- x_G max(0, 1 - threshold w_G / ||x_G||), applied from the leaves to
    the root; on signed rows the leaf step is the signed soft-threshold. The norm depends on |x|
    only and is monotone in it, so the prox of norm + indicator(x >= 0) is the norm's prox of
    max(x, 0) (both checked against cvxpy in the tests).
    The one-class groups are one soft-thresholding of every entry; the larger groups follow by
    height, one batched step per level (`ClassTree.levels`). Below `_SPARSE_CLASSES` classes each
    level is two small dense products with its (V_h, K) mask. From there on the tree's nodes carry the
    work (`ClassTree.node_levels`): a group's squared norm after the steps below it is the sum of its
    children's, each scaled by the child's factor squared, so the norms rise through the tree node by
    node and the factors come back down as products along each class's ancestors: O(C (K + V)) per
    prox for the V groups. Gathering each level's classes instead costs O(C n_h) per level, and a
    1,000-class tree from class embeddings has 69 levels whose groups hold 38,000 classes in all.
    """
    t = tree.to(X.device, X.dtype)
    leaf = threshold * t.leaf_weights
    if nonnegative:
        Y = (X - leaf).clamp_min_(0)
    else:  # the signed soft-threshold as x - clip(x, -leaf, leaf): two ops instead of five
        Y = X - torch.clamp(X, -leaf, leaf)
    if threshold <= 0:
        return Y
    one = X.new_ones(())
    if t.num_classes < _SPARSE_CLASSES:  # few classes: two small dense products per level cost less
        for _, m, w, outside in t.levels:
            # 1 - threshold w / ||y_G||, clipped at 0; a zero norm gives -inf, hence 0 (w > 0 on every level)
            scale = torch.addcmul(one, ((Y * Y) @ m.T).rsqrt_(), w, value=-threshold).clamp_min_(0)
            Y.mul_(torch.addmm(outside, scale, m))  # classes outside this level's groups keep factor 1
        return Y
    Yt = Y.T.contiguous()  # (K, C): classes and nodes as rows; row V_p of `norm2` and `factor` is no node
    V = t.node_weights.numel()
    norm2 = Yt.new_zeros(V + 1, Yt.shape[1]).index_add_(0, t.class_parent, Yt * Yt)  # (V_p + 1, C)
    factor = Yt.new_ones(V + 1, Yt.shape[1])
    for a, b in t.node_levels:  # up: the level's factors, its norms (as scaled) added into its parents'
        # 1 - threshold w / ||y_G||, clipped at 0; a zero norm gives -inf, hence 0 (w > 0 on every level)
        scale = torch.addcmul(one, norm2[a:b].rsqrt(), t.node_weights[a:b, None], value=-threshold).clamp_min_(0)
        factor[a:b] = scale
        norm2.index_add_(0, t.node_parent[a:b], scale.square().mul_(norm2[a:b]))
    for a, b in reversed(t.node_levels):  # down: each node's factor times all its ancestors'
        factor[a:b] *= factor.index_select(0, t.node_parent[a:b])
    return Yt.mul_(factor.index_select(0, t.class_parent)).T.contiguous()


def solution_norm_bound(Q, R, lam: float, *, tree: ClassTree | None = None, graph: ClassGraph | None = None,
                        gamma: float = 0.0, nonnegative: bool = False) -> float:
    """A lower bound on ||B*||_F, the norm of the solution of a per-layer problem, found without solving it.

    The problem is sTLP-IB's (`tree`), sGLP-IB's (`graph`, `gamma`) or, with neither, the plain lasso's:
    F(B) = f(B) + g(B), f(B) = 1/2 tr(B^T Q B) - tr(R^T B), g the penalty (and the constraint B >= 0 under
    `nonnegative`). A positive bound proves that B = 0 is not the solution, so the search for the lam that
    empties every layer (`paperprune.criteria.LassoCriterion`) can pass over a lam without solving there.

    Parameters
    ----------
    Q : torch.Tensor, shape (C, C)
    R : torch.Tensor, shape (C, K)
    lam : float
        The penalty weight, >= 0.
    tree, graph, gamma, nonnegative
        The structure, as `solve_stlp` and `solve_sglp` take them.

    Returns
    -------
    float
        ||prox_g(R)||_F / (2 ||Q||_2) for the tree and the plain lasso; for the graph the same with
        prox_g replaced by a distance that is no larger (Notes). 0 where B = 0 may be optimal.

    Notes
    -----
    B* is the fixed point of the prox-gradient map T(B) = prox_{g/L}(B - grad f(B) / L), L = lambda_max(Q).
    T is non-expansive (I - Q / L has eigenvalues in [0, 1], a prox is firmly non-expansive), so
    ||T(0)|| <= ||T(0) - T(B*)|| + ||B*|| <= 2 ||B*||. g is positively homogeneous, so
    T(0) = prox_{g/L}(R / L) = prox_g(R) / L, and ||prox_g(R)|| = dist(R, dg(0)) (Moreau). The tree's prox is
    `tree_prox`, exact. L is taken as the spectral norm ||Q||_2, which is lambda_max(Q) for a PSD Q and larger
    otherwise (any L >= lambda_max serves). The fused penalty's subdifferential at zero lies in the box
    |U[:, c]| <= lam + gamma sum_{e at c} w_e (only the upper side under B >= 0), whose distance from R is
    the soft-threshold at those widths: a smaller distance, so still a lower bound.

    Examples
    --------
    One channel, one class: B* = (R - lam) / Q when R > lam, so the bound is half of it:

    >>> import torch
    >>> Q, R = torch.tensor([[2.0]], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64)
    >>> solution_norm_bound(Q, R, 0.2), solution_norm_bound(Q, R, 1.0)
    (0.2, 0.0)
    """
    L = float(torch.linalg.matrix_norm(0.5 * (Q + Q.T), ord=2))  # lambda_max for a PSD Q, an upper bound on it else
    if L <= 0:
        return 0.0
    if tree is not None:
        distance = tree_prox(R, tree, float(lam), nonnegative=nonnegative)
    else:
        width = R.new_full((R.shape[1],), float(lam))
        if graph is not None and graph.num_edges:
            g = graph.to(R.device, R.dtype)
            width = width.index_add(0, g.edges.flatten(), (float(gamma) * g.weights).repeat_interleave(2))
        distance = (R - width).clamp_min(0) if nonnegative else R - torch.clamp(R, -width, width)
    return float(torch.linalg.norm(distance)) / (2 * L)


#: from this many classes on, the tree prox works on the tree's nodes and sGLP's exact update products with the
#: sparse incidence; below it dense products, whose per-operation overhead is lower
_SPARSE_CLASSES = 100


# --------------------------------------------------------------------------- solvers


def _check_problem(Q, R, B0, lam, gamma=0.0, nonnegative=False):
    if not isinstance(Q, torch.Tensor) or not isinstance(R, torch.Tensor):
        raise PaperpruneError("Q and R must be torch tensors")
    if not (Q.is_floating_point() and R.is_floating_point()):
        raise PaperpruneError(f"Q and R must be floating point, got {Q.dtype} and {R.dtype}")
    if Q.ndim != 2 or Q.shape[0] != Q.shape[1]:
        raise PaperpruneError(f"Q must be square (C, C), got {tuple(Q.shape)}")
    if R.ndim != 2 or R.shape[0] != Q.shape[0]:
        raise PaperpruneError(f"R must have shape (C, K) with C = {Q.shape[0]} rows like Q, got {tuple(R.shape)}")
    if Q.device != R.device or Q.dtype != R.dtype:
        raise PaperpruneError(f"Q and R must share device and dtype, got {Q.device}/{Q.dtype} and {R.device}/{R.dtype}")
    if not bool(torch.isfinite(Q).all() and torch.isfinite(R).all()):
        raise PaperpruneError("Q and R must be finite")
    for name, v in (("lam", lam), ("gamma", gamma)):
        if not (math.isfinite(float(v)) and float(v) >= 0):
            raise PaperpruneError(f"{name} must be finite and >= 0, got {v}")
    if B0 is not None and (not isinstance(B0, torch.Tensor) or B0.shape != R.shape):
        raise PaperpruneError(f"B0 must be a tensor of shape {tuple(R.shape)} like R, "
                              f"got {getattr(B0, 'shape', type(B0).__name__)}")
    Q = 0.5 * (Q + Q.T)
    if B0 is None:
        return Q, torch.zeros_like(R)
    B = B0.to(device=R.device, dtype=R.dtype)
    return Q, (B.clamp_min(0) if nonnegative else B.clone())


def _effective_tol(tol: float, dtype: torch.dtype) -> float:
    """A tolerance below ~10 ulp cannot be met; float32 runs stop at 10 * eps instead."""
    return max(float(tol), 10 * torch.finfo(dtype).eps)


def _start_rho(q, L):
    """sqrt(lambda_min lambda_max) of Q, which balances the fast and slow modes of the B-update (Ghadimi et al.,
    IEEE TAC 2015); lambda_min is floored at 1e-3 lambda_max so a singular Q (dead or duplicate channels) does
    not send rho to 0."""
    return math.sqrt(max(float(q[0]), 1e-3 * L) * L)


def _relative_residuals(primal, left, right, dual, rho, floor, scale):
    """(relative primal, relative dual) residual of `_admm`'s stopping rule from lists of blocks: primal
    ||primal|| / max(||left||, ||right||, floor), dual rho ||dual[0]|| / max(rho ||dual[1]||, scale); one
    device sync."""
    parts = [*primal, *left, *right, *dual]
    sq = torch.stack([p.square().sum() for p in parts]).tolist()
    n = len(primal)
    r, ax, bz = (math.sqrt(sum(sq[i * n:(i + 1) * n])) for i in range(3))
    s, y = math.sqrt(sq[3 * n]), math.sqrt(sq[3 * n + 1])
    return r / max(ax, bz, floor), rho * s / max(rho * y, scale)


#: ADMM iterations of one call before `_Anderson` acceleration starts (faster solves run unaccelerated), and
#: its memory (iterate differences kept)
_ANDERSON_AFTER = 300
_ANDERSON_MEMORY = 5


class _Anderson:
    """Type-II Anderson acceleration (Walker & Ni, SIAM J. Numer. Anal. 2011) of a fixed-point iteration
    x <- F(x), safeguarded: `step(x, fx)` returns fx - (dX + dG) gamma, gamma = argmin ||g - dG gamma||
    over the last `memory` differences dX of iterates and dG of residuals g = F(x) - x (the Gram matrix
    kept up to date, Tikhonov-regularised at 1e-10 of its trace), or the plain fx whenever ||g|| did not
    fall since the last step (the history then restarts). ADMM's iterates converge linearly, at a rate set
    by the conditioning of Q: a Q with one Perron eigenvalue 10^4-10^5 times its others (ResNet-50's stem
    conv with random weights, benchmarks/results/imagenet-scale.md) left sGLP-IB unconverged after 20,000
    iterations; accelerated, it converged in 880 at lam_hi / 30 (Zhang, O'Donoghue & Boyd, SIAM J. Optim.
    2020, and SCS 3 accelerate ADMM the same way). `reset()` forgets the history (when rho changes, F does). It holds
    2 x memory copies of the state, C (2 K + E) floats for the split: at 512 channels, 1,000 classes and
    4,206 edges, about 0.25 GB in float64."""

    def __init__(self):
        self.memory = _ANDERSON_MEMORY
        self.reset()

    def reset(self):
        self.count, self.slot, self.last, self.dX, self.dG, self.gram = 0, 0, None, None, None, None

    def step(self, x: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
        g = fx - x
        norm = float(torch.linalg.norm(g))
        if self.last is not None and norm > self.last[2]:  # the last step did not help: restart plainly
            self.reset()
        if self.last is not None:
            if self.dX is None:
                self.dX = x.new_empty(self.memory, x.numel())
                self.dG, self.gram = torch.empty_like(self.dX), x.new_zeros(self.memory, self.memory)
            j = self.slot
            torch.sub(x, self.last[0], out=self.dX[j])
            torch.sub(g, self.last[1], out=self.dG[j])
            self.count, self.slot = min(self.count + 1, self.memory), (j + 1) % self.memory
        self.last = (x, g, norm)
        if not self.count:
            return fx
        n, j = self.count, (self.slot - 1) % self.memory  # j: the pair just stored
        dG = self.dG[:n]
        products = dG @ torch.stack([self.dG[j], g], 1)  # (n, 2), one pass over dG
        self.gram[j, :n] = self.gram[:n, j] = products[:, 0]
        A = self.gram[:n, :n] + 1e-10 * float(self.gram[:n, :n].trace()) * torch.eye(n, dtype=x.dtype, device=x.device)
        gamma = torch.linalg.solve(A, products[:, 1])
        return fx - gamma @ self.dX[:n] - gamma @ dG


def _admm(eig, Rl, fusion, split, X, Y, *, rho, scale, tol, primal_tol, max_iter, rebalance=50, relax=1.8, check=10):
    """Scaled, over-relaxed ADMM (Boyd et al. 2011, sections 3.1, 3.4.1 and 3.4.3) for
    min_B 1/2 tr(B^T Q B) - <Rl, B> + h(S)  s.t.  B Dp^T = S,  Dp = [I_K; D] (K + E, K),
    with h entering through its Moreau decomposition split(T, rho) = (S, T - S),
    S = argmin_S h(S) + rho/2 ||S - T||^2; the second part is the new scaled multiplier, so the
    S- and U-updates cost one call. For sTLP E = 0
    (S = B, h = lam Omega + indicator(S >= 0)); for sGLP D is the signed incidence and
    S = [X, Z] carries B >= 0 in its first K columns and the fused differences Z = B D^T in the
    rest. The B-update Q B + rho B Dp^T Dp = Rl + rho (S - U) Dp is exact through the
    eigendecompositions of Q (`eig` = (q, Uq, Uq^T), reused while the working set is unchanged)
    and of Dp^T Dp = I + D^T D (`fusion` = `_fusion_basis(D)`, computed once per solve, or None),
    so rho can change freely.
    X (C, K) is the starting point and Y (C, K + E) the unscaled multiplier. rho=None starts at
    sqrt(lambda_min lambda_max) of Q, which balances the fast and slow modes of the B-update
    (Ghadimi et al., IEEE TAC 2015); lambda_min is floored at 1e-3 lambda_max so a singular Q
    (dead or duplicate channels) does not send rho to 0.

    Stopping rule, checked every `check` iterations: relative primal residual
    ||B Dp^T - S|| / max(||B Dp^T||, ||S||, scale / lambda_max(Q)) <= primal_tol and relative dual
    residual rho ||(S - S_prev) Dp|| / max(||Y Dp||, scale) <= tol. rho is rebalanced every
    `rebalance` iterations (factor 2 when one residual exceeds 10x the other). After `_ANDERSON_AFTER`
    iterations the state S + U (the next S and U are its split) is extrapolated by `_Anderson`, except at
    the checks, which certify a plain step.
    Returns an `_AdmmRun`.
    """
    K = Rl.shape[1]
    q, Uq, UqT = eig
    L = max(float(q[-1]), torch.finfo(Rl.dtype).eps)
    rho = _start_rho(q, L) if rho is None else rho
    if fusion is not None:
        Dp, DpT, Vp, VpT, shift = fusion
        sparse = Dp.layout == torch.sparse_csr
        if not sparse:  # the dense forms: Dp Vp and its transpose, one product each way per iteration
            into, back = Dp @ Vp, VpT @ DpT
        base, S = UqT @ Rl @ Vp, _times_sparse(X, Dp)
    else:
        Dp, shift, base, S, sparse = None, None, None, X, False
    # B Dp^T = Uq M Vp^T Dp^T with M = (Uq^T Rl Vp + rho Uq^T (S - U) Dp Vp) / (q + rho p) (C, K). For
    # K < C the products are taken as M^T (K, C) times the C x C factors: equal, and with MKL on one
    # CPU thread 1.2x faster at C = 64, K = 10 and 1.5x at C = 256 (within 5% slower at C ~ 2K).
    # Without fusion (p = 1) the update is B = P Rl + rho P (S - U), P = (Q + rho I)^-1 formed from
    # the eigendecomposition whenever rho changes: one product per iteration instead of two.
    classes_first = K < Uq.shape[0]
    if classes_first and Dp is not None:
        base = base.T.contiguous()

    def factors(rho):  # (P, P Rl) without fusion, else (1 / (q + rho p), None)
        if Dp is None:
            P = (Uq * (1 / (q + rho))) @ UqT
            return P, P @ Rl
        return 1 / ((q[None, :] + rho * shift.T) if classes_first else (q[:, None] + rho * shift)), None

    inverse, b0 = factors(rho)
    U = Y / rho
    accelerate = _Anderson()
    r_rel = s_rel = float("inf")
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        if Dp is None:
            BD = torch.addmm(b0, inverse, S - U, alpha=rho)
        elif not sparse and classes_first:
            M = torch.addmm(base, back @ (S - U).T, Uq, alpha=rho).mul_(inverse)
            BD = (M @ UqT).T @ back
        elif not sparse:
            M = torch.addmm(base, UqT, (S - U) @ into, alpha=rho).mul_(inverse)
            BD = (Uq @ M) @ back
        elif classes_first:
            M = torch.addmm(base, VpT @ (DpT @ (S - U).T), Uq, alpha=rho).mul_(inverse)
            BD = _times_sparse((M @ UqT).T @ VpT, Dp)
        else:
            M = torch.addmm(base, UqT, _times_sparse(S - U, DpT) @ Vp, alpha=rho).mul_(inverse)
            BD = _times_sparse((Uq @ M) @ VpT, Dp)
        S_prev = S
        V = torch.lerp(S, BD, relax).add_(U)  # relax B Dp^T + (1 - relax) S_prev + U: the next state
        if it > _ANDERSON_AFTER and it % check:  # the state is S + U (= V before the split); checks stay plain
            V = accelerate.step((S + U).flatten(), V.flatten()).view_as(V)
        S, U = split(V, rho)
        if it % check and it < max_iter:
            continue
        dual = [S - S_prev, U] if Dp is None else [_times_sparse(d, DpT) for d in (S - S_prev, U)]
        r_rel, s_rel = _relative_residuals([BD - S], [BD], [S], dual, rho, scale / L, scale)
        if r_rel <= primal_tol and s_rel <= tol:
            converged = True
            break
        if it % rebalance == 0 and max(r_rel, s_rel) > 10 * min(r_rel, s_rel):
            f = 2.0 if r_rel > s_rel else 0.5
            rho, U = rho * f, U / f
            inverse, b0 = factors(rho)
            accelerate.reset()
    return _AdmmRun(S[:, :K], rho * U, rho, it, converged, r_rel, s_rel)


def _admm_split(eig, Rl, fusion, split, X, Y, *, rho, scale, tol, primal_tol, max_iter, rebalance=50, relax=1.8,
                check=10):
    """`_admm`'s problem with a consensus copy W of B (Boyd et al. 2011, section 7.1), for many classes:
    min_B 1/2 tr(B^T Q B) - <Rl, B> + h(S)  s.t.  W = B,  W Dp^T = S, `fusion` a `_FusionSystem`.
    The W-update W (2 I + D^T D) = (B - U1) + (S - U2) Dp is one sparse solve with a factorisation made once
    per graph (rho-free: both constraints share rho); the (B, S)-update is B = (Q + rho I)^-1 (Rl + rho
    (W + U1)), P = (Q + rho I)^-1 formed from `eig` whenever rho changes, and S = the prox of h as in `_admm`
    (the relaxed W and W Dp^T stand in for W, Boyd et al. section 3.4.3). An iteration costs C^2 K + C
    nnz(factor) + C (K + 2E) instead of `_admm`'s exact update in the dense eigenbasis of I + D^T D,
    2 C K^2 + C^2 K. Y is the multiplier of the S-constraint, as in `_admm` (the B-constraint's is -Y Dp at
    optimality and starts there), so the warm start Y = [Rl - Q X, 0] returns W = B = X in the first
    iteration. Stopping rule as in `_admm`, with the primal residual over both constraints and the dual
    residual rho ||(B - B_prev) + (S - S_prev) Dp|| relative to max(||Y Dp||, scale). Accelerated as in `_admm`,
    on the state (B + U1, S + U2), from which the next B, U1 and S, U2 follow."""
    q, Uq, UqT = eig
    L = max(float(q[-1]), torch.finfo(Rl.dtype).eps)
    rho = _start_rho(q, L) if rho is None else rho
    Dp, DpT, solve = fusion.Dp, fusion.DpT, fusion.solve
    B, S, U2 = X, _times_sparse(X, Dp), Y / rho
    U1 = -_times_sparse(U2, DpT)

    def factors(rho):
        P = (Uq * (1 / (q + rho))) @ UqT
        return P, P @ Rl

    P, b0 = factors(rho)
    accelerate = _Anderson()
    r_rel = s_rel = float("inf")
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        W = solve((B - U1).add_(_times_sparse(S - U2, DpT)))
        WD = _times_sparse(W, Dp)
        B_prev, S_prev = B, S
        T, V = torch.lerp(B, W, relax).add_(U1), torch.lerp(S, WD, relax).add_(U2)  # the next state
        if it > _ANDERSON_AFTER and it % check:  # the state is (B + U1, S + U2); checks stay plain
            state = accelerate.step(torch.cat([(B + U1).flatten(), (S + U2).flatten()]),
                                    torch.cat([T.flatten(), V.flatten()]))
            T, V = state[:T.numel()].view_as(T), state[T.numel():].view_as(V)
        B = torch.addmm(b0, P, T, alpha=rho)
        U1 = T.sub_(B)
        S, U2 = split(V, rho)
        if it % check and it < max_iter:
            continue
        r_rel, s_rel = _relative_residuals(
            [W - B, WD - S], [W, WD], [B, S], [(B - B_prev).add_(_times_sparse(S - S_prev, DpT)),
                                               _times_sparse(U2, DpT)], rho, scale / L, scale)
        if r_rel <= primal_tol and s_rel <= tol:
            converged = True
            break
        if it % rebalance == 0 and max(r_rel, s_rel) > 10 * min(r_rel, s_rel):
            f = 2.0 if r_rel > s_rel else 0.5
            rho, U1, U2 = rho * f, U1 / f, U2 / f
            P, b0 = factors(rho)
            accelerate.reset()
    return _AdmmRun(S[:, :Rl.shape[1]], rho * U2, rho, it, converged, r_rel, s_rel)


_GROW_MIN = 8  # rows added per working-set round: at least this many, else as many as the set holds
_INNER_TOL = 0.3  # an early round stops at this fraction of the screened violation (or tol)
_FUSION_STEPS = 2000  # accelerated projected-gradient steps of the sGLP zero-row check (at most)
_FUSION_CHECK = 10  # ... which are checked this often and stop once the rows pass, or
_FUSION_WINDOW = 5  # ... their squared violation fell by less than
_FUSION_STALL = 0.9  # ... this factor over the last _FUSION_WINDOW checks


def _sparse(A):
    """A dense matrix as a sparse CSR one (torch marks CSR support beta; the products used here are stable)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return A.to_sparse_csr()


def _times_sparse(X, A):
    """X (C, n) times the transpose of the sparse A (m, n): X A^T (C, m), as (A X^T)^T. With Dp = [I; D],
    whose incidence rows hold two non-zeros, a product costs C (K + 2E) instead of the dense C K (K + E)."""
    return (A @ X.T).T


_FUSION_CACHE: dict = {}
_FUSION_CACHE_SIZE = 4
#: from this many classes on, sGLP uses `_admm_split` with a sparse factorisation (`_FusionSystem`); below
#: it `_admm`'s exact B-update in the dense eigenbasis of I + D^T D, which needs fewer iterations: on
#: 5-nearest-class graphs (C = 128) the two took about equal time at K = 150, the split 0.8-0.9x at K = 250
#: and 0.5x at K = 1,000
_SPLIT_CLASSES = 200


@dataclass(frozen=True)
class _FusionSystem:
    """The fused block of `_admm_split` for the signed incidence D (E, K) of a graph: Dp = [I; D] (K + E, K),
    its transpose, and D and D^T (the zero-row check's, `_fusion_violation`) as sparse CSR matrices;
    `solve(V)` = V (2 I + D^T D)^-1 for V (C, K), and `norm2` = ||D||_2^2.
    On the CPU the solve is SuperLU's (scipy.sparse.linalg.splu, minimum-degree ordering of the symmetric
    pattern, factored once per graph and dtype): at K = 1,000 on a 5-nearest-class graph its L and U hold
    44,000 non-zeros (6 nnz(2 I + D^T D)), so a solve costs about C x 44,000 multiply-adds where a dense
    inverse costs C x 10^6. On other devices it is a product with the dense inverse (no host round trip
    per iteration)."""

    Dp: torch.Tensor
    DpT: torch.Tensor
    D: torch.Tensor
    DT: torch.Tensor
    solve: Callable[[torch.Tensor], torch.Tensor]
    norm2: float


def _incidence_parts(graph: ClassGraph, K: int):
    """(rows, columns, values) of the signed incidence D (E, K) of `graph` (see `ClassGraph.incidence`): two
    entries per edge, built from the edge list without a dense E x K."""
    E = graph.num_edges
    rows = torch.arange(E).repeat_interleave(2)
    values = torch.stack([torch.ones(E, dtype=torch.float64), -graph.signs.detach().cpu().double()], 1)
    return rows, graph.edges.detach().cpu().flatten(), values.flatten()


def _csr(rows, cols, values, shape, *, device, dtype):
    """The sparse CSR matrix with these entries (duplicates summed), on `device` in `dtype`."""
    coo = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, check_invariants=True).coalesce()
    return _sparse(coo.to(device=device, dtype=dtype))


def _scipy_blas():
    """The BLAS libraries numpy and scipy loaded (their OpenBLAS builds; torch's MKL is linked into torch and
    not among them), to run SuperLU's solve on one BLAS thread. Between torch operations on several threads
    torch's OpenMP workers spin-wait for the next parallel region, and OpenBLAS's own threads then share the
    cores with them: with 2 torch threads on 2 cores a 5-nearest-class, 1,000-class solve took 3-6x as long on
    OpenBLAS's default 2 threads as on one (benchmarks/results/solvers-k1000-before-after-2threads.md)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


def _fusion_system(graph: ClassGraph, K: int, device, dtype) -> _FusionSystem:
    import numpy as np
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh, splu

    E = graph.num_edges
    d_rows, d_cols, d_values = _incidence_parts(graph, K)
    eye = torch.arange(K)
    rows, cols, values = (torch.cat([eye, d_rows + K]), torch.cat([eye, d_cols]),
                          torch.cat([torch.ones(K, dtype=d_values.dtype), d_values]))
    Dp = sp.csr_matrix((values.numpy(), (rows.numpy(), cols.numpy())), shape=(K + E, K))
    M = (Dp.T @ Dp + sp.identity(K)).tocsc()  # 2 I + D^T D
    norm2 = float(eigsh(M, k=1, which="LA", return_eigenvectors=False, tol=1e-10)[0]) - 2
    if torch.device(device).type == "cpu":
        lu = splu(M.astype(np.float32 if dtype == torch.float32 else np.float64), permc_spec="MMD_AT_PLUS_A",
                  options={"SymmetricMode": True})
        blas = _scipy_blas()

        def solve(V):  # SuperLU solves the columns of V^T, an F-ordered view of the rows of V
            with blas.limit(limits=1):
                return torch.from_numpy(lu.solve(V.numpy().T).T)
    else:
        inverse = torch.linalg.inv(torch.as_tensor(M.toarray(), dtype=dtype, device=device))

        def solve(V):
            return V @ inverse
    on = dict(device=device, dtype=dtype)
    return _FusionSystem(_csr(rows, cols, values, (K + E, K), **on), _csr(cols, rows, values, (K, K + E), **on),
                         _csr(d_rows, d_cols, d_values, (E, K), **on), _csr(d_cols, d_rows, d_values, (K, E), **on),
                         solve, max(norm2, 0.0))


def _fusion_basis(graph: ClassGraph, K: int, device, dtype):
    """What `_admm` or `_admm_split` takes for the signed incidence D (E, K) of `graph`: from `_SPLIT_CLASSES`
    classes on a `_FusionSystem`, below it (Dp, Dp^T, Vp, Vp^T, shift) with Dp = [I; D] (K + E, K) (sparse
    CSR from `_SPARSE_CLASSES` classes), Vp the eigenvectors of Dp^T Dp = I + D^T D and shift its
    eigenvalues (>= 1) as a row. Either depends on the graph only: the last few are kept, keyed by its
    edges and signs, so the solves of one graph along the budget bisection share them."""
    source = torch.cat([graph.edges.double().flatten().cpu(), graph.signs.double().cpu()])
    split = K >= _SPLIT_CLASSES
    key = (split, K, graph.num_edges, dtype, str(device), hashlib.sha1(source.numpy().tobytes()).hexdigest())
    if key not in _FUSION_CACHE:
        if split:
            value = _fusion_system(graph, K, device, dtype)
        else:
            Dp = torch.cat([torch.eye(K, dtype=dtype, device=device), graph.incidence(K, device=device, dtype=dtype)])
            p, Vp = torch.linalg.eigh(Dp.T @ Dp)
            DpT = Dp.T.contiguous()
            if K >= _SPARSE_CLASSES:  # products with the sparse Dp cost C (K + 2E) instead of C K (K + E)
                Dp, DpT = _sparse(Dp), _sparse(DpT)
            value = (Dp, DpT, Vp, Vp.T.contiguous(), p.clamp_min(1.0)[None, :])
        while len(_FUSION_CACHE) >= _FUSION_CACHE_SIZE:
            _FUSION_CACHE.pop(next(iter(_FUSION_CACHE)))
        _FUSION_CACHE[key] = value
    return _FUSION_CACHE[key]


def _working_set(Q, R, B, fusion, Rl, split, violation, *, tol, max_iter, primal_factor=1.0, relax=1.8):
    """Solve a per-layer problem on a working set of rows (channels), the strategy of glmnet's strong
    rules and of Celer (Massias et al., ICML 2018): rows outside the set are held at zero, the
    restricted problem is solved by `_admm`, and rows whose zero does not satisfy the KKT condition
    (`violation(G, target)`, G = Q B - R, a per-row norm, an upper bound that is 0 when B[k] = 0 is
    optimal given the other rows; an iterative bound may stop once its norm is at most `target` =
    tol ||R||) join the set; repeat until no row outside violates it by more than tol ||R||. Pruned layers
    keep few channels, so the restricted problems are small and better conditioned. A round adds
    the max(_GROW_MIN, set size) worst violators, in every layer: once a few rows join, the violations
    of the rows they nearly duplicate often vanish (on two ImageNet-scale 64-channel layers, measured
    by hand, 8 at a time left sets of 16-30 rows where taking every violator at once left all 64, and
    solved 7-10x faster). A set of every row is solved to tol in one round. Warm starts
    seed the set with B's support and the multiplier with Y = [Rl - Q X, 0] (then the first
    B-update returns X itself; a fusion block guessed from the signs of X D^T saved no iterations on
    a 64-channel, 500-class `bench_solvers.hsic_like_instance`).

    `fusion` is `_fusion_basis(D)` for sGLP and None for sTLP (see `_admm`).
    Each round's ADMM stops at primal_factor times its tolerance on the primal residual (not below
    10 eps of the dtype) and over-relaxes by `relax`. Returns a `LassoResult` without its objective
    (nan: the caller scores B with its own penalty); residual is the largest of the primal, dual and
    screened residuals. Runs under torch.inference_mode (per-op overhead dominates these small
    iterations); the returned B is an ordinary tensor.
    """
    with torch.inference_mode():  # no autograd bookkeeping per op (~5% here); B is cloned back out
        C, K = R.shape
        E = 0 if fusion is None else (fusion.Dp if isinstance(fusion, _FusionSystem) else fusion[0]).shape[0] - K
        scale = max(float(torch.linalg.norm(R)), torch.finfo(R.dtype).eps)
        active = (B != 0).any(1)
        total, rounds, rho, final, eig = 0, 0, None, False, None
        Y_all = None
        converged, primal, dual = True, 0.0, 0.0
        while True:
            idx, out = active.nonzero().flatten(), (~active).nonzero().flatten()
            viol = torch.zeros_like(R[:, 0])
            if len(out):
                viol.index_copy_(0, out, violation(Q[out][:, idx] @ B[idx] - R[out], tol * scale))
            screened = float(torch.linalg.norm(viol)) / scale
            if not converged or (screened <= tol and (final or not len(idx))):
                break
            new = torch.zeros_like(active)
            if screened > tol:
                grow = max(_GROW_MIN, len(idx))
                new[torch.topk(viol, min(int((viol > 0).sum()), grow)).indices] = True
                active |= new
                idx = active.nonzero().flatten()
            # early rounds only need the support roughly; a set of every row has no support to find
            inner_tol = tol if len(idx) == C else max(tol, _INNER_TOL * screened)
            final = inner_tol == tol
            if Y_all is None:
                Y_all = torch.cat([Rl - Q @ B, R.new_zeros(C, E)], 1)
            else:  # rows new to the set start from the multiplier consistent with their zero
                Y_all[:, :K] = torch.where(new[:, None], Rl - Q[:, idx] @ B[idx], Y_all[:, :K])
            if eig is None or eig[0].shape[0] != len(idx):  # the set only grows: same size, same set
                q, Uq = torch.linalg.eigh(Q[idx][:, idx])
                eig = q, Uq, Uq.T.contiguous()
            admm = _admm_split if isinstance(fusion, _FusionSystem) else _admm
            run = admm(eig, Rl[idx], fusion, split, B[idx], Y_all[idx], rho=rho, scale=scale, tol=inner_tol,
                        primal_tol=max(primal_factor * inner_tol, 10 * torch.finfo(R.dtype).eps),
                        max_iter=max_iter - total, relax=relax)
            B = torch.zeros_like(R).index_copy_(0, idx, run.X)
            Y_all = Y_all.index_copy(0, idx, run.Y)
            rho, converged, primal, dual = run.rho, run.converged, run.primal, run.dual
            total, rounds = total + run.iterations, rounds + 1
    certificate = {"primal_residual": primal, "dual_residual": dual, "screened_violation": screened,
                   "rho": float("nan") if rho is None else rho, "working_set": int(active.sum()), "rounds": rounds}
    return LassoResult(B=B.clone(), objective=math.nan, iterations=total, converged=converged and screened <= tol,
                       residual=max(primal, dual, screened), certificate=certificate)


def _fusion_violation(H, D, gw, step: float, outside: Callable, target: float = 0.0):
    """`D` is the pair (D, D^T) of the signed incidence (E, K) and its transpose, dense or sparse CSR (many
    classes), or None without edges. Upper bound on each row's KKT violation at zero for sGLP: min over
    fusion multipliers |Y_e| <= gamma w_e of ||outside(H + Y D)||, where H = Q B - R and `outside(V)` is V's part
    outside the l1 term's subdifferential at zero: the signed soft-threshold of V at lam for the
    signed problem (a zero row is optimal iff some Y makes |H + Y D| <= lam), min(V + lam, 0) for
    B >= 0 (optimal iff H + lam + Y D >= 0). Both are gradients of 1/2 dist^2 to a convex set, so the
    multipliers are found by accelerated projected gradient (FISTA, Beck & Teboulle 2009) on Y, `step` =
    1 / ||D||_2^2 (computed once per solve): rows with outside(H) = 0 pass with Y = 0; the others get up to
    `_FUSION_STEPS` steps from Y = 0. Every `_FUSION_CHECK` steps each row's bound is
    taken at the projected (feasible) Y and the least so far kept; a row that passes leaves the iteration.
    It stops once the bounds' norm is at most `target` (the working set's tolerance), or when their sum
    of squares fell by less than the factor `_FUSION_STALL` over the last `_FUSION_WINDOW` checks: rows
    that really violate settle within a few dozen steps, rows bound for zero keep falling.
    Any Y gives an upper bound, so a row that passes is certainly optimal at zero. Accelerated, the
    check certifies in some hundred steps rows that plain projected gradient needed thousands for. On
    ResNet-50's block statistics (1,000 classes, 4,206 edges; measured by hand) a 512-channel layer with
    17 rows kept then solved on 30-46 rows, where 30 plain steps had let 456 in; end to end, the first
    budget step of sGLP-IB took half the time (benchmarks/results/imagenet-scale.md).
    The products run with rows as columns ((K, n) and (E, n) blocks), where the sparse CSR products are
    2-4x faster than on row-major blocks."""
    V = outside(H)
    out = torch.linalg.norm(V, dim=1)
    rows = (out > 0).nonzero().flatten()
    if D is None or not len(rows):
        return out
    D, DT = D
    Ht, Vt, best = H[rows].T.contiguous(), V[rows].T.contiguous(), out[rows]  # (K, n), (K, n), (n,)
    hi = gw[:, None]
    Y = Z = H.new_zeros(D.shape[0], len(rows))  # (E, n): Y feasible, Z its extrapolation
    t, history = 1.0, [float(best.square().sum())]
    for i in range(1, _FUSION_STEPS + 1):
        Y_next = torch.clamp(Z - step * (D @ Vt), -hi, hi)
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        Z = torch.lerp(Y_next, Y, (1.0 - t) / t_next)  # Y_next + (t - 1) / t_next (Y_next - Y)
        Y, t = Y_next, t_next
        if i % _FUSION_CHECK == 0 or i == _FUSION_STEPS:
            best = torch.minimum(best, torch.linalg.norm(outside(Ht + DT @ Y), dim=0))
            total = float(best.square().sum())
            passed = best == 0
            if bool(passed.any()):
                out.index_copy_(0, rows, best)
                left = (~passed).nonzero().flatten()
                rows, Ht, Y, Z, best = rows[left], Ht[:, left], Y[:, left], Z[:, left], best[left]
            history.append(total)
            stalled = len(history) > _FUSION_WINDOW and total > _FUSION_STALL * history[-1 - _FUSION_WINDOW]
            if not len(rows) or total <= target * target or stalled:
                break
        Vt = outside(Ht + DT @ Z)
    return out.index_copy_(0, rows, best)


def _moreau(T, S):
    """(S, T - S), the split `_admm` takes, from a prox value S of T."""
    return S, T.sub_(S)


def solve_stlp(Q, R, tree: ClassTree, lam: float, *, nonnegative: bool = False, tol: float = 1e-6,
               max_iter: int = SOLVER_MAX_ITER, B0: torch.Tensor | None = None) -> LassoResult:
    """Solve the sTLP-IB per-layer problem, the tree-guided group lasso over channels.

    Minimises over B (C, K), signed (B >= 0 with `nonnegative`)::

        F(B) = 1/2 tr(B^T Q B) - tr(R^T B) + lam sum_k sum_v w_v ||B[k, G_v]||_2

    where the tree's nodes v have class sets G_v (leaves and root included) and weights w_v
    (`stlp_objective`). Channel k is kept iff row B[k] is non-zero.

    Parameters
    ----------
    Q : torch.Tensor, shape (C, C)
        Redundancy between the C channels (normalised HSIC, PSD); its symmetric part is used.
    R : torch.Tensor, shape (C, K)
        Relevance of each channel to each of the K classes. Same device and dtype as Q
        (float32 or float64); both finite.
    tree : ClassTree
        Laminar groups over the K classes with weights w_v >= 0.
    lam : float
        Weight of the tree penalty, >= 0; larger lam keeps fewer channels.
    nonnegative : bool, optional
        Add the constraint B >= 0 (HSIC Lasso's form, an ablation).
    tol : float, optional
        Relative tolerance of the stopping rule (Notes); float32 stops at no less than 10 eps.
    max_iter : int, optional
        ADMM iterations, summed over the working-set rounds.
    B0 : torch.Tensor, shape (C, K), optional
        Warm start, e.g. the solution at a nearby lam; its support seeds the working set and its
        negative entries are clipped under `nonnegative`.

    Returns
    -------
    LassoResult
        `B` (C, K), feasible; `objective` F(B); `iterations`; `converged` (the stopping rule
        held within max_iter); `residual`, the largest relative residual; `certificate`,
        {"primal_residual", "dual_residual", "screened_violation", "rho", "working_set",
        "rounds"}.

    Raises
    ------
    PaperpruneError
        If Q, R, B0, lam or the tree's class count do not fit (names the value and the shape or
        range expected).

    Notes
    -----
    Reconstruction (METHOD.md section 2; the paper gives the scheme's name and idea only): the
    multi-task HSIC regression of APIB with one task per class, signed by default, and the
    tree-guided group lasso of Kim & Xing (ICML 2010) with node weights from cluster heights.
    Q and R from block statistics (section 2b) have the same form and are solved the same way.

    Solver: scaled, over-relaxed ADMM (relaxation 1.8) with B = X and g(X) = lam Omega(X) [+ the
    indicator of X >= 0], whose prox is the exact `tree_prox` (Jenatton et al., JMLR 2011); the
    B-update uses the eigendecomposition of Q on a working set of rows grown from the KKT check
    of the others (glmnet's strong rules, Celer). An iteration costs C^2 K plus the prox. A solve
    still running after `_ANDERSON_AFTER` (300) iterations is Anderson-accelerated (`_Anderson`): on an
    ill-conditioned Q it converges several times sooner, at the same fixed point.

    Certificate: ADMM's relative primal and dual residuals <= tol on the working set, and the
    KKT violation of the rows held at zero, ||tree_prox(R_k - (Q B)_k, lam)|| (zero exactly when
    B[k] = 0 is optimal), <= tol ||R||. On the tests' instances this gives relative objective
    gaps <= 1e-5 against cvxpy (Clarabel).

    Examples
    --------
    Channel 1 nearly duplicates channel 0 (Q_01 = 0.9) and is dropped; channel 2 serves class 2
    alone, so its coefficient is 0.9 - lam (w_2 + w_root) = 0.9 - 0.2 x 0.8:

    >>> import torch
    >>> from paperprune.lasso import solve_stlp
    >>> from paperprune.structure import ClassTree
    >>> Q = torch.tensor([[1.0, 0.9, 0.1], [0.9, 1.0, 0.1], [0.1, 0.1, 1.0]], dtype=torch.float64)
    >>> R = torch.tensor([[0.8, 0.7, 0.1], [0.7, 0.6, 0.1], [0.1, 0.1, 0.9]], dtype=torch.float64)
    >>> tree = ClassTree([[0], [1], [2], [0, 1], [0, 1, 2]], [0.5, 0.5, 0.5, 0.8, 0.3])
    >>> res = solve_stlp(Q, R, tree, lam=0.2)
    >>> res.converged, (res.B.norm(dim=1) > 0).tolist()
    (True, [True, False, True])
    >>> round(float(res.B[2, 2]), 3)
    0.74
    """
    Q, B = _check_problem(Q, R, B0, lam, nonnegative=nonnegative)
    if tree.num_classes != R.shape[1]:
        raise PaperpruneError(f"ClassTree has {tree.num_classes} classes but R has K = {R.shape[1]} columns")
    tree = tree.to(R.device, R.dtype)
    lam = float(lam)
    result = _working_set(
        Q, R, B, None, R, lambda T, rho: _moreau(T, tree_prox(T, tree, lam / rho, nonnegative=nonnegative)),
        lambda G, target: torch.linalg.norm(tree_prox(-G, tree, lam, nonnegative=nonnegative), dim=1),
        tol=_effective_tol(tol, R.dtype), max_iter=max_iter)
    result.objective = stlp_objective(result.B, Q, R, tree, lam)
    return result


def solve_sglp(Q, R, graph: ClassGraph, lam: float, gamma: float, *, nonnegative: bool = False,
               tol: float = 1e-6, max_iter: int = SOLVER_MAX_ITER, B0: torch.Tensor | None = None) -> LassoResult:
    """Solve the sGLP-IB per-layer problem, the graph-guided fused lasso over channels.

    Minimises over B (C, K), signed (B >= 0 with `nonnegative`)::

        F(B) = 1/2 tr(B^T Q B) - tr(R^T B) + lam sum_{k,c} |B_kc|
               + gamma sum_e w_e sum_k |B[k, c_e] - s_e B[k, d_e]|

    over the graph's edges e = (c_e, d_e) with weights w_e > 0 and signs s_e = +-1
    (`sglp_objective`). Channel k is kept iff row B[k] is non-zero.

    Parameters
    ----------
    Q : torch.Tensor, shape (C, C)
        Redundancy between the C channels (normalised HSIC, PSD); its symmetric part is used.
    R : torch.Tensor, shape (C, K)
        Relevance of each channel to each of the K classes. Same device and dtype as Q
        (float32 or float64); both finite.
    graph : ClassGraph
        E edges over the K classes; E = 0 gives the plain (multi-task) lasso.
    lam : float
        Weight of the l1 term, >= 0; B = 0 from lam >= max |R| on (max R under `nonnegative`).
    gamma : float
        Weight of the fusion term, >= 0.
    nonnegative : bool, optional
        Add the constraint B >= 0 (HSIC Lasso's form, an ablation); a negative edge then fuses
        nothing.
    tol : float, optional
        Relative tolerance of the stopping rule (Notes); float32 stops at no less than 10 eps.
    max_iter : int, optional
        ADMM iterations, summed over the working-set rounds.
    B0 : torch.Tensor, shape (C, K), optional
        Warm start, e.g. the solution at a nearby lam; its support seeds the working set and its
        negative entries are clipped under `nonnegative`.

    Returns
    -------
    LassoResult
        `B` (C, K), feasible; `objective` F(B); `iterations`; `converged` (the stopping rule
        held within max_iter); `residual`, the largest relative residual; `certificate`,
        {"primal_residual", "dual_residual", "screened_violation", "rho", "working_set",
        "rounds"}.

    Raises
    ------
    PaperpruneError
        If Q, R, B0, lam, gamma or the graph's class indices do not fit (names the value and the
        shape or range expected).

    Notes
    -----
    Reconstruction (METHOD.md section 2; the paper gives the scheme's name and idea only): the
    multi-task HSIC regression of APIB with one task per class, signed by default, and the
    graph-guided fused lasso of Kim & Xing (2009) on a class graph from class-mean embeddings.
    Q and R from block statistics (section 2b) have the same form and are solved the same way.

    Solver: scaled, over-relaxed ADMM (relaxation 1.7) on a working set of rows grown from the
    KKT check of the others (glmnet's strong rules, Celer), on
    min 1/2 tr(B^T Q B) - <R, B> + lam |X|_1 + gamma sum_e w_e |Z[:, e]|_1 s.t. B = X,
    B D^T = Z, with D (E, K) the signed incidence and S = [X, Z] updated by soft-thresholding
    (on B >= 0 the l1 term is linear: R becomes R - lam and X = max(V, 0)). Below
    `_SPLIT_CLASSES` (200) classes the B-update is exact in the eigenbases of Q and of I + D^T D
    (`_admm`, 2 C K^2 + C^2 K per iteration). From 200 classes a consensus copy W of B takes the
    fusion (`_admm_split`): its update is one sparse solve with 2 I + D^T D, factored once per
    graph by SuperLU and reused by every solve of the budget bisection, so an iteration costs
    C^2 K + C nnz(factor) + C (K + 2E); it takes 0.9-2x the exact update's iterations on
    benchmarks/bench_solvers_k1000.py's instances and reaches the same optimum (the tests
    compare the two). Timings: benchmarks/results/solvers-k1000.md (a loaded machine) and
    solvers-k1000-quiet.md (an idle one), both at one torch thread; at two,
    solvers-k1000-before-after-2threads.md (SuperLU's solve runs on one BLAS thread, `_scipy_blas`).
    Either update is Anderson-accelerated (`_Anderson`) once a solve runs past `_ANDERSON_AFTER` (300)
    iterations: at ImageNet scale the stem conv of ResNet-50 (one Perron eigenvalue of Q 10^4-10^5 times
    the rest) converged in 880 iterations instead of stopping at 20,000.

    Certificate: ADMM's relative dual residual <= tol and primal residual <= tol / 10 on the
    working set, and for the rows held at zero `_fusion_violation`, an upper bound on their KKT
    violation, <= tol ||R|| in total. The primal residual is held 10x tighter than sTLP's because
    the returned B = X is scored with its own fused differences B D^T, not with Z, so the
    Z-block residual enters the objective at first order: at tol = 1e-6 it left objective gaps
    up to 1e-5 on benchmarks/bench_solvers.py's instances (seeds 0-2, lam = 0.3-0.7 max R), and
    at most 1e-6 with tol / 10. Relaxation 1.7 rather than sTLP's 1.8: on that benchmark's
    instances (C x K = 64x10, 256x100, 512x10; seeds 0-1) it took 90/90, 290/220 and 160/160
    iterations against 110/90, 290/240 and 160/180 at 1.8.

    Examples
    --------
    Channel 1 nearly duplicates channel 0 (Q_01 = 0.9) and is dropped; the edge fuses classes 0
    and 1 in channel 0 at the mean of R[0, :2] less lam, (0.8 + 0.7) / 2 - 0.3:

    >>> import torch
    >>> from paperprune.lasso import solve_sglp
    >>> from paperprune.structure import ClassGraph
    >>> Q = torch.tensor([[1.0, 0.9, 0.1], [0.9, 1.0, 0.1], [0.1, 0.1, 1.0]], dtype=torch.float64)
    >>> R = torch.tensor([[0.8, 0.7, 0.1], [0.7, 0.6, 0.1], [0.1, 0.1, 0.9]], dtype=torch.float64)
    >>> graph = ClassGraph([[0, 1]], [0.9], [1.0])
    >>> res = solve_sglp(Q, R, graph, lam=0.3, gamma=0.1)
    >>> res.converged, (res.B.norm(dim=1) > 0).tolist()
    (True, [True, False, True])
    >>> res.B[0, :2].round(decimals=3).tolist(), round(res.objective, 4)
    ([0.45, 0.45], -0.3825)
    """
    Q, B = _check_problem(Q, R, B0, lam, gamma, nonnegative=nonnegative)
    graph.check_classes(R.shape[1])
    gw = float(gamma) * graph.weights.to(device=R.device, dtype=R.dtype)
    K, lam = R.shape[1], float(lam)
    # S = [X, Z], each block a soft-threshold (X = max(T, 0) under B >= 0); the multiplier part
    # T - S is T clipped to [-lam / rho, lam / rho] ([-inf, 0] under B >= 0) on the X block and
    # to [-gamma w / rho, gamma w / rho] on the Z block.
    if nonnegative:
        lo, hi, Rl = torch.cat([R.new_full((K,), -math.inf), -gw]), torch.cat([R.new_zeros(K), gw]), R - lam
    else:
        lo, hi, Rl = torch.cat([R.new_full((K,), -lam), -gw]), torch.cat([R.new_full((K,), lam), gw]), R

    def outside(V):  # V's part outside lam's subdifferential of the l1 term at 0
        return V.add(lam).clamp_max_(0) if nonnegative else V.sign() * (V.abs() - lam).clamp_min_(0)
    cache = {}

    def split(T, rho):
        if cache.get("rho") != rho:
            cache.update(rho=rho, lo=lo / rho, hi=hi / rho)
        U = torch.clamp(T, cache["lo"], cache["hi"])
        return T.sub_(U), U

    fusion = _fusion_basis(graph, K, R.device, R.dtype) if graph.num_edges else None
    if fusion is None:
        D, norm2 = None, 0.0
    elif isinstance(fusion, _FusionSystem):  # D and D^T, sparse
        D, norm2 = (fusion.D, fusion.DT), fusion.norm2
    else:
        D, norm2 = graph.incidence(K, device=R.device, dtype=R.dtype), float(fusion[-1].max()) - 1
        D = (D, D.T.contiguous()) if K < _SPARSE_CLASSES else (_sparse(D), _sparse(D.T.contiguous()))
    step = 1.0 / max(norm2, 1.0)  # 1 / ||D||_2^2

    result = _working_set(Q, R, B, fusion, Rl, split,
                          lambda G, target: _fusion_violation(G, D, gw, step, outside, target),
                          tol=_effective_tol(tol, R.dtype), max_iter=max_iter, primal_factor=0.1, relax=1.7)
    result.objective = sglp_objective(result.B, Q, R, graph, lam, gamma)
    return result


def lasso_path(solve: Callable[[float, torch.Tensor | None], LassoResult], lams: Sequence[float]) -> list[LassoResult]:
    """Solve along a decreasing lam path, warm-starting each problem from the previous B.

    `solve(lam, B0)` runs one problem, e.g.
    `lambda lam, B0: solve_sglp(Q, R, graph, lam, 0.5 * lam, B0=B0)`. Larger lam gives sparser B,
    so starting from the sparse end keeps each warm start close to the next optimum.
    """
    lams = [float(x) for x in lams]
    if any(b > a for a, b in zip(lams, lams[1:])):
        raise PaperpruneError(f"lams must be decreasing for warm starts, got {lams}")
    out: list[LassoResult] = []
    B0 = None
    for lam in lams:
        out.append(solve(lam, B0))
        B0 = out[-1].B
    return out
