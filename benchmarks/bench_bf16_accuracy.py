"""Does bf16 training reach the fp32 accuracy? A short recorded comparison on Fashion-MNIST.

The same model, seed, data subset, batches and schedule, trained once per precision with
`paperprune.lab.train.train` (fp32; bf16 autocast + channels_last), each evaluated on the full
10,000-image test set after its final epoch (never the best epoch; the per-epoch monitor uses
the first 1,000 test images to keep the run short on a shared CPU). The bf16-trained model is
also evaluated in fp32, to separate training from evaluation precision. Noise: the binomial
standard deviation of a top-1 on n test images, sqrt(p (1 - p) / n), and of the difference of two
such accuracies, sqrt(s1^2 + s2^2); "within noise" means |difference| <= 2 of the latter. This
bounds evaluation noise only; seed-to-seed training noise adds to it.

    .venv/bin/python benchmarks/bench_bf16_accuracy.py     # writes benchmarks/results/bf16_accuracy.{json,md}
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paperprune.lab.data import make_loaders  # noqa: E402
from paperprune.models import create_model  # noqa: E402
from paperprune.lab.train import TrainConfig, evaluate, train  # noqa: E402
from paperprune.utils import atomic_write_json, atomic_write_text
from paperprune.lab.io import environment_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def binomial_std(top1: float, n: int) -> float:
    """Standard deviation (percentage points) of a top-1 accuracy measured on n images."""
    p = top1 / 100.0
    return 100.0 * math.sqrt(p * (1.0 - p) / n)


def run_one(args, precision: str, work: Path, seed: int) -> dict:
    """Train in `precision`; the per-epoch test top-1 is on the first `--monitor-images` test images,
    the final model's on all of them (in its own precision and in fp32)."""
    train_loader, test_loader, info = make_loaders(args.dataset, batch_size=args.batch_size, seed=seed,
                                                   per_class=args.per_class)
    monitor = copy.copy(test_loader)
    monitor.images, monitor.labels = test_loader.images[:args.monitor_images], test_loader.labels[:args.monitor_images]
    torch.manual_seed(seed)
    model = create_model(args.arch, num_classes=info.num_classes, in_channels=info.in_channels)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                      seed=seed, precision=precision)
    t0 = time.perf_counter()
    res = train(model, train_loader, monitor, cfg, work / precision, device="cpu", progress=False)
    seconds = time.perf_counter() - t0
    final = evaluate(model, test_loader, "cpu", precision=res["precision"])["top1"]
    n_test = len(test_loader.labels)
    out = {"seed": seed, "precision": res["precision"], "channels_last": res["channels_last"], "top1": final,
           "top1_binomial_std": binomial_std(final, n_test), "test_images": n_test,
           "train_images": res["history"][-1]["train_images"], "train_seconds": seconds,
           "history": [{k: r[k] for k in ("epoch", "train_loss", "train_top1", "test_top1", "test_loss",
                                          "epoch_seconds")} for r in res["history"]]}
    if res["precision"] != "fp32":
        out["top1_evaluated_fp32"] = evaluate(model, test_loader, "cpu", precision="fp32")["top1"]
    print(f"{precision}: final-epoch top-1 {final:.2f}% +- {out['top1_binomial_std']:.2f} "
          f"({seconds / 60:.1f} min of training)", flush=True)
    return out


def markdown(res: dict) -> str:
    env, cfg, runs, d = res["environment"], res["config"], res["runs"], res["difference"]
    lines = [
        "# bf16 vs fp32 training accuracy (benchmarks/bench_bf16_accuracy.py)",
        "",
        f"Date {env['date']}, commit {env['git_commit']}, host {env['hostname']}, {env['processor']}, "
        f"{env['cpu_count']} CPUs, torch {env['torch']} ({env['torch_threads']} thread(s)), CPU shared with other jobs.",
        "",
        f"{cfg['arch']} on {cfg['dataset']}, {cfg['per_class']} training images per class "
        f"({runs['fp32']['train_images']} seen per epoch), {cfg['epochs']} epochs, SGD lr {cfg['lr']} cosine, "
        f"weight decay {cfg['weight_decay']}, batch {cfg['batch_size']}, seed {cfg['seed']} for both; top-1 of the "
        f"final epoch on all {runs['fp32']['test_images']} test images, in the precision the model was trained in "
        f"(per-epoch numbers below: the first {cfg['monitor_images']} test images).",
        "",
        "| precision | seed | channels_last | final top-1 (%) | binomial std | top-1 evaluated in fp32 | training time |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in runs.values():
        lines.append(f"| {r['precision']} | {r.get('seed', cfg['seed'])} | {r['channels_last']} | {r['top1']:.2f} | {r['top1_binomial_std']:.2f} | "
                     f"{r.get('top1_evaluated_fp32', r['top1']):.2f} | {r['train_seconds'] / 60:.1f} min |")
    lines += ["", "Per epoch (test top-1 %): " + "; ".join(
        f"{name}: " + ", ".join(f"{h['test_top1']:.2f}" for h in r["history"]) for name, r in runs.items()),
        "", "## Reading", "",
        f"bf16 - fp32 = {d['top1']:+.2f} points; the binomial std of that difference is {d['binomial_std']:.2f}, "
        f"so the difference is {'within' if d['within_noise'] else 'OUTSIDE'} noise (|d| <= 2 std = "
        f"{2 * d['binomial_std']:.2f}). This counts test-set noise only; one seed per precision cannot measure "
        "seed-to-seed training noise, which adds to it.", ""]
    if "seed_noise" in res:
        n = res["seed_noise"]
        lines[-1:-1] = ["", f"Training noise: fp32 with seed {n['seeds'][1]} (another subset, order and init; "
                            f"recorded {runs['fp32-seed' + str(n['seeds'][1])]['environment']['date']}) lands "
                            f"{n['fp32_top1_gap']:+.2f} points from fp32 with seed {n['seeds'][0]}; the bf16 - fp32 "
                            f"gap of {d['top1']:+.2f} is {'within' if abs(d['top1']) <= abs(n['fp32_top1_gap']) else 'larger than'} "
                            "that seed-to-seed spread."]
    return "\n".join(lines)


def add_noise_run(args) -> int:
    """Add to the recorded comparison an fp32 run with another seed (data subset, order and init):
    how far two fp32 runs of this schedule land apart, the training noise the bf16 gap is set against."""
    path = args.out / "bf16_accuracy.json"
    res = json.loads(path.read_text())
    same = {k: v for k, v in vars(args).items() if k not in ("out", "noise_seed")}
    differ = {k: (res["config"].get(k), v) for k, v in same.items() if res["config"].get(k) != v}
    if differ:
        raise SystemExit(f"{path} was recorded with other settings {differ}; rerun the comparison first")
    with tempfile.TemporaryDirectory() as tmp:
        run = run_one(args, "fp32", Path(tmp), args.noise_seed)
    run["environment"] = environment_info("cpu")
    res["runs"][f"fp32-seed{args.noise_seed}"] = run
    res["seed_noise"] = {"seeds": [args.seed, args.noise_seed], "fp32_top1_gap": run["top1"] - res["runs"]["fp32"]["top1"]}
    atomic_write_json(path, res)
    atomic_write_text(args.out / "bf16_accuracy.md", markdown(res))
    print(f"wrote {path} and {args.out / 'bf16_accuracy.md'}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--arch", default="resnet56")
    p.add_argument("--per-class", type=int, default=400)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--monitor-images", type=int, default=1000, help="test images evaluated after every epoch")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 leaves the other core to others)")
    p.add_argument("--noise-seed", type=int, default=None,
                   help="add one fp32 run with this seed to the recorded comparison (training noise)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.noise_seed is not None:
        return add_noise_run(args)
    res = {"benchmark": "bf16_accuracy", "environment": environment_info("cpu"),
           "config": vars(args) | {"out": str(args.out)}, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "bf16"):
            res["runs"][precision] = run_one(args, precision, Path(tmp), args.seed)
    a, b = res["runs"]["fp32"], res["runs"]["bf16"]
    std = math.hypot(a["top1_binomial_std"], b["top1_binomial_std"])
    res["difference"] = {"top1": b["top1"] - a["top1"], "binomial_std": std,
                         "within_noise": abs(b["top1"] - a["top1"]) <= 2 * std}
    atomic_write_json(args.out / "bf16_accuracy.json", res)
    atomic_write_text(args.out / "bf16_accuracy.md", markdown(res))
    print(f"wrote {args.out / 'bf16_accuracy.json'} and {args.out / 'bf16_accuracy.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
