"""Pruning curves on the synthetic dataset: statistics once per (criterion, seed), points equal to
what `prune` gives alone, adaptive BN with a known answer, unreachable targets recorded."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from paperprune import create_model, features, prune
from paperprune.lab import curves
from paperprune.lab.data import class_balanced_batch, dataset_info, load_tensors
from paperprune.models import prunable_layers
from paperprune.lab.record import CurvePoint
from paperprune.lab.stats import unpack_correct
from paperprune.utils import PaperpruneError, json_default

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    info = dataset_info("synthetic")
    x, y = load_tensors("synthetic", "train")
    tx, ty = load_tensors("synthetic", "test")
    mean, std = torch.tensor(info.mean)[:, None, None], torch.tensor(info.std)[:, None, None]

    def norm(images):
        return (images.float() / 255 - mean) / std

    def calibration(seed):
        cx, cy = class_balanced_batch(x, y, 3, seed)
        return [(norm(cx), cy)]

    test = [(norm(tx[i:i + 30]), ty[i:i + 30]) for i in range(0, 60, 30)]  # 60 test images
    bn = [(norm(x[i:i + 16]), y[i:i + 16]) for i in range(0, 64, 16)]
    torch.manual_seed(0)
    model = create_model("resnet56", num_classes=info.num_classes, in_channels=info.in_channels).eval()
    return model, calibration, test, bn


def test_statistics_once_per_criterion_and_seed(setup, monkeypatch):
    model, calibration, test, bn = setup
    prepared = []
    make = curves.create_criterion

    def counting(method, **options):
        criterion = make(method, **options)
        prepare = criterion.prepare
        criterion.prepare = lambda *a: (prepared.append((method, options["seed"])), prepare(*a))[1]
        return criterion
    monkeypatch.setattr(curves, "create_criterion", counting)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    points = curves.pruning_curves(model, calibration, test, bn, methods=("random", "l1"),
                                   targets=(0.3, 0.6), seeds=(0, 1), bn_images=32, device="cpu", progress=False)

    assert sorted(prepared) == sorted((m, s) for m in ("random", "l1") for s in (0, 1))
    assert [(p["method"], p["seed"], p["target"]) for p in points] == [
        (m, s, t) for m in ("random", "l1") for s in (0, 1) for t in (0.3, 0.6)]
    for p in points:
        assert abs(p["macs_reduction"] - p["target"]) <= 0.01
        for key in ("correct", "correct_bn"):
            assert unpack_correct(p[key]).size == 60
        assert p["top1"] == pytest.approx(100 * unpack_correct(p["correct"]).mean())
    # l1 ignores the calibration sample: both seeds select the same channels; random does not
    by = {(p["method"], p["seed"], p["target"]): p for p in points}
    assert by["l1", 0, 0.6]["widths"] == by["l1", 1, 0.6]["widths"]
    assert by["random", 0, 0.6]["widths"] != by["random", 1, 0.6]["widths"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the input model is untouched


@pytest.mark.slow
def test_a_point_equals_prune_alone(setup):
    model, calibration, test, bn = setup
    (point,) = curves.pruning_curves(model, calibration, test, bn, methods=("classwise",), targets=(0.45,),
                                     seeds=(1,), bn_images=32, device="cpu", progress=False)
    pruned, report = prune(model, calibration(1), method="classwise", flops_reduction=0.45, seed=1,
                           samples_per_class=20, device="cpu", progress=False)
    assert point["widths"] == {row["name"]: row["width_after"] for row in report.layers}
    assert point["level"] == pytest.approx(report.level)
    assert point["unconverged_layers"] == report.criterion["unconverged_layers"]
    correct = curves.correct_per_image(pruned, test, "cpu")
    assert np.array_equal(unpack_correct(point["correct"]), correct)


def test_points_are_scored_with_batchnorm_folded(setup, monkeypatch):
    model, calibration, test, bn = setup
    scored, real = [], curves.correct_per_image
    monkeypatch.setattr(curves, "correct_per_image", lambda m, *a: (scored.append(m), real(m, *a))[1])
    (point,) = curves.pruning_curves(model, calibration, test, bn, methods=("l1",), targets=(0.3,), seeds=(0,),
                                     bn_images=32, device="cpu", progress=False)
    assert len(scored) == 2 and point["evaluated"] == "fold-bn" and "unconverged_layers" not in point
    count = lambda m, kind: sum(isinstance(x, kind) for x in m.modules())  # noqa: E731
    for m in scored:  # ResNet-56's 55 BatchNorms all follow a convolution: each became an Identity
        assert count(m, nn.BatchNorm2d) == 0 and count(m, nn.Identity) == 55 + count(model, nn.Identity)
    pruned, _ = prune(model, calibration(0), method="l1", flops_reduction=0.3, device="cpu", progress=False)
    assert np.array_equal(unpack_correct(point["correct"]), real(pruned, test, "cpu"))


def test_a_stopped_solve_is_recorded_in_its_point(setup):
    """A lasso solve stopped at max_iter (here 5, a criterion option) is named in the point and warned about."""
    model, calibration, test, bn = setup
    with pytest.warns(UserWarning, match="stopped at max_iter=5"):
        (point,) = curves.pruning_curves(model, calibration, test, bn, methods=("classwise",), targets=(0.3,),
                                         seeds=(0,), bn_images=32, device="cpu", progress=False, max_iter=5)
    layers = {layer.name for layer in prunable_layers(model)}
    assert point["unconverged_layers"] and set(point["unconverged_layers"]) <= layers
    CurvePoint.from_dict(json.loads(json.dumps(point, default=json_default)), "classwise-s0")


def test_unreachable_target_is_recorded(setup):
    model, calibration, test, bn = setup
    (point,) = curves.pruning_curves(model, calibration, test, bn, methods=("l1",), targets=(0.995,), seeds=(0,),
                                     bn_images=32, device="cpu", progress=False)
    assert "unreachable" in point["error"] and "top1" not in point


def test_adapt_batchnorm_uses_exactly_the_first_images():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.BatchNorm2d(3))
    x = torch.randn(40, 1, 4, 4)
    data = [(x[i:i + 10], None) for i in range(0, 40, 10)] + [(1e6 * torch.ones(10, 1, 4, 4), None)]
    features.adapt_batchnorm(model, data, images=40, device="cpu")
    with torch.no_grad():
        feats = model[0](x)
    torch.testing.assert_close(model[1].running_mean, feats.mean(dim=(0, 2, 3)))
    assert model[1].momentum == 0.1 and not model.training and int(model[1].num_batches_tracked) == 4
    with pytest.raises(PaperpruneError, match="held 50 images, fewer than images=60"):
        features.adapt_batchnorm(model, data, images=60, device="cpu")


def test_run_writes_a_record_with_a_summary(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "base.pt"
    torch.save(create_model("resnet56", num_classes=9, in_channels=3).state_dict(), weights)
    record = curves.run("synthetic", "resnet56", tmp_path / "out", weights=str(weights), methods=("random", "l1"),
                        targets=(0.3,), seeds=(0, 1), samples_per_class=3, bn_images=18, test_per_class=4,
                        progress=False)
    assert (tmp_path / "out" / "curves.json").is_file() and record["config"]["test_images"] == 36
    summary = {(r["method"], r["target"]): r for r in record["summary"]["top1"]}
    assert summary["random", 0.3]["n"] == 2 and summary["random", 0.3]["seeds"] == [0, 1]
    assert summary["l1", 0.3]["std"] == 0.0  # l1 ignores the calibration sample: both seeds agree
    with pytest.raises(PaperpruneError, match="exactly one baseline"):
        curves.run("synthetic", "resnet56", tmp_path / "x", progress=False)


def test_run_resumes_finished_chunks_and_refuses_another_config(tmp_path, monkeypatch):
    torch.manual_seed(0)
    weights = tmp_path / "base.pt"
    torch.save(create_model("resnet56", num_classes=9, in_channels=3).state_dict(), weights)
    grid = dict(weights=str(weights), methods=("random", "l1"), targets=(0.3,), seeds=(0,), samples_per_class=3,
                bn_images=18, test_per_class=2, progress=False)
    first = curves.run("synthetic", "resnet56", tmp_path / "out", **grid)
    assert sorted(p.name for p in (tmp_path / "out" / "points").iterdir()) == ["l1-s0.json", "random-s0.json"]
    for point in first["points"]:  # kept indices agree with the widths
        assert {k: len(v) for k, v in point["kept"].items()} == point["widths"]
    (tmp_path / "out" / "points" / "l1-s0.json").unlink()  # as if killed before l1 finished
    computed = []
    real = curves.pruning_curves
    monkeypatch.setattr(curves, "pruning_curves", lambda *a, **k: (computed.append(k["methods"]), real(*a, **k))[1])
    second = curves.run("synthetic", "resnet56", tmp_path / "out", **grid)
    assert computed == [["l1"]] and second["timings"]["resumed_chunks"] == ["random-s0"]
    strip = lambda pts: [{k: v for k, v in p.items() if not k.endswith("_s")} for p in pts]  # noqa: E731
    assert strip(second["points"]) == strip(first["points"])
    with pytest.raises(PaperpruneError, match="holds curves of another config"):
        curves.run("synthetic", "resnet56", tmp_path / "out", **dict(grid, targets=(0.4,)))
    with pytest.raises(PaperpruneError, match=r"targets \[1.5\]"):
        curves.run("synthetic", "resnet56", tmp_path / "new", **dict(grid, targets=(1.5,)))
    assert not (tmp_path / "new").exists()
    assert curves.main(["--dataset", "synthetic", "--arch", "resnet56", "--weights", str(weights),
                        "--seeds", "a", "--out", str(tmp_path / "cli")]) == 2


def test_prune_adapt_bn_equals_adapting_the_pruned_model(setup):
    model, calibration, _, _ = setup
    data = calibration(0)  # a list: iterated again for the BN statistics
    plain, report0 = prune(model, data, method="l1", flops_reduction=0.4, device="cpu", progress=False)
    adapted, report = prune(model, data, method="l1", flops_reduction=0.4, device="cpu", progress=False,
                            adapt_bn=20)
    features.adapt_batchnorm(plain, data, 20, "cpu")
    for (name, a), b in zip(adapted.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), name
    assert report.adapted_bn_images == 20 and report0.adapted_bn_images == 0 and "adapt_bn_s" in report.timings
    with pytest.raises(PaperpruneError, match="adapt_bn=-1"):
        prune(model, data, method="l1", flops_reduction=0.4, adapt_bn=-1, progress=False)
    with pytest.raises(PaperpruneError, match="no BatchNorm layer"):
        prune(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(9)), data, method="l1",
              flops_reduction=0.4, adapt_bn=8, progress=False)


def test_criterion_options_reach_every_criterion_and_key_the_folder(tmp_path, monkeypatch):
    import json

    torch.manual_seed(0)
    weights = tmp_path / "base.pt"
    torch.save(create_model("resnet56", num_classes=9, in_channels=3).state_dict(), weights)
    grid = dict(weights=str(weights), methods=("l1",), targets=(0.3,), seeds=(0,), samples_per_class=3,
                bn_images=18, test_per_class=2, progress=False)
    seen = []
    real = curves.create_criterion
    monkeypatch.setattr(curves, "create_criterion", lambda method, **k: (seen.append(k), real(method, **k))[1])
    record = curves.run("synthetic", "resnet56", tmp_path / "out", criterion_options={"nonnegative": True}, **grid)
    assert record["config"]["criterion_options"] == {"nonnegative": True} and record["schema"] == 2
    assert {"seed": 0, "nonnegative": True} in seen  # the chunk's criterion got the option
    assert curves.variant_name(record["config"]["criterion_options"]) == "nonnegative"
    with pytest.raises(PaperpruneError, match="holds curves of another config"):
        curves.run("synthetic", "resnet56", tmp_path / "out", **grid)  # no options: another variant
    with pytest.raises(PaperpruneError, match="unknown option"):
        curves.run("synthetic", "resnet56", tmp_path / "x", criterion_options={"lam": 1.0}, **grid)
    with pytest.raises(PaperpruneError, match="structure='tree'"):
        curves.run("synthetic", "resnet56", tmp_path / "x", criterion_options={"structure": "tree"},
                   **dict(grid, methods=("stlp",)))
    assert not (tmp_path / "x").exists()
    # a folder written before options existed (config.json without the key) resumes as "no options"
    first = curves.run("synthetic", "resnet56", tmp_path / "old", **grid)
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["criterion_options"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    (tmp_path / "old" / "curves.json").unlink()
    again = curves.run("synthetic", "resnet56", tmp_path / "old", **grid)
    assert again["timings"]["resumed_chunks"] == ["l1-s0"] and again["points"] == first["points"]


def test_a_damaged_chunk_names_its_file(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "base.pt"
    torch.save(create_model("resnet56", num_classes=9, in_channels=3).state_dict(), weights)
    grid = dict(weights=str(weights), methods=("random",), targets=(0.3,), seeds=(0,), samples_per_class=3,
                bn_images=18, test_per_class=2, progress=False)
    curves.run("synthetic", "resnet56", tmp_path / "out", **grid)
    chunk = tmp_path / "out" / "points" / "random-s0.json"
    chunk.write_text(chunk.read_text().replace('"kept"', '"kept_"'))
    with pytest.raises(PaperpruneError, match=r"random-s0.json is damaged \(unknown key points\[0\].kept_"):
        curves.run("synthetic", "resnet56", tmp_path / "out", **grid)


def test_precision_is_resolved_and_recorded(tmp_path):
    from paperprune.lab.train import resolve_precision

    torch.manual_seed(0)
    weights = tmp_path / "base.pt"
    torch.save(create_model("resnet56", num_classes=9, in_channels=3).state_dict(), weights)
    record = curves.run("synthetic", "resnet56", tmp_path / "out", weights=str(weights), methods=("l1",),
                        targets=(0.3,), seeds=(0,), samples_per_class=3, bn_images=18, test_per_class=2,
                        precision="auto", progress=False)
    assert record["config"]["precision"] == resolve_precision("auto", "cpu")
    with pytest.raises(PaperpruneError, match="precision 'fp64'"):
        curves.run("synthetic", "resnet56", tmp_path / "y", weights=str(weights), precision="fp64", progress=False)


def test_unpaired_table_is_welchs_interval_of_two_records_seeds():
    """Curves on other samples against a reference: each side's mean ± std over its own seeds (3 and 4 seeds,
    not paired), the difference of the means and scipy's Welch interval; a method only one side holds has no row."""
    from scipy import stats as scipy_stats

    from paperprune.lab.reporting.curves import unpaired_table

    def record(per_class, values, methods=("sglp",)):
        points = [{"method": m, "seed": s, "target": 0.45, "macs_reduction": 0.45, "top1": v, "top1_bn": v,
                   "widths": {"a": 2}} for m in methods for s, v in enumerate(values)]
        config = {"dataset": "synthetic", "arch": "resnet56", "seeds": list(range(len(values))), "targets": [0.45],
                  "test_images": 20, "samples_per_class": per_class, "criterion_options": {"statistics": "block"}}
        return {"config": config, "points": points}

    reference, ours = [70.0, 75.0, 80.0], [78.0, 81.0, 79.5, 82.5]
    table = unpaired_table(record(10, reference), record(50, ours, ("sglp", "stlp")))
    (row,) = table.rows
    low, high = scipy_stats.ttest_ind(ours, reference, equal_var=False).confidence_interval(0.95)
    assert row[:6] == ["sGLP-IB", "45", "3 / 4", "75.00 ± 5.00", f"{np.mean(ours):.2f} ± {np.std(ours, ddof=1):.2f}",
                       f"{np.mean(ours) - 75.0:+.2f}"]
    assert row[6] == f"[{low:+.2f}, {high:+.2f}]"
    assert "50 per class" in table.title and "10 per class" in table.title and "unpaired" in table.title
    with pytest.raises(PaperpruneError, match="differ in test_images"):
        unpaired_table(record(10, reference), dict(record(50, ours), config={**record(50, ours)["config"],
                                                                            "test_images": 10}))


def test_a_profile_of_variant_curves_alone_is_shown_and_compared_with_its_reference(tmp_path):
    """The committed `block-50pc` records (block statistics only, no exact curves of their own) get their curves
    tables, and with `compared_with` unpaired tables against `block`'s exact curves, on the page and under
    tables/; sGLP-IB's row at 45% after adaptive BN is scipy's Welch interval of the two records' seeds."""
    import shutil
    from pathlib import Path

    from scipy import stats as scipy_stats

    from paperprune.lab.reporting.curves import load_curves
    from paperprune.lab.reporting.pages import rebuild, results_page

    figures = Path(__file__).resolve().parent.parent / "figures"
    shutil.copytree(figures / "block" / "records", tmp_path / "block" / "records")
    shutil.copytree(figures / "block-50pc" / "records", tmp_path / "more" / "records")
    written = {p.name for p in rebuild(tmp_path / "more", tmp_path / "block")}
    stem = "fashion-mnist_resnet56_block_size-20_permutations-3_statistics-block"
    assert {f"unpaired_top1_bn_{stem}.md", f"unpaired_top1_{stem}.md", f"curves_{stem}.md"} <= written
    page = results_page(tmp_path, {"block": "exact and block", "more": "block, 50 per class"}, {"more": "block"})
    section = page[page.index("## `more`"):]
    assert "### Against `block`" in section and "### Right after pruning" in section

    def seeds(record):
        return [p["top1_bn"] for p in record["points"] if p["method"] == "sglp" and abs(p["target"] - 0.45) < 1e-9
                and "error" not in p]
    exact = seeds(load_curves(tmp_path / "block" / "records" / "curves" / "fashion-mnist-resnet56"))
    more = seeds(load_curves(next((tmp_path / "more" / "records" / "curves").iterdir())))
    low, high = scipy_stats.ttest_ind(more, exact, equal_var=False).confidence_interval(0.95)
    assert len(exact) == len(more) == 10
    assert (f"| sGLP-IB | 45 | 10 / 10 | {np.mean(exact):.2f} ± {np.std(exact, ddof=1):.2f} | {np.mean(more):.2f} ± "
            f"{np.std(more, ddof=1):.2f} | {np.mean(more) - np.mean(exact):+.2f} | [{low:+.2f}, {high:+.2f}] |") in section


def test_variant_table_pairs_a_variant_with_its_main_curves():
    from paperprune.lab.reporting.curves import variant_table
    from paperprune.lab.stats import pack_correct

    def record(options, right):  # 20 test images; seed s gets the first right + s right
        points = [{"method": "sglp", "seed": s, "target": 0.3, "macs_reduction": 0.3, "top1": 5.0 * (right + s),
                   "top1_bn": 5.0 * (right + s), "correct": pack_correct(np.arange(20) < right + s),
                   "correct_bn": pack_correct(np.arange(20) < right + s), "widths": {"a": 2}} for s in (0, 1)]
        config = {"dataset": "synthetic", "arch": "resnet56", "seeds": [0, 1], "targets": [0.3], "test_images": 20,
                  "bn_images": 18, "criterion_options": options}
        return {"config": config, "points": points}

    table = variant_table(record({}, 10), record({"nonnegative": True}, 12))
    (row,) = table.rows
    assert row[:5] == ["sGLP-IB", "30", "2", "52.50 ± 3.54", "62.50 ± 3.54"] and row[5] == "+10.00"
    assert row[6] == "[+10.00, +10.00]"  # +10 points on both seeds: no spread over seeds
    assert "nonnegative" in table.title
    (same,) = variant_table(record({}, 10), record({"nonnegative": True}, 10)).rows
    assert same[5:7] == ["+0.00", "[+0.00, +0.00]"]  # identical selections: no difference at all
    with pytest.raises(PaperpruneError, match="differ in test_images"):
        variant_table(record({}, 10), dict(record({"nonnegative": True}, 12), config={
            **record({}, 0)["config"], "test_images": 10}))

    # kept overlap: seed 0 keeps the same 4 channels, seed 1 shares 2 of 6 -> Jaccard 1 and 1/3, mean 0.67
    main, variant = record({}, 10), record({"nonnegative": True}, 10)
    for p, kept in zip(main["points"], ({"a": [0, 1], "b": [0, 1]}, {"a": [0, 1], "b": [2, 3]})):
        p["kept"] = kept
    for p, kept in zip(variant["points"], ({"a": [0, 1], "b": [0, 1]}, {"a": [0, 1], "b": [4, 5]})):
        p["kept"] = kept
    (overlap,) = variant_table(main, variant).rows
    assert overlap[-1] == f"0.67 ± {np.std([1.0, 1 / 3], ddof=1):.2f}"
    assert same[-1] == "—"  # records without kept channels


def test_uniform_entries_are_points_of_their_own_and_the_weights_are_named_relatively(tmp_path, monkeypatch):
    """The entry "l1:uniform" beside "l1": its own chunk and points (allocation "uniform", one kept fraction in every
    layer), its own row in the table. The weights file is recorded relative to the repository with the
    sha256 of its tensors (computed here with hashlib), and a folder whose config.json names it by an
    absolute path (written before) resumes."""
    import hashlib

    from paperprune.lab.reporting.curves import curves_table

    monkeypatch.setattr("paperprune.lab.io.REPO_ROOT", tmp_path)
    torch.manual_seed(0)
    weights = tmp_path / "baselines" / "base.pt"
    weights.parent.mkdir()
    state = create_model("resnet56", num_classes=9, in_channels=3).state_dict()
    torch.save(state, weights)
    grid = dict(weights=str(weights), methods=("l1", "l1:uniform"), targets=(0.4,), seeds=(0,), samples_per_class=3,
                bn_images=18, test_per_class=2, progress=False)
    record = curves.run("synthetic", "resnet56", tmp_path / "out", **grid)
    assert sorted(p.name for p in (tmp_path / "out" / "points").iterdir()) == ["l1-s0.json", "l1-uniform-s0.json"]
    assert record["config"]["weights"] == "baselines/base.pt" and str(tmp_path) not in json.dumps(record)
    assert record["config"]["baseline_sha256"] == hashlib.sha256(
        b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    by = {p["allocation"]: p for p in record["points"]}
    assert by["global"]["method"] == by["uniform"]["method"] == "l1"
    assert abs(by["uniform"]["macs_reduction"] - 0.4) <= 0.01
    full = {layer.name: 16 * 2 ** (i // 9) for i, layer in enumerate(prunable_layers(create_model("resnet56", 9, 3)))}
    fractions = {round(w / full[name], 1) for name, w in by["uniform"]["widths"].items()}
    assert len(fractions) == 1  # 16/32/64-channel stages keep the same fraction
    assert len({round(w / full[name], 1) for name, w in by["global"]["widths"].items()}) > 1
    labels = [row[0] for row in curves_table(record).rows]
    assert labels == ["L1-norm", "L1-norm (uniform)"]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    (tmp_path / "out" / "config.json").write_text(json.dumps(dict(config, weights=str(weights))))
    (tmp_path / "out" / "curves.json").unlink()
    again = curves.run("synthetic", "resnet56", tmp_path / "out", **grid)
    assert sorted(again["timings"]["resumed_chunks"]) == ["l1-s0", "l1-uniform-s0"]
    # a record written before: an absolute weights path and points without an allocation still read (as global)
    from paperprune.lab.record import read_curves

    old = dict(record, config=dict(record["config"], weights=str(weights)),
               points=[{k: v for k, v in p.items() if k != "allocation"} for p in record["points"]])
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert read_curves(tmp_path / "old.json").config.weights == str(weights)
    assert [row[0] for row in curves_table(old).rows] == ["L1-norm"]

