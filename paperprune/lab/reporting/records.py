"""Loading run records and aggregating them: run directories, published numbers, seed groups.

Inputs are the run directories written by `python -m paperprune run`: `run.json` for a complete
run, read and checked through its one schema (`paperprune.lab.record`), `error.json` for a failed
one. Published numbers come from `paperprune/resources/reference_numbers.csv` (METHOD.md sections
4-5). Seeds of one configuration aggregate as mean +- sample std (ddof=1) with n.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ...utils import PaperpruneError
from ..record import RecordError, RunRecord

DATASET_ORDER = ("fashion-mnist", "cifar10", "cifar100", "imagenet", "synthetic")

GRID = {
    "fashion-mnist": ("vgg16", "resnet56", "resnet110", "googlenet", "densenet40", "resnet50"),
    "cifar10": ("vgg16", "resnet56", "resnet110", "googlenet", "densenet40"),
    "cifar100": ("vgg16", "resnet56"),
    "imagenet": ("resnet50",),
}

PAPER_METHODS = ("sglp", "stlp")

ABLATION_METHODS = ("sglp", "stlp", "classwise", "apib", "l1", "hrank", "random")

SENSITIVITY_PARAMS = ("samples_per_class", "gamma_ratio", "omega")

METHOD_LABELS = {
    "sglp": "sGLP-IB",
    "stlp": "sTLP-IB",
    "classwise": "class-wise lasso (no structure)",
    "apib": "APIB (HSIC lasso)",
    "l1": "L1-norm",
    "hrank": "HRank",
    "random": "random",
    "baseline": "baseline (unpruned)",
    "paper (abstract)": "sGLP-IB/sTLP-IB (paper abstract; variant not stated)",
    "apib (README target)": "APIB (README FLOPs target)",
    "torch-pruning": "Torch-Pruning (DepGraph)",
}

BOOKKEEPING_KEYS = frozenset({
    "seed", "device", "out", "out_dir", "output", "output_dir", "run_dir", "root", "data_root",
    "num_workers", "download", "rank", "world_size",
})

FIXTURE_HOSTNAME = "fixture"

NOT_RUN = "not run"

MISSING = "—"

_REFERENCE_NUMERIC = ("top1_base", "top1", "top5", "params_m", "flops_m",
                      "params_reduction", "flops_reduction", "delta_top1")



@dataclass(frozen=True)
class Metric:
    key: str
    header: str
    decimals: int
    percent: bool = False
    signed: bool = False



METRICS = (
    Metric("top1_base", "Base top-1 (%)", 2),
    Metric("top1", "Top-1 (%)", 2),
    Metric("delta_top1", "Δ top-1", 2, signed=True),
    Metric("top5", "Top-5 (%)", 2),
    Metric("params_m", "Params (M)", 2),
    Metric("params_reduction", "Params ↓ (%)", 1, percent=True),
    Metric("flops_m", "FLOPs (M)", 2),
    Metric("flops_reduction", "FLOPs ↓ (%)", 1, percent=True),
)



def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)



def _read_json(path: Path) -> tuple[Any, str | None]:
    try:
        return json.loads(path.read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"



def _load_run_dir(directory: Path, root: Path) -> dict:
    """The record of one run directory, checked by paperprune.lab.record, or a failed entry saying why."""
    tag = {"path": directory, "relpath": directory.relative_to(root).as_posix() or "."}
    run_file = directory / "run.json"
    if run_file.is_file():
        raw, problem = _read_json(run_file)
        if problem is None:
            try:
                record = RunRecord.from_dict(raw).to_dict()
                record["config"].setdefault("allocation", "global")  # runs recorded before the option: global
                return {**record, **tag, "status": "complete"}
            except RecordError as e:
                problem = str(e)
        config = raw.get("config") if isinstance(raw, dict) else None
        return {"config": config if isinstance(config, dict) else {}, **tag, "status": "failed",
                "error": f"malformed run.json: {problem}", "traceback": None}
    record, problem = _read_json(directory / "error.json")
    if problem is None and not isinstance(record, dict):
        problem = "not a JSON object"
    if problem is not None:
        return {"config": {}, **tag, "status": "failed", "error": f"malformed error.json: {problem}",
                "traceback": None}
    config = record.get("config")
    return {"config": config if isinstance(config, dict) else {}, **tag, "status": "failed",
            "error": str(record.get("error", "error.json has no 'error' field")),
            "traceback": record.get("traceback")}


def load_runs(root: str | Path) -> list[dict]:
    """Every run directory under `root` (recursively), sorted by path.

    A directory with a run.json that `paperprune.lab.record` accepts gives its record (`to_dict()`:
    fields a schema-1 record lacks read as None) plus `path`, `relpath` and status "complete".
    A directory with error.json, or with a run.json that does not parse or does not follow the
    schema, gives status "failed" with `error` (and `traceback` when error.json has one) and
    whatever `config` could be read.
    """
    root = Path(root)
    if not root.is_dir():
        raise PaperpruneError(f"runs root {str(root)!r} is not a directory; pass the folder that holds "
                              "the run directories (the --out of `python -m paperprune run`)")
    directories = sorted({p.parent for name in ("run.json", "error.json") for p in root.rglob(name)})
    return [_load_run_dir(d, root) for d in directories]



def load_references() -> list[dict]:
    """Rows of resources/reference_numbers.csv; numeric columns as float, empty cells as None.

    Reductions are fractions in [0, 1] (as in run.json); params_m and flops_m are millions.
    """
    text = resources.files("paperprune").joinpath("resources/reference_numbers.csv").read_text(encoding="utf-8")
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        rows.append({k: (float(v) if v.strip() else None) if k in _REFERENCE_NUMERIC else v
                     for k, v in row.items()})
    return rows



def complete_runs(runs: Iterable[dict], **match: str) -> list[dict]:
    return [r for r in runs if r.get("status") == "complete"
            and all(r["config"].get(k) == v for k, v in match.items())]



def is_fixture(run: dict) -> bool:
    return (run.get("environment") or {}).get("hostname") == FIXTURE_HOSTNAME



def canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)



def _config_key(config: dict, exclude: Iterable[str] = ()) -> tuple:
    skip = BOOKKEEPING_KEYS | set(exclude)
    return tuple(sorted((k, canon(v)) for k, v in config.items() if k not in skip))



def seed_groups(runs: Sequence[dict], exclude: Iterable[str] = ()) -> list[list[dict]]:
    """Runs whose configs agree on every key but the seed (and `exclude`), in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault(_config_key(run["config"], exclude), []).append(run)
    return list(groups.values())



def run_metrics(run: dict) -> dict[str, float | None]:
    base, pruned = run["baseline"], run["pruned"]
    return {
        "top1_base": float(base["top1"]),
        "top1": float(pruned["top1"]),
        "delta_top1": float(pruned["top1"]) - float(base["top1"]),
        "top5": pruned.get("top5"),
        "params_m": pruned["params"] / 1e6,
        "params_reduction": 1.0 - pruned["params"] / base["params"],
        "flops_m": pruned["macs"] / 1e6,
        "flops_reduction": 1.0 - pruned["macs"] / base["macs"],
    }



def mean_std_n(values: Iterable[float | None]) -> tuple[float, float, int] | None:
    """(mean, sample std with ddof=1 (0 for one value), n) over the values present."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return None
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0, int(arr.size)



def group_stats(group: Sequence[dict]) -> dict[str, tuple[float, float, int] | None]:
    per_run = [run_metrics(r) for r in group]
    return {m.key: mean_std_n(p[m.key] for p in per_run) for m in METRICS}



def _seed_text(group: Sequence[dict]) -> str:
    seeds = ", ".join(str(r["config"].get("seed", "?")) for r in group)
    return f"seed{'s' if len(group) > 1 else ''} {seeds}"



def run_source(group: Sequence[dict]) -> str:
    prefix = "FIXTURE, not a result" if any(is_fixture(r) for r in group) else "this project"
    return f"{prefix}: {', '.join(r['relpath'] for r in group)}; {_seed_text(group)}"



def entry_key(method: str, allocation: str | None = None) -> str:
    """A criterion as tables key it (`paperprune.select.entry_name`): "l1", or "l1:uniform" under the
    uniform allocation; None (a record from before the allocation was recorded) is global."""
    from ...select import entry_name

    return entry_name(method, allocation)


def method_label(method: Any) -> str:
    """The display name of a method or of a `entry_key` key: "l1:uniform" reads "L1-norm (uniform)"."""
    if isinstance(method, str) and ":" in method:
        base, allocation = method.split(":", 1)
        return f"{METHOD_LABELS.get(base, base)} ({allocation})"
    return METHOD_LABELS.get(method, str(method))



def show_value(value: Any) -> str:
    return value if isinstance(value, str) else canon(value)



def group_labels(configs: Sequence[dict], *, include_target: bool = True,
                  ignore: Iterable[str] = ()) -> list[str]:
    """Method label per config, with the FLOPs target and the keys that differ between configs
    of the same dataset/arch/method (so two rows never read the same)."""
    fixed = {"dataset", "arch", "method", "allocation", "flops_reduction"} | BOOKKEEPING_KEYS | set(ignore)
    buckets: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        buckets.setdefault((c.get("dataset"), c.get("arch"), c.get("method"), c.get("allocation")), []).append(i)
    labels = [""] * len(configs)
    for members in buckets.values():
        keys = set().union(*(configs[i].keys() for i in members)) - fixed
        varying = sorted(k for k in keys if len({canon(configs[i].get(k)) for i in members}) > 1)
        for i in members:
            c = configs[i]
            parts = [f"target {100 * c['flops_reduction']:g}%"] if include_target and is_number(
                c.get("flops_reduction")) else []
            parts += [f"{k}={show_value(c.get(k))}" for k in varying]
            labels[i] = method_label(entry_key(c.get("method"), c.get("allocation"))) + (
                f" ({', '.join(parts)})" if parts else "")
    return labels



def method_rank(method: str) -> tuple:
    """Order of methods in tables: ABLATION_METHODS' order, each method's global row before its uniform one."""
    base, _, allocation = str(method).partition(":")
    return ((ABLATION_METHODS.index(base), "", allocation) if base in ABLATION_METHODS
            else (len(ABLATION_METHODS), base, allocation))



def sort_value(value: Any) -> tuple:
    return (0, float(value), "") if is_number(value) else (1, 0.0, canon(value))



def reference_stats(ref: dict) -> dict[str, tuple[float, float, int] | None]:
    values = {m.key: ref.get(m.key) for m in METRICS}
    if values["delta_top1"] is None and ref.get("top1") is not None and ref.get("top1_base") is not None:
        values["delta_top1"] = ref["top1"] - ref["top1_base"]
    return {k: (None if v is None else (float(v), 0.0, 1)) for k, v in values.items()}



def failed_of(runs: Sequence[dict], dataset: str) -> list[dict]:
    return [r for r in runs if r.get("status") == "failed" and r["config"].get("dataset") == dataset]



def datasets_of(runs: Sequence[dict]) -> list[str]:
    found = {r["config"]["dataset"] for r in complete_runs(runs)}
    return [d for d in DATASET_ORDER if d in found] + sorted(found - set(DATASET_ORDER))



def find_sweeps(runs: Sequence[dict], param: str) -> list[list[list[dict]]]:
    """Sweeps of `param`: runs whose configs agree on everything but `param` and the seed, with
    at least two values of `param`; each sweep is a list of seed groups sorted by the value."""
    complete = complete_runs(runs)
    if complete and not any(param in r["config"] for r in complete):
        known = sorted(set().union(*(r["config"].keys() for r in complete)))
        raise PaperpruneError(f"no run records config parameter {param!r}; recorded parameters: {', '.join(known)}")
    sweeps = []
    for sweep in seed_groups([r for r in complete if param in r["config"]], exclude=[param]):
        groups = sorted(seed_groups(sweep), key=lambda g: sort_value(g[0]["config"][param]))
        if len(groups) > 1:
            sweeps.append(groups)
    sweeps.sort(key=lambda s: (datasets_rank(s[0][0]["config"]["dataset"]), s[0][0]["config"]["arch"],
                               method_rank(s[0][0]["config"]["method"])))
    return sweeps



def datasets_rank(dataset: str) -> tuple:
    return (DATASET_ORDER.index(dataset), "") if dataset in DATASET_ORDER else (len(DATASET_ORDER), dataset)

