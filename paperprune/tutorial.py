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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import DatasetInfo, DeviceLoader, class_balanced_batch, dataset_info, load_tensors
from .models import PrunableLayer, create_model, prunable_layers
from .utils import PaperpruneError

__all__ = ["TutorialData", "fashion_mnist", "plot_convergence", "shipped_resnet56", "tutorial_layer", "PlantedNet",
           "PLANTED_MAX_ITER", "planted_data", "PLANTED_LAYER", "per_class_accuracy"]


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


#: the lasso solver's iteration budget on PlantedNet. Its Q has rank 4 for 12 channels (five near-copies per
#: strong detector): the objective is nearly flat along moving weight between copies, and ADMM needs up to
#: ~1e5 iterations there (measured: 96,730 for APIB on calibration seed 0). Stopped early, at the default
#: `lasso.SOLVER_MAX_ITER`, a solve shares weight between copies, which changes the kept set.
PLANTED_MAX_ITER = 300_000

#: PlantedNet's one prunable layer: a 1x1 conv of 12 channels observed after BN + ReLU.
PLANTED_LAYER = PrunableLayer("conv", "conv", "relu", "classifier")
VITAL = 0


class PlantedNet(nn.Module):
    """Pooled RGB of a synthetic image -> 1x1 conv with 12 channels -> BN -> ReLU -> classifier.

    Channel 0 is the only detector of superclass 0 (red tint), and a weak one: it fires on about
    half of that superclass's images (BN centres it at their median). Channels 1-5 detect
    superclass 1 and 6-10 superclass 2, each as five strong near-copies; channel 11 is
    brightness. Keeping 3 of the 12 channels can cover every superclass only with channel 0.
    The weights are set by hand from `images`/`labels` (normalised synthetic images), not trained.
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
            f = self.conv(self.pool(images))
            self.bn.running_mean.copy_(f.mean((0, 2, 3)))
            self.bn.running_var.copy_(f.var((0, 2, 3)))
            self.bn.running_mean[VITAL] = f[labels // 3 == 0, VITAL].median()
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
