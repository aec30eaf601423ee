"""Training throughput: loaders (DeviceLoader vs torchvision) and precisions (fp32 vs bf16).

Measures on Fashion-MNIST (the same uint8 images for all):
1. loader-only throughput (images/s of batches produced, nothing else);
2. ResNet-56 training throughput (SGD steps, batch 128) with each loader, same number of steps
   after a warm-up;
3. training throughput of ResNet-56 and VGG-16 in each precision mode: fp32 NCHW (the old
   CPU path), fp32 channels_last, bf16 autocast NCHW, bf16 autocast + channels_last (what
   `paperprune.lab.train` uses where the CPU runs bf16), and with --compile the same step under
   torch.compile; same init and batches, timed in alternating blocks, as ratios to fp32 NCHW;
4. the time of one training epoch of each of the six models in the precision `train` picks
   (`--precision`, default auto), EXTRAPOLATED from a few timed steps of batch 128 (plus a few
   timed evaluation batches for the test pass).

The torchvision baseline is the usual recipe: a FashionMNIST-style dataset returning PIL images
of the original 28x28 digits, transforms Pad(2) -> RandomCrop(32, padding=4) ->
RandomHorizontalFlip -> ToTensor -> Normalize, DataLoader(num_workers=2, shuffle, drop_last).

    .venv/bin/python benchmarks/bench_train.py            # writes benchmarks/results/train.{json,md}
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paperprune.lab.data import DeviceLoader, dataset_info, load_tensors  # noqa: E402
from paperprune.models import create_model, list_models  # noqa: E402
from paperprune.lab.train import resolve_precision  # noqa: E402
from paperprune.utils import atomic_write_json, atomic_write_text, resolve_device
from paperprune.lab.io import environment_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class FashionMNISTPIL(Dataset):
    """torchvision.datasets.FashionMNIST's __getitem__ over in-memory uint8 28x28 images."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i].numpy(), mode="L")
        return self.transform(img), int(self.labels[i])


def torchvision_loader(images32: torch.Tensor, labels: torch.Tensor, info, batch_size: int, workers: int):
    originals = images32[:, 0, 2:30, 2:30].contiguous()  # load_tensors zero-pads 28 -> 32; undo it
    tf = transforms.Compose([transforms.Pad(2), transforms.RandomCrop(32, padding=4),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize(info.mean, info.std)])
    return DataLoader(FashionMNISTPIL(originals, labels, tf), batch_size=batch_size, shuffle=True,
                      num_workers=workers, drop_last=True, persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(0))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches(loader, device):
    """Endless (images, labels) on `device`, re-iterating the loader each epoch."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        epoch += 1


def loader_throughput(loader, device, steps: int, warmup: int) -> float:
    it = batches(loader, device)
    for _ in range(warmup):
        next(it)
    _sync(device)
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        x, _ = next(it)
        n += len(x)
    _sync(device)
    return n / (time.perf_counter() - t0)


def train_step_fn(model, device, precision: str = "fp32", channels_last: bool = False, compile: bool = False):
    """One SGD step as `paperprune.lab.train` takes it: autocast in `precision`, fp32 loss and weights."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile else model

    def step(x, y):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


PRECISION_MODES = {  # name: (precision, channels_last, compile)
    "fp32": ("fp32", False, False),
    "fp32+cl": ("fp32", True, False),
    "bf16": ("bf16", False, False),
    "bf16+cl": ("bf16", True, False),
    "bf16+cl+compile": ("bf16", True, True),
}


def precision_throughput(arch: str, loader, device, info, steps: int, warmup: int, modes, block: int = 2) -> dict:
    """Images/s of SGD training of `arch` in each mode: same init and batch stream per mode,
    timed in alternating blocks of `block` steps; compile time is the warm-up's, reported apart."""
    runs = {}
    for name in modes:
        precision, cl, comp = PRECISION_MODES[name]
        torch.manual_seed(0)
        model = create_model(arch, num_classes=info.num_classes, in_channels=info.in_channels).to(device).train()
        r = runs[name] = {"step": train_step_fn(model, device, precision, cl, comp), "it": batches(loader, device),
                          "seconds": 0.0, "n": 0}
        t0 = time.perf_counter()
        for _ in range(warmup):
            r["step"](*next(r["it"]))
        r["warmup_seconds"] = time.perf_counter() - t0
    done = 0
    while done < steps:
        k = min(block, steps - done)
        for r in runs.values():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(k):
                x, y = next(r["it"])
                r["step"](x, y)
                r["n"] += len(x)
            _sync(device)
            r["seconds"] += time.perf_counter() - t0
        done += k
    base = runs[modes[0]]["n"] / runs[modes[0]]["seconds"]
    return {name: {"images_per_second": r["n"] / r["seconds"], "seconds_per_step": r["seconds"] / steps,
                   "warmup_seconds": r["warmup_seconds"], "ratio": r["n"] / r["seconds"] / base}
            for name, r in runs.items()}


def train_throughput(arch: str, loaders: dict, device, steps: int, warmup: int, info, block: int = 2) -> dict:
    """Images/s of SGD training with each loader: same init, same step count, timed in alternating
    blocks of `block` steps so that a change of machine load hits both loaders alike."""
    runs = {}
    for name, loader in loaders.items():
        torch.manual_seed(0)
        model = create_model(arch, num_classes=info.num_classes, in_channels=info.in_channels).to(device).train()
        runs[name] = {"step": train_step_fn(model, device), "it": batches(loader, device), "seconds": 0.0, "n": 0}
        for _ in range(warmup):
            runs[name]["step"](*next(runs[name]["it"]))
    done = 0
    while done < steps:
        k = min(block, steps - done)
        for r in runs.values():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(k):
                x, y = next(r["it"])
                r["step"](x, y)
                r["n"] += len(x)
            _sync(device)
            r["seconds"] += time.perf_counter() - t0
        done += k
    return {name: r["n"] / r["seconds"] for name, r in runs.items()}


def epoch_estimate(arch: str, train_loader, test_x, info, device, steps: int, eval_batches: int,
                   n_train: int, n_test: int, batch_size: int, precision: str) -> dict:
    """Seconds per training step and per evaluation batch in `precision`, extrapolated to one epoch."""
    torch.manual_seed(0)
    model = create_model(arch, num_classes=info.num_classes, in_channels=info.in_channels).to(device).train()
    cl = precision != "fp32"
    step = train_step_fn(model, device, precision, cl)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    test_x = test_x.contiguous(memory_format=torch.channels_last) if cl else test_x
    it = batches(train_loader, device)
    step(*next(it))  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(*next(it))
    _sync(device)
    train_s = (time.perf_counter() - t0) / steps
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        model(test_x[:batch_size])
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(eval_batches):
            model(test_x[:batch_size])
        _sync(device)
    eval_s = (time.perf_counter() - t0) / eval_batches
    train_steps, test_steps = n_train // batch_size, math.ceil(n_test / batch_size)
    return {"arch": arch, "precision": precision, "channels_last": cl, "timed_train_steps": steps, "timed_eval_batches": eval_batches,
            "seconds_per_train_step": train_s, "seconds_per_eval_batch": eval_s,
            "train_steps_per_epoch": train_steps, "eval_batches_per_epoch": test_steps,
            "epoch_seconds_estimate": train_s * train_steps + eval_s * test_steps,
            "train_images_per_second": batch_size / train_s}


def precision_reading(precision: dict) -> str:
    """One sentence per measured model: the bf16 + channels_last speed-up, and compile's on top of it."""
    parts = []
    for arch, m in precision.items():
        text = (f"{arch}: bf16 autocast + channels_last trains at {m['bf16+cl']['ratio']:.2f}x the images/s of "
                f"fp32 NCHW (bf16 alone {m['bf16']['ratio']:.2f}x, fp32 channels_last {m['fp32+cl']['ratio']:.2f}x)")
        if "bf16+cl+compile" in m:
            c = m["bf16+cl+compile"]
            text += (f"; torch.compile adds {c['ratio'] / m['bf16+cl']['ratio']:.2f}x on top after "
                     f"{c['warmup_seconds']:.0f} s of warm-up and compilation")
        parts.append(text + ".")
    return " ".join(parts)


def markdown(res: dict) -> str:
    env, cfg = res["environment"], res["config"]
    t, lo = res["resnet56_training"], res["loader_only"]
    lines = [
        "# Training throughput (benchmarks/bench_train.py)",
        "",
        f"Date {env['date']}, commit {env['git_commit']}, host {env['hostname']}, {env['processor']}, "
        f"{env['cpu_count']} CPUs, torch {env['torch']} ({env['torch_threads']} thread(s)), device `{res['device']}`"
        + (f" ({env['gpu']})" if env.get("gpu") else "") + ".",
        f"Load average before/after: {res['loadavg_before']} / {res['loadavg_after']} "
        "(other processes sharing the CPUs inflate every time below).",
        "",
        f"Fashion-MNIST, batch {cfg['batch_size']}. DeviceLoader = paperprune.lab.data.DeviceLoader "
        "(batched crop+flip, normalisation in one gather). torchvision = PIL dataset + Pad(2), "
        f"RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize, "
        f"DataLoader(num_workers={cfg['workers']}).",
        "",
        "| measurement | DeviceLoader img/s | torchvision img/s | ratio |",
        "|---|---:|---:|---:|",
        f"| loader only ({cfg['loader_steps']} batches after {cfg['warmup']} warm-up) | "
        f"{lo['device_loader']:.0f} | {lo['torchvision']:.0f} | {lo['ratio']:.1f}x |",
        f"| ResNet-56 training ({cfg['train_steps']} SGD steps after {cfg['warmup']} warm-up, alternating blocks of 2) | "
        f"{t['device_loader']:.1f} | {t['torchvision']:.1f} | {t['ratio']:.2f}x |",
        "",
        "## Precision: fp32 vs bf16, NCHW vs channels_last" + (", torch.compile" if cfg["compile"] else ""),
        "",
        f"SGD training steps of batch {cfg['batch_size']}, {env['torch_threads']} torch thread(s), "
        f"{cfg['precision_steps']} timed steps per mode after {cfg['precision_warmup']} warm-up steps (the warm-up "
        "includes compilation), the modes timed in alternating blocks of 2 steps. Ratio = images/s over fp32 "
        f"NCHW's. `bf16` = autocast to bfloat16 (weights, optimizer and loss fp32). CPU bf16 in hardware: "
        f"{res['cpu_supports_bf16']}.",
        "",
        "| model | mode | s / step | img/s | ratio to fp32 | warm-up s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for arch, modes in res["precision"].items():
        for name, m in modes.items():
            lines.append(f"| {arch} | {name} | {m['seconds_per_step']:.3f} | {m['images_per_second']:.1f} | "
                         f"{m['ratio']:.2f}x | {m['warmup_seconds']:.1f} |")
    lines += [
        "",
        "## One epoch of each model (estimate)",
        "",
        f"EXTRAPOLATED, not measured end to end: {cfg['model_steps']} timed training steps (after one "
        f"warm-up) and {cfg['eval_batches']} timed evaluation batches of {cfg['batch_size']}, scaled to "
        f"{res['epochs'][0]['train_steps_per_epoch'] if res['epochs'] else '?'} training steps "
        "(60000 images, drop_last) + 79 test batches (10000 images). DeviceLoader batches, precision "
        f"{res['epochs'][0]['precision'] if res['epochs'] else '?'} (what `paperprune.lab.train` picks here"
        f"{' with --precision ' + cfg['precision'] if cfg['precision'] != 'auto' else ''}), "
        f"{env['torch_threads']} torch thread(s).",
        "",
        "| model | s / train step | s / eval batch | train img/s | epoch estimate |",
        "|---|---:|---:|---:|---:|",
    ]
    for e in res["epochs"]:
        lines.append(f"| {e['arch']} | {e['seconds_per_train_step']:.3f} | {e['seconds_per_eval_batch']:.3f} | "
                     f"{e['train_images_per_second']:.1f} | {e['epoch_seconds_estimate'] / 60:.1f} min |")
    lines += ["", "## Reading", "", res["reading"], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--loader-steps", type=int, default=100)
    p.add_argument("--model-steps", type=int, default=3)
    p.add_argument("--eval-batches", type=int, default=2)
    p.add_argument("--models", default=",".join(list_models()))
    p.add_argument("--precision-models", default="resnet56,vgg16")
    p.add_argument("--precision-steps", type=int, default=6)
    p.add_argument("--precision-warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time the bf16 + channels_last step under torch.compile")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="precision of the one-epoch estimates (as paperprune.lab.train resolves it)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice); 1 is faster on a shared, oversubscribed CPU")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    loadavg_before = [round(v, 2) for v in os.getloadavg()]

    info = dataset_info("fashion-mnist")
    train_x, train_y = load_tensors("fashion-mnist", "train")
    test_x, _ = load_tensors("fashion-mnist", "test")
    dev_loader = DeviceLoader(train_x, train_y, batch_size=args.batch_size, mean=info.mean, std=info.std,
                              train=True, device=device, seed=0)
    tv_loader = torchvision_loader(train_x, train_y, info, args.batch_size, args.workers)

    res = {"benchmark": "train", "device": str(device), "environment": environment_info(device),
           "loadavg_before": loadavg_before, "config": vars(args) | {"out": str(args.out)}}
    lo = {"device_loader": loader_throughput(dev_loader, device, args.loader_steps, args.warmup),
          "torchvision": loader_throughput(tv_loader, device, args.loader_steps, args.warmup)}
    lo["ratio"] = lo["device_loader"] / lo["torchvision"]
    res["loader_only"] = lo
    print(f"loader only: DeviceLoader {lo['device_loader']:.0f} img/s, torchvision {lo['torchvision']:.0f} img/s, "
          f"{lo['ratio']:.1f}x", flush=True)
    tr = train_throughput("resnet56", {"device_loader": dev_loader, "torchvision": tv_loader}, device,
                          args.train_steps, args.warmup, info)
    tr["ratio"] = tr["device_loader"] / tr["torchvision"]
    res["resnet56_training"] = tr
    print(f"resnet56 training: DeviceLoader {tr['device_loader']:.1f} img/s, torchvision "
          f"{tr['torchvision']:.1f} img/s, {tr['ratio']:.2f}x", flush=True)

    from paperprune.lab.train import cpu_supports_bf16

    res["cpu_supports_bf16"] = cpu_supports_bf16() if device.type == "cpu" else None
    modes = ["fp32", "fp32+cl", "bf16", "bf16+cl"] + (["bf16+cl+compile"] if args.compile else [])
    res["precision"] = {}
    for arch in args.precision_models.split(","):
        r = res["precision"][arch] = precision_throughput(arch, dev_loader, device, info, args.precision_steps,
                                                          args.precision_warmup, modes)
        print(arch + ": " + ", ".join(f"{m} {v['seconds_per_step']:.3f} s/step ({v['ratio']:.2f}x)"
                                      for m, v in r.items()), flush=True)

    test_dev = DeviceLoader(test_x, torch.zeros(len(test_x), dtype=torch.int64), batch_size=args.batch_size,
                            mean=info.mean, std=info.std, train=False, device=device)
    test_batch = next(iter(test_dev))[0]
    precision = resolve_precision(args.precision, device)
    res["epochs"] = []
    for arch in args.models.split(","):
        e = epoch_estimate(arch, dev_loader, test_batch, info, device, args.model_steps, args.eval_batches,
                           len(train_y), len(test_x), args.batch_size, precision)
        res["epochs"].append(e)
        print(f"{arch}: {e['seconds_per_train_step']:.3f} s/step, epoch ~{e['epoch_seconds_estimate'] / 60:.1f} min",
              flush=True)
    res["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    step_s = args.batch_size / tr["device_loader"]
    res["reading"] = (
        f"Producing a batch costs {1000 * args.batch_size / lo['device_loader']:.1f} ms with DeviceLoader and "
        f"{1000 * args.batch_size / lo['torchvision']:.1f} ms with the torchvision pipeline, while one ResNet-56 "
        f"training step costs about {1000 * step_s:.0f} ms on this {res['device']} device. With the model step "
        "dominating, the loader can only matter through the CPU time it takes from the step: the two "
        "DataLoader workers compete with the training threads for the same cores, which is where the "
        "end-to-end difference comes from. The loader-only ratio is what the DeviceLoader saves when the "
        "step is fast (GPU). Times on a CPU shared with other jobs (see the load average) vary by up to 3x "
        "between runs; torch's multi-threaded kernels suffer most from oversubscription (--threads 1 helps). "
        + precision_reading(res["precision"]))
    atomic_write_json(args.out / "train.json", res)
    atomic_write_text(args.out / "train.md", markdown(res))
    print(f"wrote {args.out / 'train.json'} and {args.out / 'train.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
