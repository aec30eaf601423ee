"""What the tutorials (notebooks/0*.py) share, so that no notebook carries a copy of it.

- `fashion_mnist`: the shipped Fashion-MNIST ResNet-56 (`create_model(..., pretrained=
  "fashion-mnist")`), a class-balanced calibration set, and class-balanced subsets of the
  training and test images, small enough for a CPU tutorial; `tutorial_layer`, the layer
  notebooks 01-04 study.
- `PlantedNet` / `planted_data`: a one-layer network on the `synthetic` dataset whose channel 0
  is vital to one superclass but low in total relevance (METHOD.md section 2, class structure);
  the same construction as `tests/test_compare.py`.
- `per_class_accuracy`: top-1 per class of a model on a loader.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..lasso import SOLVER_MAX_ITER
from ..models import PrunableLayer, create_model, prunable_layers
from ..utils import PaperpruneError
from .data import DatasetInfo, DeviceLoader, class_balanced_batch, dataset_info, load_tensors

__all__ = ["TutorialData", "fashion_mnist", "plot_convergence", "shipped_resnet56", "tutorial_layer", "PlantedNet",
           "COPY_QUANTILES", "planted_data", "PLANTED_LAYER", "VITAL", "per_class_accuracy", "Controls",
           "planted_controls", "keep_exactly"]


@dataclass
class TutorialData:
    """Class-balanced subsets of one dataset: `images`/`labels` the calibration set (normalised,
    no augmentation), `train_loader` and `test_loader` DeviceLoaders over subsets."""

    info: DatasetInfo
    images: torch.Tensor
    labels: torch.Tensor
    train_loader: DeviceLoader
    test_loader: DeviceLoader


def _subsets(name: str, calibration_per_class: int, train_per_class: int, test_per_class: int,
             batch_size: int) -> TutorialData:
    info = dataset_info(name)
    norm = dict(mean=info.mean, std=info.std)
    cal_x, cal_y = class_balanced_batch(*load_tensors(name, "train"), calibration_per_class, seed=1)
    images, labels = next(iter(DeviceLoader(cal_x, cal_y, batch_size=len(cal_y), train=False, **norm)))
    train_x, train_y = class_balanced_batch(*load_tensors(name, "train"), train_per_class, seed=0)
    test_x, test_y = class_balanced_batch(*load_tensors(name, "test"), test_per_class, seed=0)
    return TutorialData(info, images, labels,
                        DeviceLoader(train_x, train_y, batch_size=batch_size, train=True, **norm),
                        DeviceLoader(test_x, test_y, batch_size=250, train=False, **norm))


def fashion_mnist(calibration_per_class: int = 20, train_per_class: int = 100, test_per_class: int = 50,
                  batch_size: int = 50) -> TutorialData:
    """Fashion-MNIST subsets: calibration images drawn with seed 1, training and test subsets with seed 0."""
    return _subsets("fashion-mnist", calibration_per_class, train_per_class, test_per_class, batch_size)


def shipped_resnet56() -> nn.Module:
    """The shipped Fashion-MNIST ResNet-56 (paperprune/resources/pretrained), in eval mode."""
    return create_model("resnet56", num_classes=10, in_channels=1, pretrained="fashion-mnist").eval()


def tutorial_layer(model: nn.Module, name: str = "layer3.5.conv1") -> PrunableLayer:
    """The prunable layer `name` of `model`; by default the one notebooks 01-04 study, the inner
    width (64 channels of 8x8 maps) of ResNet-56's block layer3.5."""
    layers = {layer.name: layer for layer in prunable_layers(model)}
    if name not in layers:
        raise PaperpruneError(f"layer {name!r} is not a prunable layer of this model; choose one of {list(layers)}")
    return layers[name]


#: PlantedNet's one prunable layer: a 1x1 conv of 12 channels observed after BN + ReLU.
PLANTED_LAYER = PrunableLayer("conv", "conv", "relu", "classifier")
VITAL = 0
#: where each copy of a strong detector starts to fire: the quantile of its own superclass's pre-activations
#: at which its BatchNorm centres it. Copy j fires on about 1 - COPY_QUANTILES[j] of that superclass, so the
#: copies' relevance falls with j by construction, and no two copies are near-duplicates.
COPY_QUANTILES = (0.05, 0.25, 0.45, 0.65, 0.85)


class PlantedNet(nn.Module):
    """Pooled RGB of a synthetic image -> 1x1 conv with 12 channels -> BN -> ReLU -> classifier.

    Channel 0 is the only detector of superclass 0 (red tint), and a weak one: it fires on about
    half of that superclass's images (BN centres it at their median). Channels 1-5 detect
    superclass 1 and 6-10 superclass 2, five copies each of one colour direction that differ in
    where they start to fire (`COPY_QUANTILES`): copies 1 and 6 fire on nearly all of their
    superclass, later copies on ever fewer, so within each detector the relevance falls with the
    index by construction. Channel 11 is brightness. Keeping 3 of the 12 channels can cover every
    superclass only with channel 0; the best such set is {0, 1, 6}. The weights are set by hand
    from `images`/`labels` (normalised synthetic images), not trained.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.pool, self.conv, self.bn = nn.AdaptiveAvgPool2d(1), nn.Conv2d(3, 12, 1), nn.BatchNorm2d(12)
        self.relu, self.classifier = nn.ReLU(), nn.Linear(12, 9)
        with torch.no_grad():
            w = torch.zeros(12, 3)
            w[0] = torch.tensor([0.3, -0.15, -0.15])
            w[1:6] = torch.tensor([-1.0, 2.0, -1.0]) * (1 + 0.05 * torch.randn(5, 3, generator=gen))
            w[6:11] = torch.tensor([-1.0, -1.0, 2.0]) * (1 + 0.05 * torch.randn(5, 3, generator=gen))
            w[11] = 1.0
            self.conv.weight.copy_(w.view(12, 3, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0] + [-0.3] * 10 + [0.0]))
            f = self.conv(self.pool(images))[:, :, 0, 0]                     # (N, 12) pre-activations
            superclass = labels // 3
            self.bn.running_mean.copy_(f.mean(0))
            self.bn.running_var.copy_(f.var(0))
            self.bn.running_mean[VITAL] = f[superclass == 0, VITAL].median()
            for j, q in enumerate(COPY_QUANTILES):
                for channel, group in ((1 + j, 1), (6 + j, 2)):
                    self.bn.running_mean[channel] = torch.quantile(f[superclass == group, channel], q)
            head = torch.zeros(9, 12)
            head[0:3, VITAL] = 0.5
            head[3:6, 1:6] = 2.0
            head[6:9, 6:11] = 2.0
            self.classifier.weight.copy_(head + 0.05 * torch.randn(9, 12, generator=gen))
            # not nn.Linear's random bias: -0.01 for superclass 0's classes, so an image on which no kept
            # channel fires (all logits tie) goes to class 3, never into superclass 0 by a tie
            self.classifier.bias.copy_(torch.tensor([-0.01] * 3 + [0.0] * 6))
        self.eval()

    def forward(self, x):
        return self.classifier(torch.flatten(self.relu(self.bn(self.conv(self.pool(x)))), 1))


def planted_data(split: str = "train", per_class: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised synthetic images and labels, `per_class` of each of the 9 classes (seeded)."""
    info = dataset_info("synthetic")
    x, y = class_balanced_batch(*load_tensors("synthetic", split), per_class, seed=seed)
    mean, std = torch.tensor(info.mean).view(1, -1, 1, 1), torch.tensor(info.std).view(1, -1, 1, 1)
    return (x.float() / 255 - mean) / std, y


@torch.no_grad()
def per_class_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                       group: Sequence[int] | None = None) -> np.ndarray:
    """Top-1 accuracy (%) of `model` on each class of (`images`, `labels`), in one batch.

    With `group` (the group of each class, e.g. its superclass) a prediction counts as right when
    it falls in the true class's group, and the result has one entry per group.
    """
    was_training = model.training
    predicted = model.eval()(images).argmax(1)
    model.train(was_training)
    if group is None:
        return np.array([100 * float((predicted == labels)[labels == c].double().mean()) for c in range(num_classes)])
    group = torch.as_tensor(group)
    right = group[predicted] == group[labels]
    return np.array([100 * float(right[group[labels] == g].double().mean()) for g in range(int(group.max()) + 1)])


def plot_convergence(solve, optimum: float, title: str, residual_label: str,
                     budgets: Sequence[int] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)):
    """Tutorials 02 and 03: the objective gap to `optimum` and the solver's stopping residual after
    each iteration budget, `solve(max_iter)` (a LassoResult) run from zero each time; log-log axes."""
    import matplotlib.pyplot as plt

    runs = [solve(m) for m in budgets]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.loglog(budgets, [max(r.objective - optimum, 1e-16) for r in runs], "o-", label="F(B_t) - F*")
    ax.loglog(budgets, [r.residual for r in runs], "s--", label=residual_label)
    ax.set_xlabel("ADMM iterations (log scale)")
    ax.set_ylabel("gap or residual (log scale)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def keep_exactly(solve, keep: int, *, row_tol: float = 1e-7, steps: int = 80) -> tuple[list[int], float]:
    """The channels a one-layer lasso keeps when exactly `keep` rows of its B are non-zero, and that lam.

    `solve(lam, B0) -> LassoResult` solves the layer's problem at `lam` (warm-started from `B0`); lam is
    bisected on a log scale, as the budget rule bisects its level, until `keep` rows have a norm above
    `row_tol`. A solve stopped at its `max_iter` is an error: its kept set would be approximate.
    """
    def count(lam, B0=None):
        result = solve(lam, B0)
        if not result.converged:
            raise PaperpruneError(f"the solve at lam={lam:.3g} stopped at max_iter; its kept set is approximate")
        return int((result.B.norm(dim=1) > row_tol).sum()), result

    hi = 1.0
    while count(hi)[0] > 0:
        hi *= 2.0
    lo = hi * 1e-6
    n_lo, low = count(lo)
    if n_lo < keep:
        raise PaperpruneError(f"even at lam={lo:.3g} the lasso keeps {n_lo} < {keep} channels")
    B = low.B
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        n, result = count(mid, B)
        if n == keep:
            return sorted(torch.nonzero(result.B.norm(dim=1) > row_tol).flatten().tolist()), mid
        lo, hi, B = (mid, hi, result.B) if n > keep else (lo, mid, B)
    raise PaperpruneError(f"no lam keeps exactly {keep} channels: the support jumps past it between "
                          f"lam={lo:.6g} and {hi:.6g}")


@dataclass
class Controls:
    """One layer's problem on one calibration draw, with the controls of tutorial 04.

    `Q` (C, C) and `R` (C, K) are the layer's statistics (METHOD.md section 2); `R_label` (C, 1) the
    relevance to one multi-class label kernel L_ij = 1[y_i = y_j] (centred and normalised like the
    class kernels): a single-task HSIC lasso that sees the labels but not one task per class.
    `graph`/`tree` are sGLP-IB's and sTLP-IB's structures from the class embeddings, `shuffled_graph`/
    `shuffled_tree` the same built from the embeddings of randomly permuted classes (a wrong structure).
    `design` (N^2, C) and `targets` (N^2, K) are the regression behind Q and R (vec of the channel and class
    kernels): Q = design^T design and R = design^T targets.
    """

    Q: torch.Tensor
    R: torch.Tensor
    R_label: torch.Tensor
    graph: object
    tree: object
    shuffled_graph: object
    shuffled_tree: object
    design: torch.Tensor
    targets: torch.Tensor

    def selections(self, keep: int, *, methods: Sequence[str] | None = None,
                   max_iter: int = SOLVER_MAX_ITER) -> dict[str, list[int]]:
        """The channels each lasso keeps at exactly `keep` channels: the plain class-wise lasso, sGLP-IB,
        sTLP-IB, their shuffled-class controls, the l2,1 lasso (one group of all classes: row-coupled,
        no structure) and the single label-kernel lasso. gamma = lam / 2 for the graphs (the criteria's
        default gamma_ratio). `methods` picks some of them by name (default: all)."""
        from ..lasso import solve_sglp, solve_stlp
        from ..structure import ClassGraph, ClassTree

        K = self.R.shape[1]
        none = ClassGraph(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.float64),
                          torch.zeros(0, dtype=torch.float64))
        row = ClassTree([list(range(K))], torch.ones(1, dtype=torch.float64), K)
        graph = lambda g, R=self.R: lambda lam, B0: solve_sglp(self.Q, R, g, lam, 0.5 * lam, max_iter=max_iter, B0=B0)
        tree = lambda t: lambda lam, B0: solve_stlp(self.Q, self.R, t, lam, max_iter=max_iter, B0=B0)
        solvers = {"class-wise lasso": graph(none), "sGLP-IB": graph(self.graph), "sTLP-IB": tree(self.tree),
                   "sGLP-IB, shuffled classes": graph(self.shuffled_graph),
                   "sTLP-IB, shuffled classes": tree(self.shuffled_tree),
                   "l2,1 lasso (rows, no structure)": tree(row),
                   "one label kernel": graph(none, self.R_label)}
        unknown = set(methods or ()) - set(solvers)
        if unknown:
            raise PaperpruneError(f"unknown control(s) {sorted(unknown)}; choose from {list(solvers)}")
        return {name: keep_exactly(solve, keep)[0] for name, solve in solvers.items()
                if methods is None or name in methods}


def planted_controls(model: nn.Module, layer: PrunableLayer, images: torch.Tensor, labels: torch.Tensor,
                     num_classes: int, shuffle_seed: int = 0) -> Controls:
    """`Controls` of `layer` (of a model whose final nn.Linear is `model.classifier`) on the calibration draw (`images`, `labels`), in float64; classes are permuted
    with `shuffle_seed` for the shuffled structures. Materialises the N x N kernels: small N only."""
    from ..ib import channel_features, channel_kernels, class_embeddings, layer_statistics
    from ..structure import class_graph_from_embeddings, class_tree_from_embeddings

    stats = layer_statistics(model, [layer], images, labels, num_classes, dtype=torch.float64)[layer.name]
    kernels = channel_kernels(channel_features(model, [layer], images)[layer.name], dtype=torch.float64)
    n = labels.numel()
    onehot = torch.nn.functional.one_hot(labels, num_classes).double()
    centre = torch.eye(n, dtype=torch.float64) - 1.0 / n
    class_kernels = torch.stack([centre @ torch.outer(onehot[:, c], onehot[:, c]) @ centre
                                 for c in range(num_classes)])
    class_kernels = class_kernels / class_kernels.flatten(1).norm(dim=1).clamp_min(1e-300)[:, None, None]
    label_kernel = centre @ (onehot @ onehot.T) @ centre
    label_kernel = label_kernel / label_kernel.norm()
    design, targets = kernels.flatten(1).T, class_kernels.flatten(1).T
    emb = class_embeddings(model, images, labels, num_classes)
    perm = torch.randperm(num_classes, generator=torch.Generator().manual_seed(shuffle_seed))
    return Controls(Q=stats.redundancy.double(), R=stats.relevance.double(),
                    R_label=(design.T @ label_kernel.flatten()).reshape(-1, 1),
                    graph=class_graph_from_embeddings(emb), tree=class_tree_from_embeddings(emb),
                    shuffled_graph=class_graph_from_embeddings(emb[perm]),
                    shuffled_tree=class_tree_from_embeddings(emb[perm]), design=design, targets=targets)
