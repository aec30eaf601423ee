"""paperprune: reproducible companion to Liu et al. 2025, "Automatic Pruning via Structured
Lasso with Class-wise Information" (arXiv 2502.09125): sGLP-IB and sTLP-IB filter pruning.

Top-level names are imported lazily so `import paperprune` stays fast; so are the submodules in
`_SUBMODULES` (`paperprune.tp.Importance` works after a plain `import paperprune`).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "create_model": "paperprune.models",
    "list_models": "paperprune.models",
    "prunable_layers": "paperprune.models",
    "count_flops_params": "paperprune.flops",
    "prune": "paperprune.pipeline",
    "save_pruned": "paperprune.surgery",
    "load_pruned": "paperprune.surgery",
    "PaperpruneError": "paperprune.utils",
    "DataNotFoundError": "paperprune.utils",
}

#: submodules reachable as attributes without importing them first (`paperprune.tp` needs Torch-Pruning)
_SUBMODULES = ("discover", "latency", "tp")

__all__ = [*sorted([*_LAZY, *_SUBMODULES]), "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'paperprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
