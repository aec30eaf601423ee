"""The package's layers, read from its source: every import of every module (function-level ones
included) is an edge of the import graph. The graph has no cycle, the library (every module
outside `paperprune.lab`) never imports the lab, and no module imports another module's private
(underscore) name. Importing any module starts no subprocess."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import paperprune

PACKAGE = Path(paperprune.__file__).resolve().parent
LAB = "paperprune.lab"
#: `python -m paperprune` is the lab's command line, run as a script and never imported by the library
ENTRY_POINTS = {"paperprune.__main__"}


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name of every module under `root` (the folder of package `package`) -> its file."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports(name: str, path: Path, modules: set[str]) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) of every import statement in the module
    `name`, at any depth, restricted to modules of the package. `from pkg import sub` names the
    module `pkg.sub` when that is a module, else the name `sub` of `pkg`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            edges += [(alias.name, None, node.lineno) for alias in node.names if alias.name in modules]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source not in modules:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                edges.append((sub, None, node.lineno) if sub in modules else (source, alias.name, node.lineno))
    return edges


def import_graph(root: Path, package: str) -> dict[str, list[tuple[str, str | None, int]]]:
    """Module -> its imports of other modules of the package (see `imports`)."""
    names = module_names(root, package)
    return {name: [e for e in imports(name, path, set(names)) if e[0] != name] for name, path in names.items()}


def cycles(graph: dict[str, list]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _, _ in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def lab_imports(graph: dict[str, list]) -> list[str]:
    """'module:line -> lab module' for every import of the lab by a module outside it."""
    inside = lambda m: m == LAB or m.startswith(LAB + ".")  # noqa: E731
    return [f"{m}:{line} -> {target}" for m, edges in sorted(graph.items()) if not inside(m) and m not in ENTRY_POINTS
            for target, _, line in edges if inside(target)]


def private_imports(graph: dict[str, list]) -> list[str]:
    """'module:line -> other._name' for every underscore name imported from another module."""
    return [f"{m}:{line} -> {target}.{name}" for m, edges in sorted(graph.items())
            for target, name, line in edges if name is not None and name.startswith("_") and name != "__version__"]


GRAPH = import_graph(PACKAGE, "paperprune")


def test_the_graph_sees_function_level_imports():
    """`create_model` imports the pretrained weights' module inside the function: the walk sees it."""
    assert ("paperprune.models.pretrained", "load_pretrained") in {(t, n) for t, n, _ in GRAPH["paperprune.models"]}
    assert "paperprune.lab.reproduce" in GRAPH and "paperprune.models.vgg" in GRAPH


def test_no_import_cycle():
    assert cycles(GRAPH) == []


def test_the_library_never_imports_the_lab():
    assert lab_imports(GRAPH) == []


def test_no_private_name_is_imported_from_another_module():
    assert private_imports(GRAPH) == []


def _plant(tmp_path: Path, files: dict[str, str]) -> dict:
    root = tmp_path / "pkg"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return import_graph(root, "pkg")


def test_the_checks_fail_on_planted_faults(tmp_path):
    """A cycle hidden in a function, a library module importing the lab and a private import,
    planted in a package of their own, are each found (the checks can fail)."""
    graph = _plant(tmp_path, {
        "__init__.py": "",
        "a.py": "from .b import f\n",
        "b.py": "def f():\n    from . import c\n",
        "c.py": "import pkg.a\nfrom .d import _hidden, shown\n",
        "d.py": "_hidden = shown = 1\n",
        "lab/__init__.py": "",
        "lab/run.py": "from ..a import f\n",
        "e.py": "def g():\n    from .lab.run import f\n",
    })
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]
    assert private_imports(graph) == ["pkg.c:2 -> pkg.d._hidden"]
    global LAB
    lab, LAB = LAB, "pkg.lab"
    try:
        assert lab_imports(graph) == ["pkg.e:2 -> pkg.lab.run"]
    finally:
        LAB = lab
    assert cycles({"x": [("y", None, 1)], "y": [("z", None, 1)], "z": []}) == []


def started_at_import(names: list[str], path: Path) -> dict[str, str]:
    """Module -> error, for each of `names` (modules importable from `path`) that starts a process
    when it is imported afresh, in an interpreter whose process starters (subprocess.Popen,
    os.system, os.posix_spawn, os.fork) raise. The modules the package imports from elsewhere
    (torch runs ldconfig as it loads) are loaded beforehand; each module of the package then
    runs its import anew, with every module of the package removed from sys.modules."""
    script = textwrap.dedent(f"""
        import importlib, json, os, subprocess, sys
        sys.path.insert(0, {str(path)!r})
        for name in {names!r}:  # third-party modules load first: only the package's own code is checked
            try:
                importlib.import_module(name)
            except Exception:
                pass
        def refuse(*args, **kwargs):
            raise RuntimeError("a process was started at import")
        subprocess.Popen = refuse
        os.system = os.posix_spawn = os.posix_spawnp = os.fork = refuse
        failed = {{}}
        for name in {names!r}:
            top = name.partition(".")[0]
            for loaded in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except Exception as e:
                failed[name] = repr(e)
        print(json.dumps(failed))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_any_module_starts_no_subprocess():
    """The commit a record names is read when the record is written, never at import."""
    names = [m for m in module_names(PACKAGE, "paperprune") if m not in ENTRY_POINTS]
    assert started_at_import(names, PACKAGE.parent) == {}


def test_the_import_check_finds_a_planted_subprocess(tmp_path):
    _plant(tmp_path, {"__init__.py": "", "quiet.py": "X = 1\n",
                      "loud.py": "import subprocess\nCOMMIT = subprocess.run(['true'])\n"})
    failed = started_at_import(["pkg.quiet", "pkg.loud"], tmp_path)
    assert list(failed) == ["pkg.loud"] and "a process was started at import" in failed["pkg.loud"]
