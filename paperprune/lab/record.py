"""One definition of `run.json`: the record a run writes (experiment), reads back and checks (reporting);
and of `curves.json`, the record of `paperprune.lab.curves.run` (`CurvesRecord`, `read_curves`, `write_curves`).

`RunRecord` and the blocks it holds are the schema. `write_run` validates a record before it is
written atomically; `read_run` / `RunRecord.from_dict` check every key against the field types
declared here (and the few value rules in the `_check` hooks) and raise `RecordError` naming the
key. The README's "What a run records" table is `markdown_table()` (tests/test_record.py fails
when the two differ).

Schema versions: 1 required only `schema`, `status`, `config`, `baseline`,
`pruned`, `environment`, `lam`, `layers`, `latency`, `timings`; 2 adds `pruned.correct` (the
per-image correctness of the final evaluation, for paired comparisons) and requires every field
the writer fills. A field marked "since 2" reads as None from a version-1 record.
"""
from __future__ import annotations

import base64
import json
import math
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ..utils import PaperpruneError, json_default, atomic_write_json

__all__ = ["SCHEMA", "RecordError", "RunRecord", "Evaluation", "Pruned", "Layer", "Packed", "DataIdentity",
           "Timings", "read_run", "write_run", "markdown_table", "CURVES_SCHEMA", "CurvePoint", "CurvesConfig",
           "CurvesTimings", "CurvesRecord", "read_curves", "write_curves"]

SCHEMA = 2
#: curves.json: 1 (no `schema` key; it reads as 1), 2 adds `config.criterion_options`
#: and requires every field the writer fills
CURVES_SCHEMA = 2


class RecordError(PaperpruneError):
    """A run.json that does not follow the schema; the message names the key."""


def _field(doc: str, since: int | None = None, optional: bool = False):
    """A schema field: `doc` for the README table; `since` the version from which it is required
    (absent before: None); `optional` True for a field a record may always leave out (None)."""
    meta = {"doc": doc, "since": since}
    return field(default=None, metadata=meta) if since is not None or optional else field(metadata=meta)


@dataclass(kw_only=True)
class Packed:
    """Per-image top-1 correctness in test-loader order, as `paperprune.lab.stats.pack_correct` packs it."""

    n: int = _field("number of test images")
    bits: str = _field("base64 of numpy.packbits of the booleans (`paperprune.lab.stats.unpack_correct` reads it)")

    def _check(self, where: str) -> None:
        try:
            size = len(base64.b64decode(self.bits, validate=True))
        except ValueError:
            raise RecordError(f"{where}bits is not base64") from None
        if self.n < 1 or size != -(-self.n // 8):
            raise RecordError(f"{where}bits holds {size} bytes, not the {-(-self.n // 8)} of n={self.n} images")


def _check_size(block, where: str) -> None:
    if block.params <= 0 or block.macs <= 0:
        raise RecordError(f"{where}params/macs must be positive")


def _check_range(block, names, low: float, high: float, where: str, closed: bool = True) -> None:
    """Each of `names` that is set lies in [low, high] ([low, high) unless `closed`)."""
    for name in names:
        value = getattr(block, name)
        if value is not None and not (low <= value <= high and (closed or value < high)):
            raise RecordError(f"{where}{name} is {value!r}, outside [{low:g}, {high:g}{']' if closed else ')'}")


_TOP = ("top1", "top5", "top1_before_finetune", "top1_bn")
_REDUCTIONS = ("macs_reduction", "params_reduction")


@dataclass(kw_only=True)
class Evaluation:
    """The unpruned baseline on the test loader."""

    top1: float = _field("top-1 accuracy (%)")
    top5: float | None = _field("top-5 accuracy (%), ImageNet only (null elsewhere)", optional=True)
    params: int = _field("parameters, conv + linear (METHOD.md section 4)")
    macs: int = _field("multiply-accumulates of one image, conv + linear (\"FLOPs\")")

    def _check(self, where: str) -> None:
        _check_size(self, where)
        _check_range(self, ("top1", "top5"), 0, 100, where)


@dataclass(kw_only=True)
class Pruned:
    """The pruned model: right after surgery, and after fine-tuning (the final evaluation)."""

    top1_before_finetune: float = _field("top-1 (%) right after pruning, before fine-tuning")
    top1: float = _field("top-1 (%) after fine-tuning (the final evaluation)")
    top5: float | None = _field("top-5 (%) after fine-tuning, ImageNet only", optional=True)
    params: int = _field("parameters after pruning")
    macs: int = _field("MACs after pruning")
    params_reduction: float = _field("1 - params / baseline params")
    macs_reduction: float = _field("1 - MACs / baseline MACs (the FLOPs reduction reached)")
    correct: Packed | None = _field("per-image top-1 correctness of the final evaluation, packed "
                                    "(`n`, `bits`): the input of paired bootstrap comparisons", since=2)
    finetune_top1: list[float] | None = _field("top-1 (%) on the test images after each fine-tuning epoch, "
                                               "in order (null when the run did not fine-tune or predates it)",
                                               optional=True)

    def _check(self, where: str) -> None:
        _check_size(self, where)
        _check_range(self, ("top1", "top5", "top1_before_finetune"), 0, 100, where)
        _check_range(self, _REDUCTIONS, 0, 1, where, closed=False)


@dataclass(kw_only=True)
class Layer:
    """One prunable layer."""

    name: str = _field("the conv's module name")
    width_before: int = _field("output channels before pruning")
    width_after: int = _field("output channels kept")
    kept: list[int] | None = _field("indices of the kept channels", since=2)

    def _check(self, where: str) -> None:
        if not 0 <= self.width_after <= self.width_before or self.width_before <= 0:
            raise RecordError(f"{where}width_before must be > 0 and width_after in 0..width_before, got "
                              f"{self.width_before} and {self.width_after}")


@dataclass(kw_only=True)
class DataIdentity:
    """The data a run read (`paperprune.lab.data.data_identity`)."""

    root: str = _field("the resolved folder read")
    fingerprint: str = _field("hash of the files' names, sizes and dates")


@dataclass(kw_only=True)
class Timings:
    """Seconds per stage, cumulative over interruptions."""

    pretrain_s: float = _field("the completed epochs of the cached baseline's training (loading with --pretrained)")
    statistics_s: float = _field("calibration statistics of the criterion")
    selection_s: float = _field("the budget rule's selection")
    surgery_s: float = _field("physical pruning")
    finetune_s: float = _field("the completed fine-tuning epochs")
    evaluation_s: float = _field("test evaluations (baseline and final)")


@dataclass(kw_only=True)
class RunRecord:
    """`OUT/run.json` of `python -m paperprune run` (and of each papermill run)."""

    schema: int = _field(f"version of this schema ({SCHEMA} now; 1 still reads)")
    status: str = _field("\"complete\" (a failed run leaves error.json instead)")
    config: dict = _field("every setting of the run: `dataclasses.asdict(paperprune.lab.experiment.RunConfig)`")
    data: DataIdentity | None = _field("the data identity", since=2)
    baseline_cache: str | None = _field("the cache folder of the baseline (null with `--pretrained`)", since=2,
                                        optional=True)
    environment: dict = _field("package versions, device, git commit, host, date (`lab.io.environment_info`)")
    precision: str | None = _field("the precision training and evaluation used: fp32, bf16 or fp16", since=2)
    baseline: Evaluation = _field("the baseline before pruning")
    pruned: Pruned = _field("the pruned model")
    lam: float | None = _field("the lasso's lam reached (null for criteria without one)", optional=True)
    criterion: dict | None = _field("what the criterion reports: lam, `lasso_support`, `relevance_threshold`, "
                                    "`unconverged_layers`, ...",
                                    since=2)
    layers: list[Layer] | None = _field("per prunable layer, widths before and after", optional=True)
    latency: dict = _field("base and pruned forward time (ms): `cpu_bs1`, `cpu_bs64` (and `cuda_bs64` on a GPU) "
                           "with `base_ms`, `pruned_ms`, `repeats`; at batch 64 also `deployed_base_ms` / "
                           "`deployed_pruned_ms` after `prepare_for_inference` (mode in `deployed`; "
                           "`--no-deployed-latency` skips them); `{}` with `--latency-repeats 0`")
    latency_budget: dict | None = _field("with `--latency-reduction`: target, predicted and measured latency, "
                                         "each measured correction step "
                                         "(`latency.latency_record`); else null", since=2, optional=True)
    timings: Timings = _field("seconds per stage")
    resumed: list[str] | None = _field("stages taken from earlier work instead of computed by this invocation: "
                                       "`pretrain` (a cached or resumed baseline), `prune`, `finetune` (resumed "
                                       "from its checkpoint); `[]` for a run done in one go", since=2)

    def _check(self, where: str) -> None:
        if self.status != "complete":
            raise RecordError(f"status is {self.status!r}, expected 'complete'")
        for key in ("dataset", "arch", "method"):
            if not isinstance(self.config.get(key), str):
                raise RecordError(f"config.{key} missing or not a string")
        for key in ("macs", "params"):
            if getattr(self.pruned, key) > getattr(self.baseline, key):
                raise RecordError(f"pruned.{key} is {getattr(self.pruned, key)}, above baseline.{key} "
                                  f"{getattr(self.baseline, key)}: pruning never adds")

    @classmethod
    def from_dict(cls, record: Any) -> RunRecord:
        """The record, every key checked (RecordError naming the first bad one)."""
        if not isinstance(record, dict):
            raise RecordError(f"holds a {type(record).__name__}, not a JSON object")
        schema = record.get("schema")
        if not isinstance(schema, int) or isinstance(schema, bool):
            raise RecordError(f"schema is {schema!r}, not a version number")
        if not 1 <= schema <= SCHEMA:  # before the keys: a newer version may have keys this one lacks
            raise RecordError(f"schema is {schema}; this paperprune reads versions 1 to {SCHEMA} (a newer "
                              "paperprune wrote it: upgrade)")
        return _build(cls, record, "", schema)

    def to_dict(self) -> dict:
        return asdict(self)


def _read(path: str | Path, cls, fix: str, damaged: str):
    """`path` read as JSON and checked by `cls.from_dict`; RecordError naming the file, the problem
    (unreadable, or `damaged` formatted with path and the error) and the fix."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path} is unreadable ({type(e).__name__}: {e}); {fix}") from None
    try:
        return cls.from_dict(raw)
    except RecordError as e:
        raise RecordError(damaged.format(path=path, error=e) + f"; {fix}") from None


def _write(path: str | Path, record) -> dict:
    """Check `record` as a reader would (its class's from_dict), then write it atomically; returns the dict written."""
    data = json.loads(json.dumps(record.to_dict(), default=json_default))
    type(record).from_dict(data)
    atomic_write_json(path, data)
    return data


def read_run(path: str | Path) -> RunRecord:
    """`path` (a run.json) read and checked; RecordError naming the file, the problem and the fix."""
    return _read(path, RunRecord, "delete it and rerun the same command to recompute the run",
                 "{path} is damaged ({error})")


def write_run(path: str | Path, record: RunRecord) -> dict:
    """Check `record` as a reader would, then write it atomically; returns the dict written."""
    return _write(path, record)


# --------------------------------------------------------------------------- curves.json

@dataclass(kw_only=True)
class CurvePoint:
    """One (criterion, seed, FLOPs target) of a pruning curve, no fine-tuning. A target the criterion
    could not reach has `error` and no measurement."""

    method: str = _field("the criterion")
    allocation: str | None = _field("how the budget was shared between layers: \"global\" or \"uniform\" "
                                    "(`paperprune.select`); absent in records before it: global", optional=True)
    seed: int = _field("the calibration seed (random: the seed of its scores)")
    target: float = _field("the FLOPs (MACs) reduction asked for")
    statistics_s: float | None = _field("seconds of the criterion's statistics, shared by the seed's targets",
                                        optional=True)
    error: str | None = _field("why the target could not be reached (only then: no measurement)", optional=True)
    level: float | None = _field("the budget rule's level reached", optional=True)
    macs_reduction: float | None = _field("1 - MACs / baseline MACs reached", optional=True)
    params_reduction: float | None = _field("1 - params / baseline params", optional=True)
    widths: dict[str, int] | None = _field("kept channels per prunable layer", optional=True)
    kept: dict[str, list[int]] | None = _field("indices of the kept channels per prunable layer", optional=True)
    top1: float | None = _field("top-1 (%) right after pruning, the baseline's BN statistics", optional=True)
    top1_bn: float | None = _field("top-1 (%) after adaptive BN (statistics re-estimated on `bn_images`)",
                                   optional=True)
    correct: Packed | None = _field("per-image correctness behind `top1`, packed", optional=True)
    correct_bn: Packed | None = _field("per-image correctness behind `top1_bn`, packed", optional=True)
    evaluate_s: float | None = _field("seconds of the two test evaluations and the BN re-estimation", optional=True)
    evaluated: str | None = _field("how the test evaluations ran: \"fold-bn\", BatchNorm folded into the layer before "
                                   "it (`paperprune.deploy.fold_batchnorm`); absent in records before it: unfolded",
                                   optional=True)
    unconverged_layers: list[str] | None = _field("lasso criteria: layers whose solve stopped at max_iter at the "
                                                  "reached level (`LassoCriterion.describe`); absent for the other "
                                                  "criteria and in records before 2026-12-03", optional=True)

    #: what a measured point always had (the readers need them); the rest is required since schema 2
    MEASURED = ("macs_reduction", "top1", "top1_bn", "correct", "correct_bn", "widths")
    MEASURED_SINCE_2 = ("statistics_s", "level", "params_reduction", "kept", "evaluate_s")

    def _check(self, where: str) -> None:
        _check_range(self, ("target",), 0, 1, where, closed=False)
        _check_range(self, _REDUCTIONS, 0, 1, where, closed=False)
        _check_range(self, ("top1", "top1_bn"), 0, 100, where)
        if self.error is None:
            self._require(self.MEASURED, where)
        elif any(getattr(self, k) is not None for k in self.MEASURED):
            raise RecordError(f"{where.rstrip('.')} has both an error and a measurement")

    def _require(self, names, where: str) -> None:
        missing = [k for k in names if getattr(self, k) is None]
        if missing:
            raise RecordError(f"{where.rstrip('.')} lacks {', '.join(missing)}")

    @classmethod
    def from_dict(cls, point: Any, where: str = "point") -> CurvePoint:
        """One point as `paperprune.lab.curves` writes it (all fields of the current schema), checked."""
        obj = _build(cls, point, f"{where}.", CURVES_SCHEMA)
        if obj.error is None:
            obj._require(cls.MEASURED_SINCE_2, where)
        return obj

    def to_dict(self) -> dict:
        """The point as curves.json holds it: absent fields left out (a point has `error` or a measurement)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(kw_only=True)
class CurvesConfig:
    """What defines a curves record (`paperprune.lab.curves.run`); `out/config.json` holds the same."""

    dataset: str = _field("the dataset")
    arch: str = _field("the architecture")
    seeds: list[int] = _field("calibration seeds")
    targets: list[float] = _field("FLOPs reductions asked for")
    test_images: int = _field("test images each point is scored on")
    bn_images: int = _field("training images of adaptive BN")
    pretrained: str | None = _field("shipped weights' tag (`create_model(pretrained=)`), or null", since=2)
    weights: str | None = _field("the baseline's state_dict file, relative to the repository (its name alone "
                                 "when outside it; `paperprune.lab.io.recorded_path`), or null; older records may "
                                 "hold an absolute path", since=2)
    baseline_sha256: str | None = _field("sha256 of the baseline's state_dict tensors "
                                         "(`paperprune.lab.io.state_sha256`)", since=2)
    methods: list[str] | None = _field("the criterion entries: a name (global allocation) or `name:uniform`",
                                       since=2)
    samples_per_class: int | None = _field("calibration images per class", since=2)
    precision: str | None = _field("precision of the evaluations (fp32)", since=2)
    criterion_options: dict | None = _field("options given to every criterion (`create_criterion`), e.g. "
                                            "`{\"nonnegative\": true}`: an ablation variant; `{}` for none",
                                            since=2)


@dataclass(kw_only=True)
class CurvesTimings:
    """Wall time of the last invocation."""

    wall_s: float = _field("seconds of the invocation that wrote the record")
    resumed_chunks: list[str] = _field("(criterion, seed) chunks read back instead of computed, `<method>-s<seed>`")


@dataclass(kw_only=True)
class CurvesRecord:
    """`OUT/curves.json` of `python -m paperprune.lab.curves` (and of notebooks/curves.ipynb)."""

    schema: int = _field(f"version of this schema ({CURVES_SCHEMA} now; a record without it is version 1)")
    config: CurvesConfig = _field("the curves' settings")
    environment: dict = _field("package versions, device, git commit, host, date (`lab.io.environment_info`)")
    points: list[CurvePoint] = _field("one per criterion, seed and target")
    timings: CurvesTimings | None = _field("wall time", since=2)
    summary: dict | None = _field("`top1` and `top1_bn`: mean, std and n over seeds per method (allocation) and target "
                                  "(`paperprune.lab.stats.aggregate`)", since=2)

    def _check(self, where: str) -> None:
        if self.schema >= 2:
            for i, point in enumerate(self.points):
                if point.error is None:
                    point._require(CurvePoint.MEASURED_SINCE_2, f"points[{i}]")

    @classmethod
    def from_dict(cls, record: Any) -> CurvesRecord:
        """The record, every key checked (RecordError naming the first bad one)."""
        if not isinstance(record, dict):
            raise RecordError(f"holds a {type(record).__name__}, not a JSON object")
        schema = record.get("schema", 1)
        if not isinstance(schema, int) or isinstance(schema, bool):
            raise RecordError(f"schema is {schema!r}, not a version number")
        if not 1 <= schema <= CURVES_SCHEMA:
            raise RecordError(f"schema is {schema}; this paperprune reads curves versions 1 to {CURVES_SCHEMA} "
                              "(a newer paperprune wrote it: upgrade)")
        return _build(cls, {**record, "schema": schema}, "", schema)

    def to_dict(self) -> dict:
        """As curves.json holds it (each point's absent fields left out)."""
        return {**asdict(self), "points": [p.to_dict() for p in self.points]}


def read_curves(path: str | Path) -> CurvesRecord:
    """`path` (a curves.json) read and checked; RecordError naming the file, the problem and the fix."""
    return _read(path, CurvesRecord,
                 "pass the curves.json that `python -m paperprune.lab.curves` wrote (or rerun it into that folder)",
                 "{path}: {error}")


def write_curves(path: str | Path, record: CurvesRecord) -> dict:
    """Check `record` as a reader would, then write it atomically; returns the dict written."""
    return _write(path, record)


# --------------------------------------------------------------------------- checking

def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _build(cls, raw: dict, where: str, schema: int):
    """An instance of dataclass `cls` from `raw`, each value checked against its declared type."""
    if not isinstance(raw, dict):
        raise RecordError(f"{where.rstrip('.') or 'the record'} is not an object")
    hints = _hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise RecordError(f"unknown key {where}{unknown[0]} (known: {', '.join(names)})")
    values = {}
    for f in fields(cls):
        if f.name in raw:
            values[f.name] = _value(hints[f.name], raw[f.name], f"{where}{f.name}", schema)
        elif f.default is MISSING or (f.metadata["since"] is not None and schema >= f.metadata["since"]):
            raise RecordError(f"{where}{f.name} missing")
    obj = cls(**values)
    if hasattr(obj, "_check"):
        obj._check(where)
    return obj


def _value(hint, value, where: str, schema: int):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _value(hint, value, where, schema)
    if is_dataclass(hint):
        return _build(hint, value, where + ".", schema)
    if origin is list:
        if not isinstance(value, list):
            raise RecordError(f"{where} is not a list")
        return [_value(args[0], v, f"{where}[{i}]", schema) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise RecordError(f"{where} is not an object")
        return {k: _value(args[1], v, f"{where}.{k}", schema) for k, v in value.items()}
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
          str: lambda v: isinstance(v, str), dict: lambda v: isinstance(v, dict)}[hint]
    if not ok(value):
        raise RecordError(f"{where} missing or not {_TYPE_NAMES[hint]} (got {value!r:.60})")
    return value


# --------------------------------------------------------------------------- documentation

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", dict: "an object"}
_PLURALS = {int: "integers", float: "numbers", str: "strings", dict: "objects"}


def _strip_none(hint):
    """(the type without None, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        return next(a for a in args if a is not type(None)), type(None) in args
    return hint, False


def _plural(hint) -> str:
    """"integers", "objects", "lists of integers": the values of a list or object of `hint`."""
    if is_dataclass(hint):
        return "objects"
    if typing.get_origin(hint) is list:
        return "lists of " + _plural(typing.get_args(hint)[0])
    return _PLURALS[hint]


def _type_text(hint) -> str:
    hint, nullable = _strip_none(hint)
    if is_dataclass(hint):
        text = "object"
    elif typing.get_origin(hint) is list:
        text = "list of " + _plural(typing.get_args(hint)[0])
    elif typing.get_origin(hint) is dict:
        text = "object of " + _plural(typing.get_args(hint)[1])
    else:
        text = _TYPE_NAMES[hint].split(" ", 1)[1]
    return text + (" or null" if nullable else "")


def _rows(cls, prefix: str = "") -> list[str]:
    hints, rows = _hints(cls), []
    for f in fields(cls):
        since = f.metadata["since"]
        note = f" (since schema {since}; null in older records)" if since else ""
        rows.append(f"| `{prefix}{f.name}` | {_type_text(hints[f.name])} | {f.metadata['doc']}{note} |")
        inner, _ = _strip_none(hints[f.name])
        if typing.get_origin(inner) is list and is_dataclass(typing.get_args(inner)[0]):
            rows += _rows(typing.get_args(inner)[0], f"{prefix}{f.name}[].")
        elif is_dataclass(inner):
            rows += _rows(inner, f"{prefix}{f.name}.")
    return rows


def markdown_table(record=None) -> str:
    """The README's table of run.json keys (of `CurvesRecord`'s with record=CurvesRecord), generated from the
    dataclasses."""
    return "\n".join(["| key | type | content |", "|---|---|---|", *_rows(record or RunRecord)]) + "\n"
