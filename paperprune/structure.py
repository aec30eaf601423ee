"""Class structures over the K classes: the graph of sGLP-IB and the tree of sTLP-IB
(METHOD.md section 2, "Class structure"), and their builders.

Reconstruction, not from the paper (whose abstract names the two schemes only): the graph is
Kim & Xing's (2009) graph-guided fused lasso graph, with edges from the correlation of class-mean
embeddings; the tree is Kim & Xing's (ICML 2010) tree with node weights from cluster heights,
built by scipy's average-linkage clustering, or a known taxonomy. The penalties that use them,
and their solvers, live in `paperprune.lasso`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .utils import PaperpruneError

__all__ = [
    "ClassGraph",
    "ClassTree",
    "class_graph_from_embeddings",
    "class_graph_from_taxonomy",
    "class_tree_from_embeddings",
    "class_tree_from_taxonomy",
]


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
    soft-thresholding; `outside` is 1 for classes in none of its groups. The same groups as a tree
    of nodes, for many classes: `node_levels` the (start, stop) of each level in the concatenation of
    the levels' groups, `node_weights` (V_p,) their weights, `node_parent` (V_p,) the position of each
    one's nearest ancestor among them and `class_parent` (K,) that of each class's smallest group
    among them, V_p where there is none.
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
    node_levels: list[tuple[int, int]] = field(init=False, repr=False)
    node_weights: torch.Tensor = field(init=False, repr=False)
    node_parent: torch.Tensor = field(init=False, repr=False)
    class_parent: torch.Tensor = field(init=False, repr=False)

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
        self.levels, self.node_levels = [], []
        for h in range(int(height.max()) + 1):
            nodes = ((height == h) & ~single & (self.weights.cpu() > 0)).nonzero().flatten().to(device)
            if len(nodes):
                m = self.mask[nodes].to(fdtype)
                self.levels.append((nodes, m, self.weights[nodes], 1 - m.sum(0)))
                start = self.node_levels[-1][1] if self.node_levels else 0
                self.node_levels.append((start, start + len(nodes)))
        # the nodes' parents: among a node's (or class's) ancestors, which form a chain, the deepest; a last
        # row scoring -1 above every non-ancestor's -2 stands for "none" (position V_p)
        kept = torch.cat([nodes.cpu() for nodes, *_ in self.levels] or [torch.zeros(0, dtype=torch.long)])
        self.node_weights = self.weights[kept.to(device)]
        below = torch.cat([contains[kept][:, kept], mask[kept]], 1)  # (V_p, V_p + K): row j holds node or class
        score = torch.where(below, self.depth.cpu()[kept][:, None], -2)
        parent = torch.cat([score, torch.full((1, below.shape[1]), -1)]).argmax(0).to(device)
        self.node_parent, self.class_parent = parent[:len(kept)], parent[len(kept):]

    @property
    def num_nodes(self) -> int:
        return len(self.groups)

    def to(self, device=None, dtype=None) -> "ClassTree":
        """A copy with weights and precomputed masks on `device` in `dtype`."""
        if _already_on(self.weights, device, dtype):
            return self
        return ClassTree(self.groups, self.weights.to(device=device, dtype=dtype or self.weights.dtype),
                         self.num_classes)


# --------------------------------------------------------------------------- builders


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


def _check_taxonomy(taxonomy: dict[str, list[int]], num_classes: int) -> dict[str, list[int]]:
    """Superclass -> class indices, checked: non-empty, disjoint, in range."""
    K = int(num_classes)
    if K < 1:
        raise PaperpruneError(f"num_classes must be >= 1, got {num_classes}")
    if not taxonomy:
        raise PaperpruneError("taxonomy is empty; build the structure from embeddings when no taxonomy is known")
    seen: dict[int, str] = {}
    checked = {}
    for name, classes in taxonomy.items():
        classes = [int(c) for c in classes]
        if not classes:
            raise PaperpruneError(f"superclass {name!r} is empty")
        for c in classes:
            if not 0 <= c < K:
                raise PaperpruneError(f"superclass {name!r} has class {c}, out of range for {K} classes")
            if c in seen:
                raise PaperpruneError(f"class {c} is in superclasses {seen[c]!r} and {name!r}; they must be disjoint")
            seen[c] = name
        checked[name] = classes
    return checked


def class_graph_from_taxonomy(taxonomy: dict[str, list[int]], num_classes: int) -> ClassGraph:
    """Class graph from a known taxonomy (superclass -> class indices): every pair of classes in one
    superclass is an edge with w = 1 and s = +1; classes in different superclasses are not linked.
    A choice of this project (METHOD.md section 2 builds sGLP-IB's graph from embeddings; this is
    the taxonomy counterpart of sTLP-IB's taxonomy tree)."""
    pairs = [(c, d) for classes in _check_taxonomy(taxonomy, num_classes).values()
             for i, c in enumerate(sorted(classes)) for d in sorted(classes)[i + 1:]]
    edges = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
    ones = torch.ones(len(pairs), dtype=torch.float64)
    return ClassGraph(edges=edges, weights=ones, signs=ones.clone(), num_classes=int(num_classes))


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
    taxonomy = _check_taxonomy(taxonomy, K)
    children: dict[int, list[int]] = {}
    heights: dict[int, float] = {}
    for i, classes in enumerate(taxonomy.values()):
        children[K + i] = classes
        heights[K + i] = 0.5
    seen = {c for classes in taxonomy.values() for c in classes}
    root = K + len(taxonomy)
    children[root] = list(children) + [c for c in range(K) if c not in seen]
    heights[root] = 1.0
    return _tree_from_children(children, heights, root, K)
