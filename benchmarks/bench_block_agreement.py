"""Block against exact HSIC statistics on the shipped ResNet-56 (METHOD.md section 2b): how far Q and R move.

For each calibration size (images per class; default 20 and 100, N = 200 and 1,000 on Fashion-MNIST's ten
classes) and each seed, the statistics of every prunable layer are computed exactly and from blocks
(B = `--block-size`, M = `--permutations`), and compared layer by layer:

- Q (C x C) and R (C x K): the relative Frobenius error ||block - exact|| / ||exact||;
- the output relevance (C): the same;
- the rank agreement of each channel's total class relevance sum_k R[c, k] (Spearman), which is what the
  lasso's support follows most closely.

Per size: the median and the largest error over layers and seeds, both wall times, and the speed-up. The
kept channels and top-1 that follow from each estimator come from pruning curves (the `block` profile's
records), not from here. Results: `benchmarks/results/block-agreement.json` (a list of runs) and a
Markdown summary beside it, each run with machine, date and commit.

    OMP_NUM_THREADS=2 python benchmarks/bench_block_agreement.py --per-class 20 100 --seeds 0 1 2

A smoke test (seconds; writes elsewhere):

    python benchmarks/bench_block_agreement.py --per-class 4 --seeds 0 --layers 3 --out /tmp/agree.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paperprune  # noqa: E402
from paperprune import ib  # noqa: E402
from paperprune.lab.data import class_balanced_batch, dataset_info, load_tensors  # noqa: E402
from paperprune.models import prunable_layers  # noqa: E402
from paperprune.lab.io import environment_info  # noqa: E402
from paperprune.utils import atomic_write_json, atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def relative_error(block: torch.Tensor, exact: torch.Tensor) -> float:
    """||block - exact||_F / ||exact||_F (0 where both are zero)."""
    norm = float(torch.linalg.norm(exact))
    return float(torch.linalg.norm(block - exact)) / norm if norm > 0 else float(torch.linalg.norm(block))


def calibration(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` training images of each class drawn with `seed`, normalised as the model expects."""
    images, labels = load_tensors("fashion-mnist", "train")
    images, labels = class_balanced_batch(images, labels, per_class, seed)
    info = dataset_info("fashion-mnist")
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std, labels


def compare(model, layers, images, labels, args, seed: int) -> dict:
    """Exact and block statistics of `layers` on one calibration sample, timed and compared."""
    common = dict(num_classes=10, response="logits", dtype=torch.float64)
    start = time.perf_counter()
    exact = ib.layer_statistics(model, layers, images, labels, **common)
    exact_s = time.perf_counter() - start
    start = time.perf_counter()
    block = ib.layer_statistics(model, layers, images, labels, statistics="block", block_size=args.block_size,
                                permutations=args.permutations, seed=seed, **common)
    block_s = time.perf_counter() - start
    rows = []
    for layer in layers:
        e, b = exact[layer.name], block[layer.name]
        rho = stats.spearmanr(e.relevance.sum(1).numpy(), b.relevance.sum(1).numpy()).statistic
        rows.append({"layer": layer.name, "channels": int(e.redundancy.shape[0]), "q_error": relative_error(b.redundancy, e.redundancy),
                     "r_error": relative_error(b.relevance, e.relevance),
                     "output_error": relative_error(b.output_relevance, e.output_relevance),
                     "relevance_spearman": float(rho)})
    return {"seed": seed, "samples": int(len(labels)), "exact_s": exact_s, "block_s": block_s, "layers": rows}


def summary(run: dict) -> list[str]:
    lines = [f"## {run['per_class']} images per class (N = {run['samples']}), B = {run['block_size']}, "
             f"M = {run['permutations']}, seeds {', '.join(str(s['seed']) for s in run['seeds'])}", "",
             "| quantity | median over layers and seeds | largest |", "|---|---:|---:|"]
    for key, what in (("q_error", "Q relative error"), ("r_error", "R relative error"),
                      ("output_error", "output relevance relative error"),
                      ("relevance_spearman", "Spearman of total class relevance")):
        values = [row[key] for s in run["seeds"] for row in s["layers"] if np.isfinite(row[key])]
        worst = min(values) if key == "relevance_spearman" else max(values)
        lines.append(f"| {what} | {np.median(values):.3f} | {worst:.3f} |")
    exact = [s["exact_s"] for s in run["seeds"]]
    block = [s["block_s"] for s in run["seeds"]]
    lines += ["", f"Wall time per seed: exact {np.mean(exact):.1f} s, block {np.mean(block):.1f} s "
              f"({np.mean(exact) / np.mean(block):.1f}x); {run['environment']['date']}, commit "
              f"{run['environment']['git_commit']}, {run['environment']['processor']}, "
              f"{run['environment']['torch_threads']} thread(s). Largest is the worst layer (smallest Spearman).", ""]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--block-size", type=int, default=20)
    parser.add_argument("--permutations", type=int, default=3)
    parser.add_argument("--layers", type=int, default=None, help="only the first L prunable layers (smoke tests)")
    parser.add_argument("--out", type=Path, default=RESULTS / "block-agreement.json")
    args = parser.parse_args(argv)
    model = paperprune.create_model("resnet56", num_classes=10, in_channels=1, pretrained="fashion-mnist").eval()
    model = model.double()
    layers = prunable_layers(model)[: args.layers]
    runs = []
    for per_class in args.per_class:
        seeds = []
        for seed in args.seeds:
            images, labels = calibration(per_class, seed)
            seeds.append(compare(model, layers, images.double(), labels, args, seed))
            print(f"{per_class}/class seed {seed}: exact {seeds[-1]['exact_s']:.1f} s, block "
                  f"{seeds[-1]['block_s']:.1f} s", flush=True)
        runs.append({"model": "resnet56 (shipped, fashion-mnist)", "per_class": per_class,
                     "samples": seeds[0]["samples"], "block_size": args.block_size,
                     "permutations": args.permutations, "layers": len(layers), "seeds": seeds,
                     "environment": environment_info("cpu")})
    atomic_write_json(args.out, runs)
    text = ["# Block against exact statistics: the shipped ResNet-56 on Fashion-MNIST", "",
            f"Written by `benchmarks/{Path(__file__).name}`; float64 statistics of {len(layers)} prunable "
            "layers, response: the logits.", ""]
    atomic_write_text(args.out.with_suffix(".md"), "\n".join(text + [l for run in runs for l in summary(run)]))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
