"""Shipped pretrained weights: `create_model(name, ..., pretrained="fashion-mnist")` (timm's convention).

Each entry names package data under `paperprune/resources/pretrained/`: an fp32 state_dict
(`<arch>-<tag>.pt`, loaded with `weights_only=True`, nothing downloaded) and its training
record (`<arch>-<tag>.json`: the command, TrainConfig, seed, commit, environment, per-epoch
metrics, the final epoch's top-1 on the full test set, the file's sha256). The weights are
those of the final epoch, never the best test epoch. `paperprune.lab.pretrained.export` writes
both files from a `python -m paperprune train` output directory.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ..utils import PaperpruneError

__all__ = ["PRETRAINED", "PretrainedWeights", "list_pretrained", "load_pretrained", "pretrained_entry",
           "pretrained_path", "pretrained_record", "resource_path"]


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


def pretrained_entry(arch: str, tag: str) -> PretrainedWeights:
    """The registered weights `arch:tag`, or a PaperpruneError naming the shipped ones."""
    entry = PRETRAINED.get((arch, tag))
    if entry is None:
        raise PaperpruneError(f"no pretrained weights {tag!r} for {arch!r}; the shipped ones are "
                              f"{', '.join(list_pretrained())} (arch:pretrained), or pass pretrained=None to "
                              "build an untrained model")
    return entry


def resource_path(name: str) -> Path:
    """The file `name` of the package's shipped weights (`paperprune/resources/pretrained/`)."""
    return Path(str(resources.files("paperprune").joinpath("resources", "pretrained", name)))


def _existing(entry: PretrainedWeights, suffix: str) -> Path:
    path = resource_path(entry.stem + suffix)
    if not path.is_file():
        raise PaperpruneError(f"the pretrained weights {entry.arch}:{entry.tag} are registered but {path} is missing "
                              "from this installation; reinstall paperprune with its package data (pip install .) "
                              f"or use one of: {', '.join(list_pretrained())}")
    return path


def pretrained_path(arch: str, tag: str) -> Path:
    """The file of the shipped weights `arch:tag` (a plain state_dict), for tools that take a path."""
    return _existing(pretrained_entry(arch, tag), ".pt")


def pretrained_record(arch: str, tag: str) -> dict:
    """The training record shipped beside the weights `arch:tag` (see the module docstring)."""
    return json.loads(_existing(pretrained_entry(arch, tag), ".json").read_text(encoding="utf-8"))


def load_pretrained(model: nn.Module, arch: str, tag: str, num_classes: int, in_channels: int) -> nn.Module:
    """Load the shipped weights `arch:tag` into `model` (built by create_model for `arch`), offline.

    A num_classes or in_channels other than the weights' is an error naming both.
    """
    entry = pretrained_entry(arch, tag)
    if (int(num_classes), int(in_channels)) != (entry.num_classes, entry.in_channels):
        raise PaperpruneError(f"pretrained={tag!r} weights of {arch} are for num_classes={entry.num_classes}, "
                              f"in_channels={entry.in_channels} ({entry.dataset}); got num_classes={num_classes}, "
                              f"in_channels={in_channels}")
    state = torch.load(_existing(entry, ".pt"), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model
