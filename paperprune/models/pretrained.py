"""Shipped pretrained weights: `create_model(name, ..., pretrained="fashion-mnist")` (timm's convention).

Each entry names package data under `paperprune/resources/pretrained/`: an fp32 state_dict
(`<arch>-<tag>.pt`, loaded with `weights_only=True`, nothing downloaded) and its training
record (`<arch>-<tag>.json`: the command, TrainConfig, seed, commit, environment, per-epoch
metrics, the final epoch's top-1 on the full test set, the file's sha256). The weights are
those of the final epoch, never the best test epoch. `export` writes both files from a
`python -m paperprune train` output directory:

    python -m paperprune.models.pretrained runs/shipped-resnet56 --arch resnet56 --tag fashion-mnist
"""
from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ..utils import PaperpruneError, atomic_torch_save, atomic_write_json

__all__ = ["PRETRAINED", "PretrainedWeights", "export", "list_pretrained", "load_pretrained", "pretrained_path",
           "pretrained_record"]


@dataclass(frozen=True)
class PretrainedWeights:
    """One shipped model: architecture, tag (the training data), the shapes it was trained for."""

    arch: str
    tag: str
    dataset: str
    num_classes: int
    in_channels: int

    @property
    def stem(self) -> str:
        return f"{self.arch}-{self.tag}"


PRETRAINED = {
    ("resnet56", "fashion-mnist"): PretrainedWeights("resnet56", "fashion-mnist", "fashion-mnist", 10, 1),
}


def list_pretrained() -> list[str]:
    """The shipped weights as "arch:tag" names."""
    return [f"{arch}:{tag}" for arch, tag in PRETRAINED]


def _entry(arch: str, tag: str) -> PretrainedWeights:
    entry = PRETRAINED.get((arch, tag))
    if entry is None:
        raise PaperpruneError(f"no pretrained weights {tag!r} for {arch!r}; the shipped ones are "
                              f"{', '.join(list_pretrained())} (arch:pretrained), or pass pretrained=None to "
                              "build an untrained model")
    return entry


def _resource(name: str) -> Path:
    return Path(str(resources.files("paperprune").joinpath("resources", "pretrained", name)))


def _existing(entry: PretrainedWeights, suffix: str) -> Path:
    path = _resource(entry.stem + suffix)
    if not path.is_file():
        raise PaperpruneError(f"the pretrained weights {entry.arch}:{entry.tag} are registered but {path} is missing "
                              "from this installation; reinstall paperprune with its package data (pip install .) "
                              f"or use one of: {', '.join(list_pretrained())}")
    return path


def pretrained_path(arch: str, tag: str) -> Path:
    """The file of the shipped weights `arch:tag` (a plain state_dict), for tools that take a path."""
    return _existing(_entry(arch, tag), ".pt")


def pretrained_record(arch: str, tag: str) -> dict:
    """The training record shipped beside the weights `arch:tag` (see the module docstring)."""
    return json.loads(_existing(_entry(arch, tag), ".json").read_text(encoding="utf-8"))


def load_pretrained(model: nn.Module, arch: str, tag: str, num_classes: int, in_channels: int) -> nn.Module:
    """Load the shipped weights `arch:tag` into `model` (built by create_model for `arch`), offline.

    A num_classes or in_channels other than the weights' is an error naming both.
    """
    entry = _entry(arch, tag)
    if (int(num_classes), int(in_channels)) != (entry.num_classes, entry.in_channels):
        raise PaperpruneError(f"pretrained={tag!r} weights of {arch} are for num_classes={entry.num_classes}, "
                              f"in_channels={entry.in_channels} ({entry.dataset}); got num_classes={num_classes}, "
                              f"in_channels={in_channels}")
    state = torch.load(_existing(entry, ".pt"), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model


def export(run_dir: str | Path, arch: str, tag: str, out_dir: str | Path | None = None,
           check_images: int = 500) -> dict:
    """Write `<arch>-<tag>.pt` (final-epoch fp32 state_dict) and `.json` (its record) from a train run.

    `run_dir` is a finished `python -m paperprune train` output (config.json, metrics.jsonl,
    final.pt; that command evaluates every epoch on the whole test set). The record's `test` is
    the final epoch's evaluation, on all the dataset's test images, in the
    precision it was trained in; `check` adds the fp32 top-1 on the first `check_images` test
    images (what the tests re-measure). Returns the record.
    """
    from ..lab.data import make_loaders
    from ..lab.train import FINAL, METRICS, evaluate
    from . import create_model

    entry, run_dir = _entry(arch, tag), Path(run_dir)
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
    out_dir = Path(out_dir) if out_dir is not None else _resource("")
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
