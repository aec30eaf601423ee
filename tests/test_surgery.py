"""Surgery on the six architectures: a pruned model equals the original with the removed
channels masked; MacsPredictor equals count_flops_params of the pruned model; checkpoints
round-trip (weights_only); bad input and residual widths are refused. CPU, float64."""
from __future__ import annotations

import copy
import time

import pytest
import torch
import torch.nn as nn

from paperprune.flops import count_flops_params
from paperprune.models import PrunableLayer, create_model, prunable_layers
from paperprune.surgery import MacsPredictor, load_pruned, prune_channels, save_pruned, widths
from paperprune.utils import PaperpruneError, atomic_torch_save

CIFAR = (3, 32, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- helpers
def randomise(model, seed):
    """float64, eval mode, non-trivial BatchNorm (random running stats and affine)."""
    g = torch.Generator().manual_seed(seed)
    model.double().eval()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.rand(n, generator=g, dtype=torch.float64) - 0.1)
            m.running_var.copy_(0.5 + torch.rand(n, generator=g, dtype=torch.float64))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g, dtype=torch.float64))
            m.bias.data.copy_(0.2 * torch.rand(n, generator=g, dtype=torch.float64) - 0.1)
    return model


def random_keep(model, layers, seed):
    """Random kept channels (unsorted) for every layer, at least one per layer."""
    g = torch.Generator().manual_seed(seed)
    keep = {}
    for layer in layers:
        width = model.get_submodule(layer.conv).out_channels
        k = int(torch.randint(1, width + 1, (1,), generator=g))
        keep[layer.name] = torch.randperm(width, generator=g)[:k]
    return keep


def masked_output(model, layers, keep, x):
    """Output of the unpruned `model` with the removed channels zeroed where consumed.

    A forward hook on each layer's `observe` module zeroes its removed channels. For a
    pre-activation layer (observe is the conv itself: DenseNet) the consumers are
    BN-ReLU-conv chains on the concatenation, so a zero input is not a removed input: the
    consuming BatchNorms' outputs at those channels are zeroed too. Those channels are
    found by value (a BN input channel that is a copy of a removed conv-output channel).
    """
    removed = {}
    for layer in layers:
        width = model.get_submodule(layer.conv).out_channels
        mask = torch.ones(width, dtype=torch.bool)
        mask[torch.as_tensor(keep[layer.name])] = False
        removed[layer.name] = mask.nonzero().flatten()

    bn_zero = {}
    preact = [layer for layer in layers if layer.observe == layer.conv]
    if preact:
        seen, inputs = {}, {}
        hooks = [model.get_submodule(layer.observe).register_forward_hook(
            lambda m, i, o, name=layer.name: seen.__setitem__(name, o[0].flatten(1)[:, :16])) for layer in preact]
        hooks += [m.register_forward_hook(lambda m, i, o: inputs.__setitem__(m, i[0][0].flatten(1)[:, :16]))
                  for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        with torch.no_grad():
            model(x)
        for h in hooks:
            h.remove()
        prints = {tuple(seen[n][c].tolist()) for n in seen for c in removed[n].tolist()}
        for bn, rows in inputs.items():
            hit = [c for c in range(rows.shape[0]) if tuple(rows[c].tolist()) in prints]
            if hit:
                bn_zero[bn] = torch.tensor(hit)

    def zero(idx):
        def hook(m, i, o):
            o = o.clone()
            o[:, idx] = 0
            return o
        return hook

    hooks = [model.get_submodule(layer.observe).register_forward_hook(zero(removed[layer.name])) for layer in layers]
    hooks += [bn.register_forward_hook(zero(idx)) for bn, idx in bn_zero.items()]
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    return out, sum(len(v) for v in bn_zero.values())


def check_surgery(model, layers, input_size, seed):
    """Prune `model` (float64) at random kept channels; check output, widths, MACs/params.

    Returns the pruned model, its output and the input used.
    """
    randomise(model, seed)
    original = copy.deepcopy(model)
    keep = random_keep(model, layers, seed)
    x = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected, _ = masked_output(copy.deepcopy(original), layers, keep, x)
    with torch.no_grad():
        assert (expected - original(x)).abs().max() > 1e-3 * expected.abs().max()  # the mask matters

    predictor = MacsPredictor(original, layers, input_size)
    predictor_bn = MacsPredictor(original, layers, input_size, bn=True)
    assert predictor({}) == predictor(widths(original, layers)) == count_flops_params(original, input_size)

    assert prune_channels(model, layers, keep, input_size) is model
    assert not model.training
    with torch.no_grad():
        got = model(x)
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * scale)
    new_widths = widths(model, layers)
    assert new_widths == {name: len(k) for name, k in keep.items()}
    assert predictor(new_widths) == count_flops_params(model, input_size)
    assert predictor_bn(new_widths) == count_flops_params(model, input_size, bn=True)
    return model, got, x


# ---------------------------------------------------------------- the six architectures
ARCHS = {"vgg16": (3, 32, 32), "resnet56": (3, 32, 32), "resnet110": (3, 32, 32),
         "googlenet": (3, 32, 32), "densenet40": (3, 32, 32), "resnet50": (3, 64, 64)}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_architecture_surgery_predictor_and_checkpoint(arch, tmp_path):
    size = ARCHS[arch]
    model = create_model(arch, num_classes=7, in_channels=3)
    layers = prunable_layers(model)
    pruned, out, x = check_surgery(model, layers, size, seed=sorted(ARCHS).index(arch))

    path = tmp_path / "pruned.pt"
    save_pruned(pruned, path)  # the model carries its arch, classes, input channels and input size
    record = torch.load(path, weights_only=True)
    assert (record["arch"], record["num_classes"], record["in_channels"], record["input_size"]) == (arch, 7, 3, list(size))
    loaded = load_pruned(path)
    assert widths(loaded, layers) == widths(pruned, layers)
    assert not loaded.training
    assert loaded.state_dict().keys() == pruned.state_dict().keys()
    for k, v in pruned.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    with torch.no_grad():
        assert torch.equal(loaded(x), out)


# ---------------------------------------------------------------- tiny-model tests
def test_predictor_exact_at_more_random_widths():
    """Several more random widths per model, against real surgery (float32 is enough here)."""
    for arch in ("resnet56", "densenet40", "vgg16"):
        model = create_model(arch)
        layers = prunable_layers(model)
        predictor = MacsPredictor(model, layers, CIFAR)
        predictor_bn = MacsPredictor(model, layers, CIFAR, bn=True)
        for seed in (11, 12):
            pruned = prune_channels(copy.deepcopy(model), layers, random_keep(model, layers, seed), CIFAR)
            w = widths(pruned, layers)
            assert predictor(w) == count_flops_params(pruned, CIFAR)
            assert predictor_bn(w) == count_flops_params(pruned, CIFAR, bn=True)


def test_predictor_is_fast():
    model = create_model("resnet110")
    predictor = MacsPredictor(model, prunable_layers(model), CIFAR)
    w = {name: max(1, full // 2) for name, full in predictor.full_widths.items()}
    start = time.perf_counter()
    for _ in range(300):
        predictor(w)
    assert (time.perf_counter() - start) / 300 < 5e-3


def test_dense_layer_pruning_reaches_every_later_consumer():
    """Removing channels of dense1.0's conv removes the same input channels of the 11 later
    dense layers' BN and conv and of the transition; later blocks are untouched."""
    model = randomise(create_model("densenet40"), 0)
    layers = prunable_layers(model)
    keep = {"dense1.0.conv1": [0, 2, 5, 7, 11]}
    x = torch.randn(2, *CIFAR, dtype=torch.float64)
    expected, zeroed_bn_channels = masked_output(copy.deepcopy(model), layers[:1], keep, x)
    assert zeroed_bn_channels == 7 * 12  # 7 removed channels, read by 11 dense layers + trans1
    prune_channels(model, layers, keep, CIFAR)
    for i in range(1, 12):
        assert model.dense1[i].bn1.num_features == model.dense1[i].conv1.in_channels == 24 + 12 * i - 7
    assert model.trans1.bn1.num_features == model.trans1.conv1.in_channels == 168 - 7
    assert model.trans1.conv1.out_channels == 168 and model.dense2[0].conv1.in_channels == 168
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-10)


def test_untouched_layers_and_training_mode_are_kept():
    model = create_model("vgg16").train()
    layers = prunable_layers(model)
    full = widths(model, layers)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    keep = torch.tensor([200, 3, 17])
    prune_channels(model, layers, {"features.conv7": keep}, CIFAR)
    assert model.training and all(m.training for m in model.modules())
    assert widths(model, layers) == {**full, "features.conv7": 3}
    kept = keep.sort().values  # kept channels stay in their original order
    after = model.state_dict()
    for k, v in before.items():
        if k.startswith(("features.conv7.", "features.norm7.")) and k != "features.norm7.num_batches_tracked":
            assert torch.equal(after[k], v[kept]), k
        elif k == "features.conv8.weight":
            assert torch.equal(after[k], v[:, kept]), k
        else:
            assert torch.equal(after[k], v), k
    prune_channels(model, layers, {"features.conv16": [0, 1]}, CIFAR)
    assert model.linear1.in_features == 2


@pytest.mark.parametrize("bad, match", [
    ({"features.conv99": [0]}, "unknown layers"),
    ({"features.conv0": [0, 64]}, "outside"),
    ({"features.conv0": [-1, 2]}, "outside"),
    ({"features.conv0": [1, 1, 2]}, "duplicate"),
    ({"features.conv0": []}, "zero channels"),
    ({"features.conv0": torch.tensor([], dtype=torch.long)}, "zero channels"),
    ({"features.conv0": [0.0, 1.0]}, "integer"),
    ({"features.conv0": [[0, 1]]}, "1-D"),
])
def test_bad_keep_is_refused_before_any_cut(bad, match):
    model = create_model("vgg16")
    layers = prunable_layers(model)
    full = widths(model, layers)
    with pytest.raises(PaperpruneError, match=match):
        prune_channels(model, layers, {"features.conv1": [0, 1], **bad}, CIFAR)
    assert widths(model, layers) == full


def test_bad_layers_sizes_and_widths_are_refused():
    model = create_model("vgg16")
    layers = prunable_layers(model)
    with pytest.raises(PaperpruneError, match="no module"):
        prune_channels(model, [PrunableLayer("features.x", "features.x", "features.x")], {"features.x": [0]}, CIFAR)
    with pytest.raises(PaperpruneError, match="not a convolution"):
        widths(model, [PrunableLayer("features.norm0", "features.norm0", "features.relu0")])
    with pytest.raises(PaperpruneError, match="input_size"):
        prune_channels(model, layers, {"features.conv0": [0]}, (32, 32))
    predictor = MacsPredictor(model, layers, CIFAR)
    with pytest.raises(PaperpruneError, match="outside"):
        predictor({"features.conv0": 0})
    with pytest.raises(PaperpruneError, match="outside"):
        predictor({"features.conv0": 65})
    with pytest.raises(PaperpruneError, match="unknown layer"):
        predictor({"features.norm0": 2})


@pytest.mark.parametrize("arch, conv, size", [
    ("resnet56", "layer1.0.conv2", CIFAR),   # stage-1 residual width: stem conv and every conv2
    ("resnet56", "layer1.8.conv2", CIFAR),   # feeds layer2.0's ZeroPadShortcut
    ("resnet56", "layer3.3.conv2", CIFAR),
    ("resnet56", "conv1", CIFAR),
    ("resnet50", "layer2.0.conv3", (3, 64, 64)),
    ("resnet50", "layer1.0.downsample.0", (3, 64, 64)),
    ("resnet110", "layer2.17.conv2", CIFAR),  # feeds layer3.0's ZeroPadShortcut
])
def test_tied_widths_are_refused(arch, conv, size):
    model = create_model(arch)
    layers = prunable_layers(model) + [PrunableLayer(conv, conv, conv)]
    with pytest.raises(PaperpruneError, match=f"'{conv}' is not prunable on its own"):
        prune_channels(model, layers, {conv: [0, 1], layers[0].name: [0]}, size)
    with pytest.raises(PaperpruneError, match="residual"):
        MacsPredictor(model, layers, size)
    assert widths(model, layers) == widths(create_model(arch), layers)


def test_load_rejects_other_files(tmp_path):
    model = create_model("resnet56", num_classes=5)
    layers = prunable_layers(model)
    prune_channels(model, layers, {"layer1.0.conv1": [0, 1, 2]}, CIFAR)
    good = tmp_path / "good.pt"
    save_pruned(model, good)
    record = torch.load(good, weights_only=True)
    assert record["attributes"]["layer1.0.conv1"]["out_channels"] == 3 and record["input_size"] == list(CIFAR)

    def write(name, obj):
        atomic_torch_save(obj, tmp_path / name)
        return tmp_path / name

    (tmp_path / "text.pt").write_text("not a checkpoint")
    state = record["state_dict"]
    cases = {
        tmp_path / "missing.pt": "no pruned model file",
        tmp_path / "text.pt": "not a paperprune pruned model",
        write("module.pt", {"model": nn.Linear(2, 2)}): "not a paperprune pruned model",
        write("plain.pt", model.state_dict()): "not a paperprune pruned model",
        write("version.pt", {**record, "version": 99}): "version",
        write("arch.pt", {**record, "arch": "resnet110"}): "which the rebuilt 'resnet110' CifarResNet is not: module 'layer1.9'",
        write("weights.pt", {**record, "state_dict": {k: v for k, v in state.items() if k != "classifier.bias"}}):
            "weights do not match",
        write("fields.pt", {k: v for k, v in record.items() if k != "state_dict"}): "missing fields",
    }
    for path, match in cases.items():
        with pytest.raises(PaperpruneError, match=match):
            load_pruned(path)
    with pytest.raises(PaperpruneError, match="unknown model"):
        load_pruned(write("unknown.pt", {**record, "arch": "alexnet"}))
    assert widths(load_pruned(good), layers)["layer1.0.conv1"] == 3


def test_version_1_files_still_load(tmp_path):
    """Files written before any model could be saved (widths of the built-in layers) load as before."""
    model = randomise(create_model("resnet56", num_classes=5), 3)
    layers = prunable_layers(model)
    prune_channels(model, layers, {"layer1.0.conv1": [0, 4, 9], "layer3.2.conv1": [1, 2]}, CIFAR)
    old = {"format": "paperprune-pruned-model", "version": 1, "arch": "resnet56", "num_classes": 5, "in_channels": 3,
           "input_size": list(CIFAR), "widths": widths(model, layers),
           "state_dict": {k: v.detach() for k, v in model.state_dict().items()}}
    path = atomic_torch_save(old, tmp_path / "v1.pt")
    loaded = load_pruned(path)
    x = torch.randn(2, *CIFAR, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(PaperpruneError, match="width 17|widths outside"):
        load_pruned(atomic_torch_save({**old, "widths": {**old["widths"], "layer1.0.conv1": 17}}, tmp_path / "w.pt"))
    with pytest.raises(PaperpruneError, match="version-1 file"):
        load_pruned(path, model=create_model("resnet56", num_classes=5))
