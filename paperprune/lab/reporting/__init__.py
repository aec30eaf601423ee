"""Tables and figures from recorded runs, side by side with the published numbers.

Split by job: `records` loads run directories (run.json through its one schema,
`paperprune.lab.record`; error.json) and the published numbers, and aggregates seeds; `tables`
renders Markdown / LaTeX / CSV; `figures` draws PNG / PDF; `curves` turns a curves.json record
(`paperprune.lab.curves`) and fine-tuned runs into the verdict's tables, figures and paired
confidence intervals over seeds (`paperprune.lab.seeds`); `build` writes the whole report of a
runs root. Every public name is importable from `paperprune.lab.reporting`.

Published numbers: only the two rows of `paperprune/resources/reference_numbers.csv` with method
"paper (abstract)" are from the paper (arXiv 2502.09125), and only from its abstract, which does
not say whether sGLP-IB or sTLP-IB produced them. Every other reference row is from the
lineage's READMEs and abstracts (HRankPlus/CHIP, HRank, APIB, Torch-Pruning).

Conventions (METHOD.md section 4): "FLOPs" are multiply-accumulates (conv + linear), parameters
are conv + linear. Rows from this project compute reductions as 1 - pruned/baseline from the
recorded counts, and aggregate seeds of one configuration as mean +- sample std (ddof=1) with n.
Reference cells the source does not give stay empty: nothing is derived across sources, and a
grid cell with no completed run reads "not run".
"""
from .build import build_reports
from .curves import (AGNOSTIC, CLASSWISE, CURVE_METRICS, curve_overlap, curves_report, curves_table, load_curves,
                     paired_curves, paired_runs, paired_table, plot_curve_widths, plot_curves, plot_overlap,
                     variant_table)
from .figures import plot_class_graph, plot_class_tree, plot_layer_widths, plot_sensitivity, plot_tradeoff, save_figure
from .records import (ABLATION_METHODS, BOOKKEEPING_KEYS, DATASET_ORDER, FIXTURE_HOSTNAME, GRID, METHOD_LABELS, MISSING,
                      NOT_RUN, PAPER_METHODS, SENSITIVITY_PARAMS, load_references, load_runs)
from .tables import Table, ablation_table, failed_runs_summary, results_table, sensitivity_table, write_table

__all__ = [
    "AGNOSTIC", "CLASSWISE", "CURVE_METRICS", "curve_overlap", "curves_report", "curves_table", "load_curves",
    "paired_curves", "paired_runs", "paired_table", "plot_curve_widths", "plot_curves", "plot_overlap",
    "variant_table", "ABLATION_METHODS", "BOOKKEEPING_KEYS", "DATASET_ORDER", "FIXTURE_HOSTNAME", "GRID",
    "METHOD_LABELS", "MISSING",
    "NOT_RUN", "PAPER_METHODS", "SENSITIVITY_PARAMS", "Table", "ablation_table", "build_reports",
    "failed_runs_summary", "load_references", "load_runs", "plot_class_graph", "plot_class_tree",
    "plot_layer_widths", "plot_sensitivity", "plot_tradeoff", "results_table", "save_figure",
    "sensitivity_table", "write_table",
]
