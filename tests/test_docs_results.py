"""The results page and the README's verdict hold the numbers the committed records give.

docs/results.md shows tables that the report build wrote from the records (figures/*/tables/*.md):
each table there is the record table named just before it, row for row. The README's verdict
quotes means ± std, paired differences and their intervals: each one is in a record table.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD_TABLE = re.compile(r"`(figures/[^`]+/tables/[^`]+\.md)`")
QUOTED = re.compile(r"\d+\.\d+ ± \d+\.\d+|\[[-+]\d+\.\d+, [-+]\d+\.\d+\]|(?<![\w.])[-+]\d+\.\d{2}\b")


def _tables_with_sources(text: str) -> list[tuple[str | None, list[str]]]:
    """Each markdown table of `text` with the record table that the last paragraph naming one names first."""
    found, source = [], None
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        rows = [line for line in lines if line.startswith("|")]
        if rows:
            found.append((source, rows))
        elif paths := RECORD_TABLE.findall(block):
            source = paths[0]
    return found


def test_results_tables_are_the_records_tables():
    tables = _tables_with_sources((ROOT / "docs" / "results.md").read_text(encoding="utf-8"))
    assert len(tables) >= 5
    for source, rows in tables:
        assert source is not None, f"no record table named before the table starting {rows[0]!r}"
        record = (ROOT / source).read_text(encoding="utf-8")
        missing = [row for row in rows if row not in record]
        assert not missing, f"rows of docs/results.md not in {source}:\n" + "\n".join(missing)


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
