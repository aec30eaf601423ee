"""Shipped pretrained weights: create_model(..., pretrained=...) offline, clear errors, and `export`
writing weights + record that load back to the same model and accuracy."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

import paperprune.models.pretrained as pre
from paperprune.lab.pretrained import export
from paperprune import create_model
from paperprune.lab.data import make_loaders
from paperprune.lab.train import TrainConfig, evaluate, train
from paperprune.utils import PaperpruneError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch, tag", [("resnet56", "imagenet"), ("vgg16", "fashion-mnist"), ("resnet56", "")])
def test_unknown_pretrained_names_the_known_ones(arch, tag):
    with pytest.raises(PaperpruneError, match=rf"no pretrained weights {tag!r} for {arch!r}; the shipped ones "
                                              r"are resnet56:fashion-mnist"):
        create_model(arch, num_classes=10, in_channels=1, pretrained=tag)


def test_pretrained_shape_mismatch_is_an_error():
    with pytest.raises(PaperpruneError, match=r"for num_classes=10, in_channels=1 \(fashion-mnist\); got "
                                              r"num_classes=10, in_channels=3"):
        create_model("resnet56", num_classes=10, in_channels=3, pretrained="fashion-mnist")


def test_missing_weights_file_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pre, "resource_path", lambda name: tmp_path / name)
    with pytest.raises(PaperpruneError, match=rf"resnet56:fashion-mnist are registered but "
                                              rf"{tmp_path / 'resnet56-fashion-mnist.pt'} is missing"):
        create_model("resnet56", num_classes=10, in_channels=1, pretrained="fashion-mnist")
    with pytest.raises(PaperpruneError, match="resnet56-fashion-mnist.json is missing"):
        pre.pretrained_record("resnet56", "fashion-mnist")


def test_export_then_load_round_trip(tmp_path, monkeypatch):
    """A finished (tiny, synthetic) train run exported as shipped weights loads back bit for bit,
    and its record holds the final epoch and the accuracies the loaded model re-measures."""
    entry = pre.PretrainedWeights("resnet56", "synthetic-test", "synthetic", 9, 3)
    monkeypatch.setitem(pre.PRETRAINED, ("resnet56", "synthetic-test"), entry)
    monkeypatch.setattr(pre, "resource_path", lambda name: tmp_path / "resources" / name)
    run = tmp_path / "run"
    train_loader, test_loader, _ = make_loaders("synthetic", batch_size=18, per_class=2)
    torch.manual_seed(0)
    model = create_model("resnet56", num_classes=9, in_channels=3)
    cfg = TrainConfig(epochs=2, batch_size=18, precision="fp32")
    train(model, train_loader, test_loader, cfg, run, device="cpu", progress=False)
    (run / "config.json").write_text(json.dumps({"command": "train", "dataset": "synthetic", "arch": "resnet56",
                                                 "train": {"epochs": 2, "seed": 0}}))

    record = export(run, "resnet56", "synthetic-test", check_images=100)

    weights = tmp_path / "resources" / "resnet56-synthetic-test.pt"
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["weights_epoch"] == 2 and [r["epoch"] for r in record["history"]] == [1, 2]
    assert pre.pretrained_record("resnet56", "synthetic-test") == json.loads(json.dumps(record))
    loaded = create_model("resnet56", num_classes=9, in_channels=3, pretrained="synthetic-test")
    final = torch.load(run / "final.pt", weights_only=True)
    assert all(torch.equal(loaded.state_dict()[k], final[k]) for k in final)
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["test"] == {"images": 450, "precision": "fp32", "top1": last["test_top1"],
                              "top5": last["test_top5"], "loss": last["test_loss"]}
    test_loader.images, test_loader.labels = test_loader.images[:100], test_loader.labels[:100]
    assert record["check"] == {"first_test_images": 100, "top1_fp32": evaluate(loaded, test_loader, "cpu")["top1"]}


def test_export_refuses_an_unfinished_run(tmp_path, monkeypatch):
    monkeypatch.setitem(pre.PRETRAINED, ("resnet56", "synthetic-test"),
                        pre.PretrainedWeights("resnet56", "synthetic-test", "synthetic", 9, 3))
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "synthetic", "arch": "resnet56",
                                                      "train": {"epochs": 3, "seed": 0}}))
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    with pytest.raises(PaperpruneError, match=r"not a finished resnet56 run on synthetic \(1 of 3 epochs"):
        export(tmp_path, "resnet56", "synthetic-test", out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_shipped_resnet56_fashion_mnist():
    """The shipped file is the recorded final epoch of a full-data run, and it still scores what its
    record says on the first 500 test images (fp32; 2 images of slack for another CPU's rounding)."""
    record = pre.pretrained_record("resnet56", "fashion-mnist")
    weights = pre.resource_path(record["weights"])
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == record["sha256"]
    epochs = record["command"]["train"]["epochs"]
    assert record["weights_epoch"] == epochs == record["history"][-1]["epoch"] == len(record["history"])
    assert record["command"]["dataset"] == "fashion-mnist" and record["command"]["per_class"] is None
    assert record["history"][-1]["train_images"] == 60000 // 128 * 128 and record["test"]["images"] == 10000
    model = create_model("resnet56", num_classes=10, in_channels=1, pretrained="fashion-mnist")
    _, test_loader, _ = make_loaders("fashion-mnist", batch_size=250)
    test_loader.images, test_loader.labels = test_loader.images[:500], test_loader.labels[:500]
    assert record["check"]["first_test_images"] == 500
    assert abs(evaluate(model, test_loader, "cpu")["top1"] - record["check"]["top1_fp32"]) <= 0.4
