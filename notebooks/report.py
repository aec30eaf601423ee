# %% [markdown]
# # Tables and figures from recorded runs
#
# Reads every `run.json` under `runs_root` and rebuilds the results tables (one per dataset, with the published numbers beside ours, each with its source), the ablation and sensitivity tables, the trade-off and per-layer width figures. A cell we have not run says "not run"; failed runs are listed, not fatal. Done by `paperprune.lab.reporting.build_reports`.

# %% tags=["parameters"]
runs_root = "tests/fixtures/runs"
out_dir = "figures"

# %%
from pathlib import Path

from IPython.display import Markdown, display

from paperprune.lab.reporting import build_reports

written = build_reports(runs_root, out_dir)
for kind, paths in written.items():
    print(f'{kind}: {len(paths)} file(s)')

# %%
for path in sorted(Path(out_dir).glob('tables/*.md')):
    display(Markdown(f'### {path.stem}\n\n' + path.read_text()))

# %%
display(Markdown((Path(out_dir) / 'README.md').read_text()))
