"""The notebooks as code: every notebook under notebooks/ is a py:percent script paired with its
executed .ipynb (jupytext.toml), and the pair holds the same cells; the experiment notebook's
parameters are RunConfig's fields, listed only where they differ from RunConfig's defaults;
and the tutorials' shared helpers (paperprune.lab.tutorial) on known answers."""
import ast
from dataclasses import MISSING, fields
from pathlib import Path

import jupytext
import nbformat
import numpy as np
import pytest

from paperprune.lab.experiment import RunConfig
from paperprune.lab.reproduce import profiles

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PAIRED = sorted({p.stem for p in NOTEBOOKS.glob("*.ipynb")} | {p.stem for p in NOTEBOOKS.glob("*.py")})


def _cells(nb) -> list[tuple[str, str, list]]:
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def _parameters(name: str) -> dict:
    """Names and literal values assigned in the cell tagged `parameters` of notebooks/NAME.py."""
    cells = [c for c in jupytext.read(NOTEBOOKS / f"{name}.py").cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{name}.py needs exactly one cell tagged parameters, found {len(cells)}"
    tree = ast.parse(cells[0].source)
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)}


def test_jupytext_pairs_every_notebook_there_and_nothing_elsewhere():
    config = jupytext.config.load_jupytext_configuration_file(str(NOTEBOOKS.parent / "jupytext.toml"))
    for name in PAIRED:
        assert config.default_formats(str(NOTEBOOKS / f"{name}.ipynb")) == "notebooks///ipynb,notebooks///py:percent"
    assert config.default_formats(str(NOTEBOOKS.parent / "figures" / "report.ipynb")) is None  # executed copies
    assert {"00_quickstart", "experiment", "report"} <= set(PAIRED)


@pytest.mark.parametrize("name", PAIRED)
def test_pair_in_sync(name):
    """Fails when a script or its notebook was edited alone: run `jupytext --sync notebooks/NAME.py`."""
    script, notebook = NOTEBOOKS / f"{name}.py", NOTEBOOKS / f"{name}.ipynb"
    assert script.is_file() and notebook.is_file(), f"{name}: pair incomplete; run jupytext --sync on the file there"
    from_script = jupytext.read(script, fmt="py:percent")
    from_notebook = nbformat.read(notebook, as_version=4)
    assert _cells(from_script) == _cells(from_notebook), f"{name}.py and {name}.ipynb differ: jupytext --sync"


def test_experiment_parameters_are_runconfig_fields_not_a_copy_of_its_defaults():
    params = _parameters("experiment")
    defaults = {f.name: f.default for f in fields(RunConfig)}
    runner = {"out", "cache_dir", "threads", "progress", "latency_repeats", "deployed_latency"}
    unknown = set(params) - set(defaults) - runner
    assert not unknown, f"parameters that are neither RunConfig fields nor run arguments: {unknown}"
    repeated = {k for k in set(params) & set(defaults) if defaults[k] is not MISSING and params[k] == defaults[k]}
    assert not repeated, f"parameters that only repeat RunConfig's defaults: {repeated}"
    RunConfig(**{k: v for k, v in params.items() if k in defaults}).validate()
    # every setting reproduce injects reaches RunConfig or run_experiment: none is silently ignored
    injected = {key for profile in profiles().values() for run in profile.runs for key in run}
    injected -= {"baseline"}  # reproduce.plan turns it into `pretrained` before the notebook runs
    injected |= {"data_root", "pretrained", "device"} | runner
    assert injected <= set(defaults) | runner


def test_tutorial_accuracy_per_class_and_per_group_known_answers():
    """A 'model' that predicts class (label + 1) % 3 on labels 0..5: wrong for every class, yet
    right for group {0,1,2} -> group 0 and {3,4,5} -> 1 except where +1 leaves the group."""
    import torch
    from torch import nn

    from paperprune.lab.tutorial import per_class_accuracy

    class Shift(nn.Module):
        def forward(self, x):
            return nn.functional.one_hot((x[:, 0].long() + 1) % 6, 6).float()

    labels = torch.arange(6).repeat(2)
    images = labels.float()[:, None]
    assert per_class_accuracy(Shift(), images, labels, 6).tolist() == [0.0] * 6
    by_group = per_class_accuracy(Shift(), images, labels, 6, group=[0, 0, 0, 1, 1, 1])
    np.testing.assert_allclose(by_group, [100 * 2 / 3, 100 * 2 / 3])
