"""The latency model and the latency budget, with a deterministic fake timing function.

The fake costs each conv ceil(in/P) * ceil(out/P) * output positions * kernel area (a staircase of
period P in both widths, separable, so the table's prediction is exact) and each linear in * out (small),
plus a fixed overhead for the whole model. No test asserts a real timing.
"""
import copy
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import paperprune
from paperprune.criteria import ScoreCriterion
from paperprune.latency import GRID_POINTS, LatencyModel, width_grid
from paperprune.pipeline import resolve_layers
from paperprune.select import select_channels
from paperprune.surgery import MacsPredictor, prune_channels
from paperprune.utils import PaperpruneError

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = {"features.0": "features.2", "features.3": "features.5", "features.6": "features.8"}


class Tiny(nn.Module):
    def __init__(self, widths=(16, 32, 64)):
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            nn.Conv2d(1, a, 3, padding=1, bias=False), nn.BatchNorm2d(a), nn.ReLU(),
            nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(),
            nn.Conv2d(b, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c, 10)

    def forward(self, x):
        return self.classifier(self.features(x))


class FakeTimer:
    """Deterministic 'microseconds' from the shapes a module's convs and linears see; counts its calls."""

    def __init__(self, period=8):
        self.period, self.calls = period, 0

    def __call__(self, module, example, mode):
        self.calls += 1
        cost = [10.0 if isinstance(module, Tiny) else 0.0]
        p = self.period

        def hook(m, inputs, output):
            if isinstance(m, nn.Conv2d):
                area = output.shape[2] * output.shape[3] * math.prod(m.kernel_size)
                cost[0] += math.ceil(m.in_channels / p) * math.ceil(m.out_channels / p) * area * 0.01
            else:
                cost[0] += m.in_features * m.out_features * 1e-4
        hooks = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        with torch.no_grad():
            module.eval()(example[:1])
        for h in hooks:
            h.remove()
        return cost[0] * example.shape[0] * (0.5 if mode == "deployed" else 1.0)


class FixedScores(ScoreCriterion):
    name = "fixed"

    def __init__(self, scores):
        super().__init__()
        self._given = scores

    def channel_scores(self, model, layers, calibration):
        return self._given


def build(tmp_path, timer, model=None, **kw):
    model = model or Tiny().eval()
    layers = resolve_layers(model, LAYERS)
    kw = {"batch_size": 4, "mode": "eager", "device": "cpu", "cache_dir": tmp_path, "progress": False, **kw}
    return model, layers, LatencyModel.build(model, layers, (1, 8, 8), timer=timer, **kw)


def random_widths(gen, full):
    return {n: int(gen.integers(1, c + 1)) for n, c in full.items()}


def test_width_grid_pairs_and_bounds():
    g = GRID_POINTS
    assert width_grid(g, paired=False) == list(range(1, g + 1))
    assert width_grid(4 * g, paired=True) == sorted({1, 2} | {4 * k for k in range(1, g + 1)}
                                                    | {4 * k + 1 for k in range(1, g)})
    assert len(width_grid(64 * g, paired=False)) == g + 1


@pytest.mark.parametrize("period", [1, 8])
def test_prediction_matches_the_fake_whole_model_exactly(tmp_path, period):
    timer = FakeTimer(period)
    model, layers, latency = build(tmp_path, timer)
    assert latency.full_us == pytest.approx(timer(model, torch.zeros(4, 1, 8, 8), "eager"))
    gen = np.random.default_rng(0)
    assignments = [random_widths(gen, latency.full_widths) for _ in range(10)]
    for row in latency.errors(model, layers, assignments, timer=timer, progress=False):
        assert abs(row["relative_error"]) < 1e-9


class FusingTimer(FakeTimer):
    """FakeTimer, but the whole model costs 0.8 of its units alone (a compiler fusing across them)."""

    def __call__(self, module, example, mode):
        whole = isinstance(module, Tiny)
        cost = super().__call__(module, example, mode) - (10.0 * example.shape[0] if whole else 0.0)
        return 0.8 * cost if whole else cost


def test_a_whole_model_faster_than_its_units_scales_them(tmp_path):
    """No negative rest: the units count at the whole model's share of their sum, which is exact here
    (an additive rest of -0.2 x the full units would under-predict every pruned model)."""
    timer = FusingTimer(8)
    model, layers, latency = build(tmp_path, timer)
    assert latency.rest_us == 0.0 and latency.unit_scale == pytest.approx(0.8)
    gen = np.random.default_rng(1)
    assignments = [random_widths(gen, latency.full_widths) for _ in range(10)]
    for row in latency.errors(model, layers, assignments, timer=timer, progress=False):
        assert abs(row["relative_error"]) < 1e-9


def test_bisection_meets_the_latency_target(tmp_path):
    timer = FakeTimer(1)
    model, layers, latency = build(tmp_path, timer)
    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(c, generator=gen, dtype=torch.float64) for n, c in latency.full_widths.items()}
    crit = FixedScores(scores)
    crit.prepare(None, None, None)
    macs = MacsPredictor(model, layers, (1, 8, 8))
    for target in (0.3, 0.5):
        sel = select_channels(crit, macs, target, cost=latency, target_name="latency_reduction", omega=2,
                              progress=False)
        assert abs(sel.cost / sel.base_cost - (1 - target)) <= 0.01
        cut = prune_channels(Tiny().eval(), layers, sel.keep, (1, 8, 8))
        assert timer(cut, torch.zeros(4, 1, 8, 8), "eager") == pytest.approx(sel.cost)
        assert sel.macs == macs(sel.widths)[0]


@pytest.mark.parametrize("period", [1, 4, 8, 16])
def test_rounding_picks_the_multiples_the_fake_table_favours(tmp_path, period):
    model, layers, latency = build(tmp_path, FakeTimer(period))
    # a staircase shows only where the grid's step (between paired widths) divides its period
    step = {n: width_grid(c, paired=False)[1] if c > GRID_POINTS else 1 for n, c in latency.full_widths.items()}
    expected = {n: (period if period < c and period % step[n] == 0 else 1) for n, c in latency.full_widths.items()}
    assert expected["features.0"] == (period if period < 16 else 1)
    assert latency.multiples() == expected


def test_rounded_selection_fills_multiples_by_the_criterion_ranking(tmp_path):
    model, layers, latency = build(tmp_path, FakeTimer(8))
    multiples = latency.multiples()
    gen = torch.Generator().manual_seed(1)
    scores = {n: torch.rand(c, generator=gen, dtype=torch.float64) for n, c in latency.full_widths.items()}
    crit = FixedScores(scores)
    crit.prepare(None, None, None)
    sel = select_channels(crit, MacsPredictor(model, layers, (1, 8, 8)), 0.5, cost=latency, round_to=multiples,
                          target_name="latency_reduction", omega=2, tolerance=0.05, progress=False)
    for name, idx in sel.keep.items():
        assert idx.numel() % multiples[name] == 0 or idx.numel() == latency.full_widths[name]
        # the kept channels are the best-scored ones of the layer
        assert set(idx.tolist()) == set(torch.argsort(-scores[name])[:idx.numel()].tolist())


def test_the_cache_is_reused_and_invalidated_by_its_key(tmp_path):
    timer = FakeTimer(8)
    _, _, first = build(tmp_path, timer)
    measured = timer.calls
    assert measured > 1
    _, _, again = build(tmp_path, timer)
    assert timer.calls == measured and again.key_hash == first.key_hash
    assert again.predict({"features.3": 9}) == first.predict({"features.3": 9})
    for change in ({"batch_size": 8}, {"mode": "deployed"}):
        before = timer.calls
        _, _, other = build(tmp_path, timer, **change)
        assert timer.calls > before and other.key_hash != first.key_hash
    _, _, wider = build(tmp_path, timer, model=Tiny((16, 32, 48)).eval())
    assert wider.key["structure"] != first.key["structure"]
    assert len(list(tmp_path.glob("*.json"))) == 4


def test_the_cache_keeps_tables_measured_with_and_without_huge_pages_apart(tmp_path, monkeypatch):
    timer = FakeTimer(8)
    monkeypatch.setattr(paperprune.latency, "huge_pages_available", lambda: False)
    _, _, without = build(tmp_path, timer)
    monkeypatch.setattr(paperprune.latency, "huge_pages_available", lambda: True)
    before = timer.calls
    _, _, with_them = build(tmp_path, timer)
    assert (without.key["huge_pages"], with_them.key["huge_pages"]) == (False, True)
    assert timer.calls > before and with_them.key_hash != without.key_hash


def _mapping_of(address: int) -> tuple[int, int, int]:
    """(start, end, AnonHugePages in KiB) of the mapping of this process that holds `address`, from /proc/self/smaps."""
    found = None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
            found = (start, end) if start <= address < end else None
        elif found and head == "AnonHugePages:":
            return (*found, int(line.split()[1]))
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="Linux's /proc/self/smaps is needed")
def test_measured_copies_are_packed_into_one_mapping_on_huge_pages():
    """`_copy_to` on a CPU: the same outputs and state, every parameter and buffer inside one fresh mapping, which
    the kernel backs with huge pages where it gives them (a 13 MiB model spans several 2 MiB pages)."""
    from paperprune.latency import _copy_to, huge_pages_available

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 512, 3), nn.BatchNorm2d(512), nn.ReLU(), nn.Conv2d(512, 700, 3)).eval()
    copied = _copy_to(model, "cpu")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(copied(x), model(x))
    for (name, a), b in zip(model.state_dict().items(), copied.state_dict().values()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
    tensors = list(copied.parameters()) + list(copied.buffers())
    start, end, huge_kib = _mapping_of(tensors[0].data_ptr())
    assert all(start <= t.data_ptr() and t.data_ptr() + t.numel() * t.element_size() <= end for t in tensors)
    assert all(t.data_ptr() % 64 == 0 for t in tensors)
    if huge_pages_available():
        assert huge_kib >= 2048


def test_building_a_cpu_table_without_huge_pages_warns_how_to_get_them(tmp_path, monkeypatch):
    timer = FakeTimer(8)
    monkeypatch.setattr(paperprune.latency, "measure_us", timer)  # the default timing function, faked
    monkeypatch.setattr(paperprune.latency, "huge_pages_available", lambda: False)
    with pytest.warns(UserWarning, match="echo madvise"):
        LatencyModel.build(Tiny().eval(), resolve_layers(Tiny(), LAYERS), (1, 8, 8), batch_size=4, cache_dir=tmp_path,
                           progress=False)
    monkeypatch.setattr(paperprune.latency, "huge_pages_available", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LatencyModel.build(Tiny().eval(), resolve_layers(Tiny(), LAYERS), (1, 8, 8), batch_size=4, cache_dir=tmp_path,
                           progress=False)


@pytest.fixture
def batches():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 8, 8, generator=gen)
    return [(x, torch.arange(40) % 10)]


def test_tiny_model_prunes_to_a_latency_budget_on_cpu(tmp_path, monkeypatch, batches):
    """The table from the fake timer (a table timed on a loaded machine can put a jump where the bisection
    cannot meet the target); the candidates measured for real, beside the base."""
    import warnings

    import paperprune.latency

    monkeypatch.setenv("PAPERPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(paperprune.latency, "measure_us", FakeTimer(1))
    monkeypatch.setattr(paperprune.latency, "PREDICTED_TOLERANCE", 0.015)  # what this tiny model's channels allow

    model = Tiny((32, 64, 64)).eval()
    with warnings.catch_warnings(record=True) as caught:  # real timings of a tiny model: it may miss
        warnings.simplefilter("always")
        pruned, report = paperprune.prune(model, batches, method="l1", latency_reduction=0.3, latency_mode="eager",
                                          latency_batch_size=8, samples_per_class=4, layers=LAYERS, tolerance=0.05,
                                          device="cpu", progress=False)
    lat = report.latency
    misses = [w for w in caught if "latency_reduction=0.300 missed" in str(w.message)]
    assert len(misses) == lat["missed"] and ("MISSED" in report.summary()) is lat["missed"]
    assert report.flops_reduction_target is None
    assert lat["target_reduction"] == 0.3 and lat["batch_size"] == 8 and lat["mode"] == "eager"
    steps = lat["steps"]  # the bisection on the prediction, then corrected by measured candidates
    assert 1 <= len(steps) <= 3 and steps[0]["asked_predicted"] == 0.3
    for step in steps:  # PREDICTED_TOLERANCE, finer than this prune's tolerance of 0.05
        assert abs(step["predicted_reduction"] - step["asked_predicted"]) <= 0.015
    measured = [step for step in steps if "miss" in step]
    nearest = min(measured, key=lambda step: abs(step["measured_reduction"] - 0.3))
    assert nearest["chosen"] and lat["chosen_step"] == nearest["step"]
    assert lat["predicted_reduction"] == pytest.approx(nearest["predicted_reduction"])
    assert lat["measured_reduction"] == nearest["measured_reduction"]
    assert lat["missed"] is (abs(nearest["miss"]) > lat["tolerance"])
    assert lat["macs_after"] == report.macs_after and lat["measured_after_us"] > 0
    assert lat["prediction_error"] == pytest.approx(lat["predicted_after_us"] / lat["measured_after_us"] - 1)
    assert list(tmp_path.glob("latency/*.json"))[0].stem.endswith(lat["table_key"])
    assert pruned(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert "latency (eager, batch 8)" in report.summary()
    # the record round-trips through a run record (run.json's latency_budget)
    from test_record import _current

    from paperprune.lab.record import RunRecord, read_run, write_run

    record = _current()
    record["latency_budget"] = lat
    write_run(tmp_path / "run.json", RunRecord.from_dict(record))
    assert read_run(tmp_path / "run.json").latency_budget == json.loads(json.dumps(lat))


def test_a_calibration_step_the_fine_tolerance_cannot_meet_takes_prunes_own(tmp_path, monkeypatch, batches):
    """Where no kept set lies within PREDICTED_TOLERANCE of the asked prediction, the step is selected to
    prune's `tolerance` instead of failing."""
    import paperprune.latency

    monkeypatch.setenv("PAPERPRUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(paperprune.latency, "measure_us", FakeTimer(1))
    monkeypatch.setattr(paperprune.latency, "PREDICTED_TOLERANCE", 1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # real timings of a tiny model: it may miss
        _, report = paperprune.prune(Tiny((32, 64, 64)).eval(), batches, method="l1", latency_reduction=0.3,
                                     latency_batch_size=8, samples_per_class=4, layers=LAYERS, tolerance=0.05,
                                     device="cpu", progress=False)
    steps = report.latency["steps"]
    assert steps and all(0 < abs(s["predicted_reduction"] - s["asked_predicted"]) <= 0.05 for s in steps)


@pytest.mark.parametrize("kwargs, message", [
    ({"latency_reduction": 1.5}, r"latency_reduction=1\.5 is not a fraction in \(0, 1\)"),
    ({"latency_reduction": 0.0}, r"latency_reduction=0\.0 is not a fraction"),
    ({"latency_reduction": 0.4, "latency_mode": "fast"}, r"latency_mode='fast' is not one of 'eager', 'deployed'"),
    ({"latency_reduction": 0.4, "flops_reduction": 0.5}, r"flops_reduction=0\.5 and latency_reduction=0\.4"),
    ({"latency_reduction": 0.4, "latency_batch_size": 0}, r"latency_batch_size=0 must be an integer >= 1"),
    ({"latency_rounding": True}, r"latency_rounding=True only applies with a latency budget"),
])
def test_bad_budgets_are_clear_errors(tmp_path, monkeypatch, batches, kwargs, message):
    monkeypatch.setenv("PAPERPRUNE_CACHE", str(tmp_path))
    with pytest.raises(PaperpruneError, match=message):
        paperprune.prune(Tiny().eval(), batches, method="l1", layers=LAYERS, progress=False, **kwargs)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flags, message", [
    (["--latency-reduction", "1.5"], r"latency_reduction=1\.5 is not a fraction"),
    (["--latency-reduction", "0.4", "--flops-reduction", "0.5"],
     r"flops_reduction=0\.5 \(--flops-reduction\) and latency_reduction=0\.4 \(--latency-reduction\) exclude"),
    (["--latency-reduction", "0.4", "--latency-mode", "fast"], r"latency_mode='fast' is not one of"),
    ([], r"no budget: pass --flops-reduction F or --latency-reduction L"),
])
def test_run_cli_validates_the_latency_budget_before_writing(tmp_path, capsys, flags, message):
    from paperprune.lab.cli import main

    out = tmp_path / "run"
    rc = main(["run", "--dataset", "synthetic", "--arch", "resnet56", "--method", "l1", "--pretrain-epochs", "1",
               "--device", "cpu", "--out", str(out), *flags])
    assert rc == 2
    assert re.search(message, capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.slow
def test_deployed_measuring_leaves_torch_compile_usable():
    """Why measure_us resets dynamo (latency module docstring): every compile of the process counts against
    one frame's accumulated_recompile_limit, even after the compiled modules are freed. Here the limit is 2:
    three prepare_for_inference calls fail on the third; three deployed measurements do not, and a later
    torch.compile of the process still works."""
    import torch._dynamo

    from paperprune.deploy import check_compiler, prepare_for_inference
    from paperprune.latency import measure_us

    try:
        check_compiler()
    except PaperpruneError as e:
        pytest.skip(str(e))

    def unit(c):
        return nn.Sequential(nn.Conv2d(4, c, 3), nn.BatchNorm2d(c), nn.ReLU()).eval()

    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(accumulated_recompile_limit=2):
        with pytest.raises(PaperpruneError, match="FailOnRecompileLimitHit"):
            for c in (4, 5, 6):
                prepare_for_inference(unit(c), x)
        torch._dynamo.reset()
        assert all(measure_us(unit(c), x, "deployed", repeats=1, warmup=0) > 0 for c in (4, 5, 6))
        prepare_for_inference(unit(7), x)
    torch._dynamo.reset()


@pytest.mark.slow
def test_deployed_latency_table_measures_linear_units():
    """A deployed latency table times every unit compiled on its own, a linear layer on its (B, C) input
    included (VGG-16's classifier): the deployed preparation of a lone linear unit is not refused for not
    being a network on images, and it computes what the eager unit does."""
    from paperprune.deploy import check_compiler, prepare_for_inference
    from paperprune.latency import Unit, measure_us

    try:
        check_compiler()
    except PaperpruneError as e:
        pytest.skip(str(e))
    unit = Unit(kind="linear", in_channels=16, out_channels=8, bias=True)
    module, x = unit.module(12, 6).eval(), unit.example(4, 12, "cpu", "deployed")
    assert x.shape == (4, 12) and measure_us(module, x, "deployed", repeats=1, warmup=0) > 0
    with torch.inference_mode():
        torch.testing.assert_close(prepare_for_inference(module, x)(x), module(x))
    torch._dynamo.reset()
    with pytest.raises(PaperpruneError, match="float tensor"):
        prepare_for_inference(module, torch.ones(4, 12, dtype=torch.long))


def test_latency_model_refuses_widths_that_reach_grouped_convs(tmp_path):
    """MobileNet's pruned widths reach its depthwise convs, which the table does not time: a clear refusal
    pointing to the MACs budget (docs/usage.md, "Which networks")."""
    import torchvision

    from paperprune.discover import discover

    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    layers = discover(model, (3, 32, 32)).layers
    with pytest.raises(PaperpruneError, match=r"times Conv2d \(groups=1.*'features\.1\.conv\.0\.0'.*flops_reduction="):
        LatencyModel.build(model, layers, (3, 32, 32), timer=lambda *a: 1.0, cache_dir=tmp_path, progress=False)


class Counting(nn.Module):
    """A model whose forwards are counted (in a class attribute: the measurement runs copies)."""

    forwards: list = []

    def __init__(self, name):
        super().__init__()
        self.name, self.lin = name, nn.Linear(2, 2)

    def forward(self, x):
        Counting.forwards.append(self.name)
        return self.lin(x)


def test_side_by_side_is_the_median_of_interleaved_rounds_after_warmup():
    """One preempted forward (a 10x spike) and one impossibly fast one leave both medians alone; the
    warm-up forwards are run and not timed; the two models alternate which goes first."""
    from paperprune.latency import measure_side_by_side

    script = {"base": iter([100.0, 1000.0, 101.0, 99.0, 100.0]), "pruned": iter([60.0, 61.0, 5.0, 59.0, 60.0])}
    order = []

    def timer(module, example):
        order.append(module.name)
        module(example)
        return next(script[module.name])

    Counting.forwards = []
    m = measure_side_by_side(Counting("base"), Counting("pruned"), torch.zeros(4, 2), "eager", rounds=5, warmup=2,
                             max_rounds=5, timer=timer)
    per_round = [1 - a / b for b, a in zip([100, 1000, 101, 99, 100], [60, 61, 5, 59, 60])]
    assert (m["before_us"], m["after_us"]) == (100.0, 60.0) and m["reduction"] == pytest.approx(1 - 59 / 99)
    assert Counting.forwards[:4] == ["base", "base", "pruned", "pruned"] and len(Counting.forwards) == 4 + 10
    assert order == ["base", "pruned", "pruned", "base"] * 2 + ["base", "pruned"]
    assert m["reduction_range"] == pytest.approx([min(per_round), max(per_round)]) and m["rounds"] == 5


def test_median_interval_is_the_smallest_95_percent_order_statistic_interval():
    """Against the binomial sums written out: x_(j) <= median <= x_(n+1-j) holds with probability
    1 - 2 P(Bin(n, 1/2) < j); the interval uses the largest j keeping that >= 95% (j = 1 below n = 9)."""
    import math

    from paperprune.latency import median_interval

    for n in range(1, 80):
        below = [sum(math.comb(n, i) for i in range(j)) / 2 ** n for j in range(n + 1)]
        j = max([1] + [j for j in range(1, (n + 1) // 2 + 1) if 1 - 2 * below[j] >= 0.95])
        values = list(range(n, 0, -1))  # x_(k) = k, given unsorted
        assert median_interval(values) == (j, n + 1 - j), n


def test_side_by_side_adds_rounds_until_the_median_is_known_to_the_precision():
    """Rounds whose reductions scatter (0.40 +- 0.10, deterministic) are continued past the minimum until
    the interval of the median lies within `precision` of it, or `max_rounds`; steady rounds stop at the
    minimum."""
    from paperprune.latency import measure_side_by_side, median_interval

    def scattered(spread):
        noise = iter(np.tile([0.0, spread, -spread, 0.5 * spread, -0.5 * spread], 40))

        def timer(module, example):
            return 100.0 if module.name == "base" else 100.0 * (0.6 - next(noise))
        return timer

    steady = measure_side_by_side(Counting("base"), Counting("pruned"), torch.zeros(4, 2), "eager", rounds=7,
                                  warmup=0, timer=scattered(0.0))
    assert steady["rounds"] == 7 and steady["reduction"] == pytest.approx(0.4)
    noisy = measure_side_by_side(Counting("base"), Counting("pruned"), torch.zeros(4, 2), "eager", rounds=7,
                                 warmup=0, precision=0.07, max_rounds=41, timer=scattered(0.1))
    lo, hi = noisy["reduction_interval"]
    assert 7 < noisy["rounds"] < 41 and max(noisy["reduction"] - lo, hi - noisy["reduction"]) <= 0.07
    per_round = 0.4 + np.tile([0.0, 0.1, -0.1, 0.05, -0.05], 40)[:noisy["rounds"] - 1]
    lo_before, hi_before = median_interval(per_round)  # one round fewer: not yet precise enough
    assert max(np.median(per_round) - lo_before, hi_before - np.median(per_round)) > 0.07
    capped = measure_side_by_side(Counting("base"), Counting("pruned"), torch.zeros(4, 2), "eager", rounds=7,
                                  warmup=0, precision=0.001, max_rounds=15, timer=scattered(0.1))
    assert capped["rounds"] == 15


def biased(kind):
    """Measured microseconds as a function of the fake table's exact cost `a` and the base's `a0`: a fixed
    overhead the table does not see (predicted reductions 1.5x too large), or a cost that grows faster or
    slower than the table's (curved errors, larger at one end)."""
    return {"overhead": lambda a, a0: a + 0.5 * a0,
            "superlinear": lambda a, a0: a0 * (a / a0) ** 1.3,
            "sublinear": lambda a, a0: a0 * (a / a0) ** 0.7}[kind]


def landing(tmp_path, bias, target, **kw):
    """`calibrate` on the fake table of Tiny((32, 64, 64)) with fixed random scores; `measure` times the
    built model side by side with the base by the fake timer, distorted by `bias`."""
    from paperprune.latency import calibrate, measure_side_by_side

    timer = FakeTimer(1)
    model = Tiny((32, 64, 64)).eval()
    model, layers, latency = build(tmp_path, timer, model=model)
    gen = torch.Generator().manual_seed(0)
    crit = FixedScores({n: torch.rand(c, generator=gen, dtype=torch.float64) for n, c in latency.full_widths.items()})
    crit.prepare(None, None, None)
    macs = MacsPredictor(model, layers, (1, 8, 8))
    example = torch.zeros(4, 1, 8, 8)
    a0 = timer(model, example, "eager")

    def select(asked):
        return select_channels(crit, macs, asked, cost=latency, target_name="latency_reduction", omega=2,
                               progress=False)

    def cut(selection):
        return prune_channels(copy.deepcopy(model), layers, selection.keep, (1, 8, 8))

    def measure(candidate):
        return measure_side_by_side(model, candidate, example, "eager", rounds=3, warmup=0,
                                    timer=lambda m, x: bias(timer(m, x, "eager"), a0))

    selection, steps = calibrate(select, cut, measure, target, **kw)
    return selection, steps, lambda s: 1 - bias(timer(cut(s), example, "eager"), a0) / bias(a0, a0)


@pytest.mark.parametrize("kind", ["overhead", "superlinear", "sublinear"])
@pytest.mark.parametrize("target", [0.4, 0.6])
def test_calibrate_lands_within_tolerance_when_the_prediction_is_biased(tmp_path, kind, target):
    """The table predicts the fake timer exactly; the 'machine' measures it distorted. The first
    step misses by more than the tolerance; measured corrections land within it in at most 3 models,
    without a warning, and every step is recorded."""
    import warnings

    from paperprune.latency import LATENCY_TOLERANCE, MEASURED_STEPS

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        selection, steps, measured = landing(tmp_path, biased(kind), target)
    assert abs(steps[0]["miss"]) > LATENCY_TOLERANCE  # the bias is real
    assert 2 <= len(steps) <= MEASURED_STEPS
    chosen = [s for s in steps if s["chosen"]]
    assert len(chosen) == 1 and chosen[0] is steps[-1]
    assert abs(measured(selection) - target) <= LATENCY_TOLERANCE
    assert measured(selection) == pytest.approx(chosen[0]["measured_reduction"])
    for i, step in enumerate(steps, 1):
        assert step["step"] == i and step["target"] == target and step["rounds"] == 3
        assert step["miss"] == pytest.approx(step["measured_reduction"] - target)
        assert abs(step["predicted_reduction"] - step["asked_predicted"]) <= 0.01  # the bisection's tolerance
    assert steps[0]["asked_predicted"] == target and steps[0]["correction"].startswith("none")
    assert steps[1]["correction"].startswith("proportional")


@pytest.mark.parametrize("factor, steps", [(0.8, 2), (1.0, 1), (1.3, 2)])
def test_calibrate_corrects_a_predictor_off_by_a_factor(factor, steps):
    """A predictor whose reductions are 1/factor of the measured ones (measured = factor * predicted):
    the first step misses by (factor - 1) * target, the line through (0, 0) corrects it exactly in
    the second (asked = target / factor); an exact predictor stops at once."""
    import types

    from paperprune.latency import calibrate

    target = 0.4

    def select(asked):
        return types.SimpleNamespace(cost=1000 * (1 - asked), base_cost=1000.0, asked=asked)

    def measure(model):
        return {"before_us": 1000.0, "after_us": 1000 * (1 - factor * model.asked), "reduction": factor * model.asked}

    selection, history = calibrate(select, lambda s: s, measure, target)
    assert len(history) == steps
    assert history[0]["asked_predicted"] == target
    assert history[0]["measured_reduction"] == pytest.approx(factor * target)
    assert selection.asked == pytest.approx(target / factor)
    assert history[-1]["measured_reduction"] == pytest.approx(target) and history[-1]["chosen"]


def _scripted(reductions):
    """A `measure` that returns the given reductions in turn, whatever the model."""
    it = iter(reductions)

    def measure(model):
        r = next(it)
        return {"before_us": 100.0, "after_us": 100.0 * (1 - r), "reduction": r}
    return measure


def _proportional_select(asked):
    import types

    return types.SimpleNamespace(cost=100 * (1 - asked), base_cost=100.0, asked=asked)


def test_calibrate_warns_naming_the_miss_after_its_last_step():
    """Measurements that keep missing (noise larger than the tolerance): 3 models measured, the nearest kept,
    and one warning naming the target, the kept model's measured reduction and every step's."""
    from paperprune.latency import calibrate

    with pytest.warns(UserWarning) as caught:
        selection, history = calibrate(_proportional_select, lambda s: s, _scripted([0.45, 0.35, 0.44]), 0.4)
    assert [h["measured_reduction"] for h in history] == [0.45, 0.35, 0.44]
    assert [h["chosen"] for h in history] == [False, False, True] and selection.asked == history[2]["asked_predicted"]
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "latency_reduction=0.400 missed" in text and "(step 3) measured 0.440" in text
    assert "0.450, 0.350, 0.440" in text


def test_calibrate_goes_on_while_the_measured_interval_reaches_past_the_tolerance():
    """A first measurement 1.9 points from the target whose 95% interval reaches 1 point further is not
    taken as a landing: the next step is measured, and the one whose interval lies inside the tolerance
    ends the loop and is kept."""
    from paperprune.latency import calibrate

    script = iter([(0.419, (0.409, 0.429)), (0.401, (0.395, 0.41)), (0.5, (0.5, 0.5))])

    def measure(model):
        r, interval = next(script)
        return {"before_us": 100.0, "after_us": 100.0 * (1 - r), "reduction": r, "reduction_interval": interval}

    selection, history = calibrate(_proportional_select, lambda s: s, measure, 0.4)
    assert [h["measured_reduction"] for h in history] == [0.419, 0.401]
    assert [h["chosen"] for h in history] == [False, True] and history[1]["reduction_interval"] == (0.395, 0.41)


def test_calibrate_records_a_refused_correction_and_warns():
    """The corrected target is beyond what the budget rule reaches: the refusal is a recorded step (with the
    budget rule's message), the nearest measured selection is kept, and the miss is warned about."""
    from paperprune.latency import calibrate

    def select(asked):
        if asked > 0.5:
            raise PaperpruneError("latency_reduction unreachable at omega")
        return _proportional_select(asked)

    with pytest.warns(UserWarning, match=r"latency_reduction=0\.400 missed.*measured 0\.200.*0\.200, refused"):
        selection, history = calibrate(select, lambda s: s, lambda m: {"before_us": 100.0, "after_us": 100 - 50 * m.asked,
                                                                       "reduction": 0.5 * m.asked}, 0.4)
    assert selection.asked == 0.4 and len(history) == 2 and history[0]["chosen"]
    assert history[1]["refused"] == "latency_reduction unreachable at omega"
    assert history[1]["asked_predicted"] == pytest.approx(0.8) and history[1]["correction"].startswith("proportional")


def test_calibrate_ends_when_the_correction_selects_a_model_already_measured():
    """Two predicted targets closer than the budget rule's steps give the same kept channels: the second is
    recorded as that step's model, not measured again, and the loop ends with the nearest measured model
    (here off by 3 points, so the miss is warned about)."""
    import types

    from paperprune.latency import calibrate

    def select(asked):  # the budget rule's steps are 10 points of predicted reduction apart
        level = round(asked, 1)
        return types.SimpleNamespace(cost=100 * (1 - level), base_cost=100.0, keep={"conv": torch.arange(round(100 * level))})

    measured = []

    def measure(model):
        measured.append(model)
        return {"before_us": 100.0, "after_us": 67.0, "reduction": 0.43}

    with pytest.warns(UserWarning, match=r"0\.430, same model as step 1"):
        selection, history = calibrate(select, lambda s: s, measure, 0.4)
    assert len(measured) == 1 and history[1]["same_as"] == 1
    assert history[1]["asked_predicted"] == pytest.approx(0.4 * 0.4 / 0.43)
    assert history[0]["chosen"] and "chosen" not in history[1] and selection is measured[0]


def test_a_first_refusal_is_the_budget_rules_error():
    from paperprune.latency import calibrate

    def select(asked):
        raise PaperpruneError("latency_reduction=0.9 is unreachable")

    with pytest.raises(PaperpruneError, match="unreachable"):
        calibrate(select, lambda s: s, _scripted([]), 0.9)


@pytest.mark.parametrize("points, expected", [
    ([(0.4, 0.5)], (0.32, "proportional")),
    ([(0.4, 0.5), (0.32, 0.42)], (0.3, "secant")),
    ([(0.4, 0.5), (0.3995, 0.41)], (0.3995 * 0.4 / 0.41, "proportional")),  # predicted nearly equal: noise
    ([(0.4, 0.5), (0.32, 0.49)], (0.32 * 0.4 / 0.49, "proportional")),  # a secant far flatter than the proportional line
])
def test_next_ask(points, expected):
    from paperprune.latency import _next_ask

    asked, how = _next_ask(points, 0.4)
    assert asked == pytest.approx(expected[0]) and how.startswith(expected[1])


def test_the_module_doctests_run():
    import doctest

    import paperprune.latency

    result = doctest.testmod(paperprune.latency)
    assert result.attempted > 0 and result.failed == 0
