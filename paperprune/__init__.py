"""paperprune: reproducible companion to Liu et al. 2025, "Automatic Pruning via Structured
Lasso with Class-wise Information" (arXiv 2502.09125): sGLP-IB and sTLP-IB filter pruning.

The names below are the library's interface. The Torch-Pruning plug-in (`paperprune.tp`),
`paperprune.discover` and `paperprune.latency` load on first use as attributes; the experiments
(`paperprune.lab`) are imported by name and never by the library.
"""
from __future__ import annotations

import importlib

from .version import __version__
from .flops import count_flops_params
from .layers import PrunableLayer
from .models import create_model, list_models, prunable_layers
from .pipeline import PruneReport, prune
from .surgery import load_pruned, save_pruned
from .utils import DataNotFoundError, PaperpruneError

#: submodules reachable as attributes without importing them first (`paperprune.tp` needs Torch-Pruning)
SUBMODULES = ("discover", "latency", "tp")

__all__ = ["DataNotFoundError", "PaperpruneError", "PruneReport", "PrunableLayer", "__version__", "count_flops_params",
           "create_model", "list_models", "load_pruned", "prunable_layers", "prune", "save_pruned", *SUBMODULES]


def __getattr__(name: str):
    if name in SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'paperprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
