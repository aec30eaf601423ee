"""A profile's tables and figures rebuilt from its committed records, and the results page written
from every profile's records.

`figures/<profile>/records/` holds what a profile's run recorded (`curves/<job>/curves.json`,
`<dataset>/<arch>/<run>/run.json`, `baselines/<arch>/metrics.jsonl`). `rebuild` writes the
profile's tables and figures from those files alone, running nothing. `results_page` writes the
results page (docs/results.md) from the same files: every number on it is computed here from a
record, so the page changes exactly when the records do, and tests/test_docs_results.py holds the
committed page to what this module writes.

Comparisons follow METHOD.md section 6: the seed is the unit, each class-wise criterion is compared
with the strongest class-agnostic one at that target (either allocation) by the per-seed paired
differences and their t-interval (`paperprune.lab.seeds.paired_difference`).
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .curves import (CURVE_METRICS, PAIRINGS, curves_report, mean_std_cell, curves_table, load_curves, paired_curves, paired_runs, paired_table, paired_title,
                     record_title, record_variant, unpaired_table, variant_table)
from ...select import entry_name
from .records import complete_runs, load_runs, method_label, method_rank
from .tables import Table, results_table, write_table

__all__ = ["ablation_report", "baseline_summary", "baselines_table", "rebuild", "results_page", "unpaired_tables",
           "verdict_counts"]


# --------------------------------------------------------------------------- reading a profile's records

def baseline_summary(folder: str | Path) -> dict | None:
    """The final epoch of a trained baseline's record (`config.json` and `metrics.jsonl` in `folder`):
    arch, dataset, epochs, test_top1, precision, train_images, hours; None where there is no record."""
    folder = Path(folder)
    if not (folder / "metrics.jsonl").is_file() or not (folder / "config.json").is_file():
        return None
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
               if line]
    if not history:
        return None
    last = history[-1]
    return {"arch": config["arch"], "dataset": config["dataset"], "epochs": last["epoch"],
            "test_top1": last["test_top1"], "precision": last["precision"],
            "train_images": last["train_images"], "hours": sum(h["epoch_seconds"] for h in history) / 3600}


def baselines_table(folders: Sequence[str | Path]) -> Table | None:
    """The final-epoch summary of each trained baseline in `folders` as a table; None if none has a record."""
    rows = [[b["arch"], str(b["epochs"]), f"{b['test_top1']:.2f}", b["precision"], f"{b['train_images']:,}",
             f"{60 * b['hours']:.0f}"] for b in filter(None, map(baseline_summary, folders))]
    if not rows:
        return None
    return Table("Baselines (final epoch, never the best)",
                 ["Arch", "Epochs", "Test top-1 (%)", "Precision", "Train images per epoch", "Minutes"],
                 rows, ["Top-1 on the whole test set after the last epoch (`metrics.jsonl`)."])


@dataclass
class _Records:
    """One profile's records: main curves, ablation variants (each with its main), runs, baselines."""
    curves: list[tuple[Path, dict]]
    variants: list[tuple[Path, dict, dict]]
    runs: list[dict]
    baselines: list[Path]


def _model(record: dict) -> tuple:
    """The (dataset, arch) a curves record prunes."""
    return record["config"].get("dataset"), record["config"].get("arch")


def _read(records: Path) -> _Records:
    loaded = [(p, load_curves(p)) for p in sorted((records / "curves").glob("*/curves.json"))]
    main = {_model(r): r for _, r in loaded if not record_variant(r)}
    # a variant is an ablation of its profile's main curves of the same model; without one it is the profile's curves
    curves = [(p, r) for p, r in loaded if main.get(_model(r), r) is r]
    variants = [(p, r, main[_model(r)]) for p, r in loaded if record_variant(r) and _model(r) in main]
    run_dirs = [d for d in records.iterdir() if d.is_dir() and d.name not in ("curves", "baselines")]
    runs = [r for d in run_dirs for r in load_runs(d)]
    baselines = sorted(d for d in (records / "baselines").glob("*") if d.is_dir())
    return _Records(curves, variants, runs, baselines)


def _stem(record: dict) -> str:
    c = record["config"]
    return "_".join(filter(None, (c.get("dataset", "data"), c.get("arch", "model"), record_variant(record)))).replace("/", "_")


def ablation_report(main: dict, variant: dict, figures: str | Path) -> list[Path]:
    """An ablation variant's curves against its main curves (`variant_table`), raw and after adaptive BN,
    as tables under `figures/tables`; the files written."""
    written = []
    for metric in CURVE_METRICS:
        written += write_table(variant_table(main, variant, metric), Path(figures) / "tables",
                               f"ablation_{metric}_{_stem(variant)}")
    return written


def _references(found: _Records, reference: Path | None) -> list[tuple[dict, dict]]:
    """(reference, record) for each curves record of a profile whose model the reference profile's main curves
    (folder `reference`, a profile's figures) also hold; none without a reference."""
    if reference is None:
        return []
    main = {_model(r): r for _, r in _read(reference / "records").curves}
    return [(main[_model(record)], record) for _, record in found.curves if _model(record) in main]


def unpaired_tables(figures: str | Path, compared_with: str | Path) -> list[Path]:
    """A profile's curves (`figures/records`) against the main curves of the profile it is compared with (its
    figures folder `compared_with`), on other samples (`unpaired_table`), raw and after adaptive BN, as tables
    under `figures/tables`; the files written (none where the other profile has no curves of the model)."""
    written = []
    for reference, record in _references(_read(Path(figures) / "records"), Path(compared_with)):
        for metric in CURVE_METRICS:
            written += write_table(unpaired_table(reference, record, metric), Path(figures) / "tables",
                                   f"unpaired_{metric}_{_stem(record)}")
    return written


def rebuild(figures: str | Path, compared_with: str | Path | None = None) -> list[Path]:
    """Every table and figure of one profile (`figures/<profile>`) rebuilt from `figures/<profile>/records`
    alone: the curves tables, paired tables and figures of each curves record, each ablation variant
    against its main curves, the fine-tuned runs' report, the baselines table; with `compared_with` (the
    figures folder of the profile it is compared with, `Profile.compared_with`), each curves record against
    that profile's main curves, unpaired. Nothing is run; the files written are returned."""
    figures = Path(figures)
    found = _read(figures / "records")
    written: list[Path] = []
    for _, record in found.curves:
        written += [p for paths in curves_report(record, figures).values() for p in paths]
    if compared_with is not None:
        written += unpaired_tables(figures, compared_with)
    for _, record, main in found.variants:
        written += ablation_report(main, record, figures)
    if found.runs:
        from .build import build_reports

        written += [p for paths in build_reports(figures / "records", figures).values() for p in paths]
    table = baselines_table(found.baselines)
    if table is not None:
        written += write_table(table, figures / "tables", "baselines")
    return written


# --------------------------------------------------------------------------- the results page

def _fine_tune(runs: Sequence[dict]) -> str:
    """What the fine-tune of `runs` was, from their configs: epochs, training images, learning rate."""
    settings = {(r["config"].get("finetune_epochs"), r["config"].get("per_class"), r["config"].get("finetune_lr"))
                for r in complete_runs(runs)}
    parts = []
    for epochs, per_class, lr in sorted(settings, key=str):
        images = "all training images" if per_class is None else f"{per_class} training images per class"
        parts.append(f"{epochs} epoch(s) over {images}, lr {lr}")
    return "; ".join(parts)


def _epochs_table(runs: Sequence[dict]) -> Table | None:
    """Top-1 after each fine-tuning epoch (`pruned.finetune_top1`), mean ± std over seeds per criterion: whether
    the criteria's order changes as fine-tuning lengthens. None where no run records it."""
    by_method: dict[str, list[list[float]]] = {}
    for r in complete_runs(runs):
        history = (r.get("pruned") or {}).get("finetune_top1")
        if history:
            by_method.setdefault(entry_name(r["config"]["method"], r["config"].get("allocation")), []).append(history)
    if not by_method:
        return None
    epochs = max(len(h) for hs in by_method.values() for h in hs)
    rows = [[method_label(m), str(len(hs))]
            + [mean_std_cell([h[e] for h in hs if len(h) > e]) for e in range(epochs)]
            for m, hs in sorted(by_method.items(), key=lambda kv: method_rank(kv[0]))]
    return Table("Top-1 (%) after each fine-tuning epoch", ["Method", "n"] + [f"Epoch {e + 1}" for e in range(epochs)],
                 rows, ["Mean ± sample std over seeds of the top-1 on the test images after each epoch; the last "
                        "column is the final evaluation."])


def _is_short(runs: Sequence[dict]) -> bool:
    """A fine-tune shorter than one pass over all the training data: one epoch or less over a subset."""
    return all((r["config"].get("finetune_epochs") or 0) <= 1 and r["config"].get("per_class") is not None
               for r in complete_runs(runs))


def verdict_counts(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """Paired rows (`paired_curves`, `paired_runs`) split by their t-interval over seeds: "ahead" (the
    interval lies above 0), "behind" (below 0), "unresolved" (it holds 0, or one seed gives none)."""
    out: dict[str, list[dict]] = {"ahead": [], "behind": [], "unresolved": []}
    for r in rows:
        side = "unresolved" if r["low"] is None else "ahead" if r["low"] > 0 else "behind" if r["high"] < 0 \
            else "unresolved"
        out[side].append(r)
    return out


def _row_text(r: dict) -> str:
    target = "" if r["target"] is None else f" at {100 * r['target']:g}%"
    return (f"{method_label(r['method'])}{target} ({r['diff']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}] "
            f"vs {method_label(r['reference'])})")


def _summary(rows: Sequence[dict]) -> str:
    """One sentence: how many comparisons are ahead, behind, unresolved over seeds, naming the resolved ones."""
    c = verdict_counts(rows)
    seeds = sorted({r["seeds"] for r in rows})
    text = (f"Of {len(rows)} comparisons (n = {'/'.join(map(str, seeds))} seeds each), "
            f"{len(c['ahead'])} are ahead beyond seed noise, {len(c['behind'])} behind, "
            f"{len(c['unresolved'])} unresolved (the 95% interval holds 0).")
    for side in ("ahead", "behind"):
        if c[side]:
            text += f" {side.capitalize()}: " + "; ".join(map(_row_text, c[side])) + "."
    return text


def _table_block(table: Table, source: str) -> list[str]:
    """A table under the section's heading: its own title a level lower, the record table it is named beside."""
    text = table.to_markdown().rstrip()
    text = "#" + text if text.startswith("### ") else text
    return [f"From `{source}`:", "", text, ""]


def _figure(path: Path, root: Path, alt: str) -> list[str]:
    return [f"![{alt}]({Path('..') / path.relative_to(root.parent)})", ""] if path.is_file() else []


def _profile_section(name: str, description: str, figures: Path,
                     compared_with: str | None = None) -> tuple[list[str], list[tuple[str, list[dict]]]]:
    """The page's section of one profile, and its (what, paired rows) for the verdict; with `compared_with`
    (a profile beside it under the same root), its curves against that profile's, unpaired."""
    found = _read(figures / "records")
    rel = f"figures/{name}"
    lines = [f"## `{name}`", "", description, ""]
    verdict = []
    table = baselines_table(found.baselines)
    if table is not None:
        lines += _table_block(table, f"{rel}/tables/baselines.md")
    for _, record in found.curves:
        stem = _stem(record)
        lines += [f"### Right after pruning: {record_title(record)}", ""]
        lines += _table_block(curves_table(record), f"{rel}/tables/curves_{stem}.md")
        lines += _figure(figures / "figures" / f"curves_{stem}.png", figures.parent,
                         f"top-1 against FLOPs reduction, {record_title(record)}")
        for against, metric in itertools.product(PAIRINGS, CURVE_METRICS):
            rows = paired_curves(record, metric, against=against)
            if rows:
                lines += [_summary(rows), ""]
                lines += _table_block(paired_table(rows, paired_title(record, metric, against)),
                                      f"{rel}/tables/{PAIRINGS[against][0]}_{metric}_{stem}.md")
                versus = "" if against == "agnostic" else ", structure vs plain lasso"
                verdict.append((f"{record_title(record)}, {CURVE_METRICS[metric][1]}, no fine-tuning{versus} ({name})",
                                rows))
    for reference, record in _references(found, None if compared_with is None else figures.parent / compared_with):
        lines += [f"### Against `{compared_with}`: {record_title(record)}", ""]
        for metric in CURVE_METRICS:
            lines += _table_block(unpaired_table(reference, record, metric),
                                  f"{rel}/tables/unpaired_{metric}_{_stem(record)}.md")
    for _, record, main in found.variants:
        lines += [f"### Ablation: {record_title(record)}", ""]
        lines += _table_block(variant_table(main, record, "top1_bn"),
                              f"{rel}/tables/ablation_top1_bn_{_stem(record)}.md")
    if found.runs:
        label = "Short fine-tune" if _is_short(found.runs) else "Fine-tune"
        lines += [f"### {label}: {_fine_tune(found.runs)}", ""]
        for dataset in sorted({r["config"].get("dataset") for r in complete_runs(found.runs)}):
            lines += _table_block(results_table(found.runs, dataset), f"{rel}/tables/results_{dataset}.md")
        epochs = _epochs_table(found.runs)
        if epochs is not None:
            lines += _table_block(epochs, f"{rel}/records (run.json: pruned.finetune_top1)")
        rows = paired_runs(found.runs)
        if rows:
            title = "Fine-tuned: each class-wise criterion against the best class-agnostic one"
            lines += [_summary(rows), ""]
            lines += _table_block(paired_table(rows, title), f"{rel}/tables/paired_finetuned.md")
            verdict.append((f"{label.lower()} ({_fine_tune(found.runs)}; {name})", rows))
    others = sorted(p.name for p in (figures / "records").iterdir() if p.is_file())
    if others:
        lines += ["Further records of this profile (checks run beside it, logs): "
                  + ", ".join(f"`{rel}/records/{n}`" for n in others) + ".", ""]
    return lines, verdict


def results_page(figures_root: str | Path, descriptions: Mapping[str, str],
                 compared_with: Mapping[str, str] | None = None) -> str:
    """The results page: a verdict section counting every class-wise comparison, then one section per
    profile in `descriptions` whose `figures_root/<profile>/records` exists, every table computed from
    those records (the same tables `rebuild` writes, named beside each one). `compared_with` maps a profile
    to the one its curves are compared with, unpaired (`Profile.compared_with`)."""
    root = Path(figures_root)
    compared_with = compared_with or {}
    sections, verdict = [], []
    for name, description in descriptions.items():
        if (root / name / "records").is_dir():
            lines, rows = _profile_section(name, description, root / name, compared_with.get(name))
            sections += lines
            verdict += rows
    head = ["# Results", "",
            "Generated from the records committed under `figures/` by `python -m paperprune.lab.reproduce --rebuild`; "
            "tests/test_docs_results.py fails when this page and the records disagree. Every comparison pairs a "
            "class-wise criterion with the class-agnostic criterion (L1, HRank, APIB, random, under either "
            "allocation) that has the highest mean top-1 at that target, over the same seeds and test images; the "
            "structure comparisons pair sGLP-IB and sTLP-IB with the plain class-wise lasso, which differs from them "
            "only by the class graph or tree. The interval is the 95% t-interval of the mean per-seed difference (n − 1 degrees of freedom, "
            "`paperprune.lab.seeds.paired_difference`, METHOD.md section 6). Top-1 is the final evaluation, never a "
            "best epoch. How to rerun each profile: [Reproducing](reproducing.md).", "",
            "## The verdict, comparison by comparison", ""]
    for what, rows in verdict:
        c = verdict_counts(rows)
        head.append(f"- {what}: {len(c['ahead'])} ahead, {len(c['behind'])} behind, "
                    f"{len(c['unresolved'])} unresolved of {len(rows)}.")
    return "\n".join(head + [""] + sections).rstrip() + "\n"
