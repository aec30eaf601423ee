"""Pruning curves without fine-tuning: top-1 against FLOPs reduction for every criterion and seed.

The cheapest discriminating measurement of a criterion is the accuracy of the pruned model
before any fine-tuning, over several FLOPs targets. For each (criterion,
seed) the statistics are computed once, on that seed's calibration sample (`random` draws its
scores from the seed), and every target reuses them: only the budget bisection and the surgery
run per target. Each point records top-1 on the test loader raw and after adaptive BatchNorm
(`adapt_batchnorm`: the BN running statistics re-estimated on a few hundred training images,
as EagleEye, Li et al., ECCV 2020, does to rank pruned candidates), plus the per-image
correctness of both, packed (`paperprune.lab.stats.pack_correct`), for the two-level bootstrap of
`paperprune.lab.seeds`.

A criterion entry is a criterion name (the global allocation) or "name:uniform", the same
criterion under the uniform allocation (METHOD.md section 2, "Allocation"; `paperprune.select`):
each of its points records its `allocation`, and the reports show it as a row of its own ("L1-norm
(uniform)"). The class-agnostic baselines are compared under both, e.g. `methods=(*METHODS,
"l1:uniform", "hrank:uniform", "random:uniform")`.

`criterion_options` (e.g. `{"nonnegative": True}`, `{"structure": "taxonomy"}`, or the block
statistics of METHOD.md section 2b, `{"statistics": "block", "block_size": 20, "permutations": 3}`)
go to every criterion (`create_criterion`): an ablation variant is a curves record of its own, its options part of the record's config and of its folder's identity. `curves.json` has
one schema, `paperprune.lab.record.CurvesRecord`: written through `write_curves`, read through
`read_curves`.
"""
from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..criteria import METHODS, Calibration, LassoCriterion, check_method, create_criterion
from ..features import adapt_batchnorm
from ..pipeline import gather_calibration, model_parts
from ..select import allocate, select_channels, split_entry
from ..surgery import MacsPredictor, prune_channels
from ..utils import PaperpruneError, json_default, resolve_device
from .io import recorded_path, state_sha256
from .stats import pack_correct

__all__ = ["TARGETS", "check_options", "correct_per_image", "pruning_curves", "run",
           "variant_name"]

TARGETS = (0.30, 0.45, 0.60, 0.75)


@torch.no_grad()
def correct_per_image(model: nn.Module, loader: Iterable, device, precision: str = "fp32") -> np.ndarray:
    """Boolean vector: is the top-1 prediction right, per test image in loader order (eval mode).
    `precision` "bf16" (or "fp16") evaluates under autocast with channels_last images, as
    `paperprune.lab.train.evaluate` does; "fp32" without."""
    from .train import autocast

    model.eval()
    device = torch.device(device)
    out = []
    for x, y in loader:
        x = x.to(device)
        if precision != "fp32":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            out.append(model(x).argmax(1).cpu() == y.cpu())
    if not out:
        raise PaperpruneError("correct_per_image: the test loader yielded no images")
    return torch.cat(out).numpy()


def pruning_curves(model: nn.Module, calibration: Callable[[int], Iterable], test_loader: Iterable,
                   bn_data: Iterable, *, methods: Sequence[str] = METHODS, targets: Sequence[float] = TARGETS,
                   seeds: Sequence[int] = (0, 1, 2), samples_per_class: int = 20, omega: int = 4,
                   bn_images: int = 256, tolerance: float = 0.01, taxonomy: dict | None = None,
                   input_size: tuple[int, ...] | None = None, device=None, progress: bool = True,
                   precision: str = "fp32", **criterion_options) -> list[dict]:
    """Points of top-1 against FLOPs reduction for every method x seed x target, no fine-tuning.

    `methods` are criterion entries: a name, or "name:uniform" for the uniform allocation
    (`paperprune.select.split_entry`).
    `calibration(seed)` yields the (images, labels) batches that seed's calibration sample is
    drawn from (`samples_per_class` per class); `bn_data` the training batches for adaptive BN.
    `model` (one of the paper models, or one `prune` understands) is not modified. A target a
    criterion cannot reach gives a point with "error" instead of accuracies. Each point: method,
    allocation ("global" or "uniform"), seed, target, level, macs_reduction, params_reduction, top1,
    top1_bn (percent), correct, correct_bn (packed per-image correctness), kept (channel indices per
    layer), statistics_s (the shared statistics' time), evaluate_s, evaluated, and for the lasso
    criteria unconverged_layers
    (layers whose solve stopped at max_iter, also warned about). `precision` is that of the test
    evaluations (a `paperprune.lab.train.resolve_precision` result; BN statistics are always re-estimated
    in fp32).
    """
    entries = [split_entry(entry) for entry in methods]
    for method, _ in entries:
        check_method(method)
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    base = copy.deepcopy(model).to(device).eval()
    # the model's input shape, when not given, from the test loader's first batch (put back if it is one-shot)
    layers, classifier, num_classes, test_loader = model_parts(base, None, None, test_loader, input_size)
    first_conv = next(m for m in base.modules() if isinstance(m, nn.Conv2d))
    points = []
    bar = tqdm(total=len(methods) * len(seeds) * len(targets), desc="pruning curves", disable=not progress)
    for method, allocation in entries:
        for seed in seeds:
            start = time.perf_counter()
            images, labels = gather_calibration(calibration(seed), num_classes, samples_per_class, device,
                                                all_classes=method not in ("random", "l1", "hrank"),
                                                in_channels=first_conv.in_channels)
            size = tuple(input_size) if input_size is not None else tuple(images.shape[1:])
            criterion = create_criterion(method, seed=seed, **criterion_options)
            criterion.prepare(base, layers, Calibration(images, labels, num_classes, taxonomy or {}, classifier))
            statistics_s = time.perf_counter() - start
            predictor = MacsPredictor(base, layers, size)
            budgeted = allocate(criterion, allocation)
            for target in targets:
                point = {"method": method, "allocation": allocation, "seed": seed, "target": float(target),
                         "statistics_s": statistics_s}
                points.append(point | _point(base, budgeted, isinstance(criterion, LassoCriterion), predictor, layers,
                                             size, target, omega, tolerance, test_loader, bn_data, bn_images, device,
                                             precision))
                bar.update()
    bar.close()
    return points


#: how `_point` evaluates a pruned model: BatchNorm folded into the convolution before it
#: (`paperprune.deploy.fold_batchnorm`, exact up to rounding; in bf16 on this project's CPU 1.27-1.35x faster
#: for a pruned ResNet-56, 1.04-1.08x for a VGG-16: benchmarks/results/eval.md)
EVALUATED = "fold-bn"


def _folded(model: nn.Module, precision: str) -> nn.Module:
    """A copy of `model` with its BatchNorms folded, for evaluation only (channels_last under autocast). The
    curves' models are the paper models, which torch.fx traces; one it cannot trace is an error, not a
    silently slower evaluation."""
    from ..deploy import fold_batchnorm

    folded = fold_batchnorm(model)
    return folded if precision == "fp32" else folded.to(memory_format=torch.channels_last)


def _point(base, criterion, lasso, predictor, layers, size, target, omega, tolerance, test_loader, bn_data,
           bn_images, device, precision) -> dict:
    """One target: select under the shared statistics (`criterion` as `paperprune.select.allocate` gives it;
    `lasso`: it reports unconverged layers), cut a copy, measure it raw and after adaptive BN."""
    try:
        sel = select_channels(criterion, predictor, target, omega=omega, tolerance=tolerance, progress=False)
    except PaperpruneError as exc:
        return {"error": str(exc)}
    pruned = prune_channels(copy.deepcopy(base), layers, sel.keep, size)
    if precision != "fp32":
        pruned = pruned.to(memory_format=torch.channels_last)
    stalled = {"unconverged_layers": criterion.describe(sel.level)["unconverged_layers"]} if lasso else {}
    start = time.perf_counter()
    raw = correct_per_image(_folded(pruned, precision), test_loader, device, precision)
    adapted = correct_per_image(_folded(adapt_batchnorm(pruned, bn_data, bn_images, device), precision), test_loader,
                                device, precision)
    return {"level": float(sel.level), "macs_reduction": 1.0 - sel.macs / sel.base_macs,
            "params_reduction": 1.0 - sel.params / sel.base_params, "widths": sel.widths,
            "kept": {name: [int(i) for i in idx] for name, idx in sel.keep.items()},
            "top1": 100.0 * float(raw.mean()), "top1_bn": 100.0 * float(adapted.mean()),
            "correct": pack_correct(raw), "correct_bn": pack_correct(adapted),
            "evaluate_s": time.perf_counter() - start, "evaluated": EVALUATED, **stalled}


def _option_names() -> set[str]:
    """The criterion options a curves record can vary: every criterion constructor's keywords but `seed`
    (which the curves set per chunk)."""
    from ..criteria import criterion_options

    return criterion_options() - {"seed"}


def check_options(methods: Sequence[str], options: dict | None) -> dict:
    """`criterion_options` as a plain dict, refused (naming the option) when a criterion does not know
    it or refuses its value; {} for None."""
    options = dict(options or {})
    methods = [split_entry(entry)[0] for entry in methods]
    known = _option_names()
    unknown = sorted(set(options) - known)
    if unknown:
        raise PaperpruneError(f"criterion_options {options!r}: unknown option(s) {', '.join(unknown)}; the criteria "
                              f"take {', '.join(sorted(known))} (the seed is set per chunk)")
    for method in methods:
        create_criterion(method, seed=0, **options)
    return options


def variant_name(options: dict | None) -> str:
    """A short name of an ablation variant for folders and file names: "" for none, "nonnegative",
    "structure-taxonomy", ..."""
    return "_".join(k if v is True else f"{k}-{v}" for k, v in sorted((options or {}).items()))


def _check_grid(methods, targets, seeds, samples_per_class, bn_images, criterion_options=None) -> None:
    """Refuse a bad grid before anything is written, naming the value typed."""
    for entry in methods:
        check_method(split_entry(entry)[0])
    if len({split_entry(entry) for entry in methods}) != len(methods):
        raise PaperpruneError(f"methods {list(methods)}: give each criterion entry once")
    check_options(methods, criterion_options)
    bad = [t for t in targets if not 0.0 < float(t) < 1.0]
    if not targets or bad:
        raise PaperpruneError(f"targets {list(targets)}: each must be a FLOPs reduction in (0, 1), e.g. 0.3,0.55")
    if not seeds or len(set(seeds)) != len(seeds):
        raise PaperpruneError(f"seeds {list(seeds)}: give at least one seed, each once")
    for name, value, low in (("samples_per_class", samples_per_class, 2), ("bn_images", bn_images, 1)):
        if int(value) < low:
            raise PaperpruneError(f"{name}={value}: need at least {low}")


def _chunk_path(out: Path, entry: str, seed: int) -> Path:
    """`points/<method>-s<seed>.json`, `points/<method>-uniform-s<seed>.json` under the uniform allocation."""
    method, allocation = split_entry(entry)
    return out / "points" / f"{method}{'' if allocation == 'global' else '-' + allocation}-s{seed}.json"


def run(dataset: str, arch: str, out: str | Path, *, pretrained: str | None = None, weights: str | None = None,
        methods: Sequence[str] = METHODS, targets: Sequence[float] = TARGETS, seeds: Sequence[int] = (0, 1, 2),
        samples_per_class: int = 20, bn_images: int = 256, test_per_class: int | None = None,
        criterion_options: dict | None = None, precision: str = "fp32", data_root: str | None = None,
        device="cpu", progress: bool = True) -> dict:
    """Curves of a trained baseline on a tensor dataset, written to `out/curves.json`; resumable.

    The baseline is `create_model(arch, pretrained=...)` or a state_dict file `weights`. Seed s
    draws its calibration sample with `class_balanced_batch(..., seed=s)`; adaptive BN uses the
    first `bn_images` of a fixed seed-0 shuffle of the training set; the test set is whole unless
    `test_per_class`. `criterion_options` go to every criterion (an ablation variant; see
    `check_options`). No augmentation anywhere. The test evaluations run in fp32 by default (the
    same numbers on CPUs with and without bf16); precision "auto" runs them in bf16 autocast with
    channels_last where the hardware has bf16 (about half the time on this project's CPU), as
    training does; the precision used is recorded (`config.precision`). Each (criterion, seed)
    is one chunk, `out/points/<method>-s<seed>.json` (`<method>-uniform-s<seed>.json` under the uniform
    allocation), written atomically when done: a rerun of
    the same command skips finished chunks, and a folder holding curves of another config is
    refused. Returns the record (config, environment,
    points, timings, and `summary`: mean/std over seeds of top1 and top1_bn per method, allocation and target).
    The config names the baseline by `baseline_sha256` (`paperprune.lab.io.state_sha256`) and a `weights`
    file by its path relative to the repository (`paperprune.lab.io.recorded_path`), never an absolute one.
    """
    from .data import DeviceLoader, class_balanced_batch, dataset_info, load_tensors
    from .experiment import load_weights
    from ..models import create_model
    from .record import CURVES_SCHEMA, CurvePoint, CurvesConfig, CurvesRecord, CurvesTimings, write_curves
    from .stats import aggregate
    from .train import resolve_precision
    from .io import DirLock, environment_info, run_commit
    from ..utils import atomic_write_json

    run_commit()  # the commit the record names: the code as the run starts

    if (pretrained is None) == (weights is None):
        raise PaperpruneError("pass exactly one baseline: pretrained= (shipped weights) or weights= (a state_dict file)")
    methods, targets, seeds = list(methods), [float(t) for t in targets], [int(s) for s in seeds]
    _check_grid(methods, targets, seeds, samples_per_class, bn_images, criterion_options)
    criterion_options = check_options(methods, criterion_options)
    precision = resolve_precision(precision, device)
    info = dataset_info(dataset, data_root)
    if criterion_options.get("statistics") == "block":
        from ..ib import check_block_samples, check_statistics

        check_block_samples(int(samples_per_class) * info.num_classes,
                            check_statistics("block", criterion_options.get("block_size"))[1])
    model = create_model(arch, info.num_classes, info.in_channels, pretrained=pretrained)
    if weights is not None:
        load_weights(model, weights)
    x, y = load_tensors(dataset, "train", data_root)
    tx, ty = load_tensors(dataset, "test", data_root)
    if test_per_class is not None:
        tx, ty = class_balanced_batch(tx, ty, test_per_class, 0, setting="test_per_class")
    config = {"dataset": dataset, "arch": arch, "pretrained": pretrained, "weights": recorded_path(weights),
              "baseline_sha256": state_sha256(model.state_dict()), "methods": methods,
              "targets": targets, "seeds": seeds, "samples_per_class": int(samples_per_class),
              "bn_images": int(bn_images), "test_images": len(ty), "precision": precision,
              "criterion_options": criterion_options}
    plain = {"mean": info.mean, "std": info.std, "train": False, "device": device}
    bx, by = class_balanced_batch(x, y, -(-bn_images // info.num_classes), 0)
    mixed = torch.randperm(len(by), generator=torch.Generator().manual_seed(0))  # batches of mixed classes
    bx, by = bx[mixed], by[mixed]

    def calibration(seed: int):
        cx, cy = class_balanced_batch(x, y, samples_per_class, seed, setting="samples_per_class")
        return DeviceLoader(cx, cy, batch_size=256, **plain)

    out = Path(out)
    start = time.perf_counter()
    with DirLock(out, "curves"):
        _claim(out, config, atomic_write_json)
        chunks = [(m, s) for m in methods for s in seeds]  # m: a criterion entry, "l1" or "l1:uniform"
        bar = tqdm(chunks, desc=f"curves {arch}", disable=not progress)
        points, resumed = [], []
        for method, seed in bar:
            path = _chunk_path(out, method, seed)
            if path.is_file():
                chunk = _read_chunk(path)
                resumed.append(path.stem)
            else:
                chunk = pruning_curves(model, calibration, DeviceLoader(tx, ty, batch_size=256, **plain),
                                       DeviceLoader(bx, by, batch_size=64, seed=0, **plain), methods=[method],
                                       targets=targets, seeds=[seed], samples_per_class=samples_per_class,
                                       bn_images=bn_images, taxonomy=info.taxonomy, device=device, progress=False,
                                       precision=precision, **criterion_options)
                chunk = [CurvePoint.from_dict(json.loads(json.dumps(p, default=json_default)), path.stem)
                         for p in chunk]
                atomic_write_json(path, [p.to_dict() for p in chunk])
            points += chunk
        ok = [{"allocation": "global", **p.to_dict()} for p in points if p.error is None]  # older chunks: global
        record = CurvesRecord(schema=CURVES_SCHEMA, config=CurvesConfig(**config), environment=environment_info(device),
                              points=points, timings=CurvesTimings(wall_s=time.perf_counter() - start,
                                                                   resumed_chunks=resumed),
                              summary={key: aggregate(ok, by=("method", "allocation", "target"), value=key)
                                       for key in ("top1", "top1_bn")})
        return write_curves(out / "curves.json", record)


def _read_chunk(path: Path) -> list:
    """A finished chunk's points, each checked against `CurvePoint`; a damaged file names itself and the fix."""
    from .record import CurvePoint, RecordError

    fix = f"delete {path} and rerun the same command to recompute that (criterion, seed)"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, list):
            raise RecordError(f"holds a {type(raw).__name__}, not a list of points")
        return [CurvePoint.from_dict(p, f"points[{i}]") for i, p in enumerate(raw)]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecordError) as e:
        raise PaperpruneError(f"{path} is damaged ({e}); {fix}") from None


#: config keys added after curves were recorded: a folder's config.json without one holds that value
_ADDED = {"criterion_options": {}}


def _claim(out: Path, config: dict, write) -> None:
    """Write out/config.json, or check that the folder's curves are of this very config."""
    path = out / "config.json"
    if path.is_file():
        held = {**_ADDED, **json.loads(path.read_text(encoding="utf-8"))}
        if held.get("weights") is not None and Path(held["weights"]).is_absolute():  # folders written before
            held["weights"] = recorded_path(held["weights"])                      # records named paths relatively
        if held != json.loads(json.dumps(config)):
            diff = {k: (held.get(k), v) for k, v in config.items() if held.get(k) != json.loads(json.dumps(v))}
            raise PaperpruneError(f"{out} holds curves of another config (held, asked: {diff}); pass another "
                                  "--out, or delete that folder to start over")
    else:
        write(path, config)


def _numbers(text: str, kind, flag: str) -> list:
    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        raise PaperpruneError(f"{flag} {text!r}: give comma-separated {kind.__name__} values, e.g. "
                              f"{'0.3,0.55' if kind is float else '0,1,2'}") from None


def _options(text: str | None) -> dict:
    try:
        options = json.loads(text) if text is not None else {}
    except json.JSONDecodeError:
        options = None
    if not isinstance(options, dict):
        raise PaperpruneError(f"--criterion-options {text!r}: give a JSON object, e.g. '{{\"nonnegative\": true}}'")
    return options


def main(argv=None) -> int:
    """python -m paperprune.lab.curves --dataset fashion-mnist --arch resnet56 --pretrained fashion-mnist --out DIR"""
    import argparse

    p = argparse.ArgumentParser(description="pruning curves without fine-tuning (top-1 against FLOPs reduction)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--pretrained", default=None, help="shipped weights, e.g. fashion-mnist")
    p.add_argument("--weights", default=None, help="a state_dict / final.pt of the baseline instead")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="criterion entries, comma-separated: a name (global allocation) or name:uniform, e.g. "
                        "l1,l1:uniform")
    p.add_argument("--targets", default=",".join(str(t) for t in TARGETS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--samples-per-class", type=int, default=20)
    p.add_argument("--bn-images", type=int, default=256)
    p.add_argument("--test-per-class", type=int, default=None)
    p.add_argument("--criterion-options", default=None,
                   help='options of every criterion as JSON, e.g. \'{"nonnegative": true}\' (an ablation variant)')
    p.add_argument("--precision", default="fp32", choices=("fp32", "auto", "bf16"),
                   help="of the test evaluations: fp32 (default), or bf16 autocast where the hardware has it")
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    try:
        targets, seeds = _numbers(args.targets, float, "--targets"), _numbers(args.seeds, int, "--seeds")
        options = _options(args.criterion_options)
        record = run(args.dataset, args.arch, args.out, pretrained=args.pretrained, weights=args.weights,
                     methods=args.methods.split(","), targets=targets, seeds=seeds,
                     samples_per_class=args.samples_per_class,
                     bn_images=args.bn_images, test_per_class=args.test_per_class, criterion_options=options,
                     precision=args.precision, data_root=args.data_root,
                     progress=not args.no_progress)
    except PaperpruneError as exc:
        print(f"paperprune.lab.curves: error: {exc}", file=sys.stderr)
        return 2
    for row in record["summary"]["top1_bn"]:
        print(f"{row['method']:>10} ({row['allocation']}) target {row['target']:.2f}: top-1 after adaptive BN "
              f"{row['mean']:.2f} "
              f"(std {row['std'] if row['std'] is None else round(row['std'], 2)}, n {row['n']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
