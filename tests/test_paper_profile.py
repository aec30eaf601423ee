"""Smoke test of `reproduce --profile paper`: the grid is the paper's (CIFAR-10, CIFAR-100,
ImageNet; each dataset's architectures; all seven criteria), and every dataset, architecture and
criterion of it runs end to end on CPU, on tiny generated files in the exact on-disk formats a
user brings (CIFAR's python-pickle folders, an ImageNet ImageFolder tree of JPEGs) with tiny
schedules, so that a user with the data and GPUs meets no error we could have found here. The
grid, the run folders, the parameters and the `--pretrained-dir` lookup are reproduce's own; each
run executes `run_experiment` in this process (the ImageNet cell also through the papermill
notebook, as reproduce runs it)."""
import dataclasses
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from paperprune.lab import reproduce
from paperprune.criteria import METHODS
from paperprune.lab.experiment import RunConfig, run_experiment

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
REPO = Path(__file__).resolve().parent.parent
# a calibration set of 2 images per class is too small for APIB to stay below 62% of ResNet-50 MACs
TINY = dict(pretrain_epochs=1, finetune_epochs=1, batch_size=16, per_class=1, test_per_class=1)
# calibration images per class: with N = K x n samples the channel kernels span at most N(N-1)/2
# dimensions, so a layer of more channels (VGG-16's 512) gets a singular Q, on which ADMM stalls at
# max_iter (measured: 3 per class on CIFAR-10's VGG-16, 12 of 117 solves, 23 s; 6 per class, none, 5 s)
SAMPLES = {"cifar10": 6, "cifar100": 3, "imagenet": 4}


def _pickle(path: Path, obj: dict) -> None:
    """Written as the CIFAR tarballs were: protocol 2, bytes keys."""
    with open(path, "wb") as f:
        pickle.dump({k.encode(): v for k, v in obj.items()}, f, protocol=2)


def write_cifar10(root: Path, rng, train_per_class_per_batch=2, test_per_class=1) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    _pickle(folder / "batches.meta", {"label_names": [f"c{i}".encode() for i in range(10)], "num_vis": 3072})
    for name, n in [(f"data_batch_{i}", train_per_class_per_batch) for i in range(1, 6)] + [("test_batch",
                                                                                           test_per_class)]:
        labels = [c for c in range(10) for _ in range(n)]
        _pickle(folder / name, {"batch_label": name.encode(), "labels": labels,
                                "data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8),
                                "filenames": [f"{i}.png".encode() for i in range(len(labels))]})


def write_cifar100(root: Path, rng, train_per_class=3, test_per_class=1) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _pickle(folder / "meta", {"fine_label_names": [f"f{i}".encode() for i in range(100)],
                              "coarse_label_names": [f"g{i}".encode() for i in range(20)]})
    for name, n in (("train", train_per_class), ("test", test_per_class)):
        fine = [c for c in range(100) for _ in range(n)]
        _pickle(folder / name, {"batch_label": name.encode(), "fine_labels": fine,
                                "coarse_labels": [c // 5 for c in fine],
                                "data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8),
                                "filenames": [f"{i}.png".encode() for i in range(len(fine))]})


def write_imagenet(root: Path, rng, classes=4, train_per_class=4, val_per_class=1) -> None:
    from PIL import Image

    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(
                    folder / f"n{c:08d}_{i}.JPEG", format="JPEG")


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """The data root, a --pretrained-dir with the ImageNet baseline, and the planned runs."""
    root = tmp_path_factory.mktemp("paper")
    rng = np.random.default_rng(0)
    write_cifar10(root / "data" / "cifar10", rng)
    write_cifar100(root / "data" / "cifar100", rng)
    write_imagenet(root / "data" / "imagenet", rng)
    from paperprune import create_model

    (root / "pretrained").mkdir()
    torch.manual_seed(0)
    torch.save(create_model("resnet50", num_classes=4).state_dict(), root / "pretrained" / "imagenet-resnet50.pt")
    profile = reproduce.profiles()["paper"]
    runs = [dict(run, **{k: v for k, v in TINY.items() if k != "pretrain_epochs" or run["dataset"] != "imagenet"},
                 samples_per_class=SAMPLES[run["dataset"]]) for run in profile.runs]
    tiny = dataclasses.replace(profile, runs=runs, latency_repeats=0, deployed_latency=False)
    plan = reproduce.plan(tiny, root / "runs", data_root=str(root / "data"), pretrained_dir=str(root / "pretrained"))
    return root, tiny, plan


def test_the_grid_is_the_papers(paper):
    _, tiny, plan = paper
    cells = {(p["dataset"], p["arch"]) for _, p in plan}
    assert cells == {("cifar10", a) for a in ("vgg16", "resnet56", "resnet110", "googlenet", "densenet40")} | {
        ("cifar100", "vgg16"), ("cifar100", "resnet56"), ("imagenet", "resnet50")}
    assert len(plan) == 8 * len(METHODS) == 56
    for _, params in plan:  # ImageNet starts from a pretrained ResNet-50 found in --pretrained-dir
        if params["dataset"] == "imagenet":
            assert params["pretrained"].endswith("imagenet-resnet50.pt") and params["pretrain_epochs"] == 0
        else:
            assert params.get("pretrained") is None and params["pretrain_epochs"] == 1
    # the cells run end to end below: every (dataset, architecture) pair and every criterion of the grid
    grid = {(p["dataset"], p["arch"], p["method"]) for _, p in plan}
    assert set(CELLS) <= grid and {c[:2] for c in CELLS} == cells and {c[2] for c in CELLS} == set(METHODS)


# Eight cells run end to end: every (dataset, architecture) pair of the grid once, and every criterion. What a
# cell exercises splits along those lines: the data loader (and its on-disk format) by dataset; the model, its
# prunable layers, the statistics' hooks, surgery and the MACs predictor by architecture; the criterion by
# method, on per-layer statistics whose code is the same for every architecture. Criteria that read activations
# go where the layers are unusual (VGG-16's 512 channels, GoogLeNet's branches, DenseNet's concatenations,
# ResNet-50's bottlenecks) and sTLP-IB to CIFAR-100's 100-class tree. Every criterion on both model families
# meets the same MACs target in tests/test_pipeline.py; every cell's parameters form a valid RunConfig in
# tests/test_reproduce.py::test_profiles_are_valid_configs; sGLP-IB's 100-class complete graph (what the smoke
# model's embeddings give on CIFAR-100) is checked against cvxpy in tests/test_lasso.py.
CELLS = [("cifar10", "vgg16", "apib"), ("cifar10", "resnet56", "random"), ("cifar10", "resnet110", "sglp"),
         ("cifar10", "googlenet", "classwise"), ("cifar10", "densenet40", "stlp"), ("cifar100", "vgg16", "l1"),
         ("cifar100", "resnet56", "stlp"), ("imagenet", "resnet50", "hrank")]


# PAPERPRUNE_SMOKE=full runs all 56 cells as planned (more than 40 minutes on 2 cores, one thread: sGLP-IB on
# CIFAR-100's VGG-16 alone, on the complete 100-class graph, ran more than 15 minutes)
RUN = [(r["dataset"], r["arch"], r["method"]) for r in reproduce.profiles()["paper"].runs] \
    if os.environ.get("PAPERPRUNE_SMOKE") == "full" else CELLS


@pytest.mark.parametrize("cell", RUN, ids=["-".join(c) for c in RUN])
def test_cell_runs_end_to_end(paper, cell):
    _, tiny, plan = paper
    out, params = next((o, p) for o, p in plan if (p["dataset"], p["arch"], p["method"]) == cell)
    record = run_experiment(RunConfig(**params, device="cpu"), out, cache_dir=out.parents[2] / "_baselines",
                            progress=False, latency_repeats=tiny.latency_repeats,
                            deployed_latency=tiny.deployed_latency)
    assert record["status"] == "complete" and record["config"]["method"] == params["method"]
    assert abs(record["pruned"]["macs_reduction"] - params["flops_reduction"]) <= 0.011, out
    assert json.loads((out / "run.json").read_text())["pruned"] == record["pruned"]
    assert record["data"]["root"].startswith(str((Path(params["data_root"]) / params["dataset"]).resolve()))


def test_a_cell_through_the_notebook(paper, tmp_path):
    """As reproduce runs a cell: papermill injects the ImageNet cell's parameters (its data root and the
    --pretrained-dir baseline among them) into the experiment notebook."""
    _, tiny, plan = paper
    out, params = next((o, p) for o, p in plan if p["dataset"] == "imagenet" and p["method"] == "l1")
    reproduce.execute_run(REPO / "notebooks" / "experiment.ipynb", tmp_path / "imagenet", params,
                          cache_dir=tmp_path / "_baselines", threads=1, latency_repeats=0, deployed_latency=False)
    record = json.loads((tmp_path / "imagenet" / "run.json").read_text())
    assert record["config"]["dataset"] == "imagenet" and record["config"]["pretrain_epochs"] == 0
    assert record["config"]["pretrained"].endswith("imagenet-resnet50.pt")
