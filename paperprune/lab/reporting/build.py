"""The whole report of a runs root: every table and figure it supports, with an index."""
from __future__ import annotations

import re
from pathlib import Path

from ...utils import atomic_write_text
from ..io import recorded_path
from .curves import paired_runs, paired_table
from .figures import plot_layer_widths, plot_sensitivity, plot_tradeoff, save_figure
from .records import (DATASET_ORDER, NOT_RUN, SENSITIVITY_PARAMS, complete_runs, datasets_of, datasets_rank,
                      find_sweeps, is_fixture, load_references, load_runs)
from .tables import ablation_table, failed_runs_summary, results_table, sensitivity_table, write_table

def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)



def build_reports(runs_root: str | Path, out_dir: str | Path) -> dict[str, list[Path]]:
    """Every table and figure the runs under `runs_root` support, written under `out_dir`
    (tables/, figures/), plus failed_runs.md and a README.md index saying what each file shows
    and which sections were skipped for lack of data. Failed runs are listed, never fatal."""
    runs = load_runs(runs_root)
    out = Path(out_dir)
    complete = complete_runs(runs)
    refs = load_references()
    written: dict[str, list[Path]] = {k: [] for k in (
        "results", "ablation", "paired", "sensitivity", "tradeoff", "layer_widths", "sensitivity_figures",
        "failed_runs", "index")}
    index = ["# paperprune report", "",
             f"Built from `{recorded_path(runs_root)}`: {len(complete)} complete run(s), "
             f"{len(runs) - len(complete)} failed run(s).", ""]
    if any(is_fixture(r) for r in complete):
        index += ["**WARNING: some runs are test fixtures (environment.hostname = \"fixture\") with invented "
                  "numbers; their rows are marked FIXTURE and are not results.**", ""]

    def entry(key: str, paths: list[Path], what: str) -> None:
        written[key] += paths
        names = ", ".join(f"`{p.relative_to(out).as_posix()}`" for p in paths)
        index.append(f"- {names}: {what}")

    index += ["## Tables", "", "Each table as Markdown (.md), LaTeX booktabs (.tex) and CSV (.csv).", ""]
    ref_datasets = {r["dataset"] for r in refs}
    for dataset in list(DATASET_ORDER) + sorted(set(datasets_of(runs)) - set(DATASET_ORDER)):
        has_runs = bool(complete_runs(runs, dataset=dataset))
        if not has_runs and dataset not in ref_datasets:
            index.append(f"- results on {dataset}: skipped (no completed runs and no published numbers).")
            continue
        table = results_table(runs, dataset, references=refs)
        state = "each grid cell without a completed run" if has_runs else "no runs yet: every grid cell"
        entry("results", write_table(table, out / "tables", f"results_{_safe(dataset)}"),
              f"results on {dataset}: our runs (mean ± std over seeds) beside published numbers; "
              f"{state} reads '{NOT_RUN}'.")
    ablations = ablation_table(runs)
    for dataset, table in ablations.items():
        entry("ablation", write_table(table, out / "tables", f"ablation_{_safe(dataset)}"),
              f"ablation on {dataset}: sGLP-IB vs sTLP-IB vs unstructured class-wise lasso vs APIB vs L1/HRank/random.")
    if not ablations:
        index.append("- ablation: skipped (no completed runs of the ablation methods).")
    paired = paired_runs(runs)
    if paired:
        title = "Fine-tuned: each class-wise criterion against the best class-agnostic one"
        entry("paired", write_table(paired_table(paired, title), out / "tables", "paired_finetuned"),
              "each class-wise criterion's top-1 difference from the best class-agnostic one, with the 95% "
              "t-interval of the mean paired difference over seeds (paperprune.lab.seeds).")
    else:
        index.append("- paired differences of fine-tuned runs: skipped (no class-wise and class-agnostic runs of "
                     "one configuration record per-image correctness, run.json schema 2).")
    for param in SENSITIVITY_PARAMS:
        if not any(param in r["config"] for r in complete):
            index.append(f"- sensitivity to {param}: skipped (no run records {param}).")
            continue
        table = sensitivity_table(runs, param)
        if not table.rows:
            index.append(f"- sensitivity to {param}: skipped (no sweep: no runs equal in every other config value "
                         f"with two or more values of {param}).")
            continue
        entry("sensitivity", write_table(table, out / "tables", f"sensitivity_{_safe(param)}"),
              f"sensitivity to {param}: one row per value within each sweep.")

    index += ["", "## Figures", "", "Each figure as PNG and PDF.", ""]
    pairs = sorted({(r["config"]["dataset"], r["config"]["arch"]) for r in complete},
                   key=lambda p: (datasets_rank(p[0]), p[1]))
    for dataset, arch in pairs:
        stem = f"{_safe(dataset)}_{_safe(arch)}"
        entry("tradeoff", save_figure(plot_tradeoff(runs, dataset, arch, references=refs), out / "figures",
                                      f"tradeoff_{stem}"),
              f"top-1 vs FLOPs reduction on {dataset}/{arch}, one line per method; stars: published points.")
        if any(r.get("layers") for r in complete_runs(runs, dataset=dataset, arch=arch)):
            entry("layer_widths", save_figure(plot_layer_widths(runs, dataset, arch), out / "figures",
                                              f"layer_widths_{stem}"),
                  f"fraction of channels kept per prunable layer on {dataset}/{arch}, by method.")
        else:
            index.append(f"- layer widths on {dataset}/{arch}: skipped (no run records layers).")
    if not pairs:
        index.append("- trade-off and layer-width figures: skipped (no completed runs).")
    for param in SENSITIVITY_PARAMS:
        if any(param in r["config"] for r in complete) and find_sweeps(runs, param):
            entry("sensitivity_figures", save_figure(plot_sensitivity(runs, param), out / "figures",
                                                     f"sensitivity_{_safe(param)}"),
                  f"top-1 vs {param}, one line per sweep.")
        else:
            index.append(f"- sensitivity figure for {param}: skipped (no sweep).")
    index.append("- class graph and class tree: not drawn here (run.json does not record them); draw them "
                 "with plot_class_graph / plot_class_tree from the model's class embeddings (see the notebooks).")

    summary = failed_runs_summary(runs)
    index += ["", "## Failed runs", ""]
    entry("failed_runs", [atomic_write_text(out / "failed_runs.md", "# Failed runs\n\n" + summary)],
          "the list below, as its own file.")
    index += ["", summary]
    written["index"].append(atomic_write_text(out / "README.md", "\n".join(index).rstrip() + "\n"))
    return written

