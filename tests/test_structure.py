"""Class structures (paperprune.structure): the class graph of sGLP-IB, the class tree of sTLP-IB,
their validation and their builders from embeddings and taxonomies (METHOD.md section 2)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from paperprune.structure import (ClassGraph, ClassTree, class_graph_from_embeddings, class_tree_from_embeddings,
                                  class_tree_from_taxonomy)
from paperprune.utils import PaperpruneError

K = 5


def test_validation():
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


def test_incidence_and_to(graph):
    """D's rows give B[:, c] - s B[:, d]; ClassGraph.to is a no-op when nothing changes and
    converts weights and signs otherwise."""
    B = torch.randn(3, K, dtype=torch.float64)
    D = graph.incidence(K)
    for e, ((c, d), s) in enumerate(zip(graph.edges.tolist(), graph.signs.tolist())):
        torch.testing.assert_close((B @ D.T)[:, e], B[:, c] - s * B[:, d])
    assert graph.to(dtype=torch.float64) is graph and graph.to("cpu") is graph
    g32 = graph.to(dtype=torch.float32)
    assert g32 is not graph and g32.weights.dtype == g32.signs.dtype == torch.float32
    assert torch.equal(g32.edges, graph.edges) and torch.allclose(g32.weights.double(), graph.weights)


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
