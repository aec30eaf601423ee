"""Tests for paperprune.lab.reporting on the fixture run directories in tests/fixtures/runs.

Expected numbers are computed here from the fixture files themselves (statistics module), never
hard-coded, and compared with the rendered cells.
"""
from __future__ import annotations

import csv
import json
import os
import re
import statistics
from pathlib import Path

import numpy as np
import pytest

from paperprune.lab import reporting
from paperprune.utils import PaperpruneError

FIXTURES = Path(__file__).parent / "fixtures" / "runs"
SGLP_SEEDS = ["fashion-mnist/resnet56/sglp-f50-spc32-s0", "fashion-mnist/resnet56/sglp-f50-spc32-s1"]
VGG_SGLP = "fashion-mnist/vgg16/sglp-f60-spc32-s0"
FAILED = "fashion-mnist/vgg16/stlp-f60-spc32-s0"
MALFORMED = "fashion-mnist/resnet56/apib-f50-spc32-s0"


def _fixture(relpath: str) -> dict:
    return json.loads((FIXTURES / relpath / "run.json").read_text())


@pytest.fixture(scope="module")
def runs():
    return reporting.load_runs(FIXTURES)


def _rows(table, **match):
    """Rows (as column -> cell dicts) whose cells contain the given substrings."""
    dicts = [dict(zip(table.columns, r)) for r in table.rows]
    return [d for d in dicts if all(v in d[k] for k, v in match.items())]


def _mean_std(values):
    return statistics.mean(values), statistics.stdev(values)


def test_load_runs_statuses(runs):
    by_path = {r["relpath"]: r for r in runs}
    assert [r["relpath"] for r in runs] == sorted(by_path)
    complete = [r for r in runs if r["status"] == "complete"]
    run_files = [p for p in FIXTURES.rglob("run.json")]
    assert len(complete) == len(run_files) - 1  # all but the malformed one
    assert all(r["environment"]["hostname"] == "fixture" for r in complete)
    assert by_path[FAILED]["status"] == "failed"
    assert "lam bisection" in by_path[FAILED]["error"]
    assert by_path[FAILED]["config"]["method"] == "stlp"
    assert by_path[MALFORMED]["status"] == "failed"
    assert by_path[MALFORMED]["error"].startswith("malformed run.json")


def test_load_runs_tolerates_garbage(tmp_path):
    good = _fixture(VGG_SGLP)
    no_pruned = {k: v for k, v in good.items() if k != "pruned"}
    files = {"a/run.json": "{", "b/error.json": "not json", "c/run.json": json.dumps(no_pruned),
             "d/run.json": "[1, 2]", "e/run.json": json.dumps({**good, "status": "running"}),
             "f/run.json": json.dumps(good)}
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True)
        (tmp_path / rel).write_text(text)
    status = {r["relpath"]: r for r in reporting.load_runs(tmp_path)}
    assert {k: v["status"] for k, v in status.items()} == {
        "a": "failed", "b": "failed", "c": "failed", "d": "failed", "e": "failed", "f": "complete"}
    assert status["b"]["error"].startswith("malformed error.json")
    assert "pruned" in status["c"]["error"] and status["c"]["config"]["arch"] == "vgg16"
    assert "running" in status["e"]["error"]
    with pytest.raises(PaperpruneError, match="not a directory"):
        reporting.load_runs(tmp_path / "nowhere")


def test_results_table_aggregates_seeds(runs):
    table = reporting.results_table(runs, "fashion-mnist")
    (row,) = _rows(table, Arch="resnet56", Method="samples_per_class=32")
    assert row["Method"].startswith("sGLP-IB")
    recs = [_fixture(p) for p in SGLP_SEEDS]
    top1 = _mean_std([r["pruned"]["top1"] for r in recs])
    base = _mean_std([r["baseline"]["top1"] for r in recs])
    delta = _mean_std([r["pruned"]["top1"] - r["baseline"]["top1"] for r in recs])
    params_red = _mean_std([100 * (1 - r["pruned"]["params"] / r["baseline"]["params"]) for r in recs])
    flops = _mean_std([r["pruned"]["macs"] / 1e6 for r in recs])
    assert row["n"] == "2"
    assert row["Top-1 (%)"] == f"{top1[0]:.2f} ± {top1[1]:.2f}"
    assert row["Base top-1 (%)"] == f"{base[0]:.2f} ± {base[1]:.2f}"
    assert row["Δ top-1"] == f"{delta[0]:+.2f} ± {delta[1]:.2f}"
    assert row["Params ↓ (%)"] == f"{params_red[0]:.1f} ± {params_red[1]:.1f}"
    assert row["FLOPs (M)"] == f"{flops[0]:.2f} ± {flops[1]:.2f}"
    assert all(p in row["Source"] for p in SGLP_SEEDS) and "seeds 0, 1" in row["Source"]
    assert row["Source"].startswith("FIXTURE")
    # the samples_per_class=8 run is a different configuration: its own row, not averaged in
    (other,) = _rows(table, Arch="resnet56", Method="samples_per_class=8")
    assert other["n"] == "1"


def test_results_table_reductions(runs):
    rec = _fixture(VGG_SGLP)
    b, p = rec["baseline"], rec["pruned"]
    (row,) = _rows(reporting.results_table(runs, "fashion-mnist"), Arch="vgg16", Method="sGLP-IB")
    assert row["Params (M)"] == f"{p['params'] / 1e6:.2f}"
    assert row["Params ↓ (%)"] == f"{100 * (1 - p['params'] / b['params']):.1f}"
    assert row["FLOPs (M)"] == f"{p['macs'] / 1e6:.2f}"
    assert row["FLOPs ↓ (%)"] == f"{100 * (1 - p['macs'] / b['macs']):.1f}"
    assert row["Δ top-1"] == f"{p['top1'] - b['top1']:+.2f}"
    assert "±" not in "".join(row.values())


def test_missing_grid_cells_read_not_run(runs):
    table = reporting.results_table(runs, "fashion-mnist")
    for method in ("sGLP-IB", "sTLP-IB"):
        (row,) = _rows(table, Arch="resnet110", Method=method)
        assert row["Top-1 (%)"] == "not run" and row["n"] == "0"
        assert not re.search(r"\d", row["Params (M)"] + row["FLOPs ↓ (%)"])
    (failed,) = _rows(table, Arch="vgg16", Method="sTLP-IB")  # its only run failed
    assert failed["Top-1 (%)"] == "not run" and FAILED in failed["Source"]
    custom = reporting.results_table(runs, "fashion-mnist", references=(), grid=[("densenet40", "apib")])
    assert [r["Top-1 (%)"] for r in _rows(custom, Arch="densenet40")] == ["not run"]
    assert not _rows(custom, Arch="resnet110")


def test_references_csv_and_rows(runs):
    refs = reporting.load_references()
    path = Path(reporting.__file__).parents[2] / "resources" / "reference_numbers.csv"
    with path.open(newline="", encoding="utf-8") as f:
        raw = list(csv.DictReader(f))
    assert len(refs) == len(raw) > 0
    for ref, row in zip(refs, raw):
        assert ref["source"].strip() and ref["source_detail"].strip()
        for key in ("top1_base", "top1", "top5", "params_m", "flops_m", "params_reduction", "flops_reduction",
                    "delta_top1"):
            assert ref[key] == (float(row[key]) if row[key] else None)
        for key in ("params_reduction", "flops_reduction"):
            assert ref[key] is None or 0 <= ref[key] <= 1
    paper = [r for r in refs if r["method"] == "paper (abstract)"]
    assert {(r["dataset"], r["arch"]) for r in paper} == {("cifar10", "vgg16"), ("imagenet", "resnet50")}
    assert all("abstract" in r["source_detail"] for r in paper)

    table = reporting.results_table(runs, "cifar10")
    for ref in (r for r in refs if r["dataset"] == "cifar10"):
        rows = [r for r in _rows(table, Arch=ref["arch"], Source=ref["source"])
                if r["Method"] == reporting.METHOD_LABELS.get(ref["method"], ref["method"])]
        assert len(rows) == 1
        expect = "—" if ref["top1"] is None else f"{ref['top1']:.2f}"
        assert rows[0]["Top-1 (%)"] == expect
        expect = "—" if ref["flops_m"] is None else f"{ref['flops_m']:.2f}"
        assert rows[0]["FLOPs (M)"] == expect
    ours = _rows(table, Method="sGLP-IB") + _rows(table, Method="sTLP-IB")
    ours = [r for r in ours if "paper" not in r["Method"]]
    assert ours and all(r["Top-1 (%)"] == "not run" for r in ours)


def _unescaped(char: str, text: str) -> int:
    return len(re.findall(rf"(?<!\\){re.escape(char)}", text))


def test_write_table_formats(runs, tmp_path):
    table = reporting.results_table(runs, "fashion-mnist")
    paths = reporting.write_table(table, tmp_path, "results")
    assert sorted(p.name for p in paths) == ["results.csv", "results.md", "results.tex"]
    with (tmp_path / "results.csv").open(newline="", encoding="utf-8") as f:
        assert list(csv.reader(f)) == [table.columns] + table.rows

    md_lines = [l for l in (tmp_path / "results.md").read_text().splitlines() if l.startswith("|")]
    assert len(md_lines) == len(table.rows) + 2
    assert {_unescaped("|", l) for l in md_lines} == {len(table.columns) + 1}

    tex = (tmp_path / "results.tex").read_text()
    for env in ("table", "tabular"):
        assert tex.count(f"\\begin{{{env}}}") == tex.count(f"\\end{{{env}}}") == 1
    lines = tex.splitlines()
    head, mid, bottom = lines.index("\\toprule"), lines.index("\\midrule"), lines.index("\\bottomrule")
    assert head < mid < bottom
    body = lines[head + 1:mid] + lines[mid + 1:bottom]
    assert len(body) == len(table.rows) + 1
    for line in body:
        assert line.endswith("\\\\") and _unescaped("&", line) == len(table.columns) - 1
        assert _unescaped("%", line) == 0 and _unescaped("_", line) == 0


def test_ablation_table(runs):
    tables = reporting.ablation_table(runs)
    assert list(tables) == ["fashion-mnist"]
    table = tables["fashion-mnist"]
    for arch in ("vgg16", "resnet56"):
        for method in reporting.ABLATION_METHODS:
            assert _rows(table, Arch=arch, Method=reporting.METHOD_LABELS[method])
    (hrank,) = _rows(table, Arch="resnet56", Method="HRank")
    assert hrank["Top-1 (%)"] == "not run"
    rec = _fixture("fashion-mnist/resnet56/classwise-f50-spc32-s0")
    (classwise,) = _rows(table, Arch="resnet56", Method="class-wise")
    assert classwise["Top-1 (%)"] == f"{rec['pruned']['top1']:.2f}"


def test_sensitivity_table(runs):
    table = reporting.sensitivity_table(runs, "samples_per_class")
    assert [r[table.columns.index("samples_per_class")] for r in table.rows] == ["8", "32"]
    recs = [_fixture(p) for p in SGLP_SEEDS]
    top1 = _mean_std([r["pruned"]["top1"] for r in recs])
    row = dict(zip(table.columns, table.rows[1]))
    assert row["n"] == "2" and row["Top-1 (%)"] == f"{top1[0]:.2f} ± {top1[1]:.2f}"
    assert reporting.sensitivity_table(runs, "gamma_ratio").rows == []  # no sweep in the fixtures
    with pytest.raises(PaperpruneError, match="no_such_param"):
        reporting.sensitivity_table(runs, "no_such_param")


def _assert_figure_files(paths):
    assert sorted(p.suffix for p in paths) == [".pdf", ".png"]
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 1000
        assert data.startswith(b"\x89PNG" if p.suffix == ".png" else b"%PDF")


def test_figures(runs, tmp_path):
    from scipy.cluster.hierarchy import linkage

    names = [f"class{i}" for i in range(6)]
    figures = {
        "tradeoff": reporting.plot_tradeoff(runs, "fashion-mnist", "resnet56"),
        "tradeoff_delta": reporting.plot_tradeoff(runs, "fashion-mnist", "vgg16", metric="delta_top1"),
        "widths": reporting.plot_layer_widths(runs, "fashion-mnist", "vgg16"),
        "sensitivity": reporting.plot_sensitivity(runs, "samples_per_class"),
        "graph": reporting.plot_class_graph((np.array([[0, 1], [1, 2], [3, 4], [0, 5]]),
                                             np.array([0.9, 0.5, 0.7, 0.3]), np.array([1, 1, 1, -1])), names),
        "tree_linkage": reporting.plot_class_tree(
            linkage(np.random.default_rng(0).normal(size=(6, 4)), "average", metric="correlation"), names),
        "tree_groups": reporting.plot_class_tree([[0, 1, 2], [3, 4], [5], list(range(6))], names),
    }
    for stem, fig in figures.items():
        _assert_figure_files(reporting.save_figure(fig, tmp_path, stem))
    # the widths plot draws one line per configuration, each the kept fraction of the fixture
    ax = figures["widths"].axes[0]
    rec = _fixture(VGG_SGLP)
    kept = [l["width_after"] / l["width_before"] for l in rec["layers"]]
    assert any(np.allclose(line.get_ydata(), kept) for line in ax.get_lines())
    with pytest.raises(PaperpruneError):
        reporting.plot_class_graph((np.array([[0, 9]]), np.array([1.0]), np.array([1])), names)
    with pytest.raises(PaperpruneError):
        reporting.plot_class_tree(np.zeros((3, 4)), names)
    with pytest.raises(PaperpruneError, match="nested"):
        reporting.plot_class_tree([[0, 1, 2], [2, 3]], names)
    with pytest.raises(PaperpruneError):
        reporting.plot_tradeoff(runs, "cifar10", "vgg16")


def test_failed_runs_summary(runs):
    text = reporting.failed_runs_summary(runs)
    assert FAILED in text and MALFORMED in text
    assert "lam bisection" in text and "malformed run.json" in text
    assert reporting.failed_runs_summary([r for r in runs if r["status"] == "complete"]) == "No failed runs.\n"


def test_build_reports(tmp_path):
    written = reporting.build_reports(FIXTURES, tmp_path / "report")
    readme = (tmp_path / "report" / "README.md").read_text()
    assert written["index"] == [tmp_path / "report" / "README.md"]
    for key in ("results", "ablation", "sensitivity", "tradeoff", "layer_widths", "sensitivity_figures"):
        assert written[key], key
    for p in (p for paths in written.values() for p in paths):
        assert p.is_file() and p.stat().st_size > 0
        if p.name != "README.md":
            assert p.relative_to(tmp_path / "report").as_posix() in readme
    assert FAILED in readme and MALFORMED in readme
    assert "WARNING" in readme and "fixture" in readme
    assert "sensitivity to gamma_ratio: skipped" in readme
    assert "results on cifar100: skipped" in readme
    assert "paired differences of fine-tuned runs: skipped" in readme and not written["paired"]  # schema 1


def test_writes_are_atomic(runs, tmp_path, monkeypatch):
    table = reporting.results_table(runs, "fashion-mnist")
    (tmp_path / "t.md").write_text("old")

    def fail_replace(src, dst):
        raise OSError("disk full (simulated)")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", fail_replace)
        with pytest.raises(OSError, match="simulated"):
            reporting.write_table(table, tmp_path, "t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.md"]  # no temp files, no partial outputs
    assert (tmp_path / "t.md").read_text() == "old"

    def fail_render(self):
        raise RuntimeError("render failed (simulated)")

    with monkeypatch.context() as m:
        m.setattr(reporting.Table, "to_csv", fail_render)
        with pytest.raises(RuntimeError):
            reporting.write_table(table, tmp_path / "fresh", "t")
    assert not (tmp_path / "fresh").exists()

    fig = reporting.plot_layer_widths(runs, "fashion-mnist", "vgg16")
    real_savefig = fig.savefig

    def savefig(buf, format, **kw):
        if format == "pdf":
            raise RuntimeError("pdf backend failed (simulated)")
        return real_savefig(buf, format=format, **kw)

    monkeypatch.setattr(fig, "savefig", savefig)
    with pytest.raises(RuntimeError):
        reporting.save_figure(fig, tmp_path / "figs", "w")
    assert not (tmp_path / "figs").exists()


# --------------------------------------------------------------------------- curves and paired comparisons

IMAGES = 200
BEST_AGNOSTIC = 120  # hrank: images 0..119 (+ seed) right; l1 and random fewer


def _right(first: int, seed: int, flip: int = 0) -> np.ndarray:
    """Images 0..first+seed-1 right; with `flip`, images 0..flip-1 wrong and the next `flip` right."""
    correct = np.arange(IMAGES) < first + seed
    if flip:
        correct[:flip] = False
        correct[first + seed:first + seed + flip] = True
    return correct


# method -> (per-image correctness after adaptive BN for a seed, kept channels of layer "a")
CURVE_METHODS = {
    "l1": (lambda s: _right(100, s), range(8, 16)),
    "hrank": (lambda s: _right(BEST_AGNOSTIC, s), range(0, 8)),
    "random": (lambda s: _right(80, s), range(4, 12)),
    "classwise": (lambda s: _right(BEST_AGNOSTIC, s, flip=10), range(0, 8)),  # same top-1 as hrank, other images
    "sglp": (lambda s: _right(BEST_AGNOSTIC + 10, s), range(0, 8)),  # hrank's images + 10: exactly +5 points
    "stlp": (lambda s: _right(BEST_AGNOSTIC, s), range(0, 8)),  # identical to hrank
}


def _curves_record(tmp_path=None) -> dict:
    from paperprune.lab.stats import pack_correct

    points = []
    for method, (correct, kept) in CURVE_METHODS.items():
        for seed in (0, 1, 2):
            for target in (0.3, 0.6):
                point = {"method": method, "seed": seed, "target": target, "statistics_s": 1.0}
                if method == "random" and seed == 2 and target == 0.6:
                    points.append(point | {"error": "unreachable (fixture)"})
                    continue
                bn = correct(seed)
                raw = bn & (np.arange(IMAGES) % 4 == 0)
                points.append(point | {
                    "level": 0.1, "macs_reduction": target + 0.001 * seed, "params_reduction": target,
                    "widths": {"a": len(kept) + seed, "b": 16}, "kept": {"a": list(kept), "b": list(range(16))},
                    "top1": 100.0 * raw.mean(), "top1_bn": 100.0 * bn.mean(),
                    "correct": pack_correct(raw), "correct_bn": pack_correct(bn), "evaluate_s": 0.1})
    record = {"config": {"dataset": "fashion-mnist", "arch": "resnet56", "seeds": [0, 1, 2], "targets": [0.3, 0.6],
                         "test_images": IMAGES, "bn_images": 256}, "environment": {"hostname": "fixture"},
              "points": points}
    if tmp_path is not None:
        (tmp_path / "curves.json").write_text(json.dumps(record))
    return record


def test_curves_table_mean_std_n():
    record = _curves_record()
    table = reporting.curves_table(record)
    (row,) = _rows(table, Method="sGLP-IB", **{"Target FLOPs ↓ (%)": "30"})
    values = [p["top1_bn"] for p in record["points"] if p["method"] == "sglp" and p["target"] == 0.3]
    mean, std = _mean_std(values)
    assert row["Top-1 adaptive BN (%)"] == f"{mean:.2f} ± {std:.2f}" and row["n"] == "3"
    raw = [p["top1"] for p in record["points"] if p["method"] == "sglp" and p["target"] == 0.3]
    assert row["Top-1 raw (%)"] == f"{statistics.mean(raw):.2f} ± {statistics.stdev(raw):.2f}"
    (unreached,) = _rows(table, Method="random", **{"Target FLOPs ↓ (%)": "60"})
    assert unreached["n"] == "2" and unreached["Unreached"] == "1"
    assert len(table.rows) == 2 * len(CURVE_METHODS)
    assert "Top-1 adaptive BN" in table.to_latex() and table.to_csv().count("\n") == len(table.rows) + 1
    assert not any("max_iter" in note for note in table.notes)  # an older record: nothing said either way


def test_curves_table_names_points_with_a_stopped_solve():
    record = _curves_record()
    for p in record["points"]:
        if p["method"] in ("classwise", "sglp", "stlp") and "error" not in p:
            p["unconverged_layers"] = ["a"] if (p["method"], p["seed"], p["target"]) == ("sglp", 1, 0.6) else []
    (note,) = [n for n in reporting.curves_table(record).notes if "max_iter" in n]
    assert note.startswith("Approximate: 1 point(s)") and "sglp s1 at 60%" in note
    record["points"] = [p for p in record["points"] if p["method"] != "sglp"]
    (note,) = [n for n in reporting.curves_table(record).notes if "max_iter" in n]
    assert note.startswith("Every lasso solve behind these points converged")


def test_paired_curves_known_answers():
    rows = reporting.paired_curves(_curves_record())
    assert {(r["target"], r["method"]) for r in rows} == {(t, m) for t in (0.3, 0.6) for m in reporting.CLASSWISE}
    by = {(r["target"], r["method"]): r for r in rows}
    for target in (0.3, 0.6):
        assert all(by[target, m]["reference"] == "hrank" for m in reporting.CLASSWISE)
        sglp, stlp, classwise = (by[target, m] for m in ("sglp", "stlp", "classwise"))
        # 10 more of 200 images on every seed: +5 points with no spread over seeds, so the t-interval is a point
        assert sglp["diff"] == sglp["low"] == sglp["high"] == pytest.approx(5.0)
        assert sglp["mean"] - sglp["reference_mean"] == pytest.approx(sglp["diff"])
        assert stlp["diff"] == stlp["low"] == stlp["high"] == 0.0  # identical criteria
        # other images right, the same number on every seed: no difference over seeds either
        assert classwise["diff"] == classwise["low"] == classwise["high"] == pytest.approx(0.0)
        assert sglp["seeds"] == 3 and sglp["images"] == IMAGES and sglp["interval"] == "t"
    raw = reporting.paired_curves(_curves_record(), "top1")
    assert all(r["metric"] == "top1" for r in raw)
    with pytest.raises(PaperpruneError, match="metric 'top5' unknown"):
        reporting.paired_curves(_curves_record(), "top5")
    table = reporting.paired_table(rows, "paired")
    (row,) = _rows(table, Method="sGLP-IB", **{"Target FLOPs ↓ (%)": "30"})
    assert row["Against"] == "HRank" and row["Δ top-1"] == "+5.00" and row["CI"] == "[+5.00, +5.00]"
    assert any("t-interval" in note and "seeds" in note for note in table.notes)


def test_paired_curves_interval_is_the_paired_t_interval_over_seeds():
    """Per-seed gains that differ by seed: the interval is scipy's paired t-interval (df = n - 1) of the
    recorded per-seed values; one seed gives no interval."""
    from scipy import stats

    record = _curves_record()
    gains = {0: 1.0, 1: 6.0, 2: 2.5}
    for p in record["points"]:
        if p["method"] == "sglp" and p["target"] == 0.3:
            hrank = next(q for q in record["points"] if q["method"] == "hrank" and q["seed"] == p["seed"]
                         and q["target"] == 0.3)
            p["top1_bn"] = hrank["top1_bn"] + gains[p["seed"]]
    (row,) = [r for r in reporting.paired_curves(record) if r["method"] == "sglp" and r["target"] == 0.3]
    sglp = [p["top1_bn"] for p in sorted(record["points"], key=lambda p: p["seed"])
            if p["method"] == "sglp" and p["target"] == 0.3]
    hrank = [p["top1_bn"] for p in sorted(record["points"], key=lambda p: p["seed"])
             if p["method"] == "hrank" and p["target"] == 0.3]
    low, high = stats.ttest_rel(sglp, hrank).confidence_interval(0.95)
    assert row["diff"] == pytest.approx(np.mean(list(gains.values())))
    assert (row["low"], row["high"]) == (pytest.approx(low), pytest.approx(high))
    one = dict(record, points=[p for p in record["points"] if p["seed"] == 0])
    (single,) = _rows(reporting.paired_table(reporting.paired_curves(one), "one seed"), Method="sGLP-IB",
                      **{"Target FLOPs ↓ (%)": "30"})
    assert single["CI"] == "n = 1: no interval" and single["Seeds"] == "1"


def test_uniform_rows_are_their_own_and_can_be_the_reference():
    """Points under the uniform allocation are rows of their own ("HRank (uniform)"); when one has the
    highest mean top-1 of the class-agnostic criteria, the class-wise ones are compared with it."""
    record = _curves_record()
    better = [dict(p, allocation="uniform", top1_bn=p["top1_bn"] + 1.0) for p in record["points"]
              if p["method"] == "hrank"]  # one point more per seed than hrank under the global allocation
    record["points"] += better
    labels = [row[0] for row in reporting.curves_table(record).rows if row[1] == "30"]
    assert labels.index("HRank") + 1 == labels.index("HRank (uniform)") and len(labels) == len(set(labels))
    rows = reporting.paired_curves(record)
    assert {r["reference"] for r in rows} == {"hrank:uniform"}
    (sglp,) = [r for r in rows if r["method"] == "sglp" and r["target"] == 0.3]
    assert sglp["diff"] == pytest.approx(4.0)  # +5 over hrank, +1 from hrank to its uniform variant
    (row,) = _rows(reporting.paired_table(rows, "paired"), Method="sGLP-IB", **{"Target FLOPs ↓ (%)": "30"})
    assert row["Against"] == "HRank (uniform)"


def _finetuned(tmp_path, method: str, seed: int, correct: np.ndarray | None) -> None:
    from paperprune.lab.stats import pack_correct

    record = _fixture("fashion-mnist/resnet56/sglp-f50-spc32-s0")
    record["config"].update(method=method, seed=seed)
    record["pruned"]["top1"] = 100.0 * float(np.mean(correct)) if correct is not None else 90.0
    if correct is not None:
        record.update(schema=2, data={"root": "/data", "fingerprint": "0123456789abcdef"}, baseline_cache=None,
                      precision="fp32", criterion={}, latency_budget=None, resumed=[])
        record["pruned"]["correct"] = pack_correct(correct)
        for layer in record["layers"]:
            layer["kept"] = list(range(layer["width_after"]))
    folder = tmp_path / f"{method}-s{seed}"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps(record))


def test_paired_runs_known_answers(tmp_path):
    for seed in (0, 1, 2):
        for method, (correct, _) in CURVE_METHODS.items():
            _finetuned(tmp_path, method, seed, correct(seed))
    _finetuned(tmp_path, "apib", 0, None)  # schema 1, no per-image correctness: left out
    runs = reporting.load_runs(tmp_path)
    assert all(r["status"] == "complete" for r in runs), [r.get("error") for r in runs]
    rows = reporting.paired_runs(runs)
    by = {r["method"]: r for r in rows}
    assert [r["method"] for r in rows] == list(reporting.CLASSWISE)
    assert all(r["reference"] == "hrank" and r["target"] == 0.5 and r["seeds"] == 3 for r in rows)
    assert by["sglp"]["diff"] == by["sglp"]["low"] == pytest.approx(5.0)  # +5 points on every seed
    assert by["stlp"]["low"] == by["stlp"]["high"] == 0.0
    assert by["classwise"]["low"] == by["classwise"]["high"] == pytest.approx(0.0)
    written = reporting.build_reports(tmp_path, tmp_path / "report")
    (table,) = [p for p in written["paired"] if p.suffix == ".md"]
    assert "| resnet56 | 50 | sGLP-IB | HRank |" in table.read_text() and "+5.00" in table.read_text()


def test_curves_figures_and_overlap(tmp_path):
    from paperprune.compare import Comparison

    record = _curves_record()
    fig = reporting.plot_curves(record)
    bn_panel = fig.axes[1]
    sglp = [p["top1_bn"] for p in record["points"] if p["method"] == "sglp" and p["target"] == 0.3]
    assert any(np.isclose(line.get_ydata()[0], np.mean(sglp)) for line in bn_panel.get_lines() if len(line.get_ydata()))
    methods, matrix, seed = reporting.curve_overlap(record, 0.3)
    assert seed == 0
    i = {m: k for k, m in enumerate(methods)}
    assert matrix[i["sglp"], i["stlp"]] == 1.0 and np.allclose(np.diag(matrix), 1.0)
    assert matrix[i["l1"], i["hrank"]] == pytest.approx(16 / 32)  # layer b shared, layer a disjoint
    comparison = Comparison(methods=["l1", "sglp"], kept={"l1": {"a": [0, 1]}, "sglp": {"a": [1, 2]}}, reports={})
    figures = {"curves": fig, "curves_ci": reporting.plot_curves(record, errorbar=("ci", 95)),
               "widths": reporting.plot_curve_widths(record, 0.6),
               "overlap": reporting.plot_overlap(matrix, methods), "overlap_cmp": reporting.plot_overlap(comparison)}
    for stem, figure in figures.items():
        _assert_figure_files(reporting.save_figure(figure, tmp_path, stem))
    with pytest.raises(PaperpruneError, match="errorbar"):
        reporting.plot_curves(record, errorbar="se")
    with pytest.raises(PaperpruneError, match="recorded targets: 0.3, 0.6"):
        reporting.plot_curve_widths(record, 0.45)
    with pytest.raises(PaperpruneError, match="one method name per row"):
        reporting.plot_overlap(matrix, methods[:2])


def test_curves_report_and_load(tmp_path):
    _curves_record(tmp_path)
    record = reporting.load_curves(tmp_path)
    written = reporting.curves_report(record, tmp_path / "out")
    assert set(written) == {"table", "paired_top1", "paired_top1_bn", "structure_top1", "structure_top1_bn", "curves",
                            "widths", "overlap"}
    for paths in written.values():
        assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert "widths_60_fashion-mnist_resnet56.png" in {p.name for p in written["widths"]}  # nearest 55%
    agnostic_only = dict(record, points=[p for p in record["points"] if p["method"] == "l1"])
    assert set(reporting.curves_report(agnostic_only, tmp_path / "l1")) == {"table", "curves", "widths"}
    broken = json.loads((tmp_path / "curves.json").read_text())
    del broken["points"][3]["correct_bn"]
    (tmp_path / "curves.json").write_text(json.dumps(broken))
    with pytest.raises(PaperpruneError, match=r"points\[3\] lacks correct_bn"):
        reporting.load_curves(tmp_path / "curves.json")


def test_structure_pairs_the_structured_lasso_with_the_plain_one():
    """against="structure": sGLP-IB and sTLP-IB against the plain class-wise lasso, never the class-agnostic
    criteria; the per-seed differences as computed here from the recorded top-1, the interval scipy's."""
    from scipy import stats

    record = _curves_record()
    rows = reporting.paired_curves(record, against="structure")
    assert {(r["target"], r["method"]) for r in rows} == {(t, m) for t in (0.3, 0.6) for m in ("sglp", "stlp")}
    assert {r["reference"] for r in rows} == {"classwise"}
    for r in rows:
        top1 = {m: [p["top1_bn"] for p in sorted(record["points"], key=lambda p: p["seed"])
                    if p["method"] == m and p["target"] == r["target"]] for m in (r["method"], "classwise")}
        diffs = np.subtract(top1[r["method"]], top1["classwise"])
        assert r["diff"] == pytest.approx(diffs.mean())
        if diffs.std() > 0:
            low, high = stats.ttest_rel(top1[r["method"]], top1["classwise"]).confidence_interval(0.95)
            assert (r["low"], r["high"]) == (pytest.approx(low), pytest.approx(high))
    table = reporting.paired_table(rows, "structure")
    assert any("plain class-wise lasso" in n for n in table.notes)
    assert not any("class-agnostic criterion" in n for n in table.notes)
    without = dict(record, points=[p for p in record["points"] if p["method"] != "classwise"])
    assert reporting.paired_curves(without, against="structure") == []
    with pytest.raises(PaperpruneError, match="against='plain' unknown"):
        reporting.paired_curves(record, against="plain")
