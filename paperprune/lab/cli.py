"""Command line: `python -m paperprune <command> ...` (also installed as `paperprune`).

Each command is one `_add_<command>(subparsers)` function that declares its arguments and
sets `func`; `main` dispatches. User errors (PaperpruneError) print one line on stderr and
exit with code 2, without a traceback. Every input is validated before an output directory
is created or changed.

    python -m paperprune train --dataset fashion-mnist --arch resnet56 --epochs 30 --out runs/r56
    python -m paperprune run --dataset fashion-mnist --arch resnet56 --method stlp \
        --flops-reduction 0.5 --pretrain-epochs 30 --finetune-epochs 10 --out runs/r56-stlp
    torchrun --nproc_per_node=2 -m paperprune train ...      # same entry point, DDP
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import asdict
from pathlib import Path

from ..utils import PaperpruneError, atomic_write_json
from .io import DirLock

CONFIG = "config.json"


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise PaperpruneError(f"--out {str(out)!r} exists and is not a directory; choose a directory path")


def _check_train_numbers(args: argparse.Namespace) -> None:
    """The train command's numbers: finite, and in range (argparse has checked their types)."""
    import math

    for flag, value, low, positive in (("--epochs", args.epochs, 1, False), ("--lr", args.lr, 0, True),
                                       ("--batch-size", args.batch_size, 1, False),
                                       ("--weight-decay", args.weight_decay, 0, False), ("--seed", args.seed, 0, False),
                                       ("--per-class", args.per_class, 1, False)):
        if value is None:
            continue
        if not math.isfinite(value) or value < low or (positive and value <= low):
            raise PaperpruneError(f"{flag} {value!r} must be a finite number {'>' if positive else '>='} {low}")


def _check_data_root(root: str | None) -> None:
    if root is not None and not Path(root).is_dir():
        raise PaperpruneError(f"--data-root {root!r} is not an existing directory; pass the folder holding the "
                              "dataset files (or leave it out to use the default locations)")


# ----------------------------------------------------------------------------- train


def _add_train(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model from scratch (SGD + cosine, resumable)",
        description="Train a model with SGD momentum and a per-iteration cosine schedule "
                    "(METHOD.md section 2). Rerunning the same command resumes from OUT/checkpoint.pt.")
    p.add_argument("--dataset", required=True, help="fashion-mnist, cifar10, cifar100, imagenet or synthetic")
    p.add_argument("--arch", required=True, help="vgg16, resnet56, resnet110, googlenet, densenet40, resnet50")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--out", required=True, type=Path, help="output directory (checkpoint, metrics, final.pt)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128, help="per-process batch size (default 128)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 autocast + channels_last where the hardware runs bf16, else fp32")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the dataset's usual locations)")
    p.add_argument("--per-class", type=int, default=None, help="use only N training images per class")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--download", action="store_true", help="download the dataset if it is missing")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from . import data
    from ..models import create_model, list_models
    from .train import TrainConfig, cleanup_distributed, init_distributed, load_checkpoint, resolve_precision, train
    from .io import environment_info
    from ..utils import resolve_device, seed_everything

    if args.dataset not in data.DATASETS:
        raise PaperpruneError(f"unknown dataset {args.dataset!r}; choose one of: {', '.join(data.DATASETS)}")
    if args.arch not in list_models():
        raise PaperpruneError(f"unknown architecture {args.arch!r}; choose one of: {', '.join(list_models())}")
    _check_train_numbers(args)
    _check_data_root(args.data_root)
    _check_out_dir(args.out)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         weight_decay=args.weight_decay, seed=args.seed, precision=args.precision)
    resolve_precision(config.precision, resolve_device(args.device))

    rank, world_size, device = init_distributed(args.device)
    lock = DirLock(args.out, "training", fix=", or use another --out") if rank == 0 else contextlib.nullcontext()
    with contextlib.ExitStack() as stack:
        stack.callback(cleanup_distributed)
        train_loader, test_loader, info = data.make_loaders(
            args.dataset, root=args.data_root, batch_size=args.batch_size, device=str(device), seed=args.seed,
            per_class=args.per_class, rank=rank, world_size=world_size, download=args.download)
        seed_everything(args.seed)
        model = create_model(args.arch, num_classes=info.num_classes, in_channels=info.in_channels)
        stack.enter_context(lock)  # the data is there: from here on this process owns --out
        # validate a checkpoint already in --out before config.json is (re)written
        load_checkpoint(args.out, model, config, steps_per_epoch=len(train_loader), world_size=world_size,
                        precision=resolve_precision(config.precision, device))
        if rank == 0:
            atomic_write_json(args.out / CONFIG, {
                "command": "train",
                "dataset": args.dataset,
                "arch": args.arch,
                "data_root": args.data_root,
                "per_class": args.per_class,
                "device": str(device),
                "world_size": world_size,
                "train": asdict(config),
                "num_classes": info.num_classes,
                "environment": environment_info(device),
            })
        result = train(model, train_loader, test_loader, config, args.out, device=device,
                       progress=not args.no_progress)
        if rank == 0:
            print(f"{args.arch} on {args.dataset}: test top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
                  f"after {config.epochs} epochs -> {args.out}")
    return 0


# ----------------------------------------------------------------------------- run

_RUN_HELP = {
    "dataset": "fashion-mnist, cifar10, cifar100, imagenet or synthetic",
    "arch": "vgg16, resnet56, resnet110, googlenet, densenet40, resnet50",
    "method": "random, l1, hrank, apib, classwise, sglp, stlp",
    "flops_reduction": "fraction of the MACs to remove, in (0, 1)",
    "latency_reduction": "instead of --flops-reduction: fraction of the latency to remove, in (0, 1), measured on "
                         "--device (paperprune.latency)",
    "latency_mode": "what the latency budget times: eager, or deployed (paperprune.deploy.prepare_for_inference)",
    "latency_batch_size": "the batch size the latency budget is measured at (default 64)",
    "latency_rounding": "round kept widths up to the multiples the latency table shows to be nearly free",
    "pretrained": "a state_dict of the baseline to load instead of pretraining",
    "pretrain_epochs": "epochs to pretrain the baseline (shared by every method through the cache)",
    "samples_per_class": "calibration images per class for the statistics",
    "omega": "per-layer floor of kept channels",
    "gamma_ratio": "sGLP-IB: gamma = gamma_ratio * lam",
    "structure": "class structure: embedding (from the model) or taxonomy (the dataset's)",
    "nonnegative": "lasso criteria: solve the B >= 0 ablation instead of the signed problem",
    "response": "class-wise criteria: class (one response per class) or class+output (plus APIB's response, the "
                "consuming layer's output)",
    "rho": "sGLP-IB: link classes whose embeddings correlate above rho, in [0, 1)",
    "knn": "sGLP-IB: link each class to its knn most correlated classes instead of the rho threshold",
    "max_iter": "lasso criteria: the solver's iterations per solve (default %(default)s); a solve stopped there is "
                "named in run.json's criterion.unconverged_layers",
    "statistics": "lasso criteria: exact (METHOD.md section 2, O(N^2) per channel) or block (section 2b: blocks "
                  "of --block-size samples over --permutations random partitions, one streamed forward pass; the "
                  "better choice for large calibration sets)",
    "block_size": "with --statistics block: samples per block, dividing classes x --samples-per-class (default 20)",
    "permutations": "with --statistics block: random partitions of each batch into blocks (default 3)",
    "allocation": "how the budget is shared between layers: global (one level across layers, the default) or "
                  "uniform (the same fraction of channels kept in every layer; METHOD.md section 2, 'Allocation')",
    "per_class": "train on only N images per class (short runs)",
    "test_per_class": "evaluate on a fixed class-balanced subset of N test images per class (short runs)",
}


def _add_run(subparsers) -> None:
    from dataclasses import MISSING, fields

    from .experiment import RunConfig

    p = subparsers.add_parser(
        "run", help="one end-to-end pruning run: pretrain, prune, fine-tune, evaluate -> OUT/run.json",
        description="Pretrain (or load) the baseline, compute the statistics, select channels under the "
                    "automatic budget, prune, fine-tune, evaluate and measure latency. Stages are cached: "
                    "rerunning the same command resumes an interrupted run.")
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type).split(" ")[0]
        if kind == "bool":
            p.add_argument(flag, action="store_true", help=_RUN_HELP.get(f.name))
            continue
        required = f.default is MISSING
        p.add_argument(flag, type={"int": int, "float": float}.get(kind, str), required=required,
                       default=None if required else f.default, help=_RUN_HELP.get(f.name))
    p.add_argument("--out", required=True, type=Path, help="the run's directory (run.json and stage artifacts)")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where baselines are cached (default: OUT/../_baselines)")
    p.add_argument("--restart", action="store_true",
                   help="discard the stages of a run with another config in OUT (a failed run's go without it)")
    p.add_argument("--latency-repeats", type=int, default=10,
                   help="timed forward passes per model and batch size (0: record no latency)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-deployed-latency", action="store_true",
                   help="time only the eager models, not the ones prepared by paperprune.deploy "
                        "(which compiles them and needs a C++ compiler)")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .experiment import RunConfig, run_experiment

    _check_out_dir(args.out)
    config = RunConfig(**{f.name: getattr(args, f.name) for f in fields(RunConfig)})
    record = run_experiment(config, args.out, cache_dir=args.cache_dir, progress=not args.no_progress,
                            latency_repeats=args.latency_repeats, deployed_latency=not args.no_deployed_latency,
                            restart=args.restart)
    b, p = record["baseline"], record["pruned"]
    print(f"{config.arch} on {config.dataset}, {config.method}: top-1 {b['top1']:.2f} -> {p['top1']:.2f}, "
          f"MACs -{100 * p['macs_reduction']:.1f}%, params -{100 * p['params_reduction']:.1f}% -> "
          f"{args.out / 'run.json'}")
    if record.get("baseline_cache"):
        print(f"baseline from the cache {record['baseline_cache']}")
    return 0


# ----------------------------------------------------------------------------- dispatch

_COMMANDS = (_add_train, _add_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paperprune",
        description="sGLP-IB / sTLP-IB filter pruning (reproducible companion to arXiv 2502.09125)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (2 for bad input, 130 when interrupted)."""
    from ..options import closest

    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the message
        return int(exc.code or 0)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    if extras:  # an unknown option: name the closest one the command knows
        command = parser._subparsers._group_actions[0].choices[args.command]
        flags = [flag for action in command._actions for flag in action.option_strings]
        print(f"paperprune {args.command}: error: unrecognized argument {extras[0]!r}"
              f"{closest(extras[0].split('=')[0], flags)}; see paperprune {args.command} --help", file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except PaperpruneError as exc:
        print(f"paperprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"paperprune {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
