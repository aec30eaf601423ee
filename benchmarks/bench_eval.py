"""Evaluation benchmark: the curves' test evaluation with BatchNorm folded into the convolutions
(`paperprune.lab.curves`, `paperprune.deploy.fold_batchnorm`) against the model as pruned, side by side.

ResNet-56 (the shipped Fashion-MNIST model) and VGG-16 (initialised with seed 0: timing does not
depend on the weights), each pruned by l1 to 30/55/75% fewer FLOPs; per model, the bf16 (autocast +
channels_last) evaluation of the first `--images` Fashion-MNIST test images, unfolded and folded in
turn, `--repeats` rounds, the median. Also checks that both give the same prediction on every image
but a few near-ties. Results in benchmarks/results/eval.{json,md}, with machine, date and commit.

    python benchmarks/bench_eval.py [--threads 2] [--images 2000] [--repeats 3]
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not the installed one

import paperprune
from paperprune.lab.curves import correct_per_image
from paperprune.lab.data import class_balanced_batch, dataset_info, load_tensors
from paperprune.deploy import fold_batchnorm
from paperprune.lab.train import resolve_precision
from paperprune.utils import atomic_write_json, atomic_write_text
from paperprune.lab.io import environment_info

RESULTS = Path(__file__).resolve().parent / "results"


def data(images):
    info = dataset_info("fashion-mnist")
    norm = lambda x: (x.float() / 255 - info.mean[0]) / info.std[0]  # noqa: E731
    x, y = load_tensors("fashion-mnist", "train")
    cx, cy = class_balanced_batch(x, y, 10, seed=0)
    tx, ty = load_tensors("fashion-mnist", "test")
    tx, ty = norm(tx[:images]), ty[:images]
    return [(norm(cx), cy)], [(tx[i:i + 256], ty[i:i + 256]) for i in range(0, images, 256)]


def rows(arch, calibration, test, precision, repeats):
    torch.manual_seed(0)
    pretrained = "fashion-mnist" if arch == "resnet56" else None
    base = paperprune.create_model(arch, num_classes=10, in_channels=1, pretrained=pretrained).eval()
    out = []
    for target in (0.30, 0.55, 0.75):
        pruned, _ = paperprune.prune(base, calibration, method="l1", flops_reduction=target, progress=False)
        models = {"as pruned": pruned.eval(), "fold-bn": fold_batchnorm(pruned)}
        if precision != "fp32":
            models = {k: m.to(memory_format=torch.channels_last) for k, m in models.items()}
        times = {k: [] for k in models}
        correct = {}
        for _ in range(repeats):  # interleaved, so drifts in load hit both alike
            for name, model in models.items():
                start = time.perf_counter()
                correct[name] = correct_per_image(model, test, "cpu", precision)
                times[name].append(time.perf_counter() - start)
        median = {k: statistics.median(v) for k, v in times.items()}
        out.append({"arch": arch, "target": target, "precision": precision,
                    "unfolded_s": median["as pruned"], "folded_s": median["fold-bn"],
                    "speedup": median["as pruned"] / median["fold-bn"],
                    "disagreements": int(np.sum(correct["as pruned"] != correct["fold-bn"])),
                    "top1_unfolded": 100 * float(correct["as pruned"].mean()),
                    "top1_folded": 100 * float(correct["fold-bn"].mean())})
        print(out[-1], flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    precision = resolve_precision("auto", "cpu")
    calibration, test = data(args.images)
    load_before = os.getloadavg()[0]
    table = [r for arch in ("resnet56", "vgg16") for r in rows(arch, calibration, test, precision, args.repeats)]
    result = {"environment": environment_info("cpu"), "load_before": load_before, "load_after": os.getloadavg()[0],
              "images": args.images, "repeats": args.repeats, "rows": table}
    atomic_write_json(RESULTS / "eval.json", result)
    env = result["environment"]
    lines = ["# Evaluation with BatchNorm folded (curves) against the model as pruned", "",
             f"{env['date']} on {env['processor']} ({env['cpu_count']} CPUs), torch {env['torch']} "
             f"({args.threads} threads), commit {env['git_commit']}. Load average {load_before:.2f} before, "
             f"{result['load_after']:.2f} after. {args.images} Fashion-MNIST test images, batch 256, {precision}; "
             f"median of {args.repeats} interleaved rounds; l1 pruning.", "",
             "| arch | FLOPs target | unfolded (s) | folded (s) | speed-up | top-1 unfolded / folded (%) | "
             "images predicted differently |", "|---|---:|---:|---:|---:|---|---:|"]
    for r in table:
        lines.append(f"| {r['arch']} | {100 * r['target']:.0f}% | {r['unfolded_s']:.2f} | {r['folded_s']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['top1_unfolded']:.2f} / {r['top1_folded']:.2f} | "
                     f"{r['disagreements']} |")
    atomic_write_text(RESULTS / "eval.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
