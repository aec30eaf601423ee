"""Pipeline benchmarks (results in benchmarks/results/pipeline.{json,md}, with machine and date).

1. Statistics + selection for ResNet-56 on Fashion-MNIST, 20 samples per class, 50% FLOPs,
   for the lasso criteria (target: under 60 s on the 2-core CPU).
2. Realised speed-up against FLOPs reduction: VGG-16 and ResNet-56 pruned by sTLP-IB to 60%
   fewer MACs, CPU batch 64, base and pruned timed in one run, interleaved, eager and deployed
   (paperprune.deploy.prepare_for_inference, the same for both) (target: the latency ratio
   within 1.15x of the MACs ratio).

    python benchmarks/bench_pipeline.py [--threads N] [--repeats N]
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not the installed one

import paperprune
from paperprune.lab.data import class_balanced_batch, dataset_info, load_tensors
from paperprune.deploy import DEPLOY_MODE, prepare_for_inference
from paperprune.lab.experiment import measure_latency
from paperprune.utils import atomic_write_json, atomic_write_text
from paperprune.lab.io import environment_info

RESULTS = Path(__file__).resolve().parent / "results"


def calibration(samples_per_class):
    info = dataset_info("fashion-mnist")
    x, y = load_tensors("fashion-mnist", "train")
    x, y = class_balanced_batch(x, y, samples_per_class, seed=0)
    return [((x.float() / 255 - info.mean[0]) / info.std[0], y)]


def selection_times(samples_per_class):
    data = calibration(samples_per_class)
    torch.manual_seed(0)
    model = paperprune.create_model("resnet56", num_classes=10, in_channels=1).eval()
    rows = []
    for method in ("apib", "classwise", "sglp", "stlp"):
        start = time.perf_counter()
        _, report = paperprune.prune(model, data, method=method, flops_reduction=0.5,
                                     samples_per_class=samples_per_class, progress=False)
        total = time.perf_counter() - start
        rows.append({"method": method, "total_s": total, **report.timings, "budget_steps": report.budget_steps,
                     "macs_reduction": report.macs_reduction, **{f"criterion_{k}": v for k, v in
                                                                 report.criterion.items()}})
        print(f"selection {method}: {total:.1f} s", flush=True)
    return rows


def latency_rows(repeats):
    """Per model and mode (eager, deployed), the median of `repeats` rounds; each round times all four
    (mode, model) pairs in turn, so drifts in machine load hit them alike."""
    data = calibration(10)
    cpu = torch.device("cpu")
    rows = []
    for arch in ("vgg16", "resnet56"):
        torch.manual_seed(0)
        model = paperprune.create_model(arch, num_classes=10, in_channels=1).eval()
        pruned, report = paperprune.prune(model, data, method="stlp", flops_reduction=0.6, samples_per_class=10,
                                          progress=False)
        example = torch.randn(64, 1, 32, 32)
        start = time.perf_counter()
        models = {("eager", "base"): model, ("eager", "pruned"): pruned,
                  (DEPLOY_MODE, "base"): prepare_for_inference(model, example),
                  (DEPLOY_MODE, "pruned"): prepare_for_inference(pruned, example)}
        prepare_s = time.perf_counter() - start
        times = {key: [] for key in models}
        for _ in range(repeats):
            for key, m in models.items():
                times[key].append(measure_latency(m, (1, 32, 32), 64, cpu, repeats=3, warmup=1))
        macs_ratio = report.macs_before / report.macs_after
        for mode in ("eager", DEPLOY_MODE):
            base = float(torch.tensor(times[mode, "base"]).median())
            small = float(torch.tensor(times[mode, "pruned"]).median())
            rows.append({"arch": arch, "mode": mode, "macs_before": report.macs_before,
                         "macs_after": report.macs_after, "macs_ratio": macs_ratio, "base_ms": base,
                         "pruned_ms": small, "latency_ratio": base / small, "gap": macs_ratio / (base / small),
                         "prepare_s": None if mode == "eager" else prepare_s})
            print(f"latency {arch} {mode}: MACs x{macs_ratio:.2f}, latency x{base / small:.2f}", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    result = {"environment": environment_info("cpu"), "load_before": load_before,
              "selection": selection_times(20), "latency": latency_rows(args.repeats),
              "load_after": os.getloadavg()}
    atomic_write_json(RESULTS / "pipeline.json", result)
    env = result["environment"]
    lines = ["# Pipeline benchmarks (benchmarks/bench_pipeline.py)", "",
             f"Date {env['date']}, host {env['hostname']}, {env['processor']}, {env['cpu_count']} CPUs, torch "
             f"{env['torch']} ({env['torch_threads']} threads), commit {env['git_commit']}. Load average "
             f"before/after: {[round(x, 2) for x in load_before]} / {[round(x, 2) for x in result['load_after']]}.",
             "", "## Statistics + selection, ResNet-56, Fashion-MNIST, 20 samples per class, 50% MACs", "",
             "Untrained model (the cost does not depend on the weights). Target: under 60 s.", "",
             "| method | statistics s | selection s | total s | bisection steps | reduction | lasso support |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["selection"]:
        lines.append(f"| {r['method']} | {r['statistics_s']:.1f} | {r['selection_s']:.1f} | {r['total_s']:.1f} | "
                     f"{r['budget_steps']} | {r['macs_reduction']:.4f} | {r.get('criterion_lasso_support')} |")
    lines += ["", "## Realised speed-up at 60% fewer MACs (sTLP-IB), CPU, batch 64", "",
              f"Median of {args.repeats} interleaved measurements of base and pruned in both modes (3 timed forwards "
              "each). Modes: `eager` is PyTorch eager, fp32, NCHW; "
              f"`{DEPLOY_MODE}` is `paperprune.deploy.prepare_for_inference`, applied alike to base and pruned "
              "(BatchNorm folded into the convs, channels_last, torch.compile/inductor with the weights frozen; "
              "compiling base and pruned took "
              + ", ".join(f"{r['prepare_s']:.0f} s for {r['arch']}" for r in result["latency"]
                          if r["prepare_s"] is not None)
              + "). Target: MACs ratio / latency ratio <= 1.15.", "",
              ("| model | mode | MACs before | MACs after | MACs ratio | base ms | pruned ms | latency ratio | "
               "MACs/latency |"),
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["latency"]:
        lines.append(f"| {r['arch']} | {r['mode']} | {r['macs_before'] / 1e6:.1f}M | {r['macs_after'] / 1e6:.1f}M | "
                     f"{r['macs_ratio']:.2f} | {r['base_ms']:.1f} | {r['pruned_ms']:.1f} | "
                     f"{r['latency_ratio']:.2f} | {r['gap']:.2f} |")
    atomic_write_text(RESULTS / "pipeline.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
