"""The results page and the README's verdict hold the numbers the committed records give.

docs/results.md is generated from the records (figures/*/records) by `paperprune.lab.reporting.pages`;
the committed page must be what the records give today. The README's verdict quotes means ± std,
paired differences and their intervals: each one is in a record table.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUOTED = re.compile(r"\d+\.\d+ ± \d+\.\d+|\[[-+]\d+\.\d+, [-+]\d+\.\d+\]|(?<![\w.])[-+]\d+\.\d{2}\b")


def test_results_page_is_generated_from_the_records():
    """docs/results.md is what `--rebuild` writes from the committed records: a number changed by hand, or a
    record changed without regenerating the page, fails here."""
    from paperprune.lab.reporting.pages import results_page
    from paperprune.lab.reproduce import profiles

    every = profiles()
    page = results_page(ROOT / "figures", {n: p.description for n, p in every.items()},
                        {n: p.compared_with for n, p in every.items() if p.compared_with})
    committed = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert committed == page, ("docs/results.md differs from the records; regenerate it with "
                               "`python -m paperprune.lab.reproduce --profile quick --rebuild`")
    assert page.count("| resnet56 |") >= 20 and "## `evidence`" in page


def test_results_page_reads_a_changed_record(tmp_path):
    """The page follows the records: one seed's top-1 changed in a copy of the quick profile's curves record
    changes the page's curves table in that cell's mean."""
    import json
    import shutil

    from paperprune.lab.reporting.pages import results_page

    shutil.copytree(ROOT / "figures" / "quick" / "records", tmp_path / "quick" / "records")
    path = tmp_path / "quick" / "records" / "curves" / "fashion-mnist-resnet56" / "curves.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    before = results_page(tmp_path, {"quick": "the quick profile"})
    point = next(p for p in record["points"] if p["method"] == "l1" and abs(p["target"] - 0.3) < 1e-9)
    point["top1_bn"] += 3.0  # L1 is deterministic: three identical seeds, so its mean moves by 1.00
    path.write_text(json.dumps(record), encoding="utf-8")
    after = results_page(tmp_path, {"quick": "the quick profile"})
    assert "| L1-norm | 30 | 3 | 29.9 ± 0.0 | 10.40 ± 0.00 | 45.60 ± 0.00 | 0 |" in before
    assert "| L1-norm | 30 | 3 | 29.9 ± 0.0 | 10.40 ± 0.00 | 46.60 ± 1.73 | 0 |" in after


def test_rebuilt_tables_are_the_committed_ones(tmp_path):
    """`rebuild` of the quick profile from its records writes the committed tables, byte for byte."""
    import shutil

    from paperprune.lab.reporting.pages import rebuild

    shutil.copytree(ROOT / "figures" / "quick" / "records", tmp_path / "records")
    written = [p for p in rebuild(tmp_path) if p.suffix == ".md"]
    assert len(written) >= 3
    for path in written:
        committed = ROOT / "figures" / "quick" / path.relative_to(tmp_path)
        assert path.read_text(encoding="utf-8") == committed.read_text(encoding="utf-8"), path.name


def test_readme_verdict_quotes_the_records():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    verdict = readme.split("<!-- BEGIN VERDICT", 1)[1].split("<!-- END VERDICT -->", 1)[0]
    assert len(verdict.strip().splitlines()) <= 16  # heading, at most 10 lines of text, the figure, the link
    records = "\n".join(p.read_text(encoding="utf-8") for p in sorted(ROOT.glob("figures/*/tables/*.md")))
    quoted = QUOTED.findall(verdict)
    assert len(quoted) >= 10, quoted
    missing = [q for q in quoted if q not in records]
    assert not missing, f"numbers in the README's verdict that no record table holds: {missing}"
    for figure in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", verdict):
        assert (ROOT / figure).is_file(), figure


def test_readme_snippet_uses_names_that_exist():
    """The README's "Prune your own model" block: at most 20 lines, valid Python, and every name it imports
    or calls on `paperprune` exists (running it takes half a minute; its imports and names are what a
    restructure of the package can break)."""
    import ast
    import importlib

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Prune your own model", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 20
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "paperprune":
            assert hasattr(importlib.import_module("paperprune"), node.attr), f"paperprune.{node.attr}"


def test_epochs_table_follows_each_criterion_over_fine_tuning_epochs():
    """Top-1 after each epoch, mean ± std over seeds per criterion entry (uniform runs their own row); runs
    without the per-epoch record give no table."""
    import numpy as np

    from paperprune.lab.reporting.pages import _epochs_table

    def run(method, seed, history, allocation="global"):
        return {"status": "complete", "config": {"method": method, "seed": seed, "allocation": allocation},
                "pruned": {"finetune_top1": history}}

    runs = [run("sglp", 0, [80.0, 85.0, 90.0]), run("sglp", 1, [82.0, 86.0, 91.0]),
            run("hrank", 0, [70.0, 88.0, 89.0], "uniform"), run("apib", 0, None)]
    table = _epochs_table(runs)
    assert table.columns == ["Method", "n", "Epoch 1", "Epoch 2", "Epoch 3"]
    rows = {r[0]: r[1:] for r in table.rows}
    assert rows["sGLP-IB"] == ["2", f"81.00 ± {np.std([80, 82], ddof=1):.2f}", "85.50 ± 0.71", "90.50 ± 0.71"]
    assert rows["HRank (uniform)"] == ["1", "70.00", "88.00", "89.00"]
    assert "APIB (HSIC lasso)" not in rows
    assert _epochs_table([run("apib", 0, None)]) is None
