"""Training engine and `paperprune train` CLI: resume equivalence, checkpoint validation,
metrics bookkeeping, input validation, and a 2-process gloo DDP run (all CPU, tiny)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import paperprune.lab.train as train_mod
from paperprune.lab.cli import main
from paperprune.lab.data import DeviceLoader, make_loaders
from paperprune.models import create_model
from paperprune.lab.train import CHECKPOINT, FINAL, METRICS, TrainConfig, evaluate, train
from paperprune.utils import PaperpruneError

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(width: int = 4) -> nn.Module:
    torch.manual_seed(1)
    # Dropout draws from the global torch RNG, so resume equivalence needs the RNG state restored.
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * width, 5))


@pytest.fixture(scope="module")
def loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (80, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 5, (80,), generator=g)
    common = dict(batch_size=16, mean=(0.5,), std=(0.25,), seed=3)
    return DeviceLoader(x, y, train=True, **common), DeviceLoader(x[:40], y[:40], train=False, **common)


CFG = TrainConfig(epochs=3, lr=0.05, batch_size=16, seed=0, precision="fp32")


class Interrupt(Exception):
    pass


def run_until(monkeypatch, stop_epoch, *args, **kwargs):
    """train() that is 'killed' right after the checkpoint of `stop_epoch` is written."""
    save = train_mod.atomic_torch_save

    def save_then_die(obj, path):
        save(obj, path)
        if isinstance(obj, dict) and obj.get("epoch") == stop_epoch:
            raise Interrupt

    monkeypatch.setattr(train_mod, "atomic_torch_save", save_then_die)
    with pytest.raises(Interrupt):
        train(*args, **kwargs)
    monkeypatch.setattr(train_mod, "atomic_torch_save", save)


def snapshot(folder: Path) -> dict:
    """Every file of `folder` but its lock file (paperprune.lab.io.DirLock), which a refused run may
    leave behind: it must then be empty, i.e. released and naming no holder."""
    lock = folder / ".lock"
    assert not lock.exists() or lock.read_bytes() == b"", "a finished or refused run left its lock held"
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.name != ".lock"}


def test_resume_gives_identical_weights_and_consistent_metrics(tmp_path, loaders, monkeypatch):
    train_loader, test_loader = loaders
    straight = tiny_model()
    res = train(straight, train_loader, test_loader, CFG, tmp_path / "a", device="cpu", progress=False)

    run_until(monkeypatch, 1, tiny_model(), train_loader, test_loader, CFG, tmp_path / "b",
              device="cpu", progress=False)
    # a crash between the metrics write and the checkpoint write leaves a line past the checkpoint
    with open(tmp_path / "b" / METRICS, "a") as f:
        f.write(json.dumps({"epoch": 2, "stale": True}) + "\n")
    # the resumed model starts from a different init: every weight must come from the checkpoint
    resumed = tiny_model(width=4)
    with torch.no_grad():
        for p in resumed.parameters():
            p.add_(1.0)
    res_b = train(resumed, train_loader, test_loader, CFG, tmp_path / "b", device="cpu", progress=False)

    assert res_b["resumed_from_epoch"] == 1 and res["resumed_from_epoch"] is None
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final = torch.load(tmp_path / "b" / FINAL, weights_only=True)
    assert all(torch.equal(final[k], a[k]) for k in a)

    rows = [json.loads(line) for line in (tmp_path / "b" / METRICS).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and not any("stale" in r for r in rows)
    rows_a = [json.loads(line) for line in (tmp_path / "a" / METRICS).read_text().splitlines()]
    keys = ["epoch", "lr", "train_loss", "train_top1", "test_top1", "test_top5", "test_loss", "train_images"]
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in rows_a]
    assert rows[0]["lr"] == CFG.lr and rows[1]["lr"] < rows[0]["lr"]  # cosine decays
    assert rows[0]["precision"] == "fp32" and rows[0]["channels_last"] is False  # asked for, and recorded
    assert rows[0]["train_images"] == 80 and rows[0]["images_per_second"] > 0

    # rerunning a finished run resumes at the end: no training, same weights, same metrics
    again = tiny_model()
    res_c = train(again, train_loader, test_loader, CFG, tmp_path / "b", device="cpu", progress=False)
    assert res_c["resumed_from_epoch"] == 3 and res_c["top1"] == res_b["top1"]
    assert all(torch.equal(again.state_dict()[k], a[k]) for k in a)


def test_bad_checkpoints_raise_and_leave_out_dir_untouched(tmp_path, loaders):
    train_loader, test_loader = loaders
    out = tmp_path / "run"
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=16)
    train(tiny_model(), train_loader, test_loader, TrainConfig(epochs=1, lr=0.05, batch_size=16), out,
          device="cpu", progress=False)
    before = snapshot(out)

    with pytest.raises(PaperpruneError, match="different architecture.*shape mismatches.*0.weight"):
        train(tiny_model(width=6), train_loader, test_loader, TrainConfig(epochs=1, lr=0.05, batch_size=16),
              out, device="cpu", progress=False)
    assert snapshot(out) == before
    with pytest.raises(PaperpruneError, match=r"different training config \(epochs: checkpoint 1 vs now 2"):
        train(tiny_model(), train_loader, test_loader, cfg, out, device="cpu", progress=False)
    assert snapshot(out) == before

    (out / CHECKPOINT).write_bytes(b"\x00garbage, not a checkpoint" * 10)
    before = snapshot(out)
    with pytest.raises(PaperpruneError, match=f"checkpoint {out / CHECKPOINT} could not be loaded"):
        train(tiny_model(), train_loader, test_loader, cfg, out, device="cpu", progress=False)
    assert snapshot(out) == before

    # resume=False starts over instead
    res = train(tiny_model(), train_loader, test_loader, cfg, out, device="cpu", resume=False, progress=False)
    assert res["resumed_from_epoch"] is None and len((out / METRICS).read_text().splitlines()) == 2


def test_evaluate_topk_and_loss():
    torch.manual_seed(0)
    logits = torch.randn(50, 7)
    labels = torch.randint(0, 7, (50,))
    batches = [(logits[i:i + 16], labels[i:i + 16]) for i in range(0, 50, 16)]
    model = nn.Identity()
    res = evaluate(model, batches, "cpu", topk=(1, 3, 5))
    rank = (logits > logits.gather(1, labels[:, None])).sum(1)  # 0 = predicted class
    assert res["top1"] == pytest.approx(100.0 * (rank < 1).float().mean().item())
    assert res["top3"] == pytest.approx(100.0 * (rank < 3).float().mean().item())
    assert res["top5"] == pytest.approx(100.0 * (rank < 5).float().mean().item())
    assert res["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert "correct" not in res
    per_image = evaluate(model, batches, "cpu", topk=(1,), per_image=True)["correct"]  # in loader order
    assert per_image.dtype == bool and np.array_equal(per_image, (rank < 1).numpy())


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "mnist", "--arch", "resnet56"], "unknown dataset 'mnist'"),
    (["--dataset", "synthetic", "--arch", "resnet57"], "unknown architecture 'resnet57'"),
    (["--dataset", "fashion-mnist", "--arch", "resnet56", "--data-root", "/nonexistent/fmnist"],
     "--data-root '/nonexistent/fmnist' is not an existing directory"),
    (["--dataset", "cifar10", "--arch", "resnet56", "--data-root", "EMPTY"], "cifar10 data not found"),
])
def test_cli_rejects_bad_input_before_touching_out(tmp_path, capsys, argv, message):
    argv = [str(tmp_path / "empty") if a == "EMPTY" else a for a in argv]
    (tmp_path / "empty").mkdir()
    code = main(["train", *argv, "--epochs", "1", "--out", str(tmp_path / "new")])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "new").exists()

    existing = tmp_path / "old"
    existing.mkdir()
    (existing / "metrics.jsonl").write_text("{}\n")
    before = snapshot(existing)
    assert main(["train", *argv, "--epochs", "1", "--out", str(existing)]) == 2
    assert snapshot(existing) == before


def test_cli_mismatched_checkpoint_leaves_out_dir_untouched(tmp_path, capsys):
    out = tmp_path / "run"
    train_loader, test_loader, info = make_loaders("synthetic", batch_size=18, per_class=2)
    test_loader.images, test_loader.labels = test_loader.images[::45], test_loader.labels[::45]  # 10 images
    torch.manual_seed(0)
    model = create_model("resnet56", num_classes=info.num_classes, in_channels=info.in_channels)
    train(model, train_loader, test_loader, TrainConfig(epochs=1, batch_size=18), out, device="cpu", progress=False)
    (out / "config.json").write_text('{"arch": "resnet56"}\n')
    before = snapshot(out)
    code = main(["train", "--dataset", "synthetic", "--per-class", "2", "--batch-size", "18", "--epochs", "1",
                 "--device", "cpu", "--no-progress", "--arch", "resnet110", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "different architecture" in err and str(out / CHECKPOINT) in err and "Traceback" not in err
    assert snapshot(out) == before


def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    per_class, batch = 20, 16
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "paperprune", "train", "--dataset", "synthetic", "--arch", "resnet56", "--epochs", "1",
           "--per-class", str(per_class), "--batch-size", str(batch), "--device", "cpu", "--no-progress",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["world_size"] == 2
    # both ranks' counts are summed; disjoint equal shards with drop_last: 2 * (90 // 16) * 16
    seen = sum(len(y) for r in range(2) for _, y in make_loaders(
        "synthetic", batch_size=batch, per_class=per_class, rank=r, world_size=2)[0])
    n_train = 9 * per_class
    assert rows[0]["train_images"] == seen == 2 * ((n_train // 2) // batch) * batch
    assert n_train - 2 * batch < rows[0]["train_images"] <= n_train
    ckpt = torch.load(out / CHECKPOINT, weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["epoch"] == 1
    assert (out / FINAL).exists() and json.loads((out / "config.json").read_text())["world_size"] == 2
    # the summed test metrics cover the whole (rank-sharded) test set: a multiple of 1/450
    assert (rows[0]["test_top1"] * 450 / 100) == pytest.approx(round(rows[0]["test_top1"] * 4.5), abs=1e-6)


def test_atomic_write_removes_a_killed_writers_temporary(tmp_path):
    """A writer killed mid-write (SIGKILL) leaves its temporary; the next write of that path removes
    it, and only its own: another file's temporary and a failed write's old content are kept."""
    from paperprune.utils import _atomic_write, atomic_write_text

    target = tmp_path / "checkpoint.pt"
    atomic_write_text(target, "epoch 1")
    stale = tmp_path / ".checkpoint.pt.k1ll3d.tmp"
    other = tmp_path / ".run.json.k1ll3d.tmp"
    stale.write_text("half of epoch 2")
    other.write_text("half of run.json")

    def dies(f):
        f.write(b"partial")
        raise Interrupt

    with pytest.raises(Interrupt):
        _atomic_write(target, dies)
    assert target.read_text() == "epoch 1" and stale.exists()
    atomic_write_text(target, "epoch 2")
    assert target.read_text() == "epoch 2"
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.json.k1ll3d.tmp", "checkpoint.pt"]


# ----------------------------------------------------------------------------- precision, divergence

needs_bf16 = pytest.mark.skipif(not train_mod.cpu_supports_bf16(), reason="this CPU has no hardware bf16")


def pattern_loaders(n: int = 320, classes: int = 4):
    """A learnable task: each class brightens its own quadrant of an 8x8 image, plus noise (no
    augmentation: a flip or crop would move the quadrant)."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = torch.randint(0, 120, (n, 1, 8, 8), generator=g)
    for c in range(classes):
        r, q = divmod(c, 2)
        x[y == c, :, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 120
    common = {"batch_size": 32, "mean": (0.4,), "std": (0.25,), "seed": 3}
    x = x.to(torch.uint8)
    return DeviceLoader(x, y, train=False, **common), DeviceLoader(x[:96], y[:96], train=False, **common)


@needs_bf16
def test_bf16_on_cpu_trains_in_bf16_and_records_it(tmp_path):
    train_loader, test_loader = pattern_loaders()
    model = tiny_model(width=8)
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append((o.dtype, i[0].is_contiguous(
        memory_format=torch.channels_last))))
    cfg = TrainConfig(epochs=4, lr=0.05, batch_size=32, precision="auto")
    res = train(model, train_loader, test_loader, cfg, tmp_path, device="cpu", progress=False)

    assert res["precision"] == "bf16" and res["channels_last"] is True
    assert set(seen) == {(torch.bfloat16, True)}  # every forward, training and evaluation, ran bf16 channels_last
    rows = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    assert [r["precision"] for r in rows] == ["bf16"] * 4 and all(r["channels_last"] for r in rows)
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"] and res["top1"] > 90.0  # chance: 25%
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["precision"] == "bf16" and ckpt["config"]["precision"] == "auto"
    final = torch.load(tmp_path / FINAL, weights_only=True)
    assert all(t.dtype in (torch.float32, torch.int64) and t.is_contiguous() for t in final.values())

    with pytest.raises(PaperpruneError, match=r"precision: checkpoint 'auto' vs now 'fp32'"):
        train(tiny_model(width=8), train_loader, test_loader, TrainConfig(epochs=4, lr=0.05, batch_size=32,
              precision="fp32"), tmp_path, device="cpu", progress=False)


@needs_bf16
def test_auto_checkpoint_refuses_a_machine_where_auto_means_another_precision(tmp_path, loaders, monkeypatch):
    train_loader, test_loader = loaders
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=16)  # precision "auto"
    monkeypatch.setattr(train_mod, "cpu_supports_bf16", lambda: False)  # a CPU without bf16 wrote it
    assert train(tiny_model(), train_loader, test_loader, cfg, tmp_path, device="cpu",
                 progress=False)["precision"] == "fp32"
    monkeypatch.undo()
    before = snapshot(tmp_path)
    with pytest.raises(PaperpruneError, match=r"trained in precision 'fp32', this run would train in 'bf16'"):
        train(tiny_model(), train_loader, test_loader, cfg, tmp_path, device="cpu", progress=False)
    assert snapshot(tmp_path) == before


def test_precision_is_validated_and_bf16_without_hardware_is_an_error(tmp_path, loaders, monkeypatch, capsys):
    with pytest.raises(PaperpruneError, match="precision 'fp16' is not one of auto, fp32, bf16"):
        TrainConfig(epochs=1, precision="fp16")
    monkeypatch.setattr(train_mod, "cpu_supports_bf16", lambda: False)
    assert train_mod.resolve_precision("auto", "cpu") == "fp32"
    assert train_mod.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(PaperpruneError, match="'bf16' was asked for, but this CPU .* has no hardware bf16"):
        train_mod.resolve_precision("bf16", "cpu")
    with pytest.raises(PaperpruneError, match="no hardware bf16"):
        train(tiny_model(), *loaders, TrainConfig(epochs=1, batch_size=16, precision="bf16"), tmp_path / "new",
              device="cpu", progress=False)
    assert not (tmp_path / "new").exists()
    code = main(["train", "--dataset", "synthetic", "--arch", "resnet56", "--epochs", "1", "--device", "cpu",
                 "--precision", "bf16", "--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err
    assert code == 2 and "no hardware bf16" in err and "Traceback" not in err
    assert not (tmp_path / "cli").exists()
    monkeypatch.setattr(train_mod, "cpu_supports_bf16", lambda: True)
    assert train_mod.resolve_precision("auto", "cpu") == "bf16"


class PoisonedLoader:
    """A loader whose batch `step` of epoch `epoch` carries a NaN pixel (a corrupt input, or an
    exploding activation, makes the loss non-finite the same way)."""

    def __init__(self, inner, epoch: int, step: int):
        self.inner, self.epoch, self.step, self.current = inner, epoch, step, 0

    def __len__(self):
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.current = epoch
        self.inner.set_epoch(epoch)

    def __iter__(self):
        for i, (x, y) in enumerate(self.inner):
            if (self.current, i) == (self.epoch, self.step):
                x = x.clone()
                x[0, 0, 0, 0] = float("nan")
            yield x, y


def test_non_finite_loss_stops_with_epoch_step_and_settings(tmp_path, loaders):
    train_loader, test_loader = loaders
    cfg = TrainConfig(epochs=3, lr=0.05, weight_decay=5e-4, batch_size=16, precision="fp32")
    poisoned = PoisonedLoader(train_loader, epoch=2, step=3)
    with pytest.raises(PaperpruneError, match=r"loss is nan at epoch 2, step 4 of 5 .*lr=0.05, weight_decay=0.0005"):
        train(tiny_model(), poisoned, test_loader, cfg, tmp_path, device="cpu", progress=False)
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    assert len((tmp_path / METRICS).read_text().splitlines()) == 1 and not (tmp_path / FINAL).exists()


def test_huge_lr_diverges_with_a_clear_error(tmp_path, loaders):
    train_loader, test_loader = loaders
    cfg = TrainConfig(epochs=5, lr=1e30, batch_size=16, precision="fp32")
    with pytest.raises(PaperpruneError, match=r"training diverged: the loss is (nan|inf) at epoch \d+, step \d+ .*"
                                              r"lr=1e\+30.*lower --lr"):
        train(tiny_model(), train_loader, test_loader, cfg, tmp_path, device="cpu", progress=False)


def test_non_finite_weights_are_refused(tmp_path, loaders):
    train_loader, test_loader = loaders
    cfg = TrainConfig(epochs=2, lr=0.05, batch_size=16, precision="fp32")
    bad = tiny_model()
    with torch.no_grad():
        bad[0].weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(PaperpruneError, match=r"the model given to train has non-finite weights .*0.weight"):
        train(bad, train_loader, test_loader, cfg, tmp_path / "fresh", device="cpu", progress=False)
    assert not (tmp_path / "fresh").exists()

    out = tmp_path / "run"
    run_cfg = TrainConfig(epochs=1, lr=0.05, batch_size=16, precision="fp32")
    train(tiny_model(), train_loader, test_loader, run_cfg, out, device="cpu", progress=False)
    ckpt = torch.load(out / CHECKPOINT, weights_only=True)
    ckpt["model"]["6.bias"][1] = float("nan")
    torch.save(ckpt, out / CHECKPOINT)
    before = snapshot(out)
    with pytest.raises(PaperpruneError, match=rf"checkpoint {out / CHECKPOINT} has non-finite weights .*6.bias"):
        train(tiny_model(), train_loader, test_loader, run_cfg, out, device="cpu", progress=False)
    assert snapshot(out) == before
