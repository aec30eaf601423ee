"""Sphinx configuration of paperprune's documentation site (`make docs`).

The source directory is the repository root (`sphinx-build -c docs . build/html`), so the pages
link to README.md, METHOD.md, the tutorials and figures/ by the same relative paths that work on
a code host. The tutorials are rendered from their stored outputs, never executed here. Equations
are typeset by a local copy of MathJax 3 (the `django-static-mathjax` wheel), so the site needs no
network.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import mathjax  # django-static-mathjax: MathJax's distribution as package data

ROOT = Path(__file__).resolve().parent.parent
MATHJAX_COPY = ROOT / "build" / "mathjax-static"   # copied once, then reused


def _local_mathjax() -> Path:
    """MathJax's es5 component tree (CHTML output only) under build/, for html_static_path."""
    target = MATHJAX_COPY / "mathjax"
    if not (target / "tex-mml-chtml.js").is_file():
        source = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
        shutil.copytree(source, target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("*svg*", "tex-chtml*.js", "mml-chtml.js", "node-main.js"))
    return MATHJAX_COPY


project = "paperprune"
author = "paperprune developers"
copyright = "2026, paperprune developers"

extensions = ["myst_nb", "sphinx.ext.mathjax"]
root_doc = "docs/index"
include_patterns = [
    "README.md", "METHOD.md", "CHANGELOG.md",
    "docs/**",
    "notebooks/README.md", "notebooks/0*.ipynb",
]
exclude_patterns = ["build", ".venv", "docs/_extra", "**/.ipynb_checkpoints"]

# The tutorials' outputs are the executed ones committed with them.
nb_execution_mode = "off"
nb_ipywidgets_js = {}          # no widget manager from a CDN
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3       # links to sections (page.md#a-section) resolve
suppress_warnings = ["myst.header"]

mathjax_path = "mathjax/tex-mml-chtml.js"   # relative to _static: the local copy
html_static_path = [str(_local_mathjax())]
html_extra_path = ["_extra"]                  # index.html at the site root -> docs/index.html
html_theme = "furo"
html_title = "paperprune"
html_favicon = "favicon.svg"                 # declared, so no browser asks for /favicon.ico
html_show_sourcelink = False
