"""End-to-end runs: a complete run.json, cached stages, resume after a kill, bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from paperprune.deploy import DEPLOY_MODE
from paperprune.lab.experiment import RunConfig, run_experiment
from paperprune.flops import count_flops_params
from paperprune.lab.record import SCHEMA, RunRecord
from paperprune.lab.stats import unpack_correct
from paperprune.surgery import load_pruned
from paperprune.utils import PaperpruneError

TINY = dict(dataset="fashion-mnist", arch="resnet56", method="stlp", flops_reduction=0.5, pretrain_epochs=1,
            finetune_epochs=1, per_class=10, test_per_class=10, samples_per_class=5, batch_size=25, device="cpu")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    record = run_experiment(RunConfig(**TINY), root / "r56-stlp", progress=False, latency_repeats=2)
    return root, record


def test_complete_run_json(tiny_run):
    root, record = tiny_run
    on_disk = json.loads((root / "r56-stlp" / "run.json").read_text())
    assert on_disk == json.loads(json.dumps(record))
    assert record["schema"] == SCHEMA and record["status"] == "complete"
    assert RunRecord.from_dict(on_disk).to_dict() == on_disk  # the record follows its one schema
    assert record["config"]["method"] == "stlp" and record["config"]["seed"] == 0
    env = record["environment"]
    for key in ("paperprune", "torch", "torchvision", "python", "device", "git_commit", "date"):
        assert key in env
    pruned_model = load_pruned(root / "r56-stlp" / "pruned.pt")
    macs, params = count_flops_params(pruned_model, (1, 32, 32))
    assert (record["pruned"]["macs"], record["pruned"]["params"]) == (macs, params)
    from paperprune import create_model

    base_macs, base_params = count_flops_params(create_model("resnet56", 10, 1), (1, 32, 32))
    assert (record["baseline"]["macs"], record["baseline"]["params"]) == (base_macs, base_params)
    assert base_macs == 125_485_696 - 2 * 16 * 9 * 32 * 32  # one input channel instead of three
    assert record["pruned"]["macs_reduction"] == pytest.approx(1 - macs / base_macs)
    assert abs(record["pruned"]["macs_reduction"] - 0.5) <= 0.01
    for key in ("top1_before_finetune", "top1"):
        assert 0.0 <= record["pruned"][key] <= 100.0
    assert record["pruned"]["top5"] is None and record["baseline"]["top5"] is None
    correct = unpack_correct(record["pruned"]["correct"])  # the final evaluation, image by image
    assert correct.size == 100 and 100.0 * correct.mean() == pytest.approx(record["pruned"]["top1"])
    assert record["lam"] is not None and record["lam"] > 0
    assert len(record["layers"]) == 27
    assert [row["width_after"] for row in record["layers"]] == [
        pruned_model.get_submodule(row["name"]).out_channels for row in record["layers"]]
    for name in ("cpu_bs1", "cpu_bs64"):
        assert record["latency"][name]["base_ms"] > 0 and record["latency"][name]["pruned_ms"] > 0
    deployed = record["latency"]["cpu_bs64"]  # batch 64 is also timed after prepare_for_inference
    assert deployed["deployed"] == DEPLOY_MODE
    assert deployed["deployed_base_ms"] > 0 and deployed["deployed_pruned_ms"] > 0
    assert "deployed" not in record["latency"]["cpu_bs1"]
    assert set(record["timings"]) == {"pretrain_s", "statistics_s", "selection_s", "surgery_s", "finetune_s",
                                      "evaluation_s"}
    cache = next((root / "_baselines").iterdir())
    assert record["resumed"] == [] and record["baseline_cache"] == cache.name  # outside the repository: its name
    assert record["config"]["baseline_sha256"] == _sha256(torch.load(cache / "final.pt", weights_only=True))
    assert record["data"]["root"] and len(record["data"]["fingerprint"]) == 16
    metrics = (root / "r56-stlp" / "finetune" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 1
    assert record["pruned"]["finetune_top1"] == [json.loads(metrics[0])["test_top1"]]


def _sha256(state: dict) -> str:
    """sha256 of a state_dict's tensor bytes in key order, computed here with hashlib alone."""
    import hashlib

    return hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()


def test_a_pretrained_baseline_is_named_by_its_hash_and_a_repository_path(tiny_run, tmp_path, monkeypatch):
    """--pretrained inside the repository is recorded relative to it (config.json and run.json), with the
    weights' sha256; never the absolute path of this machine. A folder whose config.json holds the absolute
    path (written before) is the same run."""
    root, record = tiny_run
    cache = next((root / "_baselines").iterdir())
    monkeypatch.setattr("paperprune.lab.io.REPO_ROOT", root)
    config = RunConfig(**dict(TINY, method="l1", pretrained=str(cache / "final.pt"), pretrain_epochs=0,
                              finetune_epochs=0))
    run = run_experiment(config, tmp_path / "out", progress=False, latency_repeats=0)
    relative = f"_baselines/{cache.name}/final.pt"
    assert run["config"]["pretrained"] == relative and run["baseline_cache"] is None
    assert run["config"]["baseline_sha256"] == record["config"]["baseline_sha256"]  # the same weights
    assert str(root) not in (tmp_path / "out" / "run.json").read_text()
    assert json.loads((tmp_path / "out" / "config.json").read_text())["pretrained"] == relative
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    (tmp_path / "out" / "config.json").write_text(json.dumps(dict(saved, pretrained=str(cache / "final.pt"))))
    assert run_experiment(config, tmp_path / "out", progress=False, latency_repeats=0) == run


def test_completed_run_is_not_recomputed_and_baseline_is_shared(tiny_run):
    root, record = tiny_run
    run_json = root / "r56-stlp" / "run.json"
    stamp = run_json.stat().st_mtime_ns
    assert run_experiment(RunConfig(**TINY), root / "r56-stlp", progress=False) == json.loads(run_json.read_text())
    assert run_json.stat().st_mtime_ns == stamp
    baselines = list((root / "_baselines").iterdir())
    assert len(baselines) == 1
    final = baselines[0] / "final.pt"
    stamp = final.stat().st_mtime_ns
    other = run_experiment(RunConfig(**dict(TINY, method="l1")), root / "r56-l1", progress=False, latency_repeats=1,
                           deployed_latency=False)
    assert all("deployed" not in lat for lat in other["latency"].values())
    assert final.stat().st_mtime_ns == stamp and len(list((root / "_baselines").iterdir())) == 1
    assert other["baseline"]["top1"] == record["baseline"]["top1"]


def test_same_dir_different_config_is_refused(tiny_run):
    root, _ = tiny_run
    with pytest.raises(PaperpruneError, match="different config"):
        run_experiment(RunConfig(**dict(TINY, flops_reduction=0.4)), root / "r56-stlp", progress=False)


def test_a_run_recorded_before_max_iter_existed_ran_at_3000(tiny_run, tmp_path):
    """A saved config without `max_iter` was solved at the old default of 3,000 iterations: the same
    command at today's default is another config (refused while complete), at 3,000 the same run."""
    import shutil

    root, _ = tiny_run
    out = tmp_path / "old"
    shutil.copytree(root / "r56-stlp", out)
    for name in ("config.json", "run.json"):  # as a run before the setting wrote them
        saved = json.loads((out / name).read_text())
        del (saved["config"] if name == "run.json" else saved)["max_iter"]
        (out / name).write_text(json.dumps(saved))
    with pytest.raises(PaperpruneError, match=r"different config \{'max_iter': \(3000, 20000\)\}"):
        run_experiment(RunConfig(**TINY), out, progress=False)
    record = run_experiment(RunConfig(**dict(TINY, max_iter=3000)), out, progress=False)
    assert "max_iter" not in record["config"]  # the complete old run, returned as recorded


@pytest.mark.parametrize("change, match", [
    (dict(flops_reduction=1.0), "flops_reduction=1.0"),
    (dict(flops_reduction=0.0), "flops_reduction=0.0"),
    (dict(method="magnitude"), "unknown method 'magnitude'"),
    (dict(arch="resnet18"), "unknown arch 'resnet18'"),
    (dict(dataset="mnist"), "unknown dataset 'mnist'"),
    (dict(omega=64, flops_reduction=0.6), "unreachable.*omega=64"),
    (dict(dataset="cifar10"), "cifar10"),
    (dict(pretrain_epochs=0), "--pretrained CKPT or --pretrain-epochs"),
])
def test_bad_input_writes_nothing(tmp_path, change, match, monkeypatch):
    monkeypatch.setenv("PAPERPRUNE_DATA", str(tmp_path / "no-data-here"))
    config = dict(TINY, **change)
    if config["dataset"] == "cifar10":
        (tmp_path / "empty").mkdir()
        config["data_root"] = str(tmp_path / "empty")
    with pytest.raises(PaperpruneError, match=match):
        run_experiment(RunConfig(**config), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "_baselines").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["empty"] if config["dataset"] == "cifar10" else [])


def test_missing_compiler_fails_before_writing(tmp_path, monkeypatch):
    import paperprune.deploy

    monkeypatch.setattr(paperprune.deploy.shutil, "which", lambda name: None)
    with pytest.raises(PaperpruneError, match="--no-deployed-latency"):
        run_experiment(RunConfig(**TINY), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "_baselines").exists()


def test_mismatched_pretrained_checkpoint(tmp_path):
    from paperprune import create_model

    ckpt = tmp_path / "vgg.pt"
    torch.save(create_model("vgg16", num_classes=10, in_channels=1).state_dict(), ckpt)
    with pytest.raises(PaperpruneError, match="does not match the architecture"):
        run_experiment(RunConfig(**dict(TINY, pretrained=str(ckpt), pretrain_epochs=0)), tmp_path / "out",
                       progress=False)
    assert not (tmp_path / "out").exists()
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PaperpruneError, match="not a readable PyTorch checkpoint"):
        run_experiment(RunConfig(**dict(TINY, pretrained=str(tmp_path / "garbage.pt"), pretrain_epochs=0)),
                       tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_killed_mid_finetune_resumes_and_completes(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "paperprune", "run", "--dataset", "fashion-mnist", "--arch", "resnet56",
           "--method", "l1", "--flops-reduction", "0.5", "--pretrain-epochs", "1", "--finetune-epochs", "4",
           "--per-class", "30", "--test-per-class", "5", "--samples-per-class", "5", "--batch-size", "50",
           "--device", "cpu", "--no-progress", "--latency-repeats", "0", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = out / "finetune" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        checkpoint = (out / "finetune" / "checkpoint.pt").is_file()
        if checkpoint and metrics.is_file() and metrics.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "run.json").exists()
    done_before = len(metrics.read_text().splitlines())
    assert 1 <= done_before < 4
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    # top-1 after every epoch, across the kill: the curve a longer fine-tune is read from
    assert record["pruned"]["finetune_top1"] == [row["test_top1"] for row in rows]
    assert record["status"] == "complete" and record["config"]["finetune_epochs"] == 4
    assert not list(Path(out).rglob("*.tmp"))
    # timings are cumulative over the interrupted and the resumed invocation, and the resume is recorded
    assert record["resumed"] == ["pretrain", "prune", "finetune"]
    pretrain_rows = (tmp_path / "_baselines" / record["baseline_cache"] / "metrics.jsonl").read_text().splitlines()
    pretrain_s = sum(json.loads(line)["epoch_seconds"] for line in pretrain_rows)
    assert record["timings"]["pretrain_s"] == pytest.approx(pretrain_s) and pretrain_s > 0.5
    finetune_s = sum(json.loads(line)["epoch_seconds"] for line in metrics.read_text().splitlines())
    assert record["timings"]["finetune_s"] == pytest.approx(finetune_s)


def test_a_record_names_the_commit_the_run_started_on(monkeypatch):
    """A long run is written after the checkout may have moved on: the record names the code that
    ran (the commit read once, as the run starts), and HEAD at writing beside it when they differ."""
    from paperprune.lab import io

    monkeypatch.setattr(io, "_RUN_COMMIT", [])
    monkeypatch.setattr(io, "git_commit", lambda path=None: "c" * 40)
    assert io.run_commit() == "c" * 40
    monkeypatch.setattr(io, "git_commit", lambda path=None: "d" * 40)
    assert io.run_commit() == "c" * 40

    monkeypatch.setattr(io, "_RUN_COMMIT", ["a" * 40])
    monkeypatch.setattr(io, "git_commit", lambda path=None: "b" * 40)
    env = io.environment_info("cpu")
    assert env["git_commit"] == "a" * 40 and env["git_commit_now"] == "b" * 40
    monkeypatch.setattr(io, "git_commit", lambda path=None: "a" * 40)
    assert "git_commit_now" not in io.environment_info("cpu")
