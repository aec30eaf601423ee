"""Planted structure: the class tree recovers the synthetic hierarchy, and the class-wise
criteria keep the planted channels at a tight budget where a magnitude criterion does not.

The network: global average pool of the image (3 values) -> a prunable 1x1 conv with 12
channels -> BN -> ReLU -> linear classifier. Channels 0-2 are planted: small weights that fire
only for superclass 0, 1, 2 (the synthetic dataset tints each superclass's images towards one
colour channel). Channels 3-11 are distractors: large weights on overall brightness, which the
dataset keeps equal across classes, so they carry almost no class information and are
near-copies of each other. Keeping 3 of 12 channels is a 75% MACs reduction.
"""
import pytest
import torch
from torch import nn

import paperprune
from paperprune.lab.data import class_balanced_batch, dataset_info, load_tensors
from paperprune.ib import class_embeddings
from paperprune.structure import class_tree_from_embeddings
from paperprune.models import PrunableLayer

PLANTED = [0, 1, 2]


class PlantedNet(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(3, 12, 1)
        self.bn = nn.BatchNorm2d(12)
        self.relu = nn.ReLU()
        self.classifier = nn.Linear(12, 9)
        with torch.no_grad():
            weight = torch.zeros(12, 3)
            weight[PLANTED, PLANTED] = 0.5  # fires for its superclass: 0.5 * 1.16 - 0.1 > 0 > 0.5 * -0.58 - 0.1
            bias = torch.full((12,), -0.1)
            weight[3:] = 3.0 + 0.02 * torch.randn(9, 3, generator=gen)
            bias[3:] = 3.0
            self.conv.weight.copy_(weight.view(12, 3, 1, 1))
            self.conv.bias.copy_(bias)
            self.classifier.weight.copy_(torch.randn(9, 12, generator=gen))

    def forward(self, x):
        return self.classifier(torch.flatten(self.relu(self.bn(self.conv(self.pool(x)))), 1))


@pytest.fixture(scope="module")
def calibration():
    info = dataset_info("synthetic")
    x, y = load_tensors("synthetic", "train")
    x, y = class_balanced_batch(x, y, 20, seed=0)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (x.float() / 255 - mean) / std, y, info


def test_class_tree_recovers_the_planted_hierarchy(calibration):
    images, labels, info = calibration
    model = PlantedNet().eval()
    tree = class_tree_from_embeddings(class_embeddings(model, images, labels, 9))
    groups = {frozenset(g) for g in tree.groups}
    for members in info.taxonomy.values():
        assert frozenset(members) in groups, f"superclass {members} is not a node of {tree.groups}"
    assert frozenset(range(9)) in groups


@pytest.mark.parametrize("method", ["sglp", "stlp", "classwise"])
def test_classwise_criteria_keep_planted_channels(calibration, method):
    images, labels, _ = calibration
    model = PlantedNet().eval()
    layers = [PrunableLayer("conv", "conv", "relu")]
    pruned, report = paperprune.prune(model, [(images, labels)], method=method, flops_reduction=0.75,
                                      layers=layers, samples_per_class=20, omega=1, progress=False)
    assert report.layers[0]["width_after"] == 3
    kept = _kept_channels(model, pruned)
    assert kept == PLANTED, f"{method} kept {kept}"


def test_magnitude_criterion_misses_planted_channels(calibration):
    images, labels, _ = calibration
    model = PlantedNet().eval()
    layers = [PrunableLayer("conv", "conv", "relu")]
    pruned, _ = paperprune.prune(model, [(images, labels)], method="l1", flops_reduction=0.75,
                                 layers=layers, samples_per_class=20, omega=1, progress=False)
    assert not set(_kept_channels(model, pruned)) & set(PLANTED)


def _kept_channels(original, pruned):
    """Which original channels survived, matched by their conv weights."""
    w0 = original.conv.weight.detach().flatten(1)
    w1 = pruned.conv.weight.detach().flatten(1)
    return sorted(int((w0 - row).abs().sum(1).argmin()) for row in w1)
