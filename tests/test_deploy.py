"""Inference preparation: folding BatchNorm is exact (float64) on VGG-16, ResNet-56 and pruned
models and leaves unfoldable BatchNorms alone; the compiled deployment equals the eager model,
freezes its weights and keeps models of one architecture apart; bad input is refused."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from paperprune.deploy import fold_batchnorm, prepare_for_inference
from paperprune.models import create_model, prunable_layers
from paperprune.surgery import prune_channels
from paperprune.utils import PaperpruneError


pytestmark = pytest.mark.usefixtures("one_thread")


def randomise(model, seed):
    """Eval mode, non-trivial BatchNorm statistics and affine parameters (a fresh model's are 0/1)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n, dtype = m.num_features, m.running_mean.dtype
            m.running_mean.copy_(torch.rand(n, generator=g, dtype=dtype) - 0.5)
            m.running_var.copy_(0.5 + torch.rand(n, generator=g, dtype=dtype))
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(n, generator=g, dtype=dtype))
                m.bias.copy_(torch.rand(n, generator=g, dtype=dtype) - 0.5)
    return model.eval()


def pruned(arch, seed):
    """`arch` with a random half of every prunable layer's channels removed."""
    model = randomise(create_model(arch, num_classes=10, in_channels=3), seed)
    g = torch.Generator().manual_seed(seed)
    layers = prunable_layers(model)
    keep = {}
    for layer in layers:
        width = model.get_submodule(layer.conv).out_channels
        keep[layer.name] = torch.randperm(width, generator=g)[: max(1, width // 2)].sort().values
    return prune_channels(model, layers, keep, (3, 32, 32)).eval()


def count_bn(model):
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def assert_same_output(model, folded, dtype=torch.float64, batch=3):
    x = torch.randn(batch, 3, 32, 32, dtype=dtype, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["vgg16", "resnet56"])
def test_fold_is_exact_and_removes_every_batchnorm(arch):
    model = randomise(create_model(arch, num_classes=10, in_channels=3).double(), 0).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert count_bn(folded) == 0 and not folded.training
    assert type(folded) is type(model) and prunable_layers(folded) == prunable_layers(model)
    assert model.training and count_bn(model) > 0  # the input model is untouched
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert_same_output(model.eval(), folded)


@pytest.mark.parametrize("arch", ["vgg16", "resnet56"])
def test_fold_is_exact_on_a_pruned_model(arch):
    model = pruned(arch, seed=2).double()
    folded = fold_batchnorm(model)
    assert count_bn(folded) == 0
    assert_same_output(model, folded)


def test_unfoldable_batchnorms_are_kept():
    """DenseNet's pre-activation BatchNorms follow a concatenation, not a conv; a conv output
    that is also used elsewhere must keep its BatchNorm."""
    dense = randomise(create_model("densenet40", num_classes=10, in_channels=3).double(), 3)
    folded = fold_batchnorm(dense)
    assert count_bn(folded) == count_bn(dense)
    assert_same_output(dense, folded)

    class Reused(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = randomise(Reused().double(), 4)
    folded = fold_batchnorm(model)
    assert isinstance(folded.bn, nn.BatchNorm2d)
    assert_same_output(model, folded)


def test_fold_refuses_bad_input():
    with pytest.raises(PaperpruneError, match="needs a torch.nn.Module"):
        fold_batchnorm(torch.zeros(3))
    no_stats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(PaperpruneError, match=r"cannot fold 1: .*track_running_stats=False"):
        fold_batchnorm(no_stats)

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    with pytest.raises(PaperpruneError, match="torch.fx could not trace DataDependent"):
        fold_batchnorm(DataDependent())


def test_prepared_models_equal_eager_and_are_frozen_and_separate():
    """Base, pruned and a second base with other weights, compiled in one process: each equals
    its own eager model (float32), and its weights are frozen into its graph. A randomised
    ResNet-56's logits reach 1e4-1e5 and a small logit carries the float32 rounding of the large
    ones, so the tolerance is 1e-5 of the output's scale (as in test_surgery), not element-wise;
    a wrong or unfrozen weight moves the output by the order of that scale."""
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    models = [randomise(create_model("resnet56", num_classes=10, in_channels=3), 6), pruned("resnet56", 7),
              randomise(create_model("resnet56", num_classes=10, in_channels=3), 8)]
    deployed = [prepare_for_inference(m, x) for m in models]
    with torch.inference_mode():
        for model, fast in zip(models, deployed):
            expected = model(x)
            atol = 1e-5 * expected.abs().max().item()
            torch.testing.assert_close(fast(x), expected, rtol=0, atol=atol)
            fast._orig_mod.conv1.weight.mul_(2)  # a frozen graph does not read the module's weights
            torch.testing.assert_close(fast(x), expected, rtol=0, atol=atol)
    assert all(count_bn(m) > 0 for m in models)  # the input models are untouched


def test_prepare_refuses_bad_input():
    model = create_model("resnet56", num_classes=10, in_channels=3)
    with pytest.raises(PaperpruneError, match="example_input must be a torch.Tensor"):
        prepare_for_inference(model, (2, 3, 32, 32))
    with pytest.raises(PaperpruneError, match="example_input is on meta but the model's parameters are on cpu"):
        prepare_for_inference(model, torch.zeros(2, 3, 32, 32, device="meta"))

    class GraphBreak(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            torch._dynamo.graph_break()
            return self.conv(x)

    with pytest.raises(PaperpruneError, match=r"torch.compile \(inductor\) failed on GraphBreak .* \(2, 3, 8, 8\)"):
        prepare_for_inference(GraphBreak(), torch.zeros(2, 3, 8, 8))


def test_more_prepared_models_of_one_class_than_dynamos_recompile_limit():
    """Every prepared model compiles on its own, so a process may prepare many models of one class
    (dynamo's shared per-class limit is 8 graphs; with fullgraph=True hitting it raises)."""
    x = torch.randn(2, 3, 4, 4)
    for seed in range(torch._dynamo.config.recompile_limit + 2):
        torch.manual_seed(seed)
        model = randomise(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()), seed)
        with torch.inference_mode():
            torch.testing.assert_close(prepare_for_inference(model, x)(x), model(x), rtol=1e-5, atol=1e-5)
