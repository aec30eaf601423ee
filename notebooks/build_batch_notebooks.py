"""Write notebooks/experiment.ipynb and notebooks/report.ipynb (papermill-parameterised).

These two notebooks are executed by `python -m paperprune.reproduce`; they only call the
package. Regenerate with `python notebooks/build_batch_notebooks.py` after editing this file.
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def parameters_cell(source: str):
    cell = new_code_cell(source)
    cell.metadata["tags"] = ["parameters"]
    return cell


def notebook(cells):
    """A notebook with stable cell ids, so regenerating it changes nothing."""
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i}"
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def experiment():
    return notebook([
        new_markdown_cell(
            "# One pruning run\n\n"
            "Pretrain (or load) the baseline, compute the class-wise statistics, select channels under the "
            "automatic budget, prune, fine-tune, evaluate. Everything is done by "
            "`paperprune.experiment.run_experiment`; this notebook is its parameterised, executed record. "
            "`python -m paperprune.reproduce` runs it through papermill and leaves the executed copy next to "
            "the run's `run.json`. Stages are cached: re-executing resumes an interrupted run."),
        parameters_cell(
            'dataset = "synthetic"\narch = "resnet56"\nmethod = "stlp"\nflops_reduction = 0.5\n'
            "pretrain_epochs = 1\npretrained = None\nfinetune_epochs = 1\nseed = 0\nsamples_per_class = 5\n"
            'omega = 4\ngamma_ratio = 0.5\nstructure = "embedding"\nnonnegative = False\nrho = 0.5\nknn = None\n'
            "batch_size = 64\nlr = 0.05\n"
            "finetune_lr = 0.01\nper_class = 20\ntest_per_class = 10\ndata_root = None\n"
            'device = "cpu"\nout = "runs/notebook-demo"\ncache_dir = None\nthreads = None\nprogress = True\n'
            "latency_repeats = 10\ndeployed_latency = True\n"
            "# a latency budget instead of the MACs one: set latency_reduction and flops_reduction = None\n"
            'latency_reduction = None\nlatency_mode = "eager"\nlatency_batch_size = 64\nlatency_rounding = False'),
        new_code_cell(
            "from dataclasses import fields\n\nimport torch\n\nfrom paperprune.experiment import RunConfig, run_experiment\n\n"
            "if threads:\n    torch.set_num_threads(int(threads))\n"
            "# every RunConfig setting set above (or injected by papermill) goes into the run\n"
            "config = RunConfig(**{f.name: globals()[f.name] for f in fields(RunConfig) if f.name in globals()})\n"
            "record = run_experiment(config, out, cache_dir=cache_dir, progress=progress, latency_repeats=latency_repeats,\n"
            "                        deployed_latency=deployed_latency)"),
        new_markdown_cell("## Result"),
        new_code_cell(
            "b, p = record['baseline'], record['pruned']\n"
            "print(f\"{config.dataset} {config.arch} {config.method}: top-1 {b['top1']:.2f} -> \"\n"
            "      f\"{p['top1_before_finetune']:.2f} (pruned) -> {p['top1']:.2f} (fine-tuned)\")\n"
            "print(f\"MACs {b['macs'] / 1e6:.2f}M -> {p['macs'] / 1e6:.2f}M (-{100 * p['macs_reduction']:.1f}%), \"\n"
            "      f\"params {b['params'] / 1e6:.3f}M -> {p['params'] / 1e6:.3f}M (-{100 * p['params_reduction']:.1f}%)\")\n"
            "for name, lat in record['latency'].items():\n"
            "    print(f\"latency {name}: {lat['base_ms']:.2f} ms -> {lat['pruned_ms']:.2f} ms\")\n"
            "    if 'deployed' in lat:\n"
            "        print(f\"latency {name}, {lat['deployed']}: {lat['deployed_base_ms']:.2f} ms -> \"\n"
            "              f\"{lat['deployed_pruned_ms']:.2f} ms\")"),
        new_code_cell(
            "import matplotlib.pyplot as plt\n\n"
            "layers = record['layers']\n"
            "fig, ax = plt.subplots(figsize=(6, 2.5), dpi=80)\n"
            "ax.bar(range(len(layers)), [l['width_before'] for l in layers], color='0.85', label='before')\n"
            "ax.bar(range(len(layers)), [l['width_after'] for l in layers], label='kept')\n"
            "ax.set_xlabel('prunable layer'); ax.set_ylabel('channels'); ax.legend()\n"
            "ax.set_title(f'{config.arch} / {config.method}: kept channels per layer')\n"
            "plt.show()"),
    ])


def report():
    return notebook([
        new_markdown_cell(
            "# Tables and figures from recorded runs\n\n"
            "Reads every `run.json` under `runs_root` and rebuilds the results tables (one per dataset, "
            "with the published numbers beside ours, each with its source), the ablation and sensitivity "
            "tables, the trade-off and per-layer width figures. A cell we have not run says \"not run\"; "
            "failed runs are listed, not fatal. Done by `paperprune.reporting.build_reports`."),
        parameters_cell('runs_root = "tests/fixtures/runs"\nout_dir = "figures"'),
        new_code_cell(
            "from pathlib import Path\n\nfrom IPython.display import Markdown, display\n\n"
            "from paperprune.reporting import build_reports\n\n"
            "written = build_reports(runs_root, out_dir)\n"
            "for kind, paths in written.items():\n"
            "    print(f'{kind}: {len(paths)} file(s)')"),
        new_code_cell(
            "for path in sorted(Path(out_dir).glob('tables/*.md')):\n"
            "    display(Markdown(f'### {path.stem}\\n\\n' + path.read_text()))"),
        new_code_cell("display(Markdown((Path(out_dir) / 'README.md').read_text()))"),
    ])


if __name__ == "__main__":
    for name, build in (("experiment", experiment), ("report", report)):
        path = HERE / f"{name}.ipynb"
        nbformat.write(build(), path)
        print(f"wrote {path}")
