"""Latency budget benchmark: does the measured latency reduction land on the target? (results in
benchmarks/results/NAME.{json,md}, with the machine, the date and the commit).

For VGG-16 and ResNet-56 on Fashion-MNIST (32x32) on this CPU, batch 64, in eager and deployed mode
(`paperprune.deploy.prepare_for_inference`), criterion `l1` (filter L1 norms, no lasso), each target
(default 40% and 60% less latency) is asked of `paperprune.prune(latency_reduction=...)`, which bisects
the predicted latency and corrects it by measuring the pruned candidates (`paperprune.latency.calibrate`,
at most 3 measured models, stopping within 2 points). Recorded per target: every step (predicted,
measured, the correction applied), the reduction the loop kept, and an independent check: the kept
model measured again beside the base `--checks` times (`paperprune.latency.measure_side_by_side`, each
the median of interleaved rounds) after the loop, whose median is what the acceptance (within 2 points
of the target) is judged on, since the loop keeps its nearest measurement and so favours lucky noise.

Per model and mode also: the latency table's cost and key, and the floor (every prunable layer at
`omega` channels, measured beside the base): no budget removes more latency than that, so a target
beyond it is reported as impossible here. `--assignments N` adds the predictor's error over N random
width assignments. ResNet-56 is the shipped model; VGG-16, for which nothing is shipped, is briefly
trained here (`--epochs`, 0: untrained) and labelled so. Top-1 right after pruning, no fine-tuning.

    python benchmarks/bench_latency.py [--archs vgg16 resnet56] [--modes eager deployed] [--targets 0.4 0.6]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not the installed one

import paperprune  # noqa: E402
from paperprune.deploy import DEPLOY_MODE
from paperprune.lab.data import DeviceLoader, class_balanced_batch, dataset_info, load_tensors
from paperprune.lab.io import environment_info
from paperprune.lab.train import TrainConfig, evaluate, train
from paperprune.latency import (LATENCY_TOLERANCE, MEASURE_MAX_ROUNDS, MEASURE_PRECISION, MEASURE_ROUNDS, LatencyModel,
                                clock_name, huge_pages_available)
from paperprune.models import prunable_layers
from paperprune.utils import PaperpruneError, atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
METHOD = "l1"
INPUT = (1, 32, 32)


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
    if args.epochs == 0:
        return model.eval(), {"epochs": 0, "top1": evaluate(model.eval(), test_loader, "cpu", topk=(1,))["top1"]}
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=128, seed=0, precision="fp32")
    result = train(model, train_loader, test_loader, config, Path(args.work) / arch, device="cpu", progress=False)
    return model.eval(), {"epochs": args.epochs, "lr": args.lr, "train_images": 10 * args.train_per_class,
                          "top1": result["top1"]}


def floor_entry(model, layers, latency, args):
    """The floor model (every prunable layer at `omega` channels, the first ones) measured beside the base:
    the largest latency reduction any budget can give at this omega."""
    from paperprune.surgery import prune_channels

    widths = {n: min(args.omega, c) for n, c in latency.full_widths.items()}
    floor = prune_channels(copy.deepcopy(model), layers, {n: torch.arange(w) for n, w in widths.items()}, INPUT)
    measured = latency.measure_side_by_side(model, floor)
    return {"omega": args.omega, "predicted_reduction": 1 - latency.predict(widths) / latency.full_us,
            "measured_reduction": measured["reduction"], "base_ms": measured["before_us"] / 1e3,
            "floor_ms": measured["after_us"] / 1e3}


def target_row(arch, mode, target, model, latency, args, loaders):
    """`prune(latency_reduction=target)`, its steps, and the kept model measured again `args.checks` times."""
    _, test_loader, calibration = loaders
    start = time.perf_counter()
    pruned, report = paperprune.prune(model, calibration, method=METHOD, samples_per_class=args.samples_per_class,
                                      omega=args.omega, device="cpu", progress=False, latency_reduction=target,
                                      latency_mode=mode, latency_batch_size=args.batch)
    prune_s = time.perf_counter() - start
    checks = [latency.measure_side_by_side(model, pruned)["reduction"] for _ in range(args.checks)]
    lat = report.latency
    check = float(np.median(checks))
    row = {"arch": arch, "mode": mode, "target": target, "prune_s": prune_s, "steps": lat["steps"],
           "loop_reduction": lat["measured_reduction"], "missed": lat["missed"], "checks": checks,
           "check_reduction": check, "within": abs(check - target) <= LATENCY_TOLERANCE,
           "predicted_reduction": lat["predicted_reduction"], "macs_reduction": report.macs_reduction,
           "params_reduction": report.params_reduction,
           "top1_after_pruning": evaluate(pruned, test_loader, "cpu", topk=(1,))["top1"],
           "widths": {r["name"]: r["width_after"] for r in report.layers}, "latency_record": lat}
    measured = [s for s in lat["steps"] if "miss" in s]
    print(f"{arch} {mode} target {target}: {len(measured)} measured step(s) "
          f"{[round(s['measured_reduction'], 3) for s in measured]}, kept -{100 * row['loop_reduction']:.1f}%, "
          f"checked -{100 * check:.1f}% ({'within' if row['within'] else 'OUTSIDE'} {LATENCY_TOLERANCE}), "
          f"MACs -{100 * row['macs_reduction']:.1f}%, {prune_s:.0f} s", flush=True)
    return row


def bench_arch(arch, mode, model, training, args, loaders, save):
    _, test_loader, _ = loaders
    layers = prunable_layers(model)
    cache = Path(os.environ["PAPERPRUNE_CACHE"]) / "latency"
    cached = set(cache.glob("*.json"))
    start = time.perf_counter()
    latency = LatencyModel.build(model, layers, INPUT, batch_size=args.batch, mode=mode, device="cpu")
    table_s = time.perf_counter() - start
    print(f"{arch} {mode}: latency table in {table_s:.0f} s ({latency.table['path']})", flush=True)
    entry = {"arch": arch, "mode": mode, "training": training,
             "base_top1": evaluate(model, test_loader, "cpu", topk=(1,))["top1"], "table_s": table_s,
             "table_cached": Path(latency.table["path"]) in cached, "table_key": latency.key,
             "table_key_hash": latency.key_hash, "full_us": latency.full_us, "rest_us": latency.rest_us,
             "unit_scale": latency.unit_scale, "rows": []}
    if args.assignments:
        gen = np.random.default_rng(0)
        assignments = [{n: int(gen.integers(math.ceil(c / 8), c + 1)) for n, c in latency.full_widths.items()}
                       for _ in range(args.assignments)]
        entry["errors"] = latency.errors(model, layers, assignments)
    entry["floor"] = floor_entry(model, layers, latency, args)
    print(f"{arch} {mode}: floor (omega={args.omega}) measured -{100 * entry['floor']['measured_reduction']:.1f}%",
          flush=True)
    save(entry)
    for target in args.targets:
        try:
            entry["rows"].append(target_row(arch, mode, target, model, latency, args, loaders))
        except PaperpruneError as e:
            if "unreachable" not in str(e):
                raise
            entry["rows"].append({"arch": arch, "mode": mode, "target": target, "unreachable": str(e)})
            print(f"{arch} {mode} target {target}: {e}", flush=True)
        save(entry)
    return entry


def _pct(x):
    return f"{100 * x:.1f}%"


def markdown(result):
    args = result["args"]
    env = result["environment"]
    runs = "; ".join(f"{e['date']} at commit {e['git_commit']}" + (f" (checkout {e['git_commit_now']})"
                                                                 if "git_commit_now" in e else "")
                     for e in result.get("parts", [env]))
    machine = result["archs"][0]["table_key"]["device"] if result["archs"] else env["processor"]
    lines = ["# Latency budget benchmark (benchmarks/bench_latency.py)", "",
             f"Host {env['hostname']}, {machine}, torch {env['torch']}, {env['torch_threads']} torch thread(s). "
             f"Run {runs}. Load average (1, 5, 15 min) at the start "
             f"{[round(x, 2) for x in result['load_before']]}, at the last save "
             f"{[round(x, 2) for x in result.get('load_after', [])]}. Times: clock `{result['clock']}` (with one "
             "torch thread the calling thread's CPU time, which other jobs' preemption does not inflate). Measured "
             "copies on transparent huge pages (`paperprune.latency`, \"Memory placement\"): "
             f"{result.get('huge_pages', 'no, runs before that')}.", "",
             f"Criterion `{METHOD}` (filter L1 norms), Fashion-MNIST 32x32, batch {args['batch']}. Each target is "
             "asked of `prune(latency_reduction=...)`: the bisection on the predicted latency, then at most 3 pruned "
             "models measured beside the base (each the median per-round reduction of at least "
             f"{MEASURE_ROUNDS} interleaved rounds after warm-up, more, up to {MEASURE_MAX_ROUNDS}, until its 95% "
             f"interval lies within {MEASURE_PRECISION} of it) and the prediction corrected (proportional, then "
             f"secant), stopping within {LATENCY_TOLERANCE}. *Kept*: the loop's measurement of the model it returns. "
             f"*Checked*: the median of {args['checks']} further side-by-side measurements of that model after the "
             f"loop; *within* compares it with the target ({LATENCY_TOLERANCE}). Deployed: `{DEPLOY_MODE}`.", ""]
    for a in result["archs"]:
        t = a["training"]
        if "shipped" in t:
            origin = (f"Shipped model `{t['shipped']}` (weights of epoch {t['weights_epoch']}, "
                      f"{t['top1']:.2f}% top-1 on its {t['test_images']} test images)")
        elif t["epochs"]:
            origin = (f"**Briefly trained here** ({t['epochs']} epochs at lr {t['lr']} on {t['train_images']} images; "
                      "nothing is shipped for it)")
        else:
            origin = "**Untrained** (random initialisation)"
        lines += [f"## {a['arch']}, {a['mode']}", "",
                  f"{origin}: top-1 {a['base_top1']:.2f}% on the benchmark's {10 * args['test_per_class']} test "
                  f"images. Latency table {'loaded from the cache' if a['table_cached'] else 'measured'} in "
                  f"{a['table_s']:.0f} s, key `{a['table_key_hash']}`; whole model {a['full_us'] / 1e3:.1f} ms, "
                  f"{a['rest_us'] / 1e3:.1f} ms outside the timed units, which count at {a['unit_scale']:.3f}."]
        if a.get("errors"):
            rel = np.array([r["relative_error"] for r in a["errors"]])
            lines[-1] += (f" Predictor error over {len(rel)} random width assignments: mean |error| "
                          f"{_pct(np.abs(rel).mean())}, max {_pct(np.abs(rel).max())}, mean {100 * rel.mean():+.1f}%.")
        f = a.get("floor")
        if f:
            lines[-1] += (f" Floor (every prunable layer at omega={f['omega']}): {f['base_ms']:.1f} -> "
                          f"{f['floor_ms']:.1f} ms, -{_pct(f['measured_reduction'])} measured "
                          f"(predicted -{_pct(f['predicted_reduction'])}).")
        lines += ["", "| target | steps: predicted -> measured (correction) | kept | checked (range) | within | "
                  "MACs removed | top-1 after pruning | prune s |", "|---|---|---:|---:|---|---:|---:|---:|"]
        for r in a["rows"]:
            if "unreachable" in r:
                lines.append(f"| {r['target']:.0%} | refused: {r['unreachable']} | | | | | | |")
                continue
            steps = "; ".join(f"{_pct(s['predicted_reduction'])} -> {_pct(s['measured_reduction'])}"
                              + (f" [{s['rounds']} rounds]" if "reduction_interval" in s else "")
                              + ("" if s["step"] == 1 else f" ({s['correction'].split(':')[0]})")
                              if "miss" in s else f"asked {_pct(s['asked_predicted'])}: "
                              + (f"the model of step {s['same_as']} again, not measured" if "same_as" in s else "refused")
                              for s in r["steps"])
            lines.append(f"| {r['target']:.0%} | {steps} | {_pct(r['loop_reduction'])} | {_pct(r['check_reduction'])} "
                         f"({_pct(min(r['checks']))} to {_pct(max(r['checks']))}) | "
                         f"{'yes' if r['within'] else '**no**'} | {_pct(r['macs_reduction'])} | "
                         f"{r['top1_after_pruning']:.2f} | {r['prune_s']:.0f} |")
        lines.append("")
    if result.get("note"):
        lines += [result["note"], ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["vgg16", "resnet56"])
    parser.add_argument("--modes", nargs="+", choices=("eager", "deployed"), default=["eager", "deployed"])
    parser.add_argument("--targets", nargs="+", type=float, default=[0.4, 0.6])
    parser.add_argument("--batch", type=int, default=64, help="the batch size latency is measured at")
    parser.add_argument("--checks", type=int, default=3, help="side-by-side measurements of each kept model")
    parser.add_argument("--assignments", type=int, default=0, help="random widths for the predictor's error")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--epochs", type=int, default=3, help="VGG-16's brief training (0: untrained)")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--samples-per-class", type=int, default=10)
    parser.add_argument("--omega", type=int, default=4, help="per-layer floor of kept channels (prune's default)")
    parser.add_argument("--work", default="/tmp/paperprune-bench-latency", help="training runs and latency tables")
    parser.add_argument("--name", default="latency-landing", help="results file stem")
    parser.add_argument("--note", default=None, help="a sentence recorded with the results")
    parser.add_argument("--combine", nargs="+", type=Path, default=None,
                        help="write NAME.{json,md} from the results files of earlier runs instead")
    args = parser.parse_args(argv)
    if args.combine:
        parts = [json.loads(path.read_text()) for path in args.combine]
        result = {**parts[0], "parts": [p["environment"] for p in parts], "archs": [a for p in parts for a in p["archs"]],
                  "note": args.note or parts[0].get("note")}
        atomic_write_json(RESULTS / f"{args.name}.json", result)
        atomic_write_text(RESULTS / f"{args.name}.md", markdown(result))
        print(markdown(result))
        return 0
    torch.set_num_threads(args.threads)
    os.environ["PAPERPRUNE_CACHE"] = str(Path(args.work) / "cache")
    loaders = data(args)
    result = {"environment": environment_info("cpu"), "load_before": os.getloadavg(), "args": vars(args),
              "clock": clock_name("cpu"), "huge_pages": huge_pages_available(), "note": args.note, "archs": []}
    for arch in args.archs:
        start = time.perf_counter()
        model, training = shipped_or_briefly_trained(arch, args, *loaders[:2])
        training["train_s"] = time.perf_counter() - start
        for mode in args.modes:
            def save(entry):
                result["archs"] = [a for a in result["archs"] if (a["arch"], a["mode"]) != (arch, mode)] + [entry]
                result["load_after"] = os.getloadavg()
                atomic_write_json(RESULTS / f"{args.name}.json", result)
                atomic_write_text(RESULTS / f"{args.name}.md", markdown(result))

            bench_arch(arch, mode, model, training, args, loaders, save)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
