"""Papermill batches: a batch that keeps going past a failed run (its completed run the experiment
notebook's executed record), the report notebook, the profiles and their stage chain."""
import dataclasses
import hashlib
import json
from pathlib import Path

import nbformat
import pytest
import torch

from paperprune.criteria import METHODS
from paperprune.lab import reproduce
from paperprune.lab.reporting import load_runs

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures" / "runs"
TINY = dict(dataset="synthetic", arch="resnet56", pretrain_epochs=1, finetune_epochs=1, per_class=8,
            test_per_class=4, samples_per_class=4, batch_size=24, lr=0.05, finetune_lr=0.01)


def tiny_profile():
    runs = [dict(TINY, method="l1", seed=1, flops_reduction=0.4)]
    runs.append(dict(TINY, method="random", seed=0, flops_reduction=0.5, omega=64))  # unreachable: fails
    return {"tiny": reproduce.Profile("tiny", "test profile", runs, latency_repeats=1)}


def test_batch_keeps_going_past_a_failure_and_skips_completed_runs(tmp_path, monkeypatch, capsys):
    """The completed run is the experiment notebook's executed record: the injected method, seed and target (not
    the notebook's demo values) are the run's, and it prints the MACs and the deployed latency it recorded."""
    monkeypatch.setattr(reproduce, "profiles", tiny_profile)
    args = ["--profile", "tiny", "--runs-root", str(tmp_path / "runs"), "--figures", str(tmp_path / "figs")]
    assert reproduce.main(args) == 1
    err = capsys.readouterr().err
    assert "1 run(s) failed" in err and "random-fr0p50-s0" in err and "unreachable" in err
    runs = load_runs(tmp_path / "runs" / "tiny")
    assert sorted((r["config"]["method"], r["status"]) for r in runs) == [("l1", "complete"), ("random", "failed")]
    folder = tmp_path / "runs" / "tiny" / "synthetic" / "resnet56"
    record = json.loads((folder / "l1-fr0p40-s1" / "run.json").read_text())
    assert record["config"]["seed"] == 1 and abs(record["pruned"]["macs_reduction"] - 0.4) <= 0.01
    executed = nbformat.read(folder / "l1-fr0p40-s1" / "experiment.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"-{100 * record['pruned']['macs_reduction']:.1f}%" in printed
    assert f"latency cpu_bs64, {record['latency']['cpu_bs64']['deployed']}:" in printed
    assert not (folder / "l1-fr0p40-s1" / ".experiment.running.ipynb").exists()
    assert not (folder / "l1-fr0p40-s1" / "error.json").exists()
    failed_dir = folder / "random-fr0p50-s0"
    assert (failed_dir / "error.json").is_file() and not (failed_dir / "run.json").exists()
    assert (failed_dir / "experiment-failed.ipynb").is_file()
    index = (tmp_path / "figs" / "README.md").read_text()
    assert "random-fr0p50-s0" in index
    assert (tmp_path / "figs" / "report.ipynb").is_file()
    stamp = (folder / "l1-fr0p40-s1" / "run.json").stat().st_mtime_ns
    assert reproduce.main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 already complete, 1 to run" in out
    assert (folder / "l1-fr0p40-s1" / "run.json").stat().st_mtime_ns == stamp


def test_report_notebook_on_fixture_runs(tmp_path):
    report = reproduce.build_reports(FIXTURES, tmp_path, REPO / "notebooks")
    executed = nbformat.read(report, as_version=4)
    assert all(o.get("output_type") != "error" for c in executed.cells for o in c.get("outputs", []))
    table = (tmp_path / "tables").glob("results_fashion-mnist*.md")
    text = next(table).read_text()
    assert "not run" in text and "FIXTURE" in text


def test_bad_arguments(tmp_path, capsys):
    assert reproduce.main(["--profile", "huge"]) == 2
    assert ("unknown profile 'huge'; known profiles: quick, evidence, evidence-vgg16, evidence-vgg16-finetune, verdict, "
            "verdict-vgg16, verdict-finetune, block, block-50pc, block-100pc, fmnist, paper") in capsys.readouterr().err
    assert reproduce.main(["--profile", "quick", "--notebooks", str(tmp_path)]) == 2
    assert "experiment.ipynb not found" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["quick", "fmnist", "paper"])
def test_profiles_are_valid_configs(name):
    from paperprune.lab.curves import _check_grid
    from paperprune.lab.experiment import RunConfig
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
    assert len(job["seeds"]) >= 3 and set(job["methods"]) == set(METHODS) and job["test_per_class"] >= 300
    description = reproduce.profiles()["quick"].description  # printed by `make reproduce`: says what runs
    assert f"{10 * job['test_per_class']:,} test images ({job['test_per_class']} per class)" in description
    assert f"({job['samples_per_class']} images per class)" in description


def test_quick_profile_fits_its_15_minutes():
    """The README promises `make reproduce` in about 15 minutes on 2 CPU cores: the measured-cost estimate
    of the whole quick profile (curves and reports; no baselines or runs) stays within it."""
    profile = reproduce.profiles()["quick"]
    seconds = reproduce.estimate(profile)
    assert seconds["baselines"] == 0 and seconds["runs"] == 0
    assert 0 < sum(seconds.values()) <= 15 * 60


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
    assert reproduce.main(["--profile", "tiny", "--runs-root", str(tmp_path / "bad"),
                           "--figures", str(tmp_path / "badfigs")]) == 1
    assert "targets [2.0]" in json.loads((tmp_path / "bad" / "tiny" / "curves" / "synthetic-resnet56" /
                                         "error.json").read_text())["error"]


def test_second_batch_on_the_same_runs_is_refused(tmp_path, monkeypatch, capsys):
    import os

    from paperprune.lab.io import DirLock

    monkeypatch.setattr(reproduce, "profiles", tiny_profile)
    with DirLock(tmp_path / "runs" / "tiny", "reproduce batch"):
        assert reproduce.main(["--profile", "tiny", "--runs-root", str(tmp_path / "runs"), "--figures",
                               str(tmp_path / "figs")]) == 2
    err = capsys.readouterr().err
    assert f"reproduce batch folder {str(tmp_path / 'runs' / 'tiny')!r} is in use by pid {os.getpid()}" in err
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == [".lock"]
    assert not (tmp_path / "figs").exists()


# --------------------------------------------------------------------------- the evidence profiles

def test_evidence_profiles_plan(tmp_path):
    """Curves, ablation and fine-tuning on both baselines: the shipped ResNet-56 (`evidence`, with the fine-tuned runs) and a
    VGG-16 trained on the whole training set (`evidence-vgg16`); every curves job and run starts from
    its profile's baseline; each profile's estimate fits 150 minutes."""
    from paperprune.lab.curves import _check_grid
    from paperprune.lab.experiment import RunConfig
    from paperprune.models.pretrained import pretrained_path

    resnet, vgg = reproduce.profiles()["evidence"], reproduce.profiles()["evidence-vgg16"]
    assert resnet.baselines == [] and reproduce.plan_baselines(resnet, tmp_path) == []
    baselines = reproduce.plan_baselines(vgg, tmp_path)
    assert [(out.relative_to(tmp_path).as_posix(), b["dataset"], b.get("per_class"), b["precision"])
            for out, b in baselines] == [("evidence-vgg16/baselines/vgg16", "fashion-mnist", None, "auto")]
    vgg_weights = str(baselines[0][0] / "final.pt")
    for profile, arch in ((resnet, "resnet56"), (vgg, "vgg16")):
        curves = reproduce.plan_curves(profile, tmp_path)
        assert len({out for out, _ in curves}) == len(curves)  # one folder per job
        for out, job in curves:
            assert job["arch"] == arch and "baseline" not in job
            start = (job.get("weights"), job["pretrained"])
            assert start == ((None, "fashion-mnist") if arch == "resnet56" else (vgg_weights, None))
            assert job["test_per_class"] is None and len(job["seeds"]) >= 3
            _check_grid(job["methods"], job["targets"], job["seeds"], job["samples_per_class"], job["bn_images"],
                        job.get("criterion_options"))
        main = [job for _, job in curves if not job.get("criterion_options")]
        assert len(main) == 1  # the main curves
        assert set(main[0]["methods"]) == set(METHODS) and {0.3, 0.45, 0.6, 0.75} <= set(main[0]["targets"])
        variants = {out.name: job for out, job in curves if job.get("criterion_options")}
        assert set(variants) == {f"fashion-mnist-{arch}-{v}"
                                 for v in ("nonnegative", "structure-taxonomy", "response-class+output")}
        for job in variants.values():  # the ablation: targets of the main curves, so each variant pairs with them
            assert len(job["targets"]) == (2 if arch == "resnet56" else 1)
            assert set(job["targets"]) <= set(main[0]["targets"])
        assert profile.latency_repeats == 0
        minutes = {stage: s / 60 for stage, s in reproduce.estimate(profile).items()}
        assert sum(minutes.values()) <= 150 and minutes["curves"] > 0
    assert reproduce.plan(vgg, tmp_path) == []
    # the fine-tuned comparison of VGG-16: its own profile, from evidence-vgg16's baseline (the same folder, the same recipe)
    finetune = reproduce.profiles()["evidence-vgg16-finetune"]
    assert reproduce.plan_baselines(finetune, tmp_path) == baselines and finetune.curves == []
    assert sum(reproduce.estimate(finetune).values()) / 60 <= 150
    shipped = str(pretrained_path("resnet56", "fashion-mnist"))
    for profile, arch, start, reduction in ((resnet, "resnet56", shipped, 0.55), (finetune, "vgg16", vgg_weights, 0.61)):
        runs = reproduce.plan(profile, tmp_path)
        assert {(p["arch"], p["method"], p["seed"]) for _, p in runs} == {
            (arch, m, s) for m in METHODS for s in (0, 1, 2)}
        for out, params in runs:
            assert out.relative_to(tmp_path).parts[0] == profile.name
            assert params["pretrained"] == start and params["pretrain_epochs"] == 0
            assert params["flops_reduction"] == reduction
            config = RunConfig(**params)
            assert config.test_per_class is None and config.finetune_epochs >= 1


def tiny_chain():
    """The evidence profile's stage chain at tiny size: one baseline, curves and an ablation variant
    from it, a fine-tuned run from it."""
    grid = dict(dataset="synthetic", arch="resnet56", baseline="resnet56", seeds=[0], samples_per_class=3,
                bn_images=18, test_per_class=2)
    return reproduce.Profile(
        "tiny", "test chain",
        runs=[dict(TINY, method="l1", seed=0, flops_reduction=0.4, baseline="resnet56", finetune_epochs=1)],
        curves=[dict(grid, methods=["random", "l1"], targets=[0.3]),
                dict(grid, methods=["classwise"], targets=[0.3], criterion_options={"nonnegative": True})],
        baselines=[dict(dataset="synthetic", arch="resnet56", epochs=1, lr=0.05, weight_decay=5e-4, batch_size=24,
                        seed=0, precision="fp32", per_class=8)],
        latency_repeats=0, deployed_latency=False)


def test_verdict_profiles_plan(tmp_path):
    """The verdict's curves: ten calibration seeds, the seven criteria plus l1, hrank and random under the
    uniform allocation, 3,000 test images, 30/45/60/75%; the shipped ResNet-56 and a VGG-16 trained 20 epochs at
    weight decay 5e-4 in the profile's own baselines folder; the estimate says how long (no test of a bound: it
    spans sessions, and each stage resumes)."""
    from paperprune.lab.curves import _check_grid
    from paperprune.select import split_entry

    resnet, vgg = reproduce.profiles()["verdict"], reproduce.profiles()["verdict-vgg16"]
    baselines = reproduce.plan_baselines(vgg, tmp_path)
    assert [(out.relative_to(tmp_path).as_posix(), b["epochs"], b["weight_decay"]) for out, b in baselines] == [
        ("verdict-vgg16/baselines/vgg16", 20, 5e-4)]
    for profile, arch in ((resnet, "resnet56"), (vgg, "vgg16")):
        [(out, job)] = reproduce.plan_curves(profile, tmp_path)
        assert job["arch"] == arch and "baseline" not in job and len(job["seeds"]) >= 10
        assert job["test_per_class"] * 10 >= 3000 and job["targets"] == [0.30, 0.45, 0.60, 0.75]
        entries = {split_entry(m, "global") for m in job["methods"]}
        assert {(m, "global") for m in METHODS} | {(m, "uniform") for m in ("l1", "hrank", "random")} \
            == entries
        _check_grid(job["methods"], job["targets"], job["seeds"], job["samples_per_class"], job["bn_images"],
                    job.get("criterion_options"))
        assert reproduce.estimate(profile)["curves"] > 0 and reproduce.plan(profile, tmp_path) == []


def test_evidence_chain_end_to_end_then_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(reproduce, "profiles", lambda: {"tiny": tiny_chain()})
    monkeypatch.setattr(reproduce, "estimate", lambda *a, **k: None)  # no measured costs for synthetic
    root, figs = tmp_path / "runs" / "tiny", tmp_path / "figs"
    args = ["--profile", "tiny", "--runs-root", str(tmp_path / "runs"), "--figures", str(figs)]
    assert reproduce.main(args) == 0, capsys.readouterr().err
    weights = root / "baselines" / "resnet56" / "final.pt"
    assert weights.is_file() and "epoch" in (root / "baselines" / "resnet56" / "metrics.jsonl").read_text()
    main = json.loads((root / "curves" / "synthetic-resnet56" / "curves.json").read_text())
    variant = json.loads((root / "curves" / "synthetic-resnet56-nonnegative" / "curves.json").read_text())
    # the baseline named by its tensors' sha256 (computed here) and a path that is never absolute: outside the
    # repository, as this temporary folder is, the file name alone
    state = torch.load(weights, weights_only=True)
    sha256 = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    assert main["config"]["weights"] == variant["config"]["weights"] == "final.pt"
    assert main["config"]["baseline_sha256"] == variant["config"]["baseline_sha256"] == sha256
    assert variant["config"]["criterion_options"] == {"nonnegative": True}
    run = json.loads((root / "synthetic" / "resnet56" / "l1-fr0p40-s0" / "run.json").read_text())
    assert run["config"]["pretrained"] == "final.pt" and run["config"]["pretrain_epochs"] == 0
    assert run["config"]["baseline_sha256"] == sha256 and str(tmp_path) not in json.dumps(run["config"])
    assert run["pruned"]["correct"] is not None  # schema 2: paired_runs can use it
    copied = {p.relative_to(figs / "records").as_posix() for p in (figs / "records").rglob("*") if p.is_file()}
    assert {"baselines/resnet56/metrics.jsonl", "baselines/resnet56/config.json", "curves/synthetic-resnet56/curves.json",
            "curves/synthetic-resnet56-nonnegative/curves.ipynb", "synthetic/resnet56/l1-fr0p40-s0/run.json",
            "synthetic/resnet56/l1-fr0p40-s0/experiment.ipynb"} <= copied
    assert not list(figs.rglob("*.pt"))  # no checkpoints among the records
    assert (figs / "tables" / "baselines.md").is_file() and (figs / "report.ipynb").is_file()
    assert (figs / "tables" / "curves_synthetic_resnet56_nonnegative.md").is_file()
    ablation = (figs / "tables" / "ablation_top1_bn_synthetic_resnet56_nonnegative.md").read_text()
    assert "Ablation nonnegative vs main curves" in ablation  # no row: the variant's method is not in the main curves

    def refuse(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(reproduce.subprocess, "run", refuse)
    monkeypatch.setattr(reproduce, "execute_curves", refuse)
    monkeypatch.setattr(reproduce, "execute_run", refuse)
    assert reproduce.main(args + ["--dry-run"]) == 0
    assert "1 baseline(s), 0 to train; 1 runs, 1 already complete, 0 to run" in capsys.readouterr().out
    assert reproduce.main(args) == 0  # every stage skipped
    (root / "synthetic" / "resnet56" / "l1-fr0p40-s0" / "run.json").unlink()  # as if the last stage was cut short
    again = []
    monkeypatch.setattr(reproduce, "execute_run", lambda notebook, out, params, **k: again.append(params["pretrained"]))
    reproduce.main(args)
    assert again == [str(weights)]


def test_a_profile_with_baselines_from_uses_the_other_profiles_baseline_without_training(tmp_path, monkeypatch,
                                                                                         capsys):
    """evidence-vgg16-finetune's shape: runs from another profile's trained baseline; nothing is trained again,
    and the baseline's record stays with its own profile."""
    chain = tiny_chain()
    ft = reproduce.Profile("tiny-ft", "runs only", runs=chain.runs, baselines=chain.baselines, baselines_from="tiny",
                           latency_repeats=0, deployed_latency=False)
    # the other profile trains the baseline only (its curves are the chain test's)
    monkeypatch.setattr(reproduce, "profiles", lambda: {"tiny": dataclasses.replace(chain, runs=[], curves=[]),
                                                        "tiny-ft": ft})
    monkeypatch.setattr(reproduce, "estimate", lambda *a, **k: None)
    runs = tmp_path / "runs"
    assert reproduce.main(["--profile", "tiny", "--runs-root", str(runs), "--figures", str(tmp_path / "f1")]) == 0
    weights = runs / "tiny" / "baselines" / "resnet56" / "final.pt"
    before = weights.stat().st_mtime_ns

    def refuse(*a, **k):
        raise AssertionError("the shared baseline was trained again")

    monkeypatch.setattr(reproduce.subprocess, "run", refuse)
    figs = tmp_path / "f2"
    assert reproduce.main(["--profile", "tiny-ft", "--runs-root", str(runs), "--figures", str(figs)]) == 0, \
        capsys.readouterr().err
    run = json.loads((runs / "tiny-ft" / "synthetic" / "resnet56" / "l1-fr0p40-s0" / "run.json").read_text())
    # the run names the shared weights as records do (outside the repository: by file name, with their hash)
    assert run["config"]["pretrained"] == weights.name and weights.stat().st_mtime_ns == before
    assert not (runs / "tiny-ft" / "baselines").exists() and not (figs / "records" / "baselines").exists()
    assert (figs / "records" / "synthetic" / "resnet56" / "l1-fr0p40-s0" / "run.json").is_file()


def test_a_setting_a_job_leaves_out_is_the_apis_default_not_the_notebooks_demo_value(tmp_path, monkeypatch):
    """The notebooks' parameters cells hold demo values (experiment: test_per_class = 10, lr = 0.05;
    curves: precision = "fp32", a 4-image test set); a job that leaves a setting out gets the API's default."""
    seen = {}
    monkeypatch.setattr(reproduce, "_execute", lambda notebook, final, parameters, **k: seen.update(parameters))
    reproduce.execute_run(REPO / "notebooks" / "experiment.ipynb", tmp_path / "run",
                          dict(dataset="fashion-mnist", arch="resnet56", method="l1", flops_reduction=0.5),
                          cache_dir=tmp_path, threads=1)
    assert seen["test_per_class"] is None and seen["lr"] == 0.1 and seen["per_class"] is None
    assert seen["samples_per_class"] == 20 and seen["method"] == "l1" and seen["device"] == "auto"
    seen.clear()
    reproduce.execute_curves(REPO / "notebooks" / "curves.ipynb", tmp_path / "curves",
                             dict(dataset="fashion-mnist", arch="resnet56", methods=["l1"]), threads=1)
    assert seen["test_per_class"] is None and seen["targets"] == [0.3, 0.45, 0.6, 0.75] and seen["methods"] == ["l1"]
    assert seen["bn_images"] == 256 and seen["samples_per_class"] == 20 and seen["device"] == "cpu"


@pytest.mark.parametrize("notebook", ["experiment", "curves"])
def test_every_injected_parameter_is_declared_by_the_notebook(tmp_path, monkeypatch, notebook):
    """papermill only warns of a parameter the notebook does not declare, which the notebook may then ignore.
    The experiment notebook reads every RunConfig field from its globals, declared or not."""
    from dataclasses import fields

    import papermill

    from paperprune.lab.experiment import RunConfig

    seen = {}
    monkeypatch.setattr(reproduce, "_execute", lambda path, final, parameters, **k: seen.update(parameters))
    path = REPO / "notebooks" / f"{notebook}.ipynb"
    if notebook == "experiment":
        reproduce.execute_run(path, tmp_path / "run", dict(dataset="fashion-mnist", arch="resnet56", method="l1",
                                                           flops_reduction=0.5), cache_dir=tmp_path, threads=1)
    else:
        reproduce.execute_curves(path, tmp_path / "curves", dict(dataset="fashion-mnist", arch="resnet56"),
                                 threads=1, device="cuda:1")
        assert seen["device"] == "cuda:1"
    declared = set(papermill.inspect_notebook(str(path)))
    if notebook == "experiment":
        declared |= {f.name for f in fields(RunConfig)}
    assert set(seen) <= declared, sorted(set(seen) - declared)


def test_a_failed_baseline_fails_its_dependents_with_its_cause(tmp_path, monkeypatch, capsys):
    profile = tiny_chain()
    profile.baselines[0]["epochs"] = 0  # train refuses it
    monkeypatch.setattr(reproduce, "profiles", lambda: {"tiny": profile})
    assert reproduce.main(["--profile", "tiny", "--runs-root", str(tmp_path / "runs"), "--figures",
                           str(tmp_path / "figs")]) == 1
    err = capsys.readouterr().err
    assert "4 run(s) failed" in err and "train exited 2" in err and err.count("is missing: its training failed") == 3


def test_estimate_counts_what_is_left(tmp_path):
    profile = reproduce.profiles()["evidence-vgg16"]
    whole = reproduce.estimate(profile)
    assert reproduce.estimate(profile, [], [], []) == {"baselines": 0.0, "curves": 0.0, "runs": 0.0, "reports": 0.0}
    one_epoch = reproduce.estimate(profile, [dict(profile.baselines[0], epochs=1)], [], [])["baselines"]
    step = reproduce.COSTS[profile.baselines[0]["arch"]]["train_step_s"]
    test = reproduce.COSTS[profile.baselines[0]["arch"]]["eval_bf16_s"]
    assert one_epoch == pytest.approx(469 * step + test)  # 60,000 images at 128, then the 10,000 test images
    assert whole["baselines"] > one_epoch
    assert reproduce.estimate(reproduce.profiles()["paper"]) is None  # no measured costs for CIFAR


def test_uniform_entries_in_a_run_grid_are_runs_of_their_own():
    """"hrank:uniform" in a profile's run grid is hrank under the uniform allocation, in a folder of its own
    beside hrank's; every run of the fine-tune profile has a distinct folder."""
    from paperprune.lab.reproduce import plan, profiles

    profile = profiles()["verdict-finetune"]
    runs = {(r["method"], r.get("allocation", "global"), r["seed"]) for r in profile.runs}
    assert ("hrank", "uniform", 0) in runs and ("hrank", "global", 0) in runs and len(runs) == 8 * 5
    folders = [out.name for out, _ in plan(profile, Path("runs"))]
    assert len(set(folders)) == len(folders) and "hrank-uniform-fr0p55-s0" in folders and "hrank-fr0p55-s0" in folders
    assert all(r["finetune_epochs"] >= 3 and r["per_class"] is None for r in profile.runs)
