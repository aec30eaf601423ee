"""Latency budget benchmark (results in benchmarks/results/latency.{json,md}, with machine and date).

For VGG-16 and ResNet-56 on Fashion-MNIST (32x32) on this CPU at batch 64 in deployed mode
(`paperprune.deploy.prepare_for_inference`), criterion `l1` (filter L1 norms, no lasso). ResNet-56
is the shipped model (`create_model("resnet56", num_classes=10, in_channels=1,
pretrained="fashion-mnist")`, its training record's epoch and top-1 recorded); VGG-16, for
which nothing is shipped, is briefly trained here and labelled so.

1. the latency table's cost to measure and the predictor's error against measured whole-model
   latency over random width assignments (each layer uniform in [ceil(C/8), C]);
2. the floor: every prunable layer cut to `omega` channels (the most any budget can remove;
   residual widths, stem, adds, pooling and classifier are not prunable), measured side by side
   with the base model, so a target beyond it is reported as impossible here with the measured
   floor rather than as a failure;
3. for each requested latency reduction: prune with `latency_reduction` (and with
   `latency_rounding`), and with the MACs budget whose model the latency model predicts to be
   as fast (bisected); base and pruned models timed side by side, interleaved, in one run;
   MACs removed and top-1 right after pruning (no fine-tuning) for each.

    python benchmarks/bench_latency.py [--archs resnet56 vgg16] [--targets 0.4 0.6] [--threads 1]
"""
import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

import paperprune
from paperprune.lab.data import DeviceLoader, class_balanced_batch, dataset_info, load_tensors
from paperprune.deploy import DEPLOY_MODE, prepare_for_inference
from paperprune.latency import LatencyModel, clock_name, time_forward
from paperprune.models import prunable_layers
from paperprune.lab.train import TrainConfig, evaluate, train
from paperprune.utils import PaperpruneError, atomic_write_json, atomic_write_text
from paperprune.lab.io import environment_info

RESULTS = Path(__file__).resolve().parent / "results"
METHOD = "l1"
INPUT = (1, 32, 32)
BATCH = 64
#: the issue's acceptance: measured reduction within this of the target
TOLERANCE = 0.05


def data(args):
    info = dataset_info("fashion-mnist")
    x, y = load_tensors("fashion-mnist", "train")
    tx, ty = load_tensors("fashion-mnist", "test")
    common = dict(mean=info.mean, std=info.std, device="cpu")
    train_x, train_y = class_balanced_batch(x, y, args.train_per_class, seed=0)
    test_x, test_y = class_balanced_batch(tx, ty, args.test_per_class, seed=0)
    cal_x, cal_y = class_balanced_batch(x, y, args.samples_per_class, seed=1)
    return (DeviceLoader(train_x, train_y, batch_size=128, train=True, **common),
            DeviceLoader(test_x, test_y, batch_size=256, train=False, **common),
            [((cal_x.float() / 255 - info.mean[0]) / info.std[0], cal_y)])


def shipped_or_briefly_trained(arch, args, train_loader, test_loader):
    """The shipped model when there is one for Fashion-MNIST (`paperprune.models.pretrained`), else
    `briefly_trained`; the dict says which."""
    from paperprune.models.pretrained import PRETRAINED, pretrained_record

    if (arch, "fashion-mnist") not in PRETRAINED:
        return briefly_trained(arch, args, train_loader, test_loader)
    model = paperprune.create_model(arch, num_classes=10, in_channels=1, pretrained="fashion-mnist")
    record = pretrained_record(arch, "fashion-mnist")
    return model.eval(), {"shipped": f"{arch}:fashion-mnist", "weights_epoch": record.get("weights_epoch"),
                          "sha256": record.get("sha256"), "top1": record["test"]["top1"],
                          "test_images": record["test"]["images"]}


def briefly_trained(arch, args, train_loader, test_loader):
    torch.manual_seed(0)
    model = paperprune.create_model(arch, num_classes=10, in_channels=1)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=128, seed=0, precision="fp32")
    result = train(model, train_loader, test_loader, config, Path(args.work) / arch, device="cpu", progress=False)
    return model.eval(), {"epochs": args.epochs, "lr": args.lr, "train_images": 10 * args.train_per_class,
                          "top1": result["top1"]}


def prune(model, calibration, args, **budget):
    return paperprune.prune(model, calibration, method=METHOD, samples_per_class=args.samples_per_class,
                            omega=args.omega, device="cpu", progress=False, **budget)


def floor_entry(model, layers, latency, args):
    """The floor model (every prunable layer at `omega` channels, the first ones) against the base,
    measured side by side: the largest latency reduction any budget can give at this omega."""
    from paperprune.surgery import prune_channels

    widths = {n: min(args.omega, c) for n, c in latency.full_widths.items()}
    floor = prune_channels(copy.deepcopy(model), layers, {n: torch.arange(w) for n, w in widths.items()}, INPUT)
    measured = side_by_side({"base": model, "floor": floor}, args.repeats, args.mode)
    return {"omega": args.omega, "predicted_reduction": 1 - latency.predict(widths) / latency.full_us,
            "measured_reduction": 1 - measured["floor"] / measured["base"], "base_ms": measured["base"],
            "floor_ms": measured["floor"]}


def widths_of(report):
    return {row["name"]: row["width_after"] for row in report.layers}


def matched_macs_budget(model, calibration, latency, target_us, args, steps=10):
    """The MACs budget whose l1-pruned model the latency model predicts as fast as `target_us` (bisection)."""
    lo, hi = 0.02, 0.95
    best = None
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        try:
            pruned, report = prune(model, calibration, args, flops_reduction=mid)
        except PaperpruneError as e:  # beyond the floor's MACs: look lower
            if "unreachable" not in str(e):
                raise
            hi = mid
            continue
        predicted = latency.predict(widths_of(report))
        if best is None or abs(predicted - target_us) < abs(best[2] - target_us):
            best = (pruned, report, predicted, mid)
        lo, hi = (mid, hi) if predicted > target_us else (lo, mid)
    return best


def side_by_side(models, repeats, mode):
    """Latency (ms) of each model in `mode`: the median over `repeats` rounds, each timing every model in turn
    by `paperprune.latency.time_forward` (the shortest of 5 forwards, on the clock the latency table uses)."""
    example = torch.randn(BATCH, *INPUT)
    prepared = {name: prepare_for_inference(m, example) if mode == "deployed" else m for name, m in models.items()}
    times = {name: [] for name in models}
    for _ in range(repeats):
        for name, m in prepared.items():
            times[name].append(time_forward(m, example, repeats=5, warmup=1) / 1e3)
    return {name: float(np.median(t)) for name, t in times.items()}


def bench_arch(arch, args, loaders, save):
    mode = args.mode
    train_loader, test_loader, calibration = loaders
    start = time.perf_counter()
    model, training = shipped_or_briefly_trained(arch, args, train_loader, test_loader)
    training["train_s"] = time.perf_counter() - start
    print(f"{arch}: {'shipped' if 'shipped' in training else 'briefly trained'}, top1 {training['top1']:.2f}",
          flush=True)
    layers = prunable_layers(model)
    start = time.perf_counter()
    cached = set((Path(os.environ["PAPERPRUNE_CACHE"]) / "latency").glob("*.json"))
    latency = LatencyModel.build(model, layers, INPUT, batch_size=BATCH, mode=mode, device="cpu")
    table_s = time.perf_counter() - start
    print(f"{arch}: latency table in {table_s:.0f} s ({latency.table['path']})", flush=True)
    gen = np.random.default_rng(0)
    assignments = [{n: int(gen.integers(math.ceil(c / 8), c + 1)) for n, c in latency.full_widths.items()}
                   for _ in range(args.assignments)]
    errors = latency.errors(model, layers, assignments)
    rel = np.array([r["relative_error"] for r in errors])
    print(f"{arch}: predictor error over {len(rel)} assignments: mean |e| {np.abs(rel).mean():.3f}, "
          f"max {np.abs(rel).max():.3f}", flush=True)
    entry = {"arch": arch, "mode": mode, "repeats": args.repeats, "training": training,
             "base_top1": evaluate(model, test_loader, "cpu", topk=(1,))["top1"], "table_s": table_s,
             "table_cached": Path(latency.table["path"]) in cached, "table_key": latency.key,
             "table_key_hash": latency.key_hash, "full_us": latency.full_us,
             "rest_us": latency.rest_us, "unit_scale": latency.unit_scale, "multiples": latency.multiples(),
             "errors": errors, "rows": []}
    save(entry)
    entry["floor"] = floor_entry(model, layers, latency, args)
    print(f"{arch}: floor (omega={args.omega}) measured -{100 * entry['floor']['measured_reduction']:.1f}%, "
          f"predicted -{100 * entry['floor']['predicted_reduction']:.1f}%", flush=True)
    save(entry)
    for target in args.targets:
        try:
            entry["rows"] += target_rows(arch, target, model, latency, args, loaders)
        except PaperpruneError as e:
            if "unreachable" not in str(e):
                raise
            floor = entry["floor"]
            impossible = floor["measured_reduction"] < target - TOLERANCE
            entry["rows"].append({"arch": arch, "target": target, "budget": "latency", "unreachable": str(e),
                                  "impossible_here": impossible})
            print(f"{arch} target {target}: {e}", flush=True)
            if not impossible and floor["predicted_reduction"] >= target - TOLERANCE:
                # within the acceptance band of the floor: the same request with prune's tolerance widened to it
                entry["rows"] += target_rows(arch, target, model, latency, args, loaders, tolerance=TOLERANCE)
        save(entry)
    return entry


def target_rows(arch, target, model, latency, args, loaders, tolerance=0.01):
    _, test_loader, calibration = loaders
    mode = args.mode
    variants = {}
    suffix = "" if tolerance == 0.01 else f" (tolerance {tolerance:g})"
    for name, kw in ((f"latency{suffix}", {}), (f"latency+rounding{suffix}", {"latency_rounding": True})):
        pruned, report = prune(model, calibration, args, latency_reduction=target, latency_mode=mode,
                               latency_batch_size=BATCH, tolerance=tolerance, **kw)
        variants[name] = (pruned, report, report.latency["predicted_after_us"])
    pruned, report, predicted, flops = matched_macs_budget(model, calibration, latency,
                                                           variants[f"latency{suffix}"][2], args)
    variants["macs-matched"] = (pruned, report, predicted)
    measured = side_by_side({"base": model, **{k: v[0] for k, v in variants.items()}}, args.repeats, mode)
    rows = []
    for name, (pruned, report, predicted) in variants.items():
        row = {"arch": arch, "target": target, "budget": name, "flops_reduction": report.flops_reduction_target,
               "macs_reduction": report.macs_reduction, "params_reduction": report.params_reduction,
               "base_ms": measured["base"], "pruned_ms": measured[name],
               "measured_reduction": 1 - measured[name] / measured["base"],
               "predicted_reduction": 1 - predicted / latency.full_us,
               "top1_after_pruning": evaluate(pruned, test_loader, "cpu", topk=(1,))["top1"],
               "widths": widths_of(report), "latency_record": report.latency}
        rows.append(row)
        print(f"{arch} target {target}: {name}: measured -{100 * row['measured_reduction']:.1f}% "
              f"(predicted -{100 * row['predicted_reduction']:.1f}%), MACs -{100 * row['macs_reduction']:.1f}%, "
              f"top1 {row['top1_after_pruning']:.2f}", flush=True)
    return rows


def markdown(result, args):
    env = result["environment"]
    runs = "; ".join(f"{e['date']} at commit {e['git_commit']}" for e in result.get("parts", [env]))
    loads = [round(x, 2) for x in result["load_before"]]
    after = [round(x, 2) for x in result.get("load_after", [])]
    lines = ["# Latency budget benchmark (benchmarks/bench_latency.py)", "",
             f"Host {env['hostname']}, {env['processor']}, {env['cpu_count']} CPUs, torch {env['torch']}. "
             f"Started {runs} (one process per model, run at the same time). Load average (1, 5, 15 min) at the "
             f"start {loads}, at the last save {after}. Times are the calling thread's CPU time "
             f"(clock `{result.get('clock')}`, one torch thread), which other jobs' preemption does not inflate "
             "(they still disturb caches). Each reduction is measured side by side, interleaved, within one process.",
             "",
             f"Criterion `{METHOD}` (filter L1 norms). Fashion-MNIST 32x32, batch {BATCH}; mode per model below "
             f"(deployed: `{DEPLOY_MODE}`, paperprune.deploy.prepare_for_inference; eager: PyTorch eager), "
             f"{env['torch_threads']} torch thread(s). Top-1 on {10 * args['test_per_class']} test images right "
             "after pruning, no fine-tuning (the model's origin per section).", ""]
    for a in result["archs"]:
        rel = np.array([r["relative_error"] for r in a["errors"]])
        t = a["training"]
        if "shipped" in t:
            origin = (f"Shipped model `{t['shipped']}` (weights of epoch {t['weights_epoch']}, sha256 "
                      f"{str(t['sha256'])[:12]}..., {t['top1']:.2f}% top-1 on its {t['test_images']} test images)")
        else:
            origin = (f"**Briefly trained here** ({t['epochs']} epochs at lr {t['lr']} on {t['train_images']} images; "
                      "nothing is shipped for it)")
        lines += [f"## {a['arch']}, {a.get('mode', args['mode'])} mode", "",
                  f"{origin}: top-1 {a['base_top1']:.2f}% on the benchmark's test images. Latency table: "
                  + (f"{a['table_s']:.0f} s to measure" if not a.get("table_cached", a["table_s"] < 60) else
                     f"loaded from the cache in {a['table_s']:.0f} s (measured by an earlier run of this benchmark)")
                  + ", key "
                  f"`{a['table_key_hash']}`; whole model {a['full_us'] / 1e3:.1f} ms, of which "
                  f"{a['rest_us'] / 1e3:.1f} ms outside the timed units"
                  + (f", which count at {a['unit_scale']:.3f} of their times alone" if "unit_scale" in a else "")
                  + f". Predictor error over {len(rel)} random "
                  f"width assignments (each layer uniform in [C/8, C], each model compiled and timed once): mean "
                  f"|error| {100 * np.abs(rel).mean():.1f}%, max {100 * np.abs(rel).max():.1f}%, mean (signed) "
                  f"{100 * rel.mean():+.1f}%. Multiples read from the table: "
                  f"{sorted(set(a['multiples'].values()))}.", ""]
        if "floor" in a:
            f = a["floor"]
            lines += [f"Floor (every prunable layer at omega={f['omega']} channels; the rest of the model is not "
                      f"prunable): measured {f['base_ms']:.1f} -> {f['floor_ms']:.1f} ms, "
                      f"**-{100 * f['measured_reduction']:.1f}%** (predicted -{100 * f['predicted_reduction']:.1f}%). "
                      "No budget can remove more latency than this at this omega.", ""]
        lines += ["| target | budget | MACs budget | MACs removed | predicted reduction | measured reduction | "
                  "within 5% | base ms | pruned ms | top-1 after pruning |",
                  "|---|---|---:|---:|---:|---:|---|---:|---:|---:|"]
        repeats = a.get("repeats", args["repeats"])
        for r in a["rows"]:
            if "unreachable" in r:
                f = a.get("floor")
                why = r["unreachable"] if f is None else (
                    f"{'impossible on this CPU' if r.get('impossible_here') else 'refused by the prediction'}: the "
                    f"floor measures -{100 * f['measured_reduction']:.1f}% (predicted "
                    f"-{100 * f['predicted_reduction']:.1f}%) at omega={f['omega']}")
                lines.append(f"| {r['target']:.0%} | latency | {why} | | | | | | | |")
                continue
            flops = "" if r["flops_reduction"] is None else f"{r['flops_reduction']:.3f}"
            within = "yes" if abs(r["measured_reduction"] - r["target"]) <= TOLERANCE else "no"
            lines.append(f"| {r['target']:.0%} | {r['budget']} | {flops} | {100 * r['macs_reduction']:.1f}% | "
                         f"{100 * r['predicted_reduction']:.1f}% | {100 * r['measured_reduction']:.1f}% | "
                         f"{within if r['budget'] != 'macs-matched' else ''} | "
                         f"{r['base_ms']:.1f} | {r['pruned_ms']:.1f} | {r['top1_after_pruning']:.2f} |")
        lines += ["", f"Measured latencies: medians of {repeats} interleaved rounds over the base and the pruned models "
                  "of one target, all compiled the same way; each round's time is the shortest of 5 forwards.", ""]
    lines += ["`latency`: `prune(latency_reduction=target)`; `latency+rounding`: the same with `latency_rounding=True`; "
              "`(tolerance 0.05)`: a target the table puts just beyond the floor at prune's 1% tolerance, asked "
              "again with the tolerance widened to the issue's 5% acceptance; "
              "`macs-matched`: the MACs budget (bisected) whose model the latency model predicts as fast as the "
              "`latency` one. The same criterion at the same global level keeps the same channels whichever cost "
              "the level is bisected against, so `macs-matched` lands on the `latency` model or its neighbour: "
              "its MACs budget is what a user would have had to ask for to get that latency."]
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["resnet56", "vgg16"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.4, 0.6])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--mode", choices=("eager", "deployed"), default="deployed")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--assignments", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--samples-per-class", type=int, default=10)
    parser.add_argument("--omega", type=int, default=4, help="per-layer floor of kept channels (prune's default)")
    parser.add_argument("--work", default="/tmp/paperprune-bench-latency", help="training runs and latency tables")
    parser.add_argument("--name", default="latency", help="results file stem")
    parser.add_argument("--note", default=None, help="with --combine: a sentence recorded with the results")
    parser.add_argument("--combine", nargs="+", type=Path, default=None,
                        help="write NAME.{json,md} from the results files of earlier runs (one per arch) instead")
    args = parser.parse_args(argv)
    if args.combine:
        parts = [json.loads(path.read_text()) for path in args.combine]
        for part in parts:
            for a in part["archs"]:
                a.setdefault("repeats", part["args"]["repeats"])
                a.setdefault("mode", part["args"]["mode"])
        result = {**parts[0], "parts": [p["environment"] for p in parts], "archs": [a for p in parts for a in p["archs"]],
                  "note": args.note or parts[0].get("note")}
        atomic_write_json(RESULTS / f"{args.name}.json", result)
        atomic_write_text(RESULTS / f"{args.name}.md", markdown(result, result["args"]))
        print(markdown(result, result["args"]))
        return 0
    torch.set_num_threads(args.threads)
    os.environ["PAPERPRUNE_CACHE"] = str(Path(args.work) / "cache")
    loaders = data(args)
    result = {"environment": environment_info("cpu"), "load_before": os.getloadavg(), "args": vars(args),
              "clock": clock_name("cpu"), "archs": []}
    for arch in args.archs:
        def save(entry):
            result["archs"] = [a for a in result["archs"] if a["arch"] != arch] + [entry]
            result["load_after"] = os.getloadavg()
            atomic_write_json(RESULTS / f"{args.name}.json", result)
            atomic_write_text(RESULTS / f"{args.name}.md", markdown(result, vars(args)))

        bench_arch(arch, args, loaders, save)
    print(markdown(result, vars(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
