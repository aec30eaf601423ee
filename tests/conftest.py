"""Shared fixtures."""
import pytest
import torch

from paperprune.structure import ClassGraph, ClassTree


@pytest.fixture(scope="module")
def one_thread():
    """Single-threaded torch: small forwards are fastest that way, and a 2-thread pool on a busy
    2-core machine slows them down by orders of magnitude. Modules opt in with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def graph():
    """A class graph over 5 classes with positive and negative edges (tests of lasso and structure)."""
    edges = [[0, 1], [1, 2], [0, 3], [3, 4], [2, 4], [1, 3]]
    return ClassGraph(torch.tensor(edges), torch.tensor([0.9, 0.5, 0.7, 0.3, 0.6, 0.8], dtype=torch.float64),
                      torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64), num_classes=5)


@pytest.fixture(scope="module")
def tree():
    """A laminar class tree over 5 classes: leaves, {0,1}, {0,1,2}, {3,4} and the root."""
    groups = [[0], [1], [2], [3], [4], [0, 1], [0, 1, 2], [3, 4], [0, 1, 2, 3, 4]]
    return ClassTree(groups, torch.tensor([0.4, 0.3, 0.6, 0.5, 0.2, 0.7, 0.5, 0.8, 0.3], dtype=torch.float64))
