"""Structured-lasso solvers for sGLP-IB and sTLP-IB (METHOD.md section 2).

What comes from the paper (arXiv 2502.09125, abstract only): the two scheme names, sGLP-IB
(sparse graph-structured lasso pruning) and sTLP-IB (sparse tree-guided lasso pruning), and the
idea of a structured lasso over filters guided by class-wise relatedness and the Information
Bottleneck. Everything in this module is reconstruction:

- the per-layer problem, a multi-task HSIC lasso with one task per class,
  f(B) = 1/2 tr(B^T Q B) - tr(R^T B) over B >= 0 of shape (C, K), follows APIB (Guo et al.,
  ICCV 2023) and HSIC Lasso (Yamada et al. 2014);
- the graph penalty is the graph-guided fused lasso and the tree penalty the tree-guided group
  lasso of Kim & Xing (2009; ICML 2010), including the node weights built from cluster heights;
- both solvers are scaled, over-relaxed ADMM (Boyd et al. 2011) with an exact B-update (a
  Sylvester system diagonalised once), rho started from sqrt(lambda_min lambda_max) of Q
  (Ghadimi et al. 2015) and rebalanced from the residuals; the sTLP X-update is the exact tree-structured
  prox of Jenatton et al. (JMLR 2011). Chen et al. (AoAS 2012) propose smoothing proximal gradient
  for the graph penalty; ADMM reaches the 1e-5 relative objective gap the tests demand, which
  SPG's smoothing bias makes costly, and on these ill-conditioned Q (one Perron eigenvalue far
  above the rest) needs 2-3x fewer iterations than FISTA;
- a working set of rows (glmnet's strong rules, Celer) solves each problem on the channels that
  can be non-zero, checking the KKT condition of the others; pruned layers keep few channels.

The solvers use torch only, run in float32 or float64 on whichever device Q and R live on, and
never loop over channels or classes in Python (the tree prox loops over tree levels, the
working set over rounds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .utils import PaperpruneError

__all__ = [
    "ClassGraph",
    "ClassTree",
    "LassoResult",
    "sglp_objective",
    "stlp_objective",
    "tree_prox",
    "solve_sglp",
    "solve_stlp",
    "lasso_path",
    "class_graph_from_embeddings",
    "class_tree_from_embeddings",
    "class_tree_from_taxonomy",
]


# --------------------------------------------------------------------------- class structures


def _as_tensor(x, dtype: torch.dtype, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(dtype)
    try:
        return torch.as_tensor(np.asarray(x), dtype=dtype)
    except (TypeError, ValueError) as e:
        raise PaperpruneError(f"{name} must be array-like, got {type(x).__name__}: {e}") from None


def _already_on(t: torch.Tensor, device, dtype) -> bool:
    """True when `t` is on `device` in `dtype` (None leaves either as it is): `to` can return self."""
    return (device is None or torch.device(device) == t.device) and (dtype is None or dtype == t.dtype)


@dataclass
class ClassGraph:
    """Graph over classes for sGLP-IB: edge e = (c_e, d_e) with weight w_e > 0 and sign s_e = +-1.

    The fusion penalty is sum_e w_e sum_k |B[k, c_e] - s_e B[k, d_e]| (METHOD.md section 2).
    `num_classes` is optional; when given, edges are checked against it here, otherwise at
    solve time against R's K.
    """

    edges: torch.Tensor
    weights: torch.Tensor
    signs: torch.Tensor
    num_classes: int | None = None

    def __post_init__(self):
        self.edges = _as_tensor(self.edges, torch.int64, "ClassGraph.edges")
        if self.edges.numel() == 0:
            self.edges = self.edges.reshape(0, 2)
        fdtype = self.weights.dtype if isinstance(self.weights, torch.Tensor) and self.weights.is_floating_point() \
            else torch.float64
        self.weights = _as_tensor(self.weights, fdtype, "ClassGraph.weights").to(self.edges.device)
        self.signs = _as_tensor(self.signs, fdtype, "ClassGraph.signs").to(self.edges.device)
        if self.edges.ndim != 2 or self.edges.shape[1] != 2:
            raise PaperpruneError(f"ClassGraph.edges must have shape (E, 2), got {tuple(self.edges.shape)}")
        E = self.edges.shape[0]
        if self.weights.shape != (E,) or self.signs.shape != (E,):
            raise PaperpruneError(
                f"ClassGraph.weights and .signs must have shape ({E},) like the edges, got "
                f"{tuple(self.weights.shape)} and {tuple(self.signs.shape)}")
        if E and not bool(torch.isfinite(self.weights).all() and (self.weights > 0).all()):
            raise PaperpruneError(f"ClassGraph.weights must be finite and > 0, got min {self.weights.min().item()}; "
                                  "drop edges with zero weight")
        if E and not bool(((self.signs == 1) | (self.signs == -1)).all()):
            raise PaperpruneError("ClassGraph.signs must be +1 or -1")
        if E and int(self.edges.min()) < 0:
            raise PaperpruneError(f"ClassGraph.edges has a negative class index {int(self.edges.min())}")
        if E and bool((self.edges[:, 0] == self.edges[:, 1]).any()):
            raise PaperpruneError("ClassGraph.edges has a self-loop (c, c); remove it")
        if self.num_classes is not None:
            self.check_classes(self.num_classes)

    def check_classes(self, num_classes: int) -> None:
        if self.num_edges and int(self.edges.max()) >= num_classes:
            raise PaperpruneError(f"ClassGraph edge class index {int(self.edges.max())} is out of range for "
                                  f"{num_classes} classes")

    @property
    def num_edges(self) -> int:
        return int(self.edges.shape[0])

    def incidence(self, num_classes: int, device=None, dtype=torch.float64) -> torch.Tensor:
        """Signed incidence D (E, K): (B D^T)[k, e] = B[k, c_e] - s_e B[k, d_e]."""
        self.check_classes(num_classes)
        E = self.num_edges
        D = torch.zeros(E, num_classes, dtype=dtype, device=device)
        rows = torch.arange(E, device=device)
        e = self.edges.to(device)
        D[rows, e[:, 0]] = 1.0
        D[rows, e[:, 1]] = -self.signs.to(device=device, dtype=dtype)
        return D

    def to(self, device=None, dtype=None) -> "ClassGraph":
        """A copy with weights and signs on `device` in `dtype` (self when they are already)."""
        if _already_on(self.weights, device, dtype):
            return self
        dtype = dtype or self.weights.dtype
        return ClassGraph(self.edges.to(device), self.weights.to(device=device, dtype=dtype),
                          self.signs.to(device=device, dtype=dtype), self.num_classes)


@dataclass
class ClassTree:
    """Tree over classes for sTLP-IB: node v has the class set G_v (leaves and root included)
    and a weight w_v >= 0; the penalty is sum_k sum_v w_v ||B[k, G_v]||_2 (METHOD.md section 2).

    Groups must be laminar (any two are disjoint or nested). Precomputed for the prox:
    `mask` (V, K) membership, `depth` (V,) number of ancestors (equal groups are ordered by
    index), `order` node indices from the leaves to the root, `leaf_weights` (K,) the summed
    weight of the one-class groups {c}, and `levels`, one (node indices, float mask (V_h, K),
    weights (V_h,), outside (K,)) per height (longest chain of groups below a node), lowest
    first, for the groups of two or more classes with weight > 0. Groups of one height are
    disjoint (a group strictly above another is higher), so each level is one batched group
    soft-thresholding; `outside` is 1 for classes in none of its groups.
    `num_classes` defaults to the largest class index + 1.
    """

    groups: list[list[int]]
    weights: torch.Tensor
    num_classes: int | None = None
    mask: torch.Tensor = field(init=False, repr=False)
    depth: torch.Tensor = field(init=False, repr=False)
    order: torch.Tensor = field(init=False, repr=False)
    leaf_weights: torch.Tensor = field(init=False, repr=False)
    levels: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = field(init=False, repr=False)

    def __post_init__(self):
        try:
            self.groups = [[int(c) for c in g] for g in self.groups]
        except (TypeError, ValueError):
            raise PaperpruneError("ClassTree.groups must be a list of lists of class indices") from None
        V = len(self.groups)
        if V == 0:
            raise PaperpruneError("ClassTree needs at least one group")
        fdtype = self.weights.dtype if isinstance(self.weights, torch.Tensor) and self.weights.is_floating_point() \
            else torch.float64
        self.weights = _as_tensor(self.weights, fdtype, "ClassTree.weights")
        device = self.weights.device
        if self.weights.shape != (V,):
            raise PaperpruneError(f"ClassTree.weights must have shape ({V},), one per group, "
                                  f"got {tuple(self.weights.shape)}")
        if not bool(torch.isfinite(self.weights).all() and (self.weights >= 0).all()):
            raise PaperpruneError(f"ClassTree.weights must be finite and >= 0, got min {self.weights.min().item()}")
        for v, g in enumerate(self.groups):
            if not g:
                raise PaperpruneError(f"ClassTree group {v} is empty")
            if len(set(g)) != len(g):
                raise PaperpruneError(f"ClassTree group {v} repeats a class: {g}")
            if min(g) < 0:
                raise PaperpruneError(f"ClassTree group {v} has a negative class index: {g}")
        top = max(max(g) for g in self.groups)
        if self.num_classes is None:
            self.num_classes = top + 1
        if top >= self.num_classes:
            raise PaperpruneError(f"ClassTree class index {top} is out of range for {self.num_classes} classes")
        K = self.num_classes
        mask = torch.zeros(V, K, dtype=torch.bool)
        for v, g in enumerate(self.groups):
            mask[v, g] = True
        m = mask.to(torch.float64)
        inter = m @ m.T
        size = m.sum(1)
        nested = (inter == 0) | (inter == size[:, None]) | (inter == size[None, :])
        if not bool(nested.all()):
            u, w = (~nested).nonzero()[0].tolist()
            raise PaperpruneError(f"ClassTree groups are not nested (laminar): group {u} {self.groups[u]} and "
                                  f"group {w} {self.groups[w]} overlap without one containing the other")
        # u is an ancestor of v when G_v is a proper subset of G_u, or equal with u < v.
        idx = torch.arange(V)
        contains = (inter == size[None, :]) & ((size[:, None] > size[None, :]) | (idx[:, None] < idx[None, :]))
        self.depth = contains.sum(0).to(device)
        self.order = torch.argsort(self.depth, descending=True, stable=True)
        self.mask = mask.to(device)
        height = torch.zeros(V, dtype=torch.int64)
        for v in torch.argsort(contains.sum(1), stable=True).tolist():  # every group after those below it
            below = contains[v].nonzero().flatten()
            height[v] = int(height[below].max()) + 1 if len(below) else 0
        single = size == 1
        self.leaf_weights = torch.zeros(K, dtype=fdtype, device=device).index_add_(
            0, mask[single].to(torch.int64).argmax(1).to(device), self.weights[single.to(device)])
        self.levels = []
        for h in range(int(height.max()) + 1):
            nodes = ((height == h) & ~single & (self.weights.cpu() > 0)).nonzero().flatten().to(device)
            if len(nodes):
                m = self.mask[nodes].to(fdtype)
                self.levels.append((nodes, m, self.weights[nodes], 1 - m.sum(0)))

    @property
    def num_nodes(self) -> int:
        return len(self.groups)

    def to(self, device=None, dtype=None) -> "ClassTree":
        """A copy with weights and precomputed masks on `device` in `dtype`."""
        if _already_on(self.weights, device, dtype):
            return self
        return ClassTree(self.groups, self.weights.to(device=device, dtype=dtype or self.weights.dtype),
                         self.num_classes)


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


def _smooth(B, Q, R):
    return 0.5 * (B * (Q @ B)).sum() - (R * B).sum()


def sglp_objective(B, Q, R, graph: ClassGraph, lam: float, gamma: float) -> float:
    """sGLP-IB objective F(B) = 1/2 tr(B^T Q B) - tr(R^T B) + lam sum|B|
    + gamma sum_e w_e sum_k |B[k,c_e] - s_e B[k,d_e]| (METHOD.md section 2). The constraint B >= 0
    is not part of the value."""
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
    (METHOD.md section 2). The constraint B >= 0 is not part of the value."""
    return float(_smooth(B, Q, R) + lam * _tree_penalty(B, tree))


def tree_prox(X: torch.Tensor, tree: ClassTree, threshold: float, *, nonnegative: bool = True) -> torch.Tensor:
    """Exact prox of threshold * sum_v w_v ||x_{G_v}||_2 (plus the indicator of x >= 0 when
    `nonnegative`) applied to every row of X (C, K).

    Jenatton et al. (JMLR 2011): for laminar groups the prox is the composition of group
    soft-thresholdings x_G <- x_G max(0, 1 - threshold w_G / ||x_G||), applied from the leaves to
    the root. The norm depends on |x| only and is monotone in it, so the prox of norm +
    indicator(x >= 0) is the norm's prox of max(x, 0) (checked against cvxpy in the tests).
    The one-class groups are one soft-thresholding of every entry; the larger groups follow by
    height, one batched step per level (`ClassTree.levels`).
    """
    t = tree.to(X.device, X.dtype)
    if nonnegative:
        Y = (X - threshold * t.leaf_weights).clamp_min_(0)
    else:
        Y = X.sign() * (X.abs() - threshold * t.leaf_weights).clamp_min_(0)
    if threshold <= 0:
        return Y
    one = X.new_ones(())
    for _, m, w, outside in t.levels:
        # 1 - threshold w / ||y_G||, clipped at 0; a zero norm gives -inf, hence 0 (w > 0 on every level)
        scale = torch.addcmul(one, ((Y * Y) @ m.T).rsqrt_(), w, value=-threshold).clamp_min_(0)
        Y.mul_(torch.addmm(outside, scale, m))  # classes outside this level's groups keep factor 1
    return Y


# --------------------------------------------------------------------------- solvers


def _check_problem(Q, R, B0, lam, gamma=0.0):
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
    B = torch.zeros_like(R) if B0 is None else B0.to(device=R.device, dtype=R.dtype).clamp_min(0)
    return Q, B


def _effective_tol(tol: float, dtype: torch.dtype) -> float:
    """A tolerance below ~10 ulp cannot be met; float32 runs stop at 10 * eps instead."""
    return max(float(tol), 10 * torch.finfo(dtype).eps)


def _admm(eig, Rl, fusion, split, X, Y, *, rho, scale, tol, primal_tol, max_iter, rebalance=50, relax=1.8, check=5):
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
    `rebalance` iterations (factor 2 when one residual exceeds 10x the other).
    Returns (X = S[:, :K], Y, rho, iterations, converged, primal, dual); X is feasible.
    """
    K = Rl.shape[1]
    q, Uq, UqT = eig
    L = max(float(q[-1]), torch.finfo(Rl.dtype).eps)
    if rho is None:
        rho = math.sqrt(max(float(q[0]), 1e-3 * L) * L)
    if fusion is not None:
        Dp, Vp, shift, into, back = fusion
        base, S = UqT @ Rl @ Vp, X @ Dp.T
    else:
        Dp, shift, base, S = None, Rl.new_ones(1, K), UqT @ Rl, X
    # B Dp^T = Uq M Vp^T Dp^T with M = (Uq^T Rl Vp + rho Uq^T (S - U) Dp Vp) / (q + rho p) (C, K). For
    # K < C the products are taken as M^T (K, C) times the C x C factors: equal, and with MKL on one
    # CPU thread 1.2x faster at C = 64, K = 10 and 1.5x at C = 256 (within 5% slower at C ~ 2K).
    classes_first = K < Uq.shape[0]
    if classes_first:
        base = base.T.contiguous()
    dinv = 1 / ((q[None, :] + rho * shift.T) if classes_first else (q[:, None] + rho * shift))
    U = Y / rho
    r_rel = s_rel = float("inf")
    converged, it = False, 0
    for it in range(1, max_iter + 1):
        if classes_first:
            M = torch.addmm(base, (S - U).T if Dp is None else back @ (S - U).T, Uq, alpha=rho).mul_(dinv)
            BD = (M @ UqT).T.contiguous() if Dp is None else (M @ UqT).T @ back
        else:
            M = torch.addmm(base, UqT, S - U if Dp is None else (S - U) @ into, alpha=rho).mul_(dinv)
            BD = Uq @ M if Dp is None else (Uq @ M) @ back
        S_prev = S
        S, U = split(torch.lerp(S, BD, relax).add_(U), rho)  # relax B Dp^T + (1 - relax) S_prev + U
        if it % check and it < max_iter:
            continue
        dual = torch.stack([S - S_prev, U])
        if Dp is not None:
            dual = dual @ Dp
        sq = torch.cat([torch.stack([BD - S, BD, S]).square().sum((1, 2)), dual.square().sum((1, 2))])
        r, ax, bz, s, dual = sq.sqrt_().tolist()  # one device sync per check
        r_rel, s_rel = r / max(ax, bz, scale / L), rho * s / max(rho * dual, scale)
        if r_rel <= primal_tol and s_rel <= tol:
            converged = True
            break
        if it % rebalance == 0 and max(r_rel, s_rel) > 10 * min(r_rel, s_rel):
            f = 2.0 if r_rel > s_rel else 0.5
            rho, U = rho * f, U / f
            dinv = 1 / ((q[None, :] + rho * shift.T) if classes_first else (q[:, None] + rho * shift))
    return S[:, :K], rho * U, rho, it, converged, r_rel, s_rel


_GROW_MIN = 32  # rows added per working-set round: at least this many, else as many as the set holds
_INNER_TOL = 0.3  # an early round stops at this fraction of the screened violation (or tol)
_FUSION_STEPS = 30  # projected-gradient steps of the sGLP zero-row check (at most)
_FUSION_CHECK = 10  # ... which stop early, checked this often, once every row passes or
_FUSION_STALL = 0.25  # the squared violation fell by less than this factor since the last check


def _fusion_basis(D):
    """(Dp, Vp, shift, Dp Vp, (Dp Vp)^T) for `_admm`'s B-update: Dp = [I; D] (K + E, K), Vp the
    eigenvectors of Dp^T Dp = I + D^T D and shift its eigenvalues (>= 1) as a row."""
    Dp = torch.cat([torch.eye(D.shape[1], dtype=D.dtype, device=D.device), D])
    p, Vp = torch.linalg.eigh(Dp.T @ Dp)
    into = Dp @ Vp
    return Dp, Vp, p.clamp_min(1.0)[None, :], into, into.T.contiguous()


def _working_set(Q, R, B, fusion, Rl, split, violation, *, tol, max_iter, primal_factor=1.0):
    """Solve a per-layer problem on a working set of rows (channels), the strategy of glmnet's strong
    rules and of Celer (Massias et al., ICML 2018): rows outside the set are held at zero, the
    restricted problem is solved by `_admm`, and rows whose zero does not satisfy the KKT condition
    (`violation(G)`, G = Q B - R, a per-row norm that is 0 when B[k] = 0 is optimal given the other
    rows) join the set; repeat until no row outside violates it by more than tol ||R||. Pruned layers
    keep few channels, so the restricted problems are small and better conditioned. A round adds
    the max(_GROW_MIN, set size) worst violators; a layer of at most 2 _GROW_MIN rows takes every
    violator at once (its set would hold half the rows anyway, and each round costs a restart and an
    eigendecomposition), and a set of every row is solved to tol in one round. Warm starts
    seed the set with B's support and the multiplier with Y = [Rl - Q X, 0] (then the first
    B-update returns X itself).

    `fusion` is `_fusion_basis(D)` for sGLP and None for sTLP (see `_admm`).
    Each round's ADMM stops at primal_factor times its tolerance on the primal residual (not below
    10 eps of the dtype). Returns (B, iterations, converged, residual, certificate); residual is
    the largest of the primal, dual and screened residuals. Runs under torch.inference_mode (per-op overhead dominates
    these small iterations); the returned B is an ordinary tensor.
    """
    with torch.inference_mode():  # no autograd bookkeeping per op (~5% here); B is cloned back out
        C, K = R.shape
        E = 0 if fusion is None else fusion[0].shape[0] - K
        scale = max(float(torch.linalg.norm(R)), torch.finfo(R.dtype).eps)
        active = (B != 0).any(1)
        total, rounds, rho, final, eig = 0, 0, None, False, None
        Y_all = None
        converged, primal, dual = True, 0.0, 0.0
        while True:
            idx, out = active.nonzero().flatten(), (~active).nonzero().flatten()
            viol = torch.zeros_like(R[:, 0])
            if len(out):
                viol.index_copy_(0, out, violation(Q[out][:, idx] @ B[idx] - R[out]))
            screened = float(torch.linalg.norm(viol)) / scale
            if not converged or (screened <= tol and (final or not len(idx))):
                break
            new = torch.zeros_like(active)
            if screened > tol:
                grow = max(_GROW_MIN, len(idx)) if C > 2 * _GROW_MIN else C  # small layers: every violator
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
            X, Y, rho, it, converged, primal, dual = _admm(
                eig, Rl[idx], fusion, split, B[idx], Y_all[idx], rho=rho, scale=scale, tol=inner_tol,
                primal_tol=max(primal_factor * inner_tol, 10 * torch.finfo(R.dtype).eps), max_iter=max_iter - total)
            B = torch.zeros_like(R).index_copy_(0, idx, X)
            Y_all = Y_all.index_copy(0, idx, Y)
            total, rounds = total + it, rounds + 1
    B = B.clone()
    converged = converged and screened <= tol
    return B, total, converged, max(primal, dual, screened), {"primal_residual": primal, "dual_residual": dual, "screened_violation": screened,
                                 "rho": float("nan") if rho is None else rho, "working_set": int(active.sum()),
                                 "rounds": rounds}


def _fusion_violation(H, D, gw, step: float, steps: int = _FUSION_STEPS):
    """Upper bound on each row's KKT violation at zero for sGLP: min over fusion multipliers
    |Y_e| <= gamma w_e of ||min(H + Y D, 0)||, H = Q B - R + lam (a zero row is optimal iff some
    Y makes H + Y D >= 0). Rows with H >= 0 pass with Y = 0; the others get up to `steps`
    projected-gradient steps from Y = 0 (`step` = 1 / ||D||_2^2, computed once per solve), stopping
    once every row passes. Any Y gives an upper bound, so a row that passes is certainly optimal
    at zero."""
    V = H.clamp_max(0)
    out = torch.linalg.norm(V, dim=1)
    fail = (out > 0).nonzero().flatten()
    if not D.shape[0] or not len(fail):
        return out
    H, V = H[fail], V[fail]
    Y = H.new_zeros(len(fail), D.shape[0])
    DT, low = D.T.contiguous(), -gw
    last = float(V.square().sum())
    for i in range(1, steps + 1):
        Y = torch.clamp(torch.addmm(Y, V, DT, alpha=-step), low, gw)
        V = torch.addmm(H, Y, D).clamp_max_(0)
        if i % _FUSION_CHECK == 0 and i < steps:
            now = float(V.square().sum())
            if now == 0 or now > _FUSION_STALL * last:
                break
            last = now
    return out.index_copy_(0, fail, torch.linalg.norm(V, dim=1))


def _moreau(T, S):
    """(S, T - S), the split `_admm` takes, from a prox value S of T."""
    return S, T.sub_(S)


def solve_stlp(Q, R, tree: ClassTree, lam: float, *, tol: float = 1e-6, max_iter: int = 5000,
               B0: torch.Tensor | None = None) -> LassoResult:
    """sTLP-IB: minimise stlp_objective over B >= 0 by ADMM (B = X, g(X) = lam Omega(X) + the
    indicator of X >= 0, whose prox is the exact `tree_prox`) on a working set of rows.

    Stopping rule: ADMM's relative primal and dual residuals <= tol on the working set and the
    KKT violation of the rows held at zero, ||tree_prox(R_k - (Q B)_k, lam)|| (zero exactly when
    B[k] = 0 is optimal), <= tol ||R||, all relative (float32 uses at least 10 eps); `residual`
    is the largest. certificate = {"primal_residual", "dual_residual", "screened_violation",
    "rho", "working_set", "rounds"} (see `_admm`, `_working_set`). B0 warm-starts the iterate
    (negative entries are clipped); the returned B is feasible.
    """
    Q, B = _check_problem(Q, R, B0, lam)
    if tree.num_classes != R.shape[1]:
        raise PaperpruneError(f"ClassTree has {tree.num_classes} classes but R has K = {R.shape[1]} columns")
    tree = tree.to(R.device, R.dtype)
    lam = float(lam)
    B, it, converged, residual, cert = _working_set(
        Q, R, B, None, R, lambda T, rho: _moreau(T, tree_prox(T, tree, lam / rho)),
        lambda G: torch.linalg.norm(tree_prox(-G, tree, lam), dim=1),
        tol=_effective_tol(tol, R.dtype), max_iter=max_iter)
    return LassoResult(B=B, objective=stlp_objective(B, Q, R, tree, lam), iterations=it, converged=converged,
                       residual=residual, certificate=cert)


def solve_sglp(Q, R, graph: ClassGraph, lam: float, gamma: float, *, tol: float = 1e-6,
               max_iter: int = 20000, B0: torch.Tensor | None = None) -> LassoResult:
    """sGLP-IB: minimise sglp_objective over B >= 0 by ADMM on a working set of rows.

    On B >= 0 the l1 term is linear (lam * sum B), so the problem is
    min 1/2 tr(B^T Q B) - <R - lam, B> + gamma sum_e w_e |Z[:, e]|_1 + indicator(X >= 0)
    s.t. B = X, B D^T = Z, with D (E, K) the signed incidence of the graph; `_admm` solves it with
    S = [X, Z] (X <- max(V, 0), Z <- soft-threshold(V, gamma w / rho) on the two blocks of V).

    Stopping rule: ADMM's relative dual residual <= tol and primal residual <= tol / 10 on the
    working set, and for the rows held at zero `_fusion_violation`, an upper bound on their KKT
    violation, <= tol ||R|| in total; float32 uses at least 10 eps and `residual` is the largest.
    The primal residual is held 10x tighter than sTLP's because the returned B = X is scored with
    its own fused differences B D^T, not with Z, so the Z-block residual enters the objective at
    first order: at tol = 1e-6 it left objective gaps up to 1e-5 on benchmarks/bench_solvers.py's
    instances (seeds 0-2, lam = 0.3-0.7 max R), and at most 1e-6 with tol / 10.
    certificate as for `solve_stlp`. The returned B is feasible; B0 warm-starts it.
    """
    Q, B = _check_problem(Q, R, B0, lam, gamma)
    graph.check_classes(R.shape[1])
    D = graph.incidence(R.shape[1], device=R.device, dtype=R.dtype)
    gw = float(gamma) * graph.weights.to(device=R.device, dtype=R.dtype)
    K = R.shape[1]
    # S = [X, Z]: X = max(T, 0), Z = soft-threshold(T, gamma w / rho); the multiplier part T - S is
    # T clipped to [-inf, 0] on the X block and to [-gamma w / rho, gamma w / rho] on the Z block.
    lo = torch.cat([R.new_full((K,), -math.inf), -gw])
    hi = torch.cat([R.new_zeros(K), gw])
    cache = {}

    def split(T, rho):
        if cache.get("rho") != rho:
            cache.update(rho=rho, lo=lo / rho, hi=hi / rho)
        U = torch.clamp(T, cache["lo"], cache["hi"])
        return T.sub_(U), U

    fusion = _fusion_basis(D) if D.shape[0] else None
    step = 1.0 if fusion is None else 1.0 / max(float(fusion[2].max()) - 1.0, 1.0)  # 1 / ||D||_2^2
    B, it, converged, residual, cert = _working_set(
        Q, R, B, fusion, R - float(lam), split, lambda G: _fusion_violation(G + float(lam), D, gw, step),
        tol=_effective_tol(tol, R.dtype), max_iter=max_iter, primal_factor=0.1)
    return LassoResult(B=B, objective=sglp_objective(B, Q, R, graph, lam, gamma), iterations=it,
                       converged=converged, residual=residual, certificate=cert)


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


# --------------------------------------------------------------------------- class-structure builders


def _embeddings(emb) -> np.ndarray:
    e = emb.detach().cpu().double().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] < 2 or e.shape[1] < 2:
        raise PaperpruneError(f"class embeddings must have shape (K, D) with K >= 2 and D >= 2, got {e.shape}")
    if not np.isfinite(e).all():
        raise PaperpruneError("class embeddings must be finite")
    if (e.std(axis=1) == 0).any():
        bad = np.nonzero(e.std(axis=1) == 0)[0].tolist()
        raise PaperpruneError(f"class embeddings {bad} are constant, so their correlation is undefined "
                              "(check for classes missing from the calibration set)")
    return e


def class_graph_from_embeddings(emb, rho: float = 0.5, knn: int | None = None) -> ClassGraph:
    """Class graph from class-mean embeddings (K, D) (METHOD.md section 2, reconstruction).

    corr = Pearson correlation between classes across embedding dimensions. Edges (c, d), c < d,
    where |corr| > rho, or, when `knn` is given, each class's `knn` nearest classes by |corr|
    (union over both endpoints); w = |corr|, s = sign(corr). Pairs with corr exactly 0 are dropped.
    """
    e = _embeddings(emb)
    K = e.shape[0]
    if not 0 <= rho < 1:
        raise PaperpruneError(f"rho must be in [0, 1), got {rho}")
    corr = np.corrcoef(e)
    a = np.abs(corr)
    np.fill_diagonal(a, -1.0)
    if knn is None:
        adj = a > rho
    else:
        if not 1 <= int(knn) < K:
            raise PaperpruneError(f"knn must be in [1, {K - 1}] for {K} classes, got {knn}")
        nearest = np.argsort(-a, axis=1, kind="stable")[:, : int(knn)]
        adj = np.zeros((K, K), dtype=bool)
        adj[np.repeat(np.arange(K), int(knn)), nearest.ravel()] = True
        adj = (adj | adj.T) & (a > 0)
    c, d = np.nonzero(np.triu(adj, 1))
    vals = corr[c, d]
    return ClassGraph(edges=torch.as_tensor(np.stack([c, d], 1), dtype=torch.int64).reshape(-1, 2),
                      weights=torch.as_tensor(np.abs(vals), dtype=torch.float64),
                      signs=torch.as_tensor(np.sign(vals), dtype=torch.float64), num_classes=K)


def _kim_xing_weights(children: dict[int, list[int]], heights: dict[int, float], root: int, K: int) -> dict[int, float]:
    """Node weights of Kim & Xing (ICML 2010): with s_v = h_v and g_v = 1 - h_v, the recursive
    penalty W(v) = s_v sum_{c child of v} W(c) + g_v ||beta_{G_v}||_2 (W(leaf) = |beta_leaf|) expands to
    w_v = g_v prod_{m ancestor of v} s_m for internal v and w_leaf = prod_{m ancestor} s_m."""
    weights: dict[int, float] = {}
    stack = [(root, 1.0)]
    while stack:
        v, anc = stack.pop()
        if v < K:
            weights[v] = anc
        else:
            weights[v] = (1.0 - heights[v]) * anc
            stack.extend((c, anc * heights[v]) for c in children[v])
    return weights


def _tree_from_children(children, heights, root, K) -> ClassTree:
    w = _kim_xing_weights(children, heights, root, K)
    members: dict[int, list[int]] = {}

    def leaves(v):
        if v not in members:
            members[v] = [v] if v < K else sorted(c for ch in children[v] for c in leaves(ch))
        return members[v]

    nodes = sorted(w)  # leaves 0..K-1 first, then internal nodes, the root last
    return ClassTree(groups=[leaves(v) for v in nodes], weights=torch.tensor([w[v] for v in nodes],
                                                                                  dtype=torch.float64),
                     num_classes=K)


def class_tree_from_embeddings(emb) -> ClassTree:
    """Class tree from class-mean embeddings (K, D) (METHOD.md section 2, reconstruction).

    scipy average-linkage clustering with correlation distance (1 - Pearson corr) gives K - 1
    merges; node heights are the merge distances divided by the root's, so h in [0, 1], leaves
    at 0 and the root at 1. Following Kim & Xing (ICML 2010), s_v = h_v and g_v = 1 - h_v, and
    w_v = g_v prod_{ancestors m} s_m (internal nodes), w_leaf = prod_{ancestors m} s_m. Groups:
    the K leaves {c} (indices 0..K-1), then the K - 2 internal nodes in merge order, then the root
    {0..K-1}, whose weight is g_root = 0 under this normalisation (kept so the tree is complete).
    """
    from scipy.cluster.hierarchy import linkage

    e = _embeddings(emb)
    K = e.shape[0]
    Zl = linkage(e, method="average", metric="correlation")
    top = float(Zl[-1, 2])
    if not top > 0:
        raise PaperpruneError("all class embeddings are perfectly correlated; the tree has no height to weight "
                              "its nodes (use class_tree_from_taxonomy)")
    children = {K + i: [int(Zl[i, 0]), int(Zl[i, 1])] for i in range(K - 1)}
    heights = {K + i: min(float(Zl[i, 2]) / top, 1.0) for i in range(K - 1)}
    return _tree_from_children(children, heights, 2 * K - 2, K)


def class_tree_from_taxonomy(taxonomy: dict[str, list[int]], num_classes: int) -> ClassTree:
    """Three-level class tree from a known taxonomy (superclass -> class indices).

    Nodes: the leaves {c} (indices 0..K-1), one node per superclass (dict order), the root. Weight
    choice (Kim & Xing's formula with fixed heights): superclass height 1/2, root height 1, so
    w_leaf = 1/2 and w_superclass = 1/2 under a superclass, w_leaf = 1 for a class no superclass
    lists (it hangs from the root), and w_root = 0. Superclasses must be disjoint.
    """
    K = int(num_classes)
    if K < 1:
        raise PaperpruneError(f"num_classes must be >= 1, got {num_classes}")
    if not taxonomy:
        raise PaperpruneError("taxonomy is empty; use class_tree_from_embeddings when no taxonomy is known")
    children: dict[int, list[int]] = {}
    heights: dict[int, float] = {}
    seen: dict[int, str] = {}
    for i, (name, classes) in enumerate(taxonomy.items()):
        classes = [int(c) for c in classes]
        if not classes:
            raise PaperpruneError(f"superclass {name!r} is empty")
        for c in classes:
            if not 0 <= c < K:
                raise PaperpruneError(f"superclass {name!r} has class {c}, out of range for {K} classes")
            if c in seen:
                raise PaperpruneError(f"class {c} is in superclasses {seen[c]!r} and {name!r}; they must be disjoint")
            seen[c] = name
        children[K + i] = classes
        heights[K + i] = 0.5
    root = K + len(taxonomy)
    children[root] = list(children) + [c for c in range(K) if c not in seen]
    heights[root] = 1.0
    return _tree_from_children(children, heights, root, K)
