"""IB statistics: kernels, redundancy Q, relevance R, hooks (METHOD.md section 2)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from paperprune import ib
from paperprune.utils import PaperpruneError

try:
    from paperprune.models import PrunableLayer
except ImportError:  # models written concurrently: same fields
    @dataclass(frozen=True)
    class PrunableLayer:
        name: str
        conv: str
        observe: str

F64 = torch.float64


# --------------------------------------------------------------------------- references


def _reference_kbar(features: torch.Tensor) -> torch.Tensor:
    """Kbar from the definitions: cdist, median of the non-zero squared distances (the lower
    middle value for an even count, as torch.median), H K H."""
    n, c = features.shape[:2]
    x = features.reshape(n, c, -1).transpose(0, 1).to(F64)
    d2 = torch.cdist(x, x).square()
    iu = torch.triu_indices(n, n, offset=1)
    out = []
    for k in range(c):
        pairs = d2[k][iu[0], iu[1]].numpy()
        pairs = pairs[pairs > 1e-20]
        s2 = float(np.sort(pairs)[(pairs.size - 1) // 2]) if pairs.size else 1.0
        kern = torch.exp(-d2[k] / (2 * s2))
        h = torch.eye(n, dtype=F64) - 1.0 / n
        kc = h @ kern @ h
        norm = kc.norm()
        out.append(kc / norm if norm > 1e-9 else torch.zeros_like(kc))
    return torch.stack(out)


def _reference_lbar(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    n = labels.shape[0]
    h = torch.eye(n, dtype=F64) - 1.0 / n
    out = []
    for c in range(num_classes):
        ind = (labels == c).to(F64)
        lc = h @ torch.outer(ind, ind) @ h
        norm = lc.norm()
        out.append(lc / norm if norm > 0 else torch.zeros_like(lc))
    return torch.stack(out)


def _features(n=60, c=5, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    feats = torch.relu(torch.randn(n, c, d, generator=g, dtype=F64))
    feats[:, 0] += 2.0 * (labels == 1).to(F64)[:, None]     # one class-dependent channel
    outputs = torch.randn(n, k, generator=g, dtype=F64) + 3.0 * nn.functional.one_hot(labels, k)
    return feats, labels, outputs


class TinyNet(nn.Module):
    """conv-bn-relu x2, global average pool, linear classifier."""

    def __init__(self, in_channels=2, width=5, num_classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, stride=2)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))
        return self.classifier(self.pool(x).flatten(1))

    def prunable_layers(self):
        return [PrunableLayer("conv1", "conv1", "relu1"), PrunableLayer("conv2", "conv2", "relu2")]


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# --------------------------------------------------------------------------- kernels


def test_kernels_match_definition_and_are_centred_and_normalised():
    feats, _, _ = _features()
    kbar = ib.channel_kernels(feats)
    torch.testing.assert_close(kbar, _reference_kbar(feats), rtol=0, atol=1e-12)
    assert kbar.shape == (5, 60, 60)
    torch.testing.assert_close(kbar.flatten(1).norm(dim=1), torch.ones(5, dtype=F64), rtol=0, atol=1e-12)
    assert kbar.sum(dim=2).abs().max() < 1e-12                      # rows sum to 0 (H K H)
    assert kbar.sum(dim=1).abs().max() < 1e-12
    torch.testing.assert_close(kbar, kbar.transpose(1, 2))


def test_median_bandwidth_uses_evenly_spaced_subset(monkeypatch):
    feats, _, _ = _features(n=50, c=2)
    monkeypatch.setattr(ib, "MEDIAN_SAMPLES", 11)
    idx = torch.linspace(0, 49, 11).round().long()
    x = feats.transpose(0, 1).contiguous()
    kern = ib._GaussianKernels(x.clone(), source_eps=1e-16, max_bytes=1 << 20)
    for k in range(2):
        sub = x[k, idx]
        d2 = torch.cdist(sub, sub).square()
        pairs = d2[torch.triu(torch.ones(11, 11, dtype=torch.bool), 1)]
        expected = pairs[pairs > 1e-20].median()       # torch.median = lower middle value
        torch.testing.assert_close(kern.scale[k], -0.5 / expected)
    # silent on the whole subset: fall back to the mean squared distance over all N samples
    rare = torch.zeros(1, 50, 4, dtype=F64)
    rare[0, 1] = 1.0                                   # sample 1 is not in the subset
    assert 1 not in idx.tolist()
    kern = ib._GaussianKernels(rare.clone(), source_eps=1e-16, max_bytes=1 << 20)
    centred = rare[0] - rare[0].mean(0)
    torch.testing.assert_close(kern.scale[0], -0.5 / (2 * centred.square().sum() / 49))


def test_row_tiles_cover_the_triangle_within_budget():
    n, c, itemsize, budget = 500, 16, 4, 400_000
    tiles = list(ib._row_tiles(n, c, itemsize, budget))
    assert tiles[0][0] == 0 and tiles[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(tiles, tiles[1:]))
    heights = [r1 - r0 for r0, r1 in tiles]
    assert heights[:-1] == sorted(heights[:-1]) and max(heights) > heights[0]   # taller as it narrows
    for r0, r1 in tiles:
        assert r1 - r0 == 1 or 2 * (c + 3) * (r1 - r0) * (n - r0) * itemsize <= budget


# --------------------------------------------------------------------------- Q and R


def test_redundancy_symmetric_psd_unit_diagonal():
    feats, labels, _ = _features(c=7)
    st = ib.feature_statistics(feats, labels, 3)
    q = st.redundancy
    assert q.shape == (7, 7) and q.dtype == F64
    torch.testing.assert_close(q, q.T)
    assert torch.linalg.eigvalsh(q).min() > -1e-10
    torch.testing.assert_close(q.diagonal(), torch.ones(7, dtype=F64))
    assert q.min() >= -1e-12 and q.max() <= 1 + 1e-12          # <PSD, PSD> >= 0, Cauchy-Schwarz
    assert not st.dead.any() and st.missing_classes == [] and st.num_samples == 60


def test_chunked_equals_direct():
    feats, labels, outputs = _features(n=70, c=6, k=4)
    tiles = list(ib._row_tiles(70, 6, 8, 30_000))
    assert len(tiles) > 5                                           # really tiled
    chunked = ib.feature_statistics(feats, labels, 4, outputs=outputs, max_bytes=30_000)
    whole = ib.feature_statistics(feats, labels, 4, outputs=outputs, max_bytes=1 << 30)
    kbar, lbar = _reference_kbar(feats), _reference_lbar(labels, 4)
    obar = _reference_kbar(outputs[:, None, :])[0]
    q = torch.einsum("kij,mij->km", kbar, kbar)
    r = torch.einsum("kij,cij->kc", kbar, lbar)
    o = torch.einsum("kij,ij->k", kbar, obar)
    for st in (chunked, whole):
        torch.testing.assert_close(st.redundancy, q, rtol=0, atol=1e-10)
        torch.testing.assert_close(st.relevance, r, rtol=0, atol=1e-10)
        torch.testing.assert_close(st.output_relevance, o, rtol=0, atol=1e-10)


def test_float32_close_to_float64():
    feats, labels, outputs = _features()
    st64 = ib.feature_statistics(feats, labels, 3, outputs=outputs)
    st32 = ib.feature_statistics(feats.float(), labels, 3, outputs=outputs.float(), max_bytes=20_000)
    assert st32.redundancy.dtype == torch.float32
    torch.testing.assert_close(st32.redundancy.double(), st64.redundancy, rtol=0, atol=1e-4)
    torch.testing.assert_close(st32.relevance.double(), st64.relevance, rtol=0, atol=1e-4)


def test_independent_channels_have_low_relevance():
    g = torch.Generator().manual_seed(1)
    n, k = 200, 4
    labels = torch.arange(n) % k
    indep = torch.randn(n, 6, 8, generator=g, dtype=F64)
    dep = torch.randn(n, 1, 8, generator=g, dtype=F64) + 3.0 * nn.functional.one_hot(labels, 8).to(F64)[:, None]
    st = ib.feature_statistics(torch.cat([indep, dep], dim=1), labels, k)
    r_indep, r_dep = st.relevance[:6], st.relevance[6]
    assert r_indep.min() > -1e-12 and r_indep.mean() < 0.03 and r_indep.max() < 0.06
    assert r_dep.min() > 5 * r_indep.max()


def test_class_indicator_channel_has_largest_relevance():
    g = torch.Generator().manual_seed(2)
    n, k, c_star = 120, 4, 2
    labels = torch.randperm(n, generator=g) % k
    feats = torch.relu(torch.randn(n, 5, 9, generator=g, dtype=F64))
    indicator = (labels == c_star).to(F64)[:, None] * torch.ones(9, dtype=F64)
    feats[:, 3] = indicator + 1e-3 * torch.randn(n, 9, generator=g, dtype=F64)
    r = ib.feature_statistics(feats, labels, k).relevance
    assert int(r[:, c_star].argmax()) == 3                  # over channels
    assert int(r[3].argmax()) == c_star                     # over classes
    assert r[3, c_star] > 0.9


def test_dead_channels_and_missing_classes_without_nan():
    feats, labels, outputs = _features(n=48, c=5, k=3)
    feats[:, 1] = 0.0                                        # silent ReLU channel
    feats[:, 3] = torch.linspace(-1, 1, 6, dtype=F64)        # same map on every sample
    feats[:, 4] = 0.0
    feats[[5, 17], 4] = 1.0                                  # sparse but alive
    st = ib.feature_statistics(feats, labels, 5, outputs=outputs)
    for t in (st.redundancy, st.relevance, st.output_relevance):
        assert torch.isfinite(t).all()
    assert st.dead.tolist() == [False, True, False, True, False]
    assert st.missing_classes == [3, 4]
    dead = st.dead
    assert (st.redundancy[dead] == 0).all() and (st.redundancy[:, dead] == 0).all()
    assert (st.relevance[dead] == 0).all() and (st.output_relevance[dead] == 0).all()
    assert (st.relevance[:, 3:] == 0).all()
    torch.testing.assert_close(st.redundancy[~dead][:, ~dead].diagonal(), torch.ones(3, dtype=F64))
    const_out = ib.feature_statistics(feats, labels, 5, outputs=torch.ones(48, 3, dtype=F64))
    assert (const_out.output_relevance == 0).all()
    kbar = ib.channel_kernels(feats)
    assert torch.isfinite(kbar).all() and (kbar[1] == 0).all() and (kbar[3] == 0).all()


def test_bad_inputs_raise():
    feats, labels, _ = _features()
    with pytest.raises(PaperpruneError, match="num_classes=2"):
        ib.feature_statistics(feats, labels, 2)
    with pytest.raises(PaperpruneError, match="one label per sample"):
        ib.feature_statistics(feats, labels[:-1], 3)
    model = TinyNet()
    with pytest.raises(PaperpruneError, match="float tensor"):
        ib.layer_statistics(model, model.prunable_layers(), torch.zeros(4, 2, 8, 8, dtype=torch.uint8),
                            torch.zeros(4, dtype=torch.long), 3)


def test_hsic_helpers():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(80, 3, generator=g, dtype=F64)
    noise = torch.randn(80, 3, generator=g, dtype=F64)
    assert abs(float(ib.normalized_hsic(x, x)) - 1.0) < 1e-10
    assert float(ib.normalized_hsic(x, x.square().sum(1))) > 3 * float(ib.normalized_hsic(x, noise))
    assert float(ib.normalized_hsic(x, torch.ones(80))) == 0.0
    kx = torch.exp(torch.cdist(x, x).square() * float(ib._GaussianKernels(x[None].clone(), source_eps=1e-16,
                                                                           max_bytes=1 << 20).scale))
    ky = torch.exp(torch.cdist(noise, noise).square()
                   * float(ib._GaussianKernels(noise[None].clone(), source_eps=1e-16, max_bytes=1 << 20).scale))
    h = torch.eye(80, dtype=F64) - 1 / 80
    expected = torch.trace(kx @ h @ ky @ h) / 79**2
    torch.testing.assert_close(ib.hsic(x, noise, max_bytes=5_000), expected)


# --------------------------------------------------------------------------- model hooks


def _model_and_data(n=36, k=3):
    torch.manual_seed(0)
    model = TinyNet(num_classes=k).double()
    with torch.no_grad():
        model.bn1.weight[2] = 0.0          # channel 2 of conv1: constant (= BN bias) -> dead
    images = torch.randn(n, 2, 8, 8, dtype=F64)
    labels = torch.arange(n) % k
    return model, images, labels


def test_layer_statistics_matches_features_and_restores_model():
    model, images, labels = _model_and_data()
    model.train()
    model.bn2.eval()                       # mixed flags must come back as they were
    layers = model.prunable_layers()
    flags = [m.training for m in model.modules()]
    stats = ib.layer_statistics(model, layers, images, labels, 3, batch_size=7, dtype=F64)
    assert [m.training for m in model.modules()] == flags and _no_hooks(model)
    feats = ib.channel_features(model, layers, images, batch_size=5)
    assert [m.training for m in model.modules()] == flags and _no_hooks(model)
    assert feats["conv1"].shape == (36, 5, 64) and feats["conv2"].shape == (36, 5, 16)
    model.eval()
    with torch.no_grad():
        logits = model(images)
        torch.testing.assert_close(feats["conv2"], model.relu2(model.bn2(model.conv2(
            model.relu1(model.bn1(model.conv1(images)))))).flatten(2))
    for layer in layers:
        ref = ib.feature_statistics(feats[layer.name], labels, 3, outputs=logits)
        st = stats[layer.name]
        assert st.name == layer.name and st.num_samples == 36
        torch.testing.assert_close(st.redundancy, ref.redundancy)
        torch.testing.assert_close(st.relevance, ref.relevance)
        torch.testing.assert_close(st.output_relevance, ref.output_relevance)
        assert torch.equal(st.dead, ref.dead)
    assert stats["conv1"].dead.tolist() == [False, False, True, False, False]


def test_layer_statistics_grouping_does_not_change_results():
    model, images, labels = _model_and_data()
    layers = model.prunable_layers()
    calls = []
    model.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
    big = ib.layer_statistics(model, layers, images, labels, 3, dtype=F64)
    assert calls == [1, 36]                  # shape probe, then one pass for both layers
    calls.clear()
    # conv1 features are 36*5*64*8 = 92,160 bytes, conv2 23,040: two groups under 100 kB
    small = ib.layer_statistics(model, layers, images, labels, 3, dtype=F64, max_bytes=100_000)
    assert calls == [1, 36, 36]
    for name in ("conv1", "conv2"):
        torch.testing.assert_close(small[name].redundancy, big[name].redundancy, rtol=0, atol=1e-12)
        torch.testing.assert_close(small[name].relevance, big[name].relevance, rtol=0, atol=1e-12)
        torch.testing.assert_close(small[name].output_relevance, big[name].output_relevance, rtol=0, atol=1e-12)


def test_hooks_removed_after_error():
    model, images, labels = _model_and_data()
    model.relu2 = model.relu1              # one module used twice per forward
    model.train()
    with pytest.raises(PaperpruneError, match="ran twice"):
        ib.channel_features(model, [PrunableLayer("conv1", "conv1", "relu1")], images)
    assert _no_hooks(model) and model.training and model.bn1.training
    with pytest.raises(PaperpruneError, match="not found"):
        ib.channel_features(model, [PrunableLayer("x", "x", "nope")], images)


def test_class_embeddings_by_hand():
    model, images, labels = _model_and_data(n=30, k=4)
    labels = labels.clone()
    labels[labels == 3] = 0                                 # class 3 has no sample
    model.train()
    emb = ib.class_embeddings(model, images, labels, 4, batch_size=8)
    assert emb.shape == (4, 5) and model.training and _no_hooks(model)
    model.eval()
    with torch.no_grad():
        pooled = model.relu2(model.bn2(model.conv2(model.relu1(model.bn1(model.conv1(images)))))).mean(dim=(2, 3))
    for c in range(3):
        torch.testing.assert_close(emb[c], pooled[labels == c].mean(0))
    assert (emb[3] == 0).all() and torch.isfinite(emb).all()


@pytest.mark.parametrize("statistics, max_bytes", [("exact", 1), ("block", ib.DEFAULT_MAX_BYTES)])
def test_statistics_pass_gathers_the_class_embeddings(statistics, max_bytes):
    """`layer_statistics(classifier=...)` returns the class means of the classifier's input from its own
    forward pass: equal to `class_embeddings`' separate pass (the block estimator visits the images in
    another order, so to rounding), with no pass of its own: conv1 runs once per batch of the statistics'
    passes only (block: one pass of 2 batches; exact with max_bytes=1: a one-image probe, then one pass per
    layer, the first gathering the means)."""
    model, images, labels = _model_and_data(n=40, k=4)
    expected = ib.class_embeddings(model, images, labels, 4, batch_size=20)
    block = {"block_size": 10} if statistics == "block" else {}
    calls = []
    handle = model.conv1.register_forward_hook(lambda *args: calls.append(1))
    try:
        stats = ib.layer_statistics(model, model.prunable_layers(), images, labels, 4, batch_size=20, dtype=F64,
                                    statistics=statistics, max_bytes=max_bytes, classifier="classifier", **block)
    finally:
        handle.remove()
    assert len(calls) == {"exact": 1 + 2 + 2, "block": 2}[statistics] and _no_hooks(model)
    torch.testing.assert_close(stats.class_embeddings, expected, rtol=1e-12, atol=1e-12)
    assert set(stats) == {"conv1", "conv2"}
    plain = ib.layer_statistics(model, model.prunable_layers(), images, labels, 4, batch_size=20, dtype=F64,
                                statistics=statistics, max_bytes=max_bytes, **block)
    assert plain.class_embeddings is None
    for name in plain:
        torch.testing.assert_close(plain[name].redundancy, stats[name].redundancy, rtol=0, atol=0)


# --------------------------------------------------------------------------- ReLU-sparse channels


def _exact_kbar(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Kbar (C, N, N), s^2 (C,)) with squared distances summed pair by pair, so identical maps are
    exactly 0 apart, and the median (lower middle) of the non-zero ones; float64."""
    n, c = x.shape[:2]
    x = x.reshape(n, c, -1).transpose(0, 1).to(F64)
    d2 = (x[:, :, None, :] - x[:, None, :, :]).square().sum(-1)
    iu = torch.triu_indices(n, n, offset=1)
    h = torch.eye(n, dtype=F64) - 1.0 / n
    kbars, s2s = [], []
    for k in range(c):
        pairs = d2[k][iu[0], iu[1]]
        pairs = pairs[pairs > 0]
        s2 = float(pairs.sort().values[(pairs.numel() - 1) // 2]) if pairs.numel() else 1.0
        kc = h @ torch.exp(-d2[k] / (2 * s2)) @ h
        kbars.append(kc / kc.norm() if kc.norm() > 1e-9 else torch.zeros_like(kc))
        s2s.append(s2)
    return torch.stack(kbars), torch.tensor(s2s, dtype=F64)


def _sparse_features(n=64, seed=0):
    """ReLU maps with large activations, silent (all zero) on most samples: channel 0 on 48 of 64,
    channel 1 on all but two, channel 2 on all (dead), channel 3 never, channel 4 on all but one."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    x = torch.relu(40.0 + 8.0 * torch.randn(n, 5, 16, generator=g, dtype=F64))
    silent = torch.zeros(n, 5, dtype=torch.bool)
    silent[torch.randperm(n, generator=g)[:48], 0] = True
    silent[2:, 1] = True
    silent[:, 2] = True
    silent[1:, 4] = True
    x[silent] = 0.0
    x[:, 0] += 10.0 * (labels == 1).to(F64)[:, None] * (~silent[:, 0]).to(F64)[:, None]
    return x, labels


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sparse_channels_match_exact_distances(dtype):
    """Identical (silent) maps are 0 apart whatever the rounding of ||a||^2 + ||b||^2 - 2 a.b, so the
    bandwidth, Q and R match an implementation that sums squared differences pair by pair
    (METHOD.md section 2, "Bandwidth")."""
    x, labels = _sparse_features()
    kbar, s2 = _exact_kbar(x)
    lbar = _reference_lbar(labels, 4)
    feats = x.to(dtype)
    kern = ib._GaussianKernels(feats.reshape(64, 5, -1).transpose(0, 1).contiguous(),
                               source_eps=torch.finfo(dtype).eps, max_bytes=ib.DEFAULT_MAX_BYTES)
    live = torch.tensor([True, True, False, True, True])
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close((-0.5 / kern.scale.double())[live], s2[live], rtol=rtol, atol=0)
    st = ib.feature_statistics(feats, labels, 4, dtype=dtype)
    Q = torch.einsum("aij,bij->ab", kbar, kbar)
    R = torch.einsum("aij,cij->ac", kbar, lbar)
    atol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(st.redundancy.double(), Q, rtol=0, atol=atol)
    torch.testing.assert_close(st.relevance.double(), R, rtol=0, atol=atol)
    assert st.dead.tolist() == [False, False, True, False, False]
