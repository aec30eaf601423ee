"""The one schema of run.json (paperprune.lab.record): it reads every committed record, names what is
wrong with a bad one, writes only what it reads back, and is the table of docs/records.md."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from paperprune.lab.record import SCHEMA, RecordError, RunRecord, markdown_table, read_run, write_run
from paperprune.lab.stats import pack_correct

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "runs" / "fashion-mnist" / "resnet56" / "sglp-f50-spc32-s0" / "run.json"


def _current() -> dict:
    """A schema-2 record built from the fixture: every field present."""
    record = json.loads(FIXTURE.read_text())
    record["schema"] = SCHEMA
    record.update(data={"root": "/data", "fingerprint": "0123456789abcdef"}, baseline_cache=None, precision="bf16",
                  criterion={"lam": record["lam"]}, latency_budget=None, resumed=[])
    record["pruned"]["correct"] = pack_correct(np.arange(10) % 3 == 0)
    record["pruned"]["finetune_top1"] = [61.0, 70.5]
    for layer in record["layers"]:
        layer["kept"] = list(range(layer["width_after"]))
    return record


def test_every_committed_record_reads():
    paths = [p for p in (ROOT / "figures").rglob("run.json")]
    paths += [p for p in (ROOT / "tests" / "fixtures").rglob("run.json") if "apib-f50" not in str(p)]  # malformed
    assert paths
    for path in paths:
        record = read_run(path)
        assert record.schema in (1, SCHEMA) and record.baseline.macs > record.pruned.macs


def test_version_1_reads_without_the_later_fields_and_version_2_requires_them():
    old = read_run(FIXTURE)
    assert old.schema == 1 and old.pruned.correct is None and old.resumed is None and old.data is None
    assert old.pruned.finetune_top1 is None
    current = _current()
    assert RunRecord.from_dict(current).to_dict() == current
    for key in ("resumed", "data", "precision"):
        with pytest.raises(RecordError, match=f"^{key} missing"):
            RunRecord.from_dict({k: v for k, v in current.items() if k != key})
    del current["pruned"]["correct"]
    with pytest.raises(RecordError, match="pruned.correct missing"):
        RunRecord.from_dict(current)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(status="running"), "status is 'running'"),
    (lambda r: r.update(schema=SCHEMA + 1, new_key=1), "upgrade"),
    (lambda r: r.update(schema="2"), "schema is '2'"),
    (lambda r: r["config"].pop("arch"), "config.arch missing"),
    (lambda r: r["pruned"].update(top1="high"), "pruned.top1 missing or not a number"),
    (lambda r: r["pruned"].update(top1=float("nan")), "pruned.top1 missing or not a number"),
    (lambda r: r["baseline"].update(macs=1.5), "baseline.macs missing or not an integer"),
    (lambda r: r["baseline"].update(params=0), "baseline.params/macs must be positive"),
    (lambda r: r["layers"][3].update(width_after=99), r"layers\[3\].width_before must be > 0"),
    (lambda r: r["layers"][0].update(kept="all"), r"layers\[0\].kept is not a list"),
    (lambda r: r["pruned"]["correct"].update(n=1000), "pruned.correct.bits holds 2 bytes, not the 125"),
    (lambda r: r["timings"].pop("surgery_s"), "timings.surgery_s missing"),
    (lambda r: r.update(note="extra"), "unknown key note"),
    (lambda r: r.update(baseline=[1]), "baseline is not an object"),
])
def test_a_bad_record_names_the_key(change, message):
    record = _current()
    change(record)
    with pytest.raises(RecordError, match=message):
        RunRecord.from_dict(record)


def test_read_run_names_the_file(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("{not json")
    with pytest.raises(RecordError, match="run.json is unreadable"):
        read_run(path)
    path.write_text("[1]")
    with pytest.raises(RecordError, match="run.json is damaged .holds a list"):
        read_run(path)


def test_write_run_refuses_what_it_could_not_read(tmp_path):
    record = RunRecord.from_dict(_current())
    assert write_run(tmp_path / "run.json", record) == json.loads((tmp_path / "run.json").read_text())
    bad = copy.deepcopy(record)
    bad.pruned.macs = 0
    with pytest.raises(RecordError, match="pruned.params/macs must be positive"):
        write_run(tmp_path / "bad.json", bad)
    assert not (tmp_path / "bad.json").exists()


def test_docs_table_is_the_schema():
    """docs/records.md shows markdown_table() verbatim: edit the dataclasses, then the page."""
    page = (ROOT / "docs" / "records.md").read_text()
    section = page.split("\n## ", 1)[0]
    assert markdown_table() in section
    assert section.count("\n| `") == markdown_table().count("\n| `")  # no second, hand-typed row


# --------------------------------------------------------------------------- curves.json

def _curves(schema: int | None = 2) -> dict:
    """A curves record as paperprune.lab.curves writes it (schema None: as it wrote it before the key existed)."""
    point = {"method": "sglp", "seed": 0, "target": 0.3, "statistics_s": 1.0, "level": 0.2, "macs_reduction": 0.31,
             "params_reduction": 0.3, "widths": {"a": 2}, "kept": {"a": [0, 3]}, "top1": 50.0, "top1_bn": 60.0,
             "correct": pack_correct([True, False]), "correct_bn": pack_correct([True, True]), "evaluate_s": 0.1}
    config = {"dataset": "synthetic", "arch": "resnet56", "pretrained": None, "weights": "base.pt",
              "baseline_sha256": "ab", "methods": ["sglp"], "targets": [0.3, 0.6], "seeds": [0],
              "samples_per_class": 3, "bn_images": 18, "test_images": 2, "precision": "fp32"}
    record = {"config": config, "environment": {}, "timings": {"wall_s": 1.0, "resumed_chunks": []},
              "points": [point, {"method": "sglp", "seed": 0, "target": 0.6, "statistics_s": 1.0, "error": "no"}],
              "summary": {"top1": [], "top1_bn": []}}
    if schema is not None:
        record.update(schema=schema)
        config.update(criterion_options={})
    return record


def test_curves_record_reads_both_versions_and_writes_what_it_reads(tmp_path):
    from paperprune.lab.record import CURVES_SCHEMA, CurvesRecord, markdown_table, read_curves, write_curves

    old = CurvesRecord.from_dict(_curves(None))  # curves.json of schema 1 (no schema key)
    assert old.schema == 1 and old.config.criterion_options is None and old.points[1].error == "no"
    record = CurvesRecord.from_dict(_curves())
    assert record.schema == CURVES_SCHEMA and record.config.criterion_options == {}
    assert write_curves(tmp_path / "curves.json", record) == _curves()  # absent point fields stay absent
    assert read_curves(tmp_path / "curves.json").to_dict() == _curves()
    assert "| `points[].kept` | object of lists of integers or null |" in markdown_table(CurvesRecord)


@pytest.mark.parametrize("change, message", [
    (lambda r: r["points"][0].pop("kept"), r"points\[0\] lacks kept"),
    (lambda r: r["points"][0].pop("correct_bn"), r"points\[0\] lacks correct_bn"),
    (lambda r: r["points"][1].update(top1=3.0), r"points\[1\] has both an error and a measurement"),
    (lambda r: r["points"][0]["widths"].update(a="2"), r"points\[0\].widths.a missing or not an integer"),
    (lambda r: r["config"].pop("criterion_options"), r"config.criterion_options missing"),
    (lambda r: r.update(schema=3), r"schema is 3; .* upgrade"),
])
def test_a_bad_curves_record_names_the_key(tmp_path, change, message):
    from paperprune.lab.record import read_curves

    record = _curves()
    change(record)
    (tmp_path / "curves.json").write_text(json.dumps(record))
    with pytest.raises(RecordError, match=message):
        read_curves(tmp_path / "curves.json")
