"""The verdict's evidence: pruning curves and the fine-tuned comparison as tables,
figures and paired confidence intervals.

Inputs: a curves record (`curves.json` of `paperprune.lab.curves.run`: one point per criterion, seed
and FLOPs target, with top-1 raw and after adaptive BN and the per-image correctness of both),
and run records of fine-tuned runs (`run.json`, schema 2: `pruned.correct`). Seeds aggregate as
mean +- sample std (ddof 1) with n. A class-wise criterion (CLASSWISE) is compared with the best
class-agnostic one (AGNOSTIC under either allocation, the highest mean top-1 at that target, so
the comparison is against the strongest competitor the test set shows) by its per-seed paired
differences method - reference on the same seeds and test images, with the t-interval over seeds
of `paperprune.lab.seeds.paired_difference` (n - 1 degrees of freedom; METHOD.md section 6).

A criterion run under the uniform allocation (`paperprune.select`, a curves point's or run's
`allocation`) is a row of its own, keyed "l1:uniform" and labelled "L1-norm (uniform)".
"""
from __future__ import annotations

import itertools
import warnings

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from ...compare import Comparison, jaccard
from ...criteria import AGNOSTIC, CLASSWISE
from ...utils import PaperpruneError
from ..record import read_curves
from ..seeds import NO_INTERVAL, paired_difference, summarize, unpaired_difference
from ..stats import unpack_correct
from .figures import new_figure, save_figure
from .records import BOOKKEEPING_KEYS, canon, complete_runs, entry_key, method_label, method_rank, mean_std_n
from .tables import Table, write_table

__all__ = ["AGNOSTIC", "CLASSWISE", "CURVE_METRICS", "load_curves", "curves_table", "variant_table", "unpaired_table",
           "plot_curves",
           "plot_curve_widths", "curve_overlap", "plot_overlap", "paired_curves", "paired_runs", "paired_table",
           "curves_report", "paired_title", "PAIRINGS", "STRUCTURE_REFERENCE"]

#: curves metric -> (its per-image correctness key, what it measures)
CURVE_METRICS = {"top1": ("correct", "raw"), "top1_bn": ("correct_bn", "after adaptive BN")}

#: the reference of the structure comparison: sGLP-IB and sTLP-IB against the same lasso without their structure
STRUCTURE_REFERENCE = "classwise"

#: what `paired_curves` compares -> (table file prefix, table title's start)
PAIRINGS = {"agnostic": ("paired", "Class-wise vs best class-agnostic criterion"),
            "structure": ("structure", "Class structure vs the plain class-wise lasso")}


# --------------------------------------------------------------------------- loading

def load_curves(path: str | Path) -> dict:
    """A curves record (`curves.json`, or the folder holding it) read through its one schema,
    `paperprune.lab.record.read_curves` (RecordError naming the key): every point names its method,
    seed and target and has either an `error` or all of macs_reduction, top1, top1_bn, correct,
    correct_bn and widths. Returned as the dict curves.json holds (a version-1 record's later
    fields None); points with an error stay in `points` (tables count them)."""
    path = Path(path)
    return read_curves(path / "curves.json" if path.is_dir() else path).to_dict()


def _check_metric(metric: str) -> None:
    if metric not in CURVE_METRICS:
        raise PaperpruneError(f"metric {metric!r} unknown; use one of {', '.join(CURVE_METRICS)}")


def _ok(record: dict, target: float | None = None) -> list[dict]:
    return [p for p in record["points"] if "error" not in p and (target is None or np.isclose(p["target"], target))]


def _key(point: dict) -> str:
    """A point's criterion as the tables key it: its method, with ":uniform" under the uniform allocation."""
    return entry_key(point["method"], point.get("allocation"))


def _targets(record: dict) -> list[float]:
    return sorted({float(p["target"]) for p in record["points"]})


def _methods(points: Sequence[dict]) -> list[str]:
    return sorted({_key(p) for p in points}, key=method_rank)


def record_variant(record: dict) -> str:
    """The ablation variant of a curves record ("" for the main record; `curves.variant_name`)."""
    from ..curves import variant_name

    return variant_name(record["config"].get("criterion_options"))


def record_title(record: dict) -> str:
    """"ARCH on DATASET (variant)", how pages and tables name a curves record."""
    c = record["config"]
    variant = record_variant(record)
    return f"{c.get('arch', '?')} on {c.get('dataset', '?')}" + (f" ({variant})" if variant else "")


# --------------------------------------------------------------------------- tables

def mean_std_cell(values: Sequence[float], scale: float = 1.0, decimals: int = 2) -> str:
    stat = mean_std_n(values)
    if stat is None:
        return "—"
    mean, std, n = stat
    return f"{scale * mean:.{decimals}f}" + (f" ± {scale * std:.{decimals}f}" if n > 1 else "")


def curves_table(record: dict) -> Table:
    """One row per method and FLOPs target: n seeds, FLOPs reduction reached, top-1 raw and after
    adaptive BN (mean ± std over seeds), and how many seeds could not reach the target."""
    rows = []
    for target in _targets(record):
        at = [p for p in record["points"] if np.isclose(p["target"], target)]
        for method in _methods(at):
            ok = [p for p in at if _key(p) == method and "error" not in p]
            failed = sum(1 for p in at if _key(p) == method and "error" in p)
            rows.append([method_label(method), f"{100 * target:g}", str(len(ok)),
                         mean_std_cell([p["macs_reduction"] for p in ok], 100.0, 1), mean_std_cell([p["top1"] for p in ok]),
                         mean_std_cell([p["top1_bn"] for p in ok]), str(failed)])
    c = record["config"]
    notes = [f"Pruned without fine-tuning; top-1 on {c.get('test_images', '?')} test images, mean ± sample std "
             f"(ddof=1) over n calibration seeds ({', '.join(str(s) for s in c.get('seeds', []))}).",
             f"Adaptive BN: BatchNorm statistics re-estimated on {c.get('bn_images', '?')} training images "
             "(EagleEye, ECCV 2020); raw: the baseline's statistics.",
             "Unreached: seeds whose criterion could not reach the target (recorded with an error)."]
    stalled = [p for p in record["points"] if p.get("unconverged_layers")]
    if stalled:
        notes.append(f"Approximate: {len(stalled)} point(s) had a lasso solve stopped at max_iter before its "
                     "tolerance (" + ", ".join(sorted({f"{p['method']} s{p['seed']} at {100 * p['target']:g}%"
                                                         for p in stalled}))
                     + "); their layers are named in the record's `unconverged_layers`.")
    elif any("unconverged_layers" in p for p in record["points"]):
        notes.append("Every lasso solve behind these points converged (none stopped at max_iter).")
    return Table(f"Pruning curves: {record_title(record)}",
                 ["Method", "Target FLOPs ↓ (%)", "n", "FLOPs ↓ (%)", "Top-1 raw (%)", "Top-1 adaptive BN (%)",
                  "Unreached"], rows, notes)


def paired_table(rows: Sequence[dict], title: str) -> Table:
    """Rows of `paired_curves` / `paired_runs` as a table: each class-wise criterion against its reference
    (the best class-agnostic criterion, or the plain class-wise lasso for the structure comparison), its
    mean paired difference in top-1 points and the t-interval over seeds."""
    body = [[r["arch"], "—" if r["target"] is None else f"{100 * r['target']:g}", method_label(r["method"]),
             method_label(r["reference"]),
             f"{r['mean']:.2f}", f"{r['reference_mean']:.2f}", f"{r['diff']:+.2f}",
             _interval(r), str(r["seeds"]), str(r["images"]),
             f"{100 * r['macs_reduction']:.1f} / {100 * r['reference_macs_reduction']:.1f}"] for r in rows]
    confidence = {r["confidence"] for r in rows} or {0.95}
    structure = bool(rows) and all(r["reference"] == STRUCTURE_REFERENCE for r in rows)
    against = ("Against: the plain class-wise lasso (the same statistics and solver without the class graph or "
               "tree), so Δ is what the class structure adds." if structure else
               "Against: the class-agnostic criterion (l1, hrank, apib, random, under either allocation) with the "
               "highest mean top-1 at that target.")
    notes = [against + " Δ = method − against, in top-1 points: the mean over seeds of "
             "the per-seed differences on the same seeds and test images.",
             _ci_note(max(confidence)),
             "Means are over the seeds both criteria have; FLOPs ↓ is method / against."]
    return Table(title, ["Arch", "Target FLOPs ↓ (%)", "Method", "Against", "Top-1 (%)", "Against top-1 (%)",
                         "Δ top-1", "CI", "Seeds", "Images", "FLOPs ↓ (%)"], body, notes)


# --------------------------------------------------------------------------- paired differences

def _interval(row: dict) -> str:
    """A row's interval as "[low, high]" (signed), or what one seed has instead."""
    return NO_INTERVAL if row["low"] is None else f"[{row['low']:+.2f}, {row['high']:+.2f}]"


def _ci_note(confidence: float) -> str:
    return (f"CI: {100 * confidence:g}% t-interval of the mean paired difference over seeds (n − 1 degrees of "
            "freedom; paperprune.lab.seeds.paired_difference, METHOD.md section 6); one seed gives no interval. The "
            "seed (calibration draw) is the unit: an interval that excludes 0 is a difference beyond what another "
            "draw of seeds would change.")


def _difference(method: dict[int, float], reference: dict[int, float], confidence: float) -> dict:
    """`paired_difference` of two {seed: top-1} as a row's fields: diff, std, low, high, confidence, interval."""
    d = paired_difference(method, reference, confidence)
    return {"diff": d.mean, "std": d.std, "low": d.low, "high": d.high, "confidence": d.confidence,
            "interval": d.interval}


def _classwise_rank(key: str) -> tuple:
    """Class-wise rows in CLASSWISE's order, each method's global row before its uniform one."""
    method, _, allocation = key.partition(":")
    return CLASSWISE.index(method), allocation


def _compare(by_method: dict[str, dict[int, tuple[np.ndarray, float, float]]], context: dict,
             confidence: float, against: str = "agnostic") -> list[dict]:
    """by_method[key][seed] = (correct per image, top-1, macs_reduction), keys as `_key` gives them:
    each class-wise criterion against the class-agnostic one (under either allocation) with the
    highest mean top-1 (`against="agnostic"`), or each structured criterion against the plain
    class-wise lasso (`against="structure"`), over the seeds both have."""
    def base(key: str) -> str:
        return key.split(":")[0]

    if against == "structure":
        if not by_method.get(STRUCTURE_REFERENCE):
            return []
        best = STRUCTURE_REFERENCE
        candidates = [m for m in by_method if base(m) in CLASSWISE and m != best and by_method[m]]
    else:
        agnostic = [m for m in by_method if base(m) in AGNOSTIC and by_method[m]]
        if not agnostic:
            return []
        best = max(sorted(agnostic, key=lambda m: (AGNOSTIC.index(base(m)), m)),  # ties: the earlier in AGNOSTIC
                   key=lambda m: np.mean([v[1] for v in by_method[m].values()]))
        candidates = [m for m in by_method if base(m) in CLASSWISE and by_method[m]]
    rows = []
    for method in sorted(candidates, key=_classwise_rank):
        seeds = sorted(set(by_method[method]) & set(by_method[best]))
        if not seeds:
            continue
        images = {len(by_method[m][s][0]) for m in (method, best) for s in seeds}
        if len(images) > 1:
            raise PaperpruneError(f"{context} {method} and {best} were scored on different numbers of test images "
                                  f"({sorted(images)}); compare runs on one test set")
        top1 = {m: {s: by_method[m][s][1] for s in seeds} for m in (method, best)}
        rows.append({**context, "method": method, "reference": best,
                     "mean": float(np.mean(list(top1[method].values()))),
                     "reference_mean": float(np.mean(list(top1[best].values()))),
                     "macs_reduction": float(np.mean([by_method[method][s][2] for s in seeds])),
                     "reference_macs_reduction": float(np.mean([by_method[best][s][2] for s in seeds])),
                     **_difference(top1[method], top1[best], confidence), "seeds": len(seeds),
                     "images": images.pop()})
    return rows


def paired_title(record: dict, metric: str, against: str) -> str:
    """The title of a curves record's paired table (`paired_curves(record, metric, against=against)`)."""
    return f"{PAIRINGS[against][1]}, {CURVE_METRICS[metric][1]}, no fine-tuning: {record_title(record)}"


def paired_curves(record: dict, metric: str = "top1_bn", *, against: str = "agnostic",
                  confidence: float = 0.95) -> list[dict]:
    """At each target of a curves record: each class-wise criterion's paired difference in `metric`
    ("top1_bn" or "top1") from the best class-agnostic one (`against="agnostic"`), or sGLP-IB's and
    sTLP-IB's from the plain class-wise lasso (`against="structure"`). Rows: dataset, arch, target, metric,
    method, reference, mean, reference_mean, macs_reduction, reference_macs_reduction, and the
    paired difference over seeds: diff, std, low, high (None for one seed), confidence, interval
    ("t"), seeds (n), images."""
    _check_metric(metric)
    if against not in PAIRINGS:
        raise PaperpruneError(f"against={against!r} unknown; use one of {', '.join(PAIRINGS)}")
    key = CURVE_METRICS[metric][0]
    c = record["config"]
    rows = []
    for target in _targets(record):
        by_method: dict[str, dict] = {}
        for p in _ok(record, target):
            by_method.setdefault(_key(p), {})[p["seed"]] = (unpack_correct(p[key]), p[metric], p["macs_reduction"])
        context = {"dataset": c.get("dataset"), "arch": c.get("arch"), "target": target, "metric": metric}
        rows += _compare(by_method, context, confidence, against)
    return rows


def paired_runs(runs: Sequence[dict], *, confidence: float = 0.95) -> list[dict]:
    """The same comparison for fine-tuned runs (`load_runs` records with `pruned.correct`, schema 2):
    runs whose configs agree on everything but the method and the seed form one comparison
    (metric "top1": the final evaluation). Runs without per-image correctness are left out, and a
    configuration without both a class-wise and a class-agnostic run gives no row."""
    groups: dict[tuple, list[dict]] = {}
    for run in complete_runs(runs):
        if (run.get("pruned") or {}).get("correct") is None:
            continue
        key = tuple(sorted((k, canon(v)) for k, v in run["config"].items()
                           if k not in BOOKKEEPING_KEYS | {"method", "allocation"}))
        groups.setdefault(key, []).append(run)
    rows = []
    for group in groups.values():
        data = {canon(r.get("data")) for r in group}
        c = group[0]["config"]
        if len(data) > 1:
            raise PaperpruneError(f"runs {[r['relpath'] for r in group]} read different data {sorted(data)}: "
                                  "their per-image results cannot be paired")
        by_method: dict[str, dict] = {}
        for r in group:
            by_method.setdefault(entry_key(r["config"]["method"], r["config"].get("allocation")), {})[
                r["config"].get("seed")] = (
                unpack_correct(r["pruned"]["correct"]), r["pruned"]["top1"], r["pruned"]["macs_reduction"])
        context = {"dataset": c.get("dataset"), "arch": c.get("arch"), "target": c.get("flops_reduction"),
                   "metric": "top1"}
        rows += _compare(by_method, context, confidence)
    return sorted(rows, key=lambda r: (str(r["dataset"]), str(r["arch"]), r["target"] or 0.0,
                                       _classwise_rank(r["method"])))


def _kept_jaccard(a: dict, b: dict) -> float:
    """Jaccard of the (layer, channel) pairs two curves points keep."""
    return jaccard({(layer, c) for layer, kept in a["kept"].items() for c in kept},
                   {(layer, c) for layer, kept in b["kept"].items() for c in kept})


def variant_table(main: dict, variant: dict, metric: str = "top1_bn", *, confidence: float = 0.95) -> Table:
    """An ablation variant (a curves record with criterion options, e.g. B >= 0) against the main
    curves of the same baseline, per method and target both hold: top-1 of each (mean ± std over the
    seeds both have) and the mean paired difference variant − main over those seeds (the same
    calibration samples: the seeds draw the same images in both) with its t-interval."""
    _check_metric(metric)
    keys = ("dataset", "arch", "baseline_sha256", "samples_per_class", "test_images")
    differ = [k for k in keys if main["config"].get(k) != variant["config"].get(k)]
    if differ:
        raise PaperpruneError(f"the variant {record_title(variant)} and the main curves {record_title(main)} differ in "
                              f"{', '.join(differ)}: pair a variant with the curves of its own baseline and grid")
    key, rows = CURVE_METRICS[metric][0], []
    for target in _targets(variant):
        ours = {(_key(p), p["seed"]): p for p in _ok(variant, target)}
        theirs = {(_key(p), p["seed"]): p for p in _ok(main, target)}
        for method in _methods([p for p in ours.values()]):
            seeds = sorted(s for m, s in ours if m == method and (m, s) in theirs)
            if not seeds:
                continue
            d = _difference({s: ours[method, s][metric] for s in seeds}, {s: theirs[method, s][metric] for s in seeds},
                            confidence)
            rows.append([method_label(method), f"{100 * target:g}", str(len(seeds)),
                         mean_std_cell([theirs[method, s][metric] for s in seeds]), mean_std_cell([ours[method, s][metric] for s in seeds]),
                         f"{d['diff']:+.2f}", _interval(d),
                         f"{mean_std_cell([100 * ours[method, s]['macs_reduction'] for s in seeds], 1.0, 1)}",
                         mean_std_cell([_kept_jaccard(ours[method, s], theirs[method, s]) for s in seeds
                                if "kept" in ours[method, s] and "kept" in theirs[method, s]])])
    what = CURVE_METRICS[metric][1]
    return Table(f"Ablation {record_variant(variant)} vs main curves, {what}, no fine-tuning: {record_title(main)}",
                 ["Method", "Target FLOPs ↓ (%)", "n", "Main top-1 (%)", "Variant top-1 (%)", "Δ top-1", "CI",
                  "Variant FLOPs ↓ (%)", "Kept overlap"], rows,
                 ["Δ = variant − main in top-1 points: the mean over seeds of the per-seed differences on the same "
                  "seeds (calibration samples) and test images.", _ci_note(confidence),
                  "Kept overlap: Jaccard of the (layer, channel) pairs the variant and the main curves keep at that "
                  "seed and target, mean ± std over seeds (1 = the same channels; — where a record holds no kept channels)."])


def unpaired_table(reference: dict, record: dict, metric: str = "top1_bn", *, confidence: float = 0.95) -> Table:
    """Curves on other calibration samples (e.g. 50 images per class) against a reference curves record of the
    same baseline and test images (e.g. 10 per class), per method and target both hold: top-1 of each, mean ±
    std over its own seeds, and the difference of the means record − reference with Welch's t-interval
    (`paperprune.lab.seeds.unpaired_difference`): the records draw different samples, so no seed pairs them."""
    _check_metric(metric)
    keys = ("dataset", "arch", "baseline_sha256", "test_images")
    differ = [k for k in keys if reference["config"].get(k) != record["config"].get(k)]
    if differ:
        raise PaperpruneError(f"{record_title(record)} and the reference {record_title(reference)} differ in "
                              f"{', '.join(differ)}: compare curves of one baseline on one test set")
    rows = []
    for target in _targets(record):
        ours, theirs = ({m: [p[metric] for p in _ok(r, target) if _key(p) == m] for m in _methods(_ok(r, target))}
                        for r in (record, reference))
        for method in (m for m in ours if m in theirs):
            d = unpaired_difference(ours[method], theirs[method], confidence)
            rows.append([method_label(method), f"{100 * target:g}", f"{len(theirs[method])} / {len(ours[method])}",
                         mean_std_cell(theirs[method]), mean_std_cell(ours[method]), f"{d.mean:+.2f}",
                         d.interval_text(signed=True) if d.low is not None else "no interval"])
    per_class = [r["config"].get("samples_per_class") for r in (reference, record)]
    what = CURVE_METRICS[metric][1]
    return Table(f"{record_title(record)}, {per_class[1]} per class, against {record_title(reference)}, "
                 f"{per_class[0]} per class: {what}, no fine-tuning (unpaired)",
                 ["Method", "Target FLOPs ↓ (%)", "n (reference / this)", "Reference top-1 (%)", "This top-1 (%)",
                  "Δ top-1", "CI"], rows,
                 ["Δ = this record's mean top-1 − the reference's, in points, each mean over its own seeds; the two "
                  "draw different calibration samples, so no seed pairs them.",
                  f"CI: {100 * confidence:g}% Welch t-interval of the difference of the means "
                  "(paperprune.lab.seeds.unpaired_difference; no interval where a side has one seed)."])


# --------------------------------------------------------------------------- figures

def _frame(points: Sequence[dict]):
    import pandas as pd

    df = pd.DataFrame([{"method": _key(p), "Criterion": method_label(_key(p)), "seed": p["seed"],
                        "target": p["target"], "macs_reduction": p["macs_reduction"], "top1": p["top1"],
                        "top1_bn": p["top1_bn"]} for p in points])
    # x: the FLOPs reduction each (criterion, target) reached, averaged over seeds, so seeds share an x
    df["flops"] = 100.0 * df.groupby(["method", "target"])["macs_reduction"].transform("mean")
    return df


def _band(errorbar) -> tuple[str, Any]:
    """(the band's caption, seaborn's `errorbar`): "sd" as seaborn draws it, ("ci", level) as the
    t-interval of the mean over seeds of `paperprune.lab.seeds.summarize`."""
    if errorbar == "sd":
        return "band: ± 1 sample std over seeds", "sd"
    if isinstance(errorbar, tuple) and len(errorbar) == 2 and errorbar[0] == "ci" and 0 < errorbar[1] < 100:
        confidence = errorbar[1] / 100.0

        def t_interval(values):
            s = summarize(np.asarray(values), confidence)
            return (s.mean, s.mean) if s.low is None else (s.low, s.high)

        return f"band: {errorbar[1]}% t-interval of the mean over seeds", t_interval
    raise PaperpruneError(f"errorbar={errorbar!r}: use 'sd' or ('ci', 95)")


def plot_curves(record: dict, errorbar: Any = "sd") -> Figure:
    """Top-1 against the FLOPs reduction reached, one line per criterion (mean over seeds) with a band
    ("sd", ± one sample std, the default; or ("ci", 95), the t-interval of the mean over seeds of
    `paperprune.lab.seeds.summarize`), raw and after adaptive BN side by side."""
    import seaborn as sns

    band, errorbar = _band(errorbar)
    points = _ok(record)
    if not points:
        raise PaperpruneError(f"the curves record of {record_title(record)} has no point that reached its target")
    df = _frame(points)
    order = [method_label(m) for m in _methods(points)]
    fig = Figure(figsize=(8.4, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (metric, (_, what)) in zip(axes, CURVE_METRICS.items()):
        sns.lineplot(data=df, x="flops", y=metric, hue="Criterion", hue_order=order, errorbar=errorbar,
                     marker="o", markersize=4, linewidth=1, seed=0, ax=ax, legend=ax is axes[1])
        ax.set_xlabel("FLOPs reduction reached (%)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"{what}", fontsize=9)
    axes[1].legend(fontsize=6, title=None)
    n = len({p["seed"] for p in points})
    fig.suptitle(f"Pruning curves without fine-tuning: {record_title(record)} ({band}, {n} seeds)", fontsize=9)
    return fig


def plot_curve_widths(record: dict, target: float, errorbar: Any = "sd") -> Figure:
    """Channels kept per prunable layer at one FLOPs `target`, one line per criterion (mean over
    seeds, band as in `plot_curves`)."""
    import pandas as pd
    import seaborn as sns

    band, errorbar = _band(errorbar)
    points = _ok(record, target)
    if not points:
        raise PaperpruneError(f"no point of {record_title(record)} reached target {target}; recorded targets: "
                              f"{', '.join(f'{t:g}' for t in _targets(record))}")
    df = pd.DataFrame([{"Criterion": method_label(_key(p)), "layer": i, "kept": w}
                       for p in points for i, w in enumerate(p["widths"].values())])
    fig, ax = new_figure(6.4, 3.4)
    sns.lineplot(data=df, x="layer", y="kept", hue="Criterion",
                 hue_order=[method_label(m) for m in _methods(points)], errorbar=errorbar, marker="o",
                 markersize=3, linewidth=1, seed=0, ax=ax)
    ax.set_xlabel("prunable layer (index, model order)")
    ax.set_ylabel("channels kept")
    ax.set_title(f"Kept widths at {100 * target:g}% fewer FLOPs: {record_title(record)}\n({band})", fontsize=9)
    ax.legend(fontsize=6)
    return fig


def curve_overlap(record: dict, target: float, seed: int | None = None) -> tuple[list[str], np.ndarray, int]:
    """(methods, (M, M) Jaccard overlaps of their kept (layer, channel) sets, the seed) at one target
    and seed (default: the smallest seed every method reached the target with)."""
    points = _ok(record, target)
    methods = _methods(points)
    if seed is None:
        common = set.intersection(*({p["seed"] for p in points if _key(p) == m} for m in methods)) \
            if methods else set()
        seed = min(common) if common else None
    chosen = {_key(p): p for p in points if p["seed"] == seed}
    if len(chosen) < 2 or any("kept" not in p for p in chosen.values()):
        raise PaperpruneError(f"need kept channel sets of at least two criteria at target {target} with one seed "
                              f"(seed={seed}); curves records written since kept indices are recorded have them")
    methods = [m for m in methods if m in chosen]
    sets = [{(layer, c) for layer, kept in chosen[m]["kept"].items() for c in kept} for m in methods]
    return methods, np.array([[jaccard(a, b) for b in sets] for a in sets]), seed


def plot_overlap(overlap: Comparison | np.ndarray, methods: Sequence[str] | None = None,
                 title: str = "Selection overlap (Jaccard of kept channels)") -> Figure:
    """Heatmap of Jaccard overlaps: a `paperprune.compare.Comparison` (whole model) or a matrix with
    its `methods` (e.g. from `curve_overlap`)."""
    import seaborn as sns

    if isinstance(overlap, Comparison):
        methods, overlap = overlap.methods, overlap.overlap()
    overlap = np.asarray(overlap, dtype=float)
    if methods is None or overlap.shape != (len(methods), len(methods)):
        raise PaperpruneError(f"overlap matrix of shape {overlap.shape} needs one method name per row and column, "
                              f"got {methods!r}")
    labels = [method_label(m) for m in methods]
    fig, ax = new_figure(1.4 + 0.75 * len(labels), 1.0 + 0.6 * len(labels))
    sns.heatmap(overlap, vmin=0.0, vmax=1.0, annot=True, fmt=".2f", annot_kws={"fontsize": 6}, cmap="viridis",
                square=True, xticklabels=labels, yticklabels=labels, cbar_kws={"label": "Jaccard"}, ax=ax)
    ax.tick_params(labelsize=6)
    ax.set_title(title, fontsize=9)
    return fig


# --------------------------------------------------------------------------- the whole evidence

def curves_report(record: dict, out_dir: str | Path, *, target: float | None = None,
                  errorbar: Any = "sd") -> dict[str, list[Path]]:
    """Write a curves record's table, paired-difference tables (after adaptive BN and raw; when it
    holds a class-wise and a class-agnostic criterion), curves figure, kept widths and overlap
    heatmap (two criteria or more) at `target` (default: the recorded target nearest 55%,
    ResNet-56's operating point) under out_dir/tables and out_dir/figures; file names end in the
    dataset, the arch and the variant (`paperprune.lab.curves.variant_name` of its criterion options)."""
    out = Path(out_dir)
    c = record["config"]
    if not record["points"]:
        warnings.warn(f"the curves record of {c.get('arch')} on {c.get('dataset')} holds no points (an empty curve): "
                      "nothing to report; run paperprune.lab.curves for it first", stacklevel=2)
        return {}
    stem = "_".join(filter(None, (c.get("dataset", "data"), c.get("arch", "model"), record_variant(record))))
    stem = stem.replace("/", "_")
    targets = _targets(record)
    target = min(targets, key=lambda t: abs(t - 0.55)) if target is None else target
    written = {"table": write_table(curves_table(record), out / "tables", f"curves_{stem}")}
    for against, metric in itertools.product(PAIRINGS, CURVE_METRICS):
        rows = paired_curves(record, metric, against=against)
        if rows:
            prefix = PAIRINGS[against][0]
            written[f"{prefix}_{metric}"] = write_table(paired_table(rows, paired_title(record, metric, against)),
                                                        out / "tables", f"{prefix}_{metric}_{stem}")
    written["curves"] = save_figure(plot_curves(record, errorbar), out / "figures", f"curves_{stem}")
    written["widths"] = save_figure(plot_curve_widths(record, target, errorbar), out / "figures",
                                    f"widths_{100 * target:g}_{stem}")
    if len(_methods(_ok(record, target))) > 1:
        methods, matrix, seed = curve_overlap(record, target)
        title = f"Overlap of kept channels at {100 * target:g}% fewer FLOPs\n{record_title(record)}, seed {seed}"
        written["overlap"] = save_figure(plot_overlap(matrix, methods, title), out / "figures",
                                         f"overlap_{100 * target:g}_{stem}")
    return written
