"""The one schema of run.json (paperprune.record): it reads every committed record, names what is
wrong with a bad one, writes only what it reads back, and is the README's table."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from paperprune.record import SCHEMA, RecordError, RunRecord, markdown_table, read_run, write_run
from paperprune.stats import pack_correct

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "runs" / "fashion-mnist" / "resnet56" / "sglp-f50-spc32-s0" / "run.json"


def _current() -> dict:
    """A schema-2 record built from the fixture: every field present."""
    record = json.loads(FIXTURE.read_text())
    record["schema"] = SCHEMA
    record.update(data={"root": "/data", "fingerprint": "0123456789abcdef"}, baseline_cache=None, precision="bf16",
                  criterion={"lam": record["lam"]}, latency_budget=None, resumed=[])
    record["pruned"]["correct"] = pack_correct(np.arange(10) % 3 == 0)
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


def test_readme_table_is_the_schema():
    """README's "What a run records" shows markdown_table() verbatim: edit the dataclasses, then the README."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## What a run records", 1)[1].split("\n## ", 1)[0]
    assert markdown_table() in section
    assert section.count("\n| `") == markdown_table().count("\n| `")  # no second, hand-typed row
