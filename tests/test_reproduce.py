"""Papermill batches: the experiment notebook on tiny parameters, the report notebook, and a
batch that keeps going past a failed run."""
import json
from pathlib import Path

import nbformat
import pytest

from paperprune import reproduce
from paperprune.reporting import load_runs

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "runs"
TINY = dict(dataset="synthetic", arch="resnet56", pretrain_epochs=1, finetune_epochs=1, per_class=8,
            test_per_class=4, samples_per_class=4, batch_size=24, lr=0.05, finetune_lr=0.01)


def tiny_profile():
    runs = [dict(TINY, method="l1", seed=0, flops_reduction=0.5)]
    runs.append(dict(TINY, method="random", seed=0, flops_reduction=0.5, omega=64))  # unreachable: fails
    return {"tiny": reproduce.Profile("tiny", "test profile", runs)}


def test_experiment_notebook_records_its_run(tmp_path):
    out = tmp_path / "run"
    params = dict(TINY, method="sglp", seed=1, flops_reduction=0.4)
    reproduce.execute_run(REPO / "notebooks" / "experiment.ipynb", out, params, cache_dir=tmp_path / "cache",
                          threads=1)
    record = json.loads((out / "run.json").read_text())
    assert record["config"]["method"] == "sglp" and record["config"]["seed"] == 1
    assert abs(record["pruned"]["macs_reduction"] - 0.4) <= 0.01
    executed = nbformat.read(out / "experiment.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"-{100 * record['pruned']['macs_reduction']:.1f}%" in printed
    assert f"latency cpu_bs64, {record['latency']['cpu_bs64']['deployed']}:" in printed
    assert not (out / ".experiment.running.ipynb").exists() and not (out / "error.json").exists()


def test_batch_keeps_going_past_a_failure_and_skips_completed_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reproduce, "profiles", tiny_profile)
    args = ["--profile", "tiny", "--runs-root", str(tmp_path / "runs"), "--figures", str(tmp_path / "figs")]
    assert reproduce.main(args) == 1
    err = capsys.readouterr().err
    assert "1 run(s) failed" in err and "random-fr0p50-s0" in err and "unreachable" in err
    runs = load_runs(tmp_path / "runs" / "tiny")
    assert sorted((r["config"]["method"], r["status"]) for r in runs) == [("l1", "complete"), ("random", "failed")]
    failed_dir = tmp_path / "runs" / "tiny" / "synthetic" / "resnet56" / "random-fr0p50-s0"
    assert (failed_dir / "error.json").is_file() and not (failed_dir / "run.json").exists()
    assert (failed_dir / "experiment-failed.ipynb").is_file()
    index = (tmp_path / "figs" / "README.md").read_text()
    assert "random-fr0p50-s0" in index
    assert (tmp_path / "figs" / "report.ipynb").is_file()
    stamp = (tmp_path / "runs" / "tiny" / "synthetic" / "resnet56" / "l1-fr0p50-s0" / "run.json").stat().st_mtime_ns
    assert reproduce.main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 already complete, 1 to run" in out
    assert (tmp_path / "runs" / "tiny" / "synthetic" / "resnet56" / "l1-fr0p50-s0" / "run.json").stat().st_mtime_ns \
        == stamp


def test_report_notebook_on_fixture_runs(tmp_path):
    report = reproduce.build_reports(FIXTURES, tmp_path, REPO / "notebooks")
    executed = nbformat.read(report, as_version=4)
    assert all(o.get("output_type") != "error" for c in executed.cells for o in c.get("outputs", []))
    table = (tmp_path / "tables").glob("results_fashion-mnist*.md")
    text = next(table).read_text()
    assert "not run" in text and "FIXTURE" in text


def test_bad_arguments(tmp_path, capsys):
    assert reproduce.main(["--profile", "huge"]) == 2
    assert "unknown profile 'huge'; known profiles: quick, fmnist, paper" in capsys.readouterr().err
    assert reproduce.main(["--profile", "quick", "--notebooks", str(tmp_path)]) == 2
    assert "experiment.ipynb not found" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["quick", "fmnist", "paper"])
def test_profiles_are_valid_configs(name):
    from paperprune.curves import _check_grid
    from paperprune.experiment import RunConfig
    from paperprune.models.pretrained import list_pretrained

    profile = reproduce.profiles()[name]
    assert profile.runs or profile.curves
    for params in profile.runs:
        config = RunConfig(**params)
        assert 0 < config.flops_reduction < 1
    for job in profile.curves:
        _check_grid(job["methods"], job["targets"], job["seeds"], job["samples_per_class"], job["bn_images"])
        assert f"{job['arch']}:{job['pretrained']}" in list_pretrained()


def test_quick_profile_is_the_shipped_resnet56_curves():
    (job,) = reproduce.profiles()["quick"].curves
    assert not reproduce.profiles()["quick"].runs
    assert (job["dataset"], job["arch"], job["pretrained"]) == ("fashion-mnist", "resnet56", "fashion-mnist")
    assert len(job["seeds"]) >= 3 and set(job["methods"]) == set(reproduce.METHODS) and job["test_per_class"] >= 500


def test_curve_jobs_run_report_and_are_skipped_when_done(tmp_path, monkeypatch, capsys):
    import torch

    from paperprune import create_model

    torch.manual_seed(0)
    torch.save(create_model("resnet56", num_classes=9, in_channels=3).state_dict(), tmp_path / "base.pt")
    job = dict(dataset="synthetic", arch="resnet56", pretrained=None, weights=str(tmp_path / "base.pt"),
               methods=["random", "l1"], targets=[0.3, 0.5], seeds=[0, 1], samples_per_class=3, bn_images=18,
               test_per_class=2)
    monkeypatch.setattr(reproduce, "profiles", lambda: {"tiny": reproduce.Profile("tiny", "test", curves=[job])})
    args = ["--profile", "tiny", "--runs-root", str(tmp_path / "runs"), "--figures", str(tmp_path / "figs")]
    assert reproduce.main(args) == 0
    out = tmp_path / "runs" / "tiny" / "curves" / "synthetic-resnet56"
    assert (out / "curves.json").is_file() and (out / "curves.ipynb").is_file()
    assert (tmp_path / "figs" / "tables" / "curves_synthetic_resnet56.md").is_file()
    assert (tmp_path / "figs" / "figures" / "curves_synthetic_resnet56.png").is_file()
    stamp = (out / "curves.json").stat().st_mtime_ns
    assert reproduce.main(args + ["--dry-run"]) == 0 and "1 curve job(s), 0 to run" in capsys.readouterr().out
    assert reproduce.main(args) == 0 and (out / "curves.json").stat().st_mtime_ns == stamp
    job["targets"] = [2.0]  # a failing job: recorded, reported, exit code 1
    assert reproduce.main(["--profile", "tiny", "--runs-root", str(tmp_path / "bad")]) == 1
    assert "targets [2.0]" in json.loads((tmp_path / "bad" / "tiny" / "curves" / "synthetic-resnet56" /
                                         "error.json").read_text())["error"]


def test_second_batch_on_the_same_runs_is_refused(tmp_path, monkeypatch, capsys):
    import os

    from paperprune.utils import DirLock

    monkeypatch.setattr(reproduce, "profiles", tiny_profile)
    with DirLock(tmp_path / "runs" / "tiny", "reproduce batch"):
        assert reproduce.main(["--profile", "tiny", "--runs-root", str(tmp_path / "runs"), "--figures",
                               str(tmp_path / "figs")]) == 2
    err = capsys.readouterr().err
    assert f"reproduce batch folder {str(tmp_path / 'runs' / 'tiny')!r} is in use by pid {os.getpid()}" in err
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == [".lock"]
    assert not (tmp_path / "figs").exists()
