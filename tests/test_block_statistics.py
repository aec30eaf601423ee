"""Block statistics (METHOD.md section 2b): the estimator against a direct numpy implementation, the
known answer B = S = N, M = 1 (section 2's exact statistics), the streamed pass's memory, and the
options refused with a clear error."""
import os
import types

import numpy as np
import pytest
import torch
from torch import nn

from paperprune import prune
from paperprune.ib import block_partitions, layer_statistics
from paperprune.utils import PaperpruneError


class Probe(nn.Module):
    """Observes its input as the layer's features (module "feat"); logits = a fixed linear map."""

    def __init__(self, channels, size, classes):
        super().__init__()
        self.feat = nn.Identity()
        self.fc = nn.Linear(channels * size * size, classes)

    def forward(self, x):
        return self.fc(self.feat(x).flatten(1))


def _centred(k):
    h = np.eye(len(k)) - 1.0 / len(k)
    return h @ k @ h


def _median_s2(x):
    """Section 2's bandwidth on samples x (S, D): the lower median of the squared distances of
    pairs whose maps differ, exactly; None when every pair is identical."""
    iu, ju = np.triu_indices(len(x), 1)
    d = ((x[iu] - x[ju]) ** 2).sum(1)
    d = d[np.any(x[iu] != x[ju], axis=1)]
    return None if d.size == 0 else np.sort(d)[(d.size - 1) // 2]


def _direct(x, o, y, num_classes, batches):
    """Section 2b written out: x (N, C, D) channel maps, o (N, P) the response, y (N,) labels."""
    n, c, _ = x.shape
    stacks = [x[:, k] for k in range(c)] + [o]
    s2 = [None] * len(stacks)
    for indices, _ in batches:                      # the first batch on which each channel varies
        for k, z in enumerate(stacks):
            if s2[k] is None:
                s2[k] = _median_s2(z[indices.numpy()])
    vectors = [[] for _ in stacks]
    labels = [[] for _ in range(num_classes)]
    for indices, parts in batches:
        for block in indices.numpy()[parts.numpy()].reshape(-1, parts.shape[2]):
            for k, z in enumerate(stacks):
                zb = z[block]
                d = ((zb[:, None] - zb[None]) ** 2).sum(2)
                vectors[k].append(_centred(np.exp(-d / (2 * s2[k])) if s2[k] else np.ones_like(d)).ravel())
            for cl in range(num_classes):
                one = (y[block] == cl).astype(float)
                labels[cl].append(_centred(np.outer(one, one)).ravel())
    a = np.array([np.concatenate(v) for v in vectors])      # (C + 1, total block entries)
    ell = np.array([np.concatenate(v) for v in labels])
    g, gy = a @ a.T, a @ ell.T
    norms = np.sqrt(np.diag(g))
    q = g[:c, :c] / np.outer(norms[:c], norms[:c])
    r = gy[:c] / np.outer(norms[:c], np.sqrt((ell ** 2).sum(1)))
    return q, r, g[:c, c] / (norms[:c] * norms[c])


def test_block_estimator_matches_a_direct_numpy_implementation():
    """Blocks of 4 in batches of 12, two partitions, three classes. Channel 1 is silent (all zero) on
    half the samples, so the bandwidth's exact-zero rule matters; channel 2 is silent on the whole first
    batch, so its bandwidth comes from the next batch."""
    n, c, size, k = 48, 3, 3, 3
    y = torch.arange(n) % k
    batches = block_partitions(y, k, block_size=4, permutations=2, batch_size=12, seed=5)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, size, size, generator=gen, dtype=torch.float64)
    x[::2, 1] = 0.0
    x[batches[0][0], 2] = 0.0
    model = Probe(c, size, k).double()
    layer = types.SimpleNamespace(name="feat", observe="feat")
    st = layer_statistics(model, [layer], x, y, k, response="logits", statistics="block", block_size=4,
                          permutations=2, batch_size=12, seed=5, dtype=torch.float64)["feat"]
    with torch.no_grad():
        logits = model(x).numpy()
    q, r, out = _direct(x.reshape(n, c, -1).numpy(), logits, y.numpy(), k, batches)
    np.testing.assert_allclose(st.redundancy.numpy(), q, atol=1e-12)
    np.testing.assert_allclose(st.relevance.numpy(), r, atol=1e-12)
    np.testing.assert_allclose(st.output_relevance.numpy(), out, atol=1e-12)
    assert not st.dead.any() and st.missing_classes == [] and st.num_samples == n


def test_partitions_are_class_stratified_seeded_and_cover_every_sample():
    y = torch.arange(60) % 3
    batches = block_partitions(y, 3, block_size=5, permutations=3, batch_size=15, seed=1)
    assert [tuple(p.shape) for _, p in batches] == [(3, 3, 5)] * 4
    order = torch.cat([i for i, _ in batches])
    assert sorted(order.tolist()) == list(range(60))
    for indices, parts in batches:
        assert torch.bincount(y[indices], minlength=3).tolist() == [5, 5, 5]    # stratified
        for rows in parts:
            assert sorted(rows.flatten().tolist()) == list(range(15))           # a partition of the batch
    again = block_partitions(y, 3, block_size=5, permutations=3, batch_size=15, seed=1)
    other = block_partitions(y, 3, block_size=5, permutations=3, batch_size=15, seed=2)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(batches, other))


def _conv_model(k):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 4, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, k)).double()
    with torch.no_grad():
        model[1].bias[4] = -100.0          # channel 4 is silent on every sample: dead
    return model.eval()


@pytest.mark.parametrize("response", ["logits", "consumer", None])
def test_one_block_holding_every_sample_is_the_exact_estimator(response):
    n, k = 30, 3
    model = _conv_model(k)
    layer = types.SimpleNamespace(name="a", observe="2", consumer="3")
    x = torch.randn(n, 2, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(n) % k
    exact = layer_statistics(model, [layer], x, y, k, response=response, dtype=torch.float64)["a"]
    block = layer_statistics(model, [layer], x, y, k, response=response, dtype=torch.float64, statistics="block",
                             block_size=n, permutations=1, batch_size=n)["a"]
    for name in ("redundancy", "relevance", "output_relevance"):
        torch.testing.assert_close(getattr(block, name), getattr(exact, name), atol=1e-12, rtol=0)
    assert block.dead.tolist() == exact.dead.tolist() == [False] * 4 + [True]


def _peak_growth(run) -> int:
    """Peak resident memory (bytes) of run() above the resident memory before it (Linux VmHWM, reset)."""
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS:")
    run()
    return status("VmHWM:") - before


def _streamed_pass_memory() -> None:
    """8 channels of 64 x 64 maps (128 KiB per sample). Block statistics at N = 800 peak no higher than
    at N = 80 (within 4 MiB); the exact statistics, which hold N x the features, grow by more than
    30 MiB from N = 80 to 240: the measurement sees what block statistics avoid."""
    import ctypes

    try:
        open("/proc/self/clear_refs", "w").close()
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        print("SKIP needs Linux's resettable peak RSS (/proc/self/clear_refs) and glibc")
        return
    # a fixed mmap threshold: freed buffers of >= 1 MiB go back to the system at once, so the resident
    # peak follows the live tensors instead of glibc's heap history (M_MMAP_THRESHOLD = -3)
    libc.mallopt(-3, 1 << 20)
    k = 4
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, k)).eval()
    layer = types.SimpleNamespace(name="c", observe="1")
    data = {n: (torch.randn(n, 1, 64, 64, generator=torch.Generator().manual_seed(n)), torch.arange(n) % k)
            for n in (80, 240, 800)}

    def growth(n, **options):
        return _peak_growth(lambda: layer_statistics(model, [layer], *data[n], k, response=None, **options))

    block = dict(statistics="block", block_size=20, permutations=3)
    growth(80, **block)                                  # warm-up: first-call allocations
    small, large = growth(80, **block), growth(800, **block)
    assert large - small < 4 * 2**20, (small, large)
    exact_small, exact_large = growth(80), growth(240)
    assert exact_large - exact_small > 30 * 2**20, (exact_small, exact_large)


def test_the_streamed_pass_holds_blocks_not_the_calibration_features():
    """`_streamed_pass_memory` in a fresh one-thread process: a process's resident peak carries the
    history of every test before it (freed arenas, thread pools), which hides what one call allocates."""
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    code = (f"import sys; sys.path.insert(0, {str(here)!r}); import test_block_statistics as t; "
            "t._streamed_pass_memory(); print('OK')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    if "SKIP" in done.stdout:
        pytest.skip(done.stdout.strip())
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]


# ----------------------------------------------------------------------------- options

def _tiny_prune(**options):
    from paperprune.lab.tutorial import PlantedNet
    from paperprune.lab.data import class_balanced_batch, load_tensors

    x, y = class_balanced_batch(*load_tensors("synthetic", "train"), 20, seed=0)
    images = x.float() / 255
    model = PlantedNet(images, y)
    from paperprune.models import PrunableLayer

    layers = [PrunableLayer("conv", "conv", "relu", "classifier")]
    return prune(model, [(images, y)], flops_reduction=0.5, layers=layers, omega=1, max_iter=200,
                 progress=False, **options)


@pytest.mark.parametrize("options, match", [
    (dict(statistics="blocks"), r"statistics='blocks'.*'exact'.*'block'"),
    (dict(block_size=20), r"block_size=20 apply to statistics='block' only"),
    (dict(permutations=2), r"permutations=2 apply to statistics='block' only"),
    (dict(statistics="block", block_size=1), r"block_size=1 .* must be >= 2"),
    (dict(statistics="block", permutations=0), r"permutations=0 .* must be >= 1"),
    (dict(statistics="block", block_size=2.5), r"block_size .*=2.5 is not an integer"),
    (dict(statistics="block", block_size=7),
     r"block_size=7 .* must divide the 180 calibration samples .*\(4, 5, 6, 9\)"),
    (dict(statistics="block", method="l1"), r"statistics='block' applies to the lasso criteria"),
])
def test_bad_statistics_options_are_refused(options, match):
    with pytest.raises(PaperpruneError, match=match):
        _tiny_prune(**{"method": "classwise", "samples_per_class": 20, **options})


@pytest.mark.filterwarnings("ignore:classwise. the solver stopped")
def test_prune_records_the_statistics_it_used():
    _, report = _tiny_prune(method="classwise", statistics="block", block_size=20, samples_per_class=20)
    assert {k: report.criterion[k] for k in ("statistics", "block_size", "permutations")} == \
        {"statistics": "block", "block_size": 20, "permutations": 3}
    _, report = _tiny_prune(method="classwise", samples_per_class=20)
    assert report.criterion["statistics"] == "exact" and report.criterion["block_size"] is None


def test_run_config_and_cli_take_the_options():
    from dataclasses import fields

    from paperprune.lab.cli import build_parser
    from paperprune.lab.experiment import RunConfig

    args = build_parser().parse_args(["run", "--dataset", "fashion-mnist", "--arch", "resnet56", "--method", "sglp",
                                      "--flops-reduction", "0.5", "--pretrain-epochs", "1", "--out", "x",
                                      "--statistics", "block", "--block-size", "10"])
    config = RunConfig(**{f.name: getattr(args, f.name) for f in fields(RunConfig)})
    config.validate()
    assert (config.statistics, config.block_size, config.permutations) == ("block", 10, 3)
    for change, match in ((dict(block_size=10), "apply to statistics='block' only"),
                          (dict(statistics="block", method="hrank"), "not to --method hrank")):
        bad = RunConfig(**{**dict(dataset="fashion-mnist", arch="resnet56", method="sglp", flops_reduction=0.5,
                                  pretrain_epochs=1), **change})
        with pytest.raises(PaperpruneError, match=match):
            bad.validate()


@pytest.mark.filterwarnings("ignore:classwise. the solver stopped")
def test_compare_selections_gives_the_statistics_options_to_the_lasso_criteria_only():
    from paperprune.compare import compare_selections
    from paperprune.lab.data import class_balanced_batch, load_tensors
    from paperprune.models import PrunableLayer
    from paperprune.lab.tutorial import PlantedNet

    x, y = class_balanced_batch(*load_tensors("synthetic", "train"), 20, seed=0)
    images = x.float() / 255
    cmp = compare_selections(PlantedNet(images, y), [(images, y)], methods=["l1", "classwise"], flops_reduction=0.5,
                             layers=[PrunableLayer("conv", "conv", "relu", "classifier")], samples_per_class=20,
                             omega=1, max_iter=200, statistics="block", block_size=20, progress=False)
    assert cmp.reports["classwise"].criterion["statistics"] == "block"
    assert "statistics" not in cmp.reports["l1"].criterion


def test_bench_imagenet_scale_records_a_run_stopped_by_its_time_limit_as_interrupted(tmp_path, monkeypatch):
    """benchmarks/bench_imagenet_scale.py: a run stopped by --time-limit (here: after its second solve) is a row
    labelled interrupted, with the solves it finished and no reduction; it is tabled apart from finished runs."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    from paperprune import lasso

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(folder))
    spec = importlib.util.spec_from_file_location("bench_imagenet_scale", folder / "bench_imagenet_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls = []
    original = lasso.solve_sglp

    def solve(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise bench.TimeLimit  # what the alarm raises when the limit is reached
        return original(*args, **kwargs)

    monkeypatch.setattr(lasso, "solve_sglp", solve)
    out = tmp_path / "scale.json"
    args = ["--classes", "6", "--size", "32", "--per-class", "2", "--methods", "sglp", "--knn", "2",
            "--block-size", "4", "--time-limit", "600", "--out", str(out)]
    assert bench.main(args) == 0
    (row,) = json.loads(out.read_text())
    assert row["wall_s"] is None and row["interrupted_after_s"] > 0
    assert row["solver_calls"] == len(row["solves"]) == 2 and "macs_reduction" not in row
    assert row["samples"] == 12 and row["method"] == "sglp"
    text = out.with_suffix(".md").read_text()
    stopped = text.split("Runs stopped before they finished")
    assert len(stopped) == 2 and "| sglp | 6 | 32 | 12 |" in stopped[1] and "| sglp |" not in stopped[0]
    if row["stages"]["bisection"]:  # its finished bisection steps, as lam_hi / x (seconds), the first lam_hi itself
        assert "| 1 (" in stopped[1]
    noted = bench.markdown([row | {"note": "stopped by hand"}])
    assert f"- {row['date']}: stopped by hand" in noted and "stopped by hand" not in text
