"""Any CNN with one call: discovery through Torch-Pruning's DependencyGraph finds the
inner widths of nine torchvision networks nobody listed; `prune` then meets the FLOPs target
and the pruned model equals the original with the removed channels masked where they are
consumed; pruned models of any kind save and load; refusals name their cause. CPU, small
inputs, random weights (BatchNorm statistics randomised so that masking matters)."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

import paperprune
from paperprune.discover import discover
from paperprune.flops import count_flops_params
from paperprune.ib import channel_features
from paperprune.models import PrunableLayer
from paperprune.surgery import prune_channels
from paperprune.utils import PaperpruneError

pytestmark = pytest.mark.usefixtures("one_thread")
tv = torchvision.models
SIZE = (3, 32, 32)
CLASSES = 10


def vgg11_bn(**kw):
    """torchvision's vgg11_bn with a 1x1 average pool: the 7x7 one gives a 103M-parameter first
    linear layer (0.8 GB in float64) and changes nothing that discovery or surgery sees."""
    model = tv.vgg11_bn(**kw)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier[0] = nn.Linear(512, 4096)
    return model


BUILDERS = {
    "resnet18": tv.resnet18,
    "resnet50": tv.resnet50,
    "vgg11_bn": vgg11_bn,
    "googlenet": lambda **kw: tv.googlenet(aux_logits=False, init_weights=True, **kw),
    "densenet121": tv.densenet121,
    "mobilenet_v2": tv.mobilenet_v2,
    "mobilenet_v3_small": tv.mobilenet_v3_small,
    "efficientnet_b0": tv.efficientnet_b0,
    "regnet_x_400mf": tv.regnet_x_400mf,
}


def build(name, seed=0):
    torch.manual_seed(seed)
    return BUILDERS[name](num_classes=CLASSES).eval()


def stages(depths):
    return [(s, b) for s, n in enumerate(depths, 1) for b in range(n)]


def inception_convs():
    mods = ["3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"]
    return [f"inception{m}.branch{b}.0.conv" for m in mods for b in (2, 3)]


#: the groups discovery must find: (exact conv names or a count, left-out group kinds, classifier)
EXPECTED = {
    "resnet18": ([f"layer{s}.{b}.conv1" for s, b in stages([2, 2, 2, 2])], {"residual": 4}, "fc"),
    "resnet50": (["conv1"] + [f"layer{s}.{b}.conv{c}" for s, b in stages([3, 4, 6, 3]) for c in (1, 2)],
                 {"residual": 4}, "fc"),
    "vgg11_bn": ([f"features.{i}" for i in (0, 4, 8, 11, 15, 18, 22, 25)], {}, "classifier.6"),
    "googlenet": (["conv1.conv", "conv2.conv", "conv3.conv"] + inception_convs(), {"concat": 36}, "fc"),
    "densenet121": ([f"features.denseblock{s}.denselayer{b + 1}.conv1" for s, b in stages([6, 12, 24, 16])],
                    {"concat": 62}, "classifier"),
    # stem (with the first block's depthwise conv), 16 expansions, the 2 projections that meet no
    # residual add, the last 1x1 conv; 5 residual widths
    "mobilenet_v2": (20, {"residual": 5}, "classifier.1"),
    # stem, 9 expansions, 9 squeeze-excitation squeezes, 2 free projections, the last conv
    "mobilenet_v3_small": (22, {"residual": 4}, "classifier.3"),
    # stem, 15 expansions, 16 squeezes, 2 free projections, the last conv
    "efficientnet_b0": (35, {"residual": 5}, "classifier.1"),
    # the stem, every block's first inner width (read by its grouped conv) and its second (written by the
    # grouped conv, read by the 1x1 conv c): 1 + 22 + 22; every block output is residual
    "regnet_x_400mf": (45, {"residual": 4}, "fc"),
}


def randomise(model, seed=0):
    """float64, eval, random BatchNorm statistics and affine parameters, random conv biases."""
    g = torch.Generator().manual_seed(seed)
    model.double().eval()
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.data.copy_(0.2 * torch.rand(m.out_channels, generator=g, dtype=torch.float64) - 0.1)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.rand(n, generator=g, dtype=torch.float64) - 0.1)
            m.running_var.copy_(0.5 + torch.rand(n, generator=g, dtype=torch.float64))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g, dtype=torch.float64))
            m.bias.data.copy_(0.2 * torch.rand(n, generator=g, dtype=torch.float64) - 0.1)
    return model


def calibration(n_per_class=2, size=SIZE, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_per_class * CLASSES, *size, generator=g, dtype=dtype)
    y = torch.arange(CLASSES).repeat(n_per_class)
    return [(x, y)]


def kept_channels(original, pruned, layers, x):
    """Which output channels of each layer's conv survived, read off per-channel parameters that
    input pruning leaves alone: those of the BatchNorm in the channels' group (randomised, so
    unique), or the conv's bias. Kept channels are copies of original ones, in order."""
    dg = tp.DependencyGraph().build_dependency(original, example_inputs=x[:1])
    names = {m: n for n, m in original.named_modules()}
    keep = {}
    for layer in layers:
        conv = original.get_submodule(layer.conv)
        group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
        bns = [dep.target.module for dep, _ in group if isinstance(dep.target.module, nn.BatchNorm2d)]
        owner = names[bns[0]] if bns else layer.conv
        fields = ("weight", "bias", "running_mean", "running_var") if bns else ("bias",)

        def signature(model, owner=owner, fields=fields):
            module = model.get_submodule(owner)
            return torch.stack([getattr(module, f).detach() for f in fields], 1)

        match = (signature(pruned)[:, None, :] == signature(original)[None, :, :]).all(-1)
        assert bool((match.sum(1) == 1).all()), layer.name
        keep[layer.name] = match.float().argmax(1)
    return keep


def masked_output(model, layers, keep, x):
    """The unpruned model's output with every removed channel zeroed at the input of each
    conv/linear that consumes it (found from Torch-Pruning's group of the removal). Depthwise
    convs, BatchNorms and gates in between act channel by channel, so this is what removal means."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
    zero = {}
    for layer in layers:
        conv = model.get_submodule(layer.conv)
        removed = sorted(set(range(conv.out_channels)) - set(keep[layer.name].tolist()))
        if not removed:
            continue
        for dep, idxs in dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=removed):
            if dep.handler in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
                zero.setdefault(dep.target.module, set()).update(idxs)

    def hook(idx):
        def pre(module, inputs):
            x = inputs[0].clone()
            x[:, idx] = 0
            return (x,) + tuple(inputs[1:])
        return pre

    hooks = [m.register_forward_pre_hook(hook(sorted(idx))) for m, idx in zero.items()]
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in hooks:
            h.remove()


def check_pruned(model, pruned, report, layers, x, target=0.5):
    """FLOPs within 1% of the target, and the pruned model equal to the masked original."""
    base = count_flops_params(model, SIZE)[0]
    macs = count_flops_params(pruned, SIZE)[0]
    assert abs((1 - macs / base) - target) <= 0.01
    assert (report.macs_before, report.macs_after) == (base, macs)
    assert any(row["width_after"] < row["width_before"] for row in report.layers)
    keep = kept_channels(model, pruned, layers, x)
    expected = masked_output(copy.deepcopy(model), layers, keep, x)
    with torch.no_grad():
        got = pruned.eval()(x)
        plain = model(x)
    scale = max(1.0, expected.abs().max().item())
    assert (plain - expected).abs().max() > 1e-6 * scale  # the mask matters
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9 * scale)


# ---------------------------------------------------------------- discovery
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_discovery_finds_the_inner_widths(name):
    model = build(name)
    found = discover(model, SIZE)
    names, left_out, classifier = EXPECTED[name]
    convs = [layer.conv for layer in found.layers]
    if isinstance(names, int):
        assert len(convs) == names
    else:
        assert convs == names
    assert len(set(convs)) == len(convs)
    kinds = {}
    for kind, _ in found.skipped.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds == left_out
    assert found.classifier == classifier
    for layer in found.layers:
        conv = model.get_submodule(layer.conv)
        assert layer.name == layer.conv and not (conv.groups > 1 and conv.groups == conv.in_channels)
        assert layer.consumer is not None and isinstance(model.get_submodule(layer.consumer), (nn.Conv2d, nn.Linear))


def test_discovery_observes_a_reused_relu_and_a_functional_one():
    """resnet18's BasicBlock reuses self.relu (observe bn1, re-apply relu); googlenet's BasicConv2d
    calls F.relu (observe the BasicConv2d, which returns it)."""
    found = discover(build("resnet18"), SIZE)
    assert found.layers[0] == PrunableLayer("layer1.0.conv1", "layer1.0.conv1", "layer1.0.bn1",
                                            "layer1.0.conv2", "layer1.0.relu")
    found = discover(build("googlenet"), SIZE)
    layer = found.layers[3]
    assert (layer.conv, layer.observe, layer.consumer, layer.activation) == (
        "inception3a.branch2.0.conv", "inception3a.branch2.0", "inception3a.branch2.1.conv", None)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "googlenet", "densenet121", "mobilenet_v2",
                                  "mobilenet_v3_small", "efficientnet_b0"])
def test_observed_features_are_what_the_consumer_reads(name):
    """Where nothing but the channels' own path lies between (no pooling), the observed features
    equal the consumer's input exactly: after BN, the non-linearity, depthwise conv and gate."""
    model = build(name)
    layers = [layer for layer in discover(model, SIZE).layers if isinstance(model.get_submodule(layer.consumer),
                                                                             nn.Conv2d)]
    x = calibration(1, dtype=torch.float32)[0][0][:3]
    inputs = {}
    hooks = [model.get_submodule(layer.consumer).register_forward_pre_hook(
        lambda m, i, name=layer.name: inputs.__setitem__(name, i[0].clone())) for layer in layers]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    features = channel_features(model, layers, x, spatial=True)
    compared = 0
    for layer in layers:
        if features[layer.name].shape == inputs[layer.name].shape:
            torch.testing.assert_close(features[layer.name], inputs[layer.name], rtol=0, atol=0)
            compared += 1
    assert compared >= 0.8 * len(layers)


# ---------------------------------------------------------------- prune any CNN, one call
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "densenet121" else n
                                  for n in sorted(BUILDERS)])
def test_prune_any_cnn_meets_the_target_and_equals_the_masked_original(name):
    model = randomise(build(name))
    data = calibration()
    pruned, report = paperprune.prune(model, data, method="l1", flops_reduction=0.5, samples_per_class=2,
                                      progress=False)
    layers = discover(model, SIZE).layers
    assert [row["name"] for row in report.layers] == [layer.name for layer in layers]
    check_pruned(model, pruned, report, layers, data[0][0][:4])


def test_grouped_convs_keep_equal_parts_chosen_per_part(tmp_path):
    """regnet_x_400mf: each layer read by a grouped conv keeps as many channels in every group, but not
    the same positions (the criterion chooses within each part); the grouped convs keep their groups;
    the pruned model saves and loads into a fresh instance."""
    model = randomise(build("regnet_x_400mf"))
    data = calibration()
    pruned, _ = paperprune.prune(model, data, method="l1", flops_reduction=0.5, samples_per_class=2, progress=False)
    layers = discover(model, SIZE).layers
    keep = kept_channels(model, pruned, layers, data[0][0][:2])
    unaligned = 0
    for layer in layers:
        reader = model.get_submodule(layer.consumer)
        if reader.groups == 1:
            continue
        width = model.get_submodule(layer.conv).out_channels
        size = width // reader.groups
        parts = [sorted(i % size for i in keep[layer.name].tolist() if i // size == p) for p in range(reader.groups)]
        assert len({len(part) for part in parts}) == 1, layer.name
        unaligned += len({tuple(part) for part in parts}) > 1
        assert pruned.get_submodule(layer.consumer).groups == reader.groups
    assert unaligned > 0  # surgery cut each group's weights by its own channels
    written = 0  # grouped writers that lost channels
    for layer in layers:  # widths written by a grouped conv: as many kept in each of its groups
        writer = model.get_submodule(layer.conv)
        if writer.groups == 1:
            continue
        size = writer.out_channels // writer.groups
        counts = torch.bincount(keep[layer.name] // size, minlength=writer.groups)
        assert len(set(counts.tolist())) == 1, layer.name
        assert pruned.get_submodule(layer.conv).groups == writer.groups
        written += int(counts[0]) < size
    assert written > 0
    path = paperprune.save_pruned(pruned, tmp_path / "regnet.pt")
    loaded = paperprune.load_pruned(path, model=lambda: build("regnet_x_400mf"))
    x = data[0][0][:2]
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned.eval()(x))


@pytest.mark.slow
@pytest.mark.parametrize("name, method", [("resnet18", "stlp"), ("googlenet", "stlp"), ("resnet18", "hrank"),
                                          ("mobilenet_v3_small", "apib"), ("regnet_x_400mf", "stlp")])
def test_statistics_criteria_on_torchvision_models(name, method):
    """The IB statistics read reused and functional activations (hooks on BN, activation re-applied). The
    statistics, not the solver, are the subject: lasso solves stop at 200 iterations."""
    model = randomise(build(name))
    data = calibration(n_per_class=3)
    solver = {} if method == "hrank" else dict(max_iter=200)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*stopped at max_iter")
        pruned, report = paperprune.prune(model, data, method=method, flops_reduction=0.5, samples_per_class=3,
                                          progress=False, **solver)
    check_pruned(model, pruned, report, discover(model, SIZE).layers, data[0][0][:4])


def test_layers_and_classifier_still_override_discovery():
    model = randomise(build("resnet18"))
    data = calibration()
    layers = {"layer3.0.conv1": "layer3.0.bn1", "layer4.0.conv1": "layer4.0.bn1"}
    pruned, report = paperprune.prune(model, data, method="l1", flops_reduction=0.1, samples_per_class=2,
                                      layers=layers, classifier="fc", progress=False)
    assert [row["name"] for row in report.layers] == list(layers)
    assert pruned.layer1[0].conv1.out_channels == 64


@pytest.mark.slow
def test_concatenated_widths_on_request():
    """include=('inner', 'concat') lists DenseNet's growth and transition convs too; surgery handles them."""
    model = randomise(build("densenet121"))
    found = discover(model, SIZE, include=("inner", "concat"))
    assert len(found.layers) == 58 + 62 and not found.skipped
    layers = [layer for layer in found.layers if layer.conv.endswith(("denselayer1.conv2", "denselayer2.conv2"))]
    keep = {layer.name: torch.arange(0, 32, 3) for layer in layers}
    x = calibration()[0][0][:2]
    expected = masked_output(copy.deepcopy(model), layers, keep, x)
    prune_channels(model, layers, keep, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-9 * max(1.0, expected.abs().max().item()))


# ---------------------------------------------------------------- refusals name the cause
def test_refusals_name_the_cause():
    resnet = build("resnet18")
    with pytest.raises(PaperpruneError, match=r"'layer1.0.conv2'.*residual connection.*drop it from layers"):
        prune_channels(resnet, [PrunableLayer("layer1.0.conv2", "layer1.0.conv2", "layer1.0.bn2")],
                       {"layer1.0.conv2": [0]}, SIZE)
    regnet = build("regnet_x_400mf")
    conv = "trunk_output.block1.block1-0.f.a.0"
    with pytest.raises(PaperpruneError, match=r"grouped convolution 'trunk_output.block1.block1-0.f.b.0' "
                                              r"\(groups=2\) reads its channels in 2 parts of 16, and each part must "
                                              r"lose as many; this removal takes \[0, 1\]"):
        prune_channels(regnet, [PrunableLayer(conv, conv, conv)], {conv: list(range(1, 32))}, SIZE)
    mobilenet = build("mobilenet_v2")
    dw = "features.2.conv.1.0"
    with pytest.raises(PaperpruneError, match=rf"'{dw}' is a depthwise convolution \(groups=96\).*conv that feeds"):
        prune_channels(mobilenet, [PrunableLayer(dw, dw, dw)], {dw: [0]}, SIZE)
    with pytest.raises(PaperpruneError, match="unknown kinds"):
        discover(resnet, SIZE, include=("inner", "residual"))

    class GroupedAfterConcat(nn.Module):
        """A grouped conv reading two layers' channels concatenated: its groups are neither layer's to keep equal."""

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
            self.g, self.fc = nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.Linear(16, 10)

        def forward(self, x):
            x = self.g(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1))
            return self.fc(torch.relu(x).mean((2, 3)))

    found = discover(GroupedAfterConcat(), SIZE, include=("inner", "grouped", "concat"))
    # a and b are concatenated under g's groups: left out; g's own output is pruned in its 4 groups
    assert [layer.conv for layer in found.layers] == ["g"]
    assert {kind for kind, _ in found.skipped.values()} == {"concat"}
    with pytest.raises(PaperpruneError, match=r"layer 'a': the grouped convolution 'g' \(groups=4\) reads its 8 "
                                              r"channels among 16 of its inputs.*MetaPruner"):
        prune_channels(GroupedAfterConcat(), [PrunableLayer("a", "a", "a")], {"a": [0, 4]}, SIZE)

    class Concatenated(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1), nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1).mean((2, 3)))

    with pytest.raises(PaperpruneError, match=r"found no prunable layer.*2 concat"):
        paperprune.prune(Concatenated(), calibration(dtype=torch.float32), method="l1", samples_per_class=2)

    class AllResidual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 10)

        def forward(self, x):
            x = self.a(x)
            x = x + self.b(x)
            return self.fc(x.mean((2, 3)))

    with pytest.raises(PaperpruneError, match=r"found no prunable layer.*1 residual.*layers="):
        paperprune.prune(AllResidual(), calibration(dtype=torch.float32), method="l1", samples_per_class=2)

    class NoHead(nn.Module):
        """The 10 outputs are pairs of a conv's 20 channels averaged: no layer produces the logits."""

        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 20, 1)

        def forward(self, x):
            return self.b(torch.relu(self.a(x))).mean((2, 3)).view(-1, 10, 2).mean(-1)

    with pytest.raises(PaperpruneError, match="found no layer producing the logits.*classifier="):
        paperprune.prune(NoHead(), calibration(dtype=torch.float32), method="l1", samples_per_class=2)


# ---------------------------------------------------------------- save and load any pruned model
def test_save_and_load_a_builtin_and_a_torchvision_model(tmp_path):
    data = calibration(dtype=torch.float32)
    x = data[0][0][:4]
    base = paperprune.create_model("resnet56", num_classes=CLASSES)
    pruned, _ = paperprune.prune(base, data, method="l1", flops_reduction=0.4, samples_per_class=2, progress=False)
    path = paperprune.save_pruned(pruned, tmp_path / "r56.pt")
    record = torch.load(path, weights_only=True)
    assert (record["arch"], record["num_classes"], record["in_channels"], record["input_size"]) == \
        ("resnet56", CLASSES, 3, list(SIZE))
    loaded = paperprune.load_pruned(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned.eval()(x))
    again = paperprune.save_pruned(loaded, tmp_path / "again.pt")  # a loaded model carries its arch too
    old_style = paperprune.save_pruned(pruned, tmp_path / "old.pt", arch="resnet56", num_classes=CLASSES,
                                       in_channels=3, input_size=SIZE)  # the keywords of earlier callers
    for p in (again, old_style):
        with torch.no_grad():
            assert torch.equal(paperprune.load_pruned(p)(x), pruned(x))

    model = build("mobilenet_v3_small")
    pruned, _ = paperprune.prune(model, data, method="l1", flops_reduction=0.5, samples_per_class=2, progress=False)
    path = paperprune.save_pruned(pruned, tmp_path / "mnv3.pt")
    torch.load(path, weights_only=True)
    with torch.no_grad():
        expected = pruned.eval()(x)
        for spare in (build("mobilenet_v3_small", seed=1), lambda: build("mobilenet_v3_small", seed=2)):
            loaded = paperprune.load_pruned(path, model=spare)
            assert not loaded.training and torch.equal(loaded(x), expected)


def test_save_and_load_refusals(tmp_path):
    data = calibration(dtype=torch.float32)
    pruned, _ = paperprune.prune(paperprune.create_model("resnet56", num_classes=CLASSES), data, method="l1",
                                 flops_reduction=0.4, samples_per_class=2, progress=False)
    with pytest.raises(PaperpruneError, match=r"not a 'resnet110' \(module 'layer1.9' is BasicBlock in resnet110"):
        paperprune.save_pruned(pruned, tmp_path / "a.pt", arch="resnet110")
    with pytest.raises(PaperpruneError, match="num_classes=7.*do not match"):
        paperprune.save_pruned(pruned, tmp_path / "a.pt", num_classes=7)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PaperpruneError, match="'.*file' is a file, not a directory"):
        paperprune.save_pruned(pruned, tmp_path / "file" / "a.pt")
    with pytest.raises(PaperpruneError, match="is a directory"):
        paperprune.save_pruned(pruned, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing written

    good = paperprune.save_pruned(pruned, tmp_path / "good.pt")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(PaperpruneError, match="torch.load failed.*damaged"):
        paperprune.load_pruned(broken)
    with pytest.raises(PaperpruneError, match=r"holds a pruned CifarResNet, which the given ResNet is not"):
        paperprune.load_pruned(good, model=build("resnet18"))
    with pytest.raises(PaperpruneError, match="neither an nn.Module"):
        paperprune.load_pruned(good, model=3)

    tv_pruned, _ = paperprune.prune(build("resnet18"), data, method="l1", flops_reduction=0.3, samples_per_class=2,
                                    progress=False)
    path = paperprune.save_pruned(tv_pruned, tmp_path / "r18.pt")
    with pytest.raises(PaperpruneError, match="not one of paperprune's built-in models; pass model="):
        paperprune.load_pruned(path)
    with pytest.raises(PaperpruneError, match="'layer1.2' is absent in the file, BasicBlock in the model given"):
        paperprune.load_pruned(path, model=tv.resnet34(num_classes=CLASSES))


# ---------------------------------------------------------------- the Torch-Pruning plug-in
def metaprune(model, importance, x, ratio=0.5):
    pruner = tp.pruner.MetaPruner(model, x[:1], importance=importance, pruning_ratio=ratio,
                                  ignored_layers=[model.fc])
    pruner.step()
    return model


@pytest.mark.slow
def test_importance_plugs_into_metapruner_on_resnet18():
    """sTLP-IB scores inside Torch-Pruning's own pruner: each block's inner width keeps its
    top-scoring half, residual widths (no score: None) are left alone, and the result equals
    the masked original."""
    from paperprune.tp import Importance

    model = randomise(build("resnet18"))
    data = calibration(n_per_class=3)
    x = data[0][0][:4]
    importance = Importance(model, data, method="stlp", samples_per_class=3)
    original = copy.deepcopy(model)
    layers = discover(original, SIZE).layers
    scores = {layer.name: importance.scores[model.get_submodule(layer.conv)] for layer in layers}
    metaprune(model, importance, x)
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and not name.endswith("conv1") or name == "conv1":
            assert module.out_channels == original.get_submodule(name).out_channels, name
    keep = kept_channels(original, model, layers, x)
    for layer in layers:
        score, kept = scores[layer.name], keep[layer.name]
        dropped = torch.ones(score.numel(), dtype=torch.bool)
        dropped[kept] = False
        # the top-scoring half, whichever of the channels tied at the cut Torch-Pruning keeps (layer4.0.conv1 has three)
        assert kept.numel() == score.numel() - score.numel() // 2
        assert float(score[kept].min()) >= float(score[dropped].max())
    expected = masked_output(copy.deepcopy(original), layers, keep, x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-9 * max(1.0, expected.abs().max().item()))


def test_importance_keeps_grouped_convs_aligned_on_regnet():
    """regnet_x_400mf: the widths read by grouped convs are pruned by Torch-Pruning with the same
    channels in every group; the result equals the masked original."""
    from paperprune.tp import Importance

    model = randomise(build("regnet_x_400mf"))
    data = calibration()
    x = data[0][0][:4]
    importance = Importance(model, data, method="l1", samples_per_class=2)
    found = discover(model, SIZE, include=("inner", "grouped"))
    assert {m for m in importance.scores} == {model.get_submodule(layer.conv) for layer in found.layers}
    assert len(found.layers) == 1 + 2 * 22
    original = copy.deepcopy(model)
    metaprune(model, importance, x, ratio=0.25)
    grouped = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert grouped and all(model.get_submodule(n).groups == original.get_submodule(n).groups for n in grouped)
    assert any(model.get_submodule(n).in_channels < original.get_submodule(n).in_channels for n in grouped)
    keep = kept_channels(original, model, found.layers, x)
    expected = masked_output(copy.deepcopy(original), found.layers, keep, x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-9 * max(1.0, expected.abs().max().item()))


def test_observation_stops_the_forward_once_every_layer_is_seen():
    """After the first batch, a forward pass ends at the last observed module; the features are
    those of whole forward passes."""
    model = build("resnet18")
    layers = discover(model, SIZE).layers[:2]
    x = calibration(1, dtype=torch.float32)[0][0][:6]
    calls = []
    hook = model.fc.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    features = channel_features(model, layers, x, batch_size=2)
    hook.remove()
    assert calls == [2]  # only the first of three batches reached the classifier
    whole = channel_features(model, layers, x, batch_size=6)
    for name in whole:
        torch.testing.assert_close(features[name], whole[name], rtol=0, atol=0)


def test_plug_in_and_discovery_are_reachable_from_the_top_level():
    """`import paperprune` alone gives paperprune.tp.Importance and paperprune.discover (lazily)."""
    import subprocess
    import sys

    code = ("import sys, paperprune; assert 'paperprune.tp' not in sys.modules; "
            "print('tp' in dir(paperprune), paperprune.tp.Importance.__name__, paperprune.discover.discover.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "Importance", "discover"]


# ---------------------------------------------------------------- a conv classifier, grouped writers, metadata
NEWER = {"squeezenet1_1": tv.squeezenet1_1, "mnasnet0_5": tv.mnasnet0_5, "regnet_y_400mf": tv.regnet_y_400mf}


@pytest.mark.parametrize("name", sorted(NEWER))
def test_conv_classifier_grouped_writers_and_state_dict_versions(name, tmp_path):
    """squeezenet1_1 (a 1x1 conv classifier before global pooling), mnasnet0_5 (a state dict with
    version metadata) and regnet_y_400mf (grouped convs writing widths, squeeze-excitation after
    them): 50% of the MACs within 1%, equal to the masked original, saved and loaded exactly."""
    torch.manual_seed(0)
    model = randomise(NEWER[name](num_classes=CLASSES))
    found = discover(model, SIZE)
    convs = {layer.conv for layer in found.layers}
    if name == "squeezenet1_1":
        head = model.get_submodule(found.classifier)
        assert isinstance(head, nn.Conv2d) and head.out_channels == CLASSES and found.classifier not in convs
    if name == "regnet_y_400mf":
        writers = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels]
        assert writers and set(writers) <= convs
    data = calibration()
    pruned, report = paperprune.prune(model, data, method="l1", flops_reduction=0.5, samples_per_class=2,
                                      progress=False)
    check_pruned(model, pruned, report, found.layers, data[0][0][:4])
    path = paperprune.save_pruned(pruned, tmp_path / f"{name}.pt")
    loaded = paperprune.load_pruned(path, model=lambda: NEWER[name](num_classes=CLASSES))
    x = data[0][0][:2]
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned.eval()(x))


def test_conv_classifier_embeddings_are_its_pooled_input():
    """The class embedding of a conv classifier is its input averaged over positions, per class
    (computed here with a hook and numpy-free torch means over each class's images)."""
    from paperprune.ib import class_embeddings

    torch.manual_seed(0)
    model = randomise(tv.squeezenet1_1(num_classes=CLASSES))
    (x, y), = calibration()
    seen = []
    handle = model.classifier[1].register_forward_pre_hook(lambda m, i: seen.append(i[0].mean((2, 3))))
    with torch.no_grad():
        model(x)
    handle.remove()
    expected = torch.stack([seen[0][y == k].mean(0) for k in range(CLASSES)])
    got = class_embeddings(model, x, y, CLASSES, classifier="classifier.1")
    torch.testing.assert_close(got, expected.to(got.dtype))


def test_bench_torchvision_tables_a_pruned_and_a_refused_model(tmp_path):
    """benchmarks/bench_torchvision.py on two models: one pruned (all three checks), one refused with
    its reason; the table holds both, the date and the versions."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_torchvision.py"
    spec = importlib.util.spec_from_file_location("bench_torchvision", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "any-cnn.md"
    assert bench.main(["--models", "squeezenet1_0", "shufflenet_v2_x0_5", "--size", "32", "--out", str(out)]) == 0
    text = out.read_text()
    assert "**1 of 2 pruned (50%).**" in text and f"torchvision {torchvision.__version__}" in text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert " pruned " in rows["squeezenet1_0"] and " refused " in rows["shufflenet_v2_x0_5"]


# ---------------------------------------------------------------- MLP hidden widths (ConvNeXt-, ViT-style)
class TinyConvNeXt(nn.Module):
    """Two ConvNeXt blocks: depthwise conv -> channels-last LayerNorm -> Linear -> GELU -> Linear, added to the
    stream. The hidden width (4 x 8) of each MLP is prunable; the stream (8) is residual."""

    def __init__(self, dim=8):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(dw=nn.Conv2d(dim, dim, 7, padding=3, groups=dim),
                                                       norm=nn.LayerNorm(dim), fc1=nn.Linear(dim, 4 * dim),
                                                       act=nn.GELU(), fc2=nn.Linear(4 * dim, dim)))
                                    for _ in range(2))
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            y = b["norm"](b["dw"](x).permute(0, 2, 3, 1))
            x = x + b["fc2"](b["act"](b["fc1"](y))).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


class TinyViT(nn.Module):
    """Patch embedding, a class token, two pre-norm blocks of attention (nn.MultiheadAttention) and an MLP on
    (N, L, C) tokens; the MLPs' hidden widths (Linear -> GELU -> Linear) are prunable, attention is not."""

    def __init__(self, dim=16, hidden=64):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(ln1=nn.LayerNorm(dim), attn=nn.MultiheadAttention(
            dim, 2, batch_first=True), ln2=nn.LayerNorm(dim), mlp=nn.Sequential(
                nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim)))) for _ in range(2))
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
        for b in self.blocks:
            y = b["ln1"](x)
            x = x + b["attn"](y, y, y, need_weights=False)[0]
            x = x + b["mlp"](b["ln2"](x))
        return self.head(x[:, 0])


def mlp_masked_output(model, report, x):
    """The unpruned model's output with each removed hidden feature zeroed on the last axis of the input of
    the linear layer that reads it (found from Torch-Pruning's group of the removal)."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
    zero = {}
    for row in report.layers:
        root = model.get_submodule(row["name"])
        removed = sorted(set(range(root.out_features)) - set(row["kept"]))
        for dep, idxs in dg.get_pruning_group(root, tp.prune_linear_out_channels, idxs=removed):
            if dep.handler == tp.prune_linear_in_channels:
                zero[dep.target.module] = sorted(idxs)
    hooks = [m.register_forward_pre_hook(lambda m, i, idx=idx: (i[0].index_fill(-1, torch.tensor(idx), 0),))
             for m, idx in zero.items()]
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("cls, expected", [
    (TinyConvNeXt, (["blocks.0.fc1", "blocks.1.fc1"], ["blocks.0.act", "blocks.1.act"],
                    ["blocks.0.fc2", "blocks.1.fc2"])),
    (TinyViT, (["blocks.0.mlp.0", "blocks.1.mlp.0"], ["blocks.0.mlp.1", "blocks.1.mlp.1"],
               ["blocks.0.mlp.3", "blocks.1.mlp.3"])),
])
def test_discovery_finds_mlp_hidden_widths_and_prunes_them_exactly(cls, expected, tmp_path):
    """Only the MLPs' hidden widths are found (the residual stream, patch/stem conv and attention are kept);
    prune meets the MACs target, equals the masked original, and saves and loads."""
    torch.manual_seed(0)
    model = cls().double().eval()
    found = discover(model, SIZE)
    assert ([layer.conv for layer in found.layers], [layer.observe for layer in found.layers],
            [layer.consumer for layer in found.layers]) == expected
    assert found.classifier == "head" and {kind for kind, _ in found.skipped.values()} == {"residual"}
    data = calibration()
    pruned, report = paperprune.prune(model, data, method="l1", flops_reduction=0.3, samples_per_class=2,
                                      progress=False)
    base, macs = count_flops_params(model, SIZE)[0], count_flops_params(pruned, SIZE)[0]
    assert abs((1 - macs / base) - 0.3) <= 0.01 and (report.macs_before, report.macs_after) == (base, macs)
    x = data[0][0][:4]
    expected_out = mlp_masked_output(model, report, x)
    with torch.no_grad():
        got, plain = pruned(x), model(x)
    assert (plain - expected_out).abs().max() > 1e-6
    torch.testing.assert_close(got, expected_out, rtol=0, atol=1e-9)
    paperprune.save_pruned(pruned, tmp_path / "p.pt")
    torch.manual_seed(1)
    back = paperprune.load_pruned(tmp_path / "p.pt", model=cls)
    with torch.no_grad():
        torch.testing.assert_close(back(x), got, rtol=0, atol=0)


@pytest.mark.parametrize("name, kwargs", [("swin_t", {}), ("convnext_tiny", {}), ("resnet18", {}),
                                          ("vit_b_32", {"image_size": 64})])
def test_stream_walk_agrees_with_torch_prunings_group(name, kwargs):
    """Every conv the token-stream walk calls residual is residual by its Torch-Pruning group too
    (built here, where it is cheap), and every conv it passes by is left to that group: the walk
    only replaces groups that could be built, never changes a kind."""
    from paperprune.discover import _Trace, _token_stream, classify_group, example_input
    torch.manual_seed(0)
    model = tv.get_model(name, num_classes=CLASSES, **kwargs).eval()
    trace = _Trace(model, example_input(model, (3, 64, 64)))
    walked = {}
    for module, node in trace.dg.module2node.items():
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            group = trace.dg.get_pruning_group(module, tp.prune_conv_out_channels, idxs=list(range(module.out_channels)))
            walked[trace.names[module]] = (_token_stream(node) is not None, classify_group(group, module, trace.names)[0])
    expected_walked = {"swin_t": 1, "convnext_tiny": 1, "resnet18": 0, "vit_b_32": 0}[name]
    assert sum(hit for hit, _ in walked.values()) == expected_walked
    assert all(kind == "residual" for hit, kind in walked.values() if hit)


def test_swin_v2_is_discovered():
    """Swin V2's stem conv (whose Torch-Pruning group outgrows memory) is found residual by the walk, and
    the MLP hidden width of each of its 12 blocks is prunable. (Swin-S and Swin-B, which need the tolerant
    concat mapping to trace, take 20 s each: they are in benchmarks/bench_torchvision.py.)"""
    model = tv.get_model("swin_v2_t", num_classes=CLASSES).eval()
    found = discover(model, (3, 64, 64))
    assert [layer.conv for layer in found.layers][:2] == ["features.1.0.mlp.0", "features.1.1.mlp.0"]
    assert len(found.layers) == 12 and list(found.skipped) == ["features.0.0"]
    assert found.skipped["features.0.0"][0] == "residual"


def testtolerant_concat_mapping_is_left_unmapped_and_restored():
    """Inside the context a concatenation whose input widths Torch-Pruning cannot infer gets no index
    mapping instead of a TypeError; other errors still raise; the original function is back afterwards."""
    from torch_pruning.dependency import index_mapping
    from paperprune.discover import tolerant_concat_mapping
    original = index_mapping.update_concat_index_mapping

    def fails(message):
        def f(graph, node):
            raise TypeError(message)
        return f
    index_mapping.update_concat_index_mapping = fails("unsupported operand type(s) for +: 'int' and 'NoneType'")
    try:
        with tolerant_concat_mapping():
            assert index_mapping.update_concat_index_mapping(None, None) is None
        index_mapping.update_concat_index_mapping = fails("something else")
        with tolerant_concat_mapping(), pytest.raises(TypeError, match="something else"):
            index_mapping.update_concat_index_mapping(None, None)
        restored = index_mapping.update_concat_index_mapping
    finally:
        index_mapping.update_concat_index_mapping = original
    assert restored.__name__ == "f"


def test_linear_macs_on_tokens_match_torch_flop_counter():
    """count_flops_params counts a linear layer on (N, L, C) tokens or (N, H, W, C) maps as positions x in x
    out: the same as torch's FlopCounterMode (FLOPs = 2 MACs) on the model's convs and linear layers."""
    from torch.utils.flop_counter import FlopCounterMode

    model = TinyConvNeXt().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *SIZE))
    ops = counter.get_flop_counts()["Global"]
    independent = sum(v for op, v in ops.items() if "conv" in str(op) or "mm" in str(op)) // 2
    assert count_flops_params(model, SIZE)[0] == independent
    # by hand: fc1 of a block reads 8 and writes 32 features at each of the 8 x 8 positions
    from paperprune.flops import layer_macs
    assert layer_macs(model, SIZE)["blocks.0.fc1"] == 8 * 8 * 8 * 32


@pytest.mark.parametrize("method", ["random", "hrank", "stlp", "apib"])
def test_criteria_read_mlp_features_channels_first(method):
    """The observed hidden features of a channels-last MLP are moved channels first (N, C, H*W): they equal
    the GELU's output permuted; every criterion, lasso ones included, prunes the tiny ConvNeXt."""
    torch.manual_seed(0)
    model = TinyConvNeXt().double().eval()
    layers = discover(model, SIZE).layers
    x = calibration()[0][0]
    seen = {}
    handle = model.get_submodule("blocks.0.act").register_forward_hook(lambda m, i, o: seen.setdefault("o", o))
    with torch.no_grad():
        model(x)
    handle.remove()
    features = channel_features(model, layers[:1], x)[layers[0].name]
    torch.testing.assert_close(features, seen["o"].permute(0, 3, 1, 2).flatten(2), rtol=0, atol=0)
    pruned, report = paperprune.prune(model, calibration(), method=method, flops_reduction=0.3, samples_per_class=2,
                                      progress=False, **({"max_iter": 200} if method in ("stlp", "apib") else {}))
    assert abs(report.macs_reduction - 0.3) <= 0.01
    assert all(row["width_after"] <= row["width_before"] for row in report.layers)


def test_mlp_refusals_name_the_cause():
    """hrank on token sequences (no 2-D map to rank) and an observed module that is not the hidden features
    are refused with what to do."""
    torch.manual_seed(0)
    model = TinyViT().double().eval()
    with pytest.raises(PaperpruneError, match=r"hrank: layer 'blocks.0.mlp.0'.*not \(C, H, W\) maps.*use l1"):
        paperprune.prune(model, calibration(), method="hrank", flops_reduction=0.3, samples_per_class=2,
                         progress=False)
    with pytest.raises(PaperpruneError, match=r"observe='blocks.0.ln2' gives shape \(2, 17, 16\), not the 64 "
                                              r"channels of 'blocks.0.mlp.0'"):
        paperprune.prune(model, calibration(), method="l1", flops_reduction=0.3, samples_per_class=2,
                         layers={"blocks.0.mlp.0": "blocks.0.ln2"}, classifier="head", progress=False)


def test_bench_torchvision_stopped_midway_keeps_every_row_it_held(tmp_path, monkeypatch):
    """A rerun that is stopped at a model keeps the rows of the models after it (a resumed run would
    otherwise check them again), and a model whose check outgrows --memory-gib is an error row saying so."""
    import importlib.util
    import json
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_torchvision.py"
    spec = importlib.util.spec_from_file_location("bench_torchvision_stop", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "any-cnn.md"
    held = [{"model": m, "input": "3x32x32", "result": "refused", "seconds": 0.0, "reason": "held"}
            for m in ("a", "c")]
    out.with_suffix(".json").write_text(json.dumps(held))
    with monkeypatch.context() as m:
        m.setattr(bench.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, bench.OVER_MEMORY, "", ""))
        row = bench.run_child("x", 32, 0.5, 2.0)
    assert row["result"] == "error" and "--memory-gib 2 GiB" in row["reason"]

    def child(name, size, target, memory_gib):
        if name == "b":
            return {"model": "b", "input": "3x32x32", "result": "refused", "seconds": 0.0, "reason": "new"}
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run_child", child)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--models", "a", "b", "d", "c", "--out", str(out)])
    assert [r["model"] for r in json.loads(out.with_suffix(".json").read_text())] == ["a", "b", "c"]
