"""The public API documents itself: numpydoc docstrings whose sections parse and match the
signatures (numpydoc's own validator), an Examples section for every public function listed
below, and those examples run as doctests; every core module declares `__all__`."""
import doctest
import importlib
import inspect
import re
import sys
import time
from pathlib import Path

import pytest
import torch
from numpydoc.docscrape import ClassDoc, FunctionDoc
from numpydoc.validate import validate

pytestmark = pytest.mark.usefixtures("one_thread")

#: the core modules (the package without its lab); each declares `__all__`
CORE = ["ib", "structure", "lasso", "criteria", "select", "options", "discover", "surgery", "flops", "deploy",
        "latency", "tp", "pipeline", "compare", "models", "features"]

#: the public functions and classes whose docstrings carry the full numpydoc contract and a run Example
DOCUMENTED = [
    "paperprune.pipeline.prune",
    "paperprune.pipeline.PruneReport",
    "paperprune.surgery.save_pruned",
    "paperprune.surgery.load_pruned",
    "paperprune.ib.layer_statistics",
    "paperprune.ib.feature_statistics",
    "paperprune.ib.LayerStatistics",
    "paperprune.ib.hsic",
    "paperprune.ib.normalized_hsic",
    "paperprune.compare.compare_selections",
    "paperprune.tp.Importance",
    "paperprune.criteria.Criterion",
    "paperprune.latency.LatencyModel",
    "paperprune.lasso.solve_sglp",
    "paperprune.lasso.solve_stlp",
]

#: numpydoc validation codes enforced on DOCUMENTED (numpydoc.validate.ERROR_MSGS): a docstring
#: exists, the summary starts with a capital, Parameters match the signature, with types and
#: descriptions, a Returns section for functions that return something, an Examples section
CHECKS = {"GL08", "SS01", "SS02", "PR01", "PR02", "PR03", "PR04", "PR07", "RT01", "RT03", "EX01"}

#: a doctest that takes longer than this on one thread is too slow for the suite
SECONDS = 5.0


def _object(path):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _modules():
    return sorted({path.rpartition(".")[0] for path in DOCUMENTED})


def contract_errors(path: str) -> list[str]:
    """What `path`'s docstring lacks: numpydoc's validation errors in CHECKS, and a Notes section."""
    errors = [f"{code}: {message}" for code, message in validate(path)["errors"] if code in CHECKS]
    obj = _object(path)
    doc = ClassDoc(obj) if inspect.isclass(obj) else FunctionDoc(obj)
    if not "".join(doc["Notes"]).strip():
        errors.append("no Notes section")
    return errors


@pytest.mark.parametrize("path", DOCUMENTED)
def test_public_docstring_contract(path):
    assert contract_errors(path) == []


def test_contract_check_can_fail():
    """The check above finds a missing Examples section and an undocumented parameter."""
    module = type(importlib)("paperprune_doctest_probe")

    def probe(x, y):
        """Add two numbers.

        Parameters
        ----------
        x : int
            The first.

        Returns
        -------
        int
            Their sum.

        Notes
        -----
        None.
        """
        return x + y

    probe.__module__ = module.__name__
    module.probe = probe
    sys.modules[module.__name__] = module
    try:
        errors = contract_errors(f"{module.__name__}.probe")
    finally:
        del sys.modules[module.__name__]
    assert any(e.startswith("EX01") for e in errors) and any(e.startswith("PR01") for e in errors), errors


def run_examples(module: str) -> tuple[int, dict[str, str]]:
    """Run every example in `module` (one thread, torch's global RNG restored after each docstring);
    returns the number of docstrings with examples and the examples that failed or took SECONDS or more."""
    mod = importlib.import_module(module)
    importlib.import_module("torchvision")  # a one-off import of seconds, not the examples' cost
    tests = [t for t in doctest.DocTestFinder().find(mod, module) if t.examples]
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    bad = {}
    for test in tests:
        state = torch.random.get_rng_state()
        start = time.perf_counter()
        failed = runner.run(test).failed
        seconds = time.perf_counter() - start
        torch.random.set_rng_state(state)
        if failed or seconds >= SECONDS:
            bad[test.name] = "failed (output above)" if failed else f"{seconds:.1f} s"
    return len(tests), bad


@pytest.mark.parametrize("module", _modules())
def test_examples_run(module):
    """Every example in the module runs and prints what its docstring shows, each in under SECONDS."""
    found, bad = run_examples(module)
    assert found, f"{module} has no examples"
    assert bad == {}


def test_other_core_examples_run():
    """Examples in the other core modules run too, under the same rules."""
    for name in CORE:
        if f"paperprune.{name}" not in _modules():
            assert run_examples(f"paperprune.{name}")[1] == {}, name


def test_documented_have_examples_that_run():
    """Each DOCUMENTED object's own docstring holds examples (found by doctest, so they run above)."""
    for path in DOCUMENTED:
        found = doctest.DocTestFinder(recurse=False).find(_object(path), path)
        assert found and found[0].examples, f"{path} has no doctest examples"


@pytest.mark.parametrize("name", CORE)
def test_core_modules_declare_all(name):
    """`__all__` is a list of public names, each defined in the module, none twice."""
    module = importlib.import_module(f"paperprune.{name}")
    assert isinstance(getattr(module, "__all__", None), list), f"paperprune.{name} has no __all__ list"
    names = module.__all__
    assert len(names) == len(set(names)), f"paperprune.{name}.__all__ repeats names"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"paperprune.{name}.__all__ names undefined {missing}"
    assert all(not n.startswith("_") for n in names)


def method_headings(text: str) -> dict[str, set[str]]:
    """{section number: its bold headings} of METHOD.md ("2": {"Statistics", "Objective", ...}, "2b": ...)."""
    sections, current = {}, None
    for line in text.splitlines():
        match = re.match(r"#{2,3} (\d+b?)\.", line)
        if match:
            current = match.group(1)
            sections[current] = set()
        elif current is not None:
            sections[current] |= {h.strip().rstrip(".") for h in re.findall(r"\*\*([^*]+)\*\*", line)}
    return sections


def broken_citations(source: str, sections: dict[str, set[str]]) -> list[str]:
    """Citations `METHOD.md section N` and `section N, "Heading"` in `source` that METHOD.md does not hold."""
    broken = [f"section {n}" for n in re.findall(r"METHOD\.md,? sections? (\d+b?)", source) if n not in sections]
    for number, heading in re.findall(r'section (\d+b?),? "([^"\n]+(?:\n[^"\n]+)?)"', source):
        heading = " ".join(heading.split())
        if not any(h == heading for h in sections.get(number, ())):
            broken.append(f'section {number}, "{heading}"')
    return broken


@pytest.mark.parametrize("name", CORE)
def test_method_citations_resolve(name):
    """Every METHOD.md section and heading a core module cites exists (the Notes point somewhere real)."""
    root = Path(__file__).resolve().parents[1]
    sections = method_headings((root / "METHOD.md").read_text(encoding="utf-8"))
    assert {"2", "2b", "4"} <= set(sections) and "Automatic budget" in sections["2"]
    path = root / "paperprune" / (f"{name}/__init__.py" if name == "models" else f"{name}.py")
    assert broken_citations(path.read_text(encoding="utf-8"), sections) == []
    assert broken_citations('METHOD.md section 9; section 2, "No such heading"', sections) == [
        "section 9", 'section 2, "No such heading"']
