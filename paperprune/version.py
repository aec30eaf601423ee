"""The package version (one definition: `paperprune.__version__` and the records read it here)."""

__version__ = "0.1.0"
