"""Shipped pretrained weights from a finished train run: `export` writes the files that
`paperprune.models.pretrained` reads (`<arch>-<tag>.pt` and its record `<arch>-<tag>.json`).

    python -m paperprune.lab.pretrained runs/shipped-resnet56 --arch resnet56 --tag fashion-mnist
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from ..models import create_model
from ..models import pretrained as shipped
from ..utils import PaperpruneError, atomic_torch_save, atomic_write_json
from .data import make_loaders
from .train import FINAL, METRICS, evaluate

__all__ = ["export"]


def export(run_dir: str | Path, arch: str, tag: str, out_dir: str | Path | None = None,
           check_images: int = 500) -> dict:
    """Write `<arch>-<tag>.pt` (final-epoch fp32 state_dict) and `.json` (its record) from a train run.

    `run_dir` is a finished `python -m paperprune train` output (config.json, metrics.jsonl,
    final.pt; that command evaluates every epoch on the whole test set). The record's `test` is
    the final epoch's evaluation, on all the dataset's test images, in the
    precision it was trained in; `check` adds the fp32 top-1 on the first `check_images` test
    images (what the tests re-measure). Returns the record.
    """
    entry, run_dir = shipped.pretrained_entry(arch, tag), Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    history = [json.loads(line) for line in (run_dir / METRICS).read_text(encoding="utf-8").splitlines()]
    epochs = config["train"]["epochs"]
    if (config["arch"], config["dataset"]) != (entry.arch, entry.dataset) or len(history) != epochs \
            or history[-1]["epoch"] != epochs or not (run_dir / FINAL).is_file():
        raise PaperpruneError(f"{run_dir} is not a finished {entry.arch} run on {entry.dataset} "
                              f"({len(history)} of {epochs} epochs recorded); finish the training first")
    state = {k: v.float() if v.is_floating_point() else v
             for k, v in torch.load(run_dir / FINAL, map_location="cpu", weights_only=True).items()}
    model = create_model(arch, entry.num_classes, entry.in_channels)
    model.load_state_dict(state, strict=True)
    _, test_loader, _ = make_loaders(entry.dataset, batch_size=256)
    n_test = len(test_loader.labels)
    test_loader.images, test_loader.labels = test_loader.images[:check_images], test_loader.labels[:check_images]
    head = evaluate(model, test_loader, "cpu", precision="fp32")
    out_dir = Path(out_dir) if out_dir is not None else shipped.resource_path("")
    weights = atomic_torch_save(state, out_dir / f"{entry.stem}.pt")
    record = {
        "arch": entry.arch, "tag": entry.tag, "dataset": entry.dataset, "num_classes": entry.num_classes,
        "in_channels": entry.in_channels, "weights": weights.name,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "weights_epoch": epochs, "note": "weights of the final epoch (never the best test epoch)",
        "command": config, "seed": config["train"]["seed"],
        "test": {"images": n_test, "precision": history[-1]["precision"],
                 **{k: history[-1][f"test_{k}"] for k in ("top1", "top5", "loss")}},
        "check": {"first_test_images": check_images, "top1_fp32": head["top1"]},
        "history": history,
    }
    atomic_write_json(out_dir / f"{entry.stem}.json", record)
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="export a finished train run as shipped pretrained weights")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--arch", required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--out-dir", type=Path, default=None, help="default: the package's resources/pretrained/")
    args = p.parse_args(argv)
    record = export(args.run_dir, args.arch, args.tag, args.out_dir)
    print(f"{args.arch}:{args.tag}: final-epoch top-1 {record['test']['top1']:.2f}% on {record['test']['images']} "
          f"test images ({record['test']['precision']}) -> "
          f"{record['weights']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
