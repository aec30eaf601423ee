"""Training and fine-tuning engine: SGD with momentum, cosine schedule, resumable checkpoints.

The recipe (SGD momentum 0.9, weight decay 1e-4, cosine schedule) is the lineage's (APIB's)
fine-tuning recipe, METHOD.md section 2; the paper's abstract says nothing about training.
Engineering choices made here (reconstruction, not from the paper):

- Cosine schedule per iteration: lr_t = lr * (1 + cos(pi * t / T)) / 2 for t = 0..T-1 optimizer
  steps, T = epochs * len(train_loader). The `lr` recorded per epoch is the lr of its first step.
- Weight decay applies to every parameter (BN affine and biases included), as in the lineage.
- Precision (`TrainConfig.precision`, see `resolve_precision`): "auto" trains and evaluates under
  bf16 autocast with channels_last where the hardware runs bf16 (a CPU with AVX512-BF16 or AMX,
  a CUDA GPU with bf16), float16 autocast with a GradScaler on older GPUs, else float32. Weights,
  optimizer state and the loss stay float32. "fp32" turns autocast off; "bf16" insists on bf16
  and is an error where the hardware lacks it. `channels_last` applies whenever autocast does.
  Every metrics line and the result record what was used (`precision`: "fp32" | "bf16" |
  "fp16", `channels_last`: bool).
- A non-finite training loss stops training at once (PaperpruneError naming epoch, step, lr,
  weight decay); the checkpoint of the last finished epoch is left as it was. A checkpoint or a
  fresh model with non-finite weights is refused.
- Determinism: a fresh run seeds Python/NumPy/torch from `config.seed`; loaders get
  `set_epoch(epoch)` so their shuffles and augmentations are functions of (seed, epoch).
  A checkpoint stores the RNG states of every rank, so a resumed CPU run reproduces the
  uninterrupted run bit for bit. On CUDA cuDNN kernels may be non-deterministic.
- Distributed (torchrun, WORLD_SIZE > 1): `init_distributed` sets up the process group, `train`
  wraps the model in DistributedDataParallel, sums the metrics over ranks, and only rank 0
  writes files or shows progress bars. Every rank reads the checkpoint from `out_dir`, which
  must therefore be on a file system all ranks see.

Files in `out_dir`: `metrics.jsonl` (one JSON object per epoch, rewritten atomically),
`checkpoint.pt` (written atomically after every epoch), `final.pt` (model state_dict).
A metrics line holds: epoch (1-based), lr, train_loss (with label smoothing, if any),
train_top1, test_top1, test_top5, test_loss (percentages / mean cross-entropy), epoch_seconds
(train + evaluation), images_per_second (training images over the training phase, all
ranks), train_images (summed over ranks), world_size, device, precision, channels_last.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..utils import PaperpruneError, atomic_torch_save, atomic_write_text, resolve_device, seed_everything

__all__ = [
    "TrainConfig",
    "PRECISIONS",
    "cpu_supports_bf16",
    "resolve_precision",
    "train",
    "evaluate",
    "init_distributed",
    "cleanup_distributed",
    "distributed_info",
    "load_checkpoint",
    "architecture_fingerprint",
    "CHECKPOINT",
    "METRICS",
    "FINAL",
]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
FINAL = "final.pt"
_FORMAT = 1
PRECISIONS = ("auto", "fp32", "bf16")
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """Optimisation settings (APIB's fine-tuning recipe by default, METHOD.md section 2).

    `batch_size` is the per-process batch the loaders were built with; it is recorded so a
    checkpoint cannot be resumed under a different one. `precision` is "auto", "fp32" or
    "bf16" (`resolve_precision`); `channels_last` takes effect whenever autocast is on.
    """

    epochs: int
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    nesterov: bool = False
    label_smoothing: float = 0.0
    seed: int = 0
    precision: str = "auto"
    channels_last: bool = True

    def __post_init__(self) -> None:
        if int(self.epochs) < 1:
            raise PaperpruneError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0:
            raise PaperpruneError(f"lr must be > 0, got {self.lr}")
        if int(self.batch_size) < 1:
            raise PaperpruneError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise PaperpruneError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.nesterov and not self.momentum > 0:
            raise PaperpruneError("nesterov=True needs momentum > 0")
        if self.precision not in PRECISIONS:
            raise PaperpruneError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")


# ----------------------------------------------------------------------------- precision


def cpu_supports_bf16() -> bool:
    """True if this CPU computes bf16 in hardware (AVX512-BF16 or AMX tiles) and oneDNN is built in."""
    hardware = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return bool(hardware and torch.backends.mkldnn.is_available())


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """The precision `train` and `evaluate` use on `device`: "fp32", "bf16" or "fp16".

    "auto": bf16 where the device runs it in hardware (`cpu_supports_bf16`, or a CUDA GPU with
    bf16), float16 on a CUDA GPU without bf16, else fp32. "fp32" is always fp32. "bf16" is bf16,
    or a PaperpruneError where the device lacks it (never a silent fallback).
    """
    if precision not in PRECISIONS:
        raise PaperpruneError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "fp32":
        return "fp32"
    if device.type == "cuda":
        has_bf16, where = torch.cuda.is_bf16_supported(), "this GPU"
    elif device.type == "cpu":
        has_bf16, where = cpu_supports_bf16(), "this CPU (no AVX512-BF16 or AMX)"
    else:
        has_bf16, where = False, f"device {str(device)!r}"
    if precision == "bf16" and not has_bf16:
        raise PaperpruneError(f"precision 'bf16' was asked for, but {where} has no hardware bf16; "
                              "use precision 'auto' or 'fp32' (--precision auto|fp32)")
    if has_bf16:
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


def autocast(device: torch.device, precision: str):
    """The autocast context of `precision` (a `resolve_precision` result) on `device`; fp32 disables it."""
    dtype = _AUTOCAST[precision]
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


# ----------------------------------------------------------------------------- distributed


def distributed_info() -> tuple[int, int]:
    """(rank, world_size) of the initialised process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str | torch.device | None = "auto") -> tuple[int, int, torch.device]:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1 in the environment).

    Returns (rank, world_size, device): NCCL and `cuda:LOCAL_RANK` on CUDA, gloo on CPU.
    Without torchrun it returns (0, 1, resolve_device(device)) and does nothing else.
    """
    dev = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1, dev
    if not dist.is_available():
        raise PaperpruneError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev


def cleanup_distributed() -> None:
    """Destroy the process group if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a float64 tensor over ranks (identity without a process group)."""
    if distributed_info()[1] > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device, topk: tuple[int, ...] = (1, 5),
             precision: str = "fp32", per_image: bool = False) -> dict:
    """Top-k accuracies (percentages) and mean cross-entropy of `model` over `loader`.

    Returns {"top1": ..., "top5": ..., "loss": ...} (one "top{k}" per k; a k above the number
    of classes counts every sample as correct). Counts are summed over ranks when a process
    group is initialised, so a rank-sharded test loader gives the whole test set's numbers.
    `precision` is one of `resolve_precision`'s results ("fp32", "bf16", "fp16"); under
    autocast the images are passed channels_last. The model's train/eval mode is restored.
    `per_image` adds "correct": a numpy bool vector, top-1 right or not per image in loader
    order (this process's images only under a process group).
    """
    if precision not in _AUTOCAST:
        raise PaperpruneError(f"evaluate: precision {precision!r} is not one of {', '.join(_AUTOCAST)}")
    device = torch.device(device)
    model = _unwrap(model)
    was_training = model.training
    model.eval()
    ks = tuple(int(k) for k in topk)
    sums = torch.zeros(2 + len(ks), dtype=torch.float64, device=device)  # n, loss, correct@k...
    correct = []
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if precision != "fp32" and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            logits = model(images).float()
        sums[0] += labels.numel()
        sums[1] += F.cross_entropy(logits, labels, reduction="sum").double()
        top = logits.topk(min(max(ks), logits.size(1)), dim=1).indices
        hit = top.eq(labels[:, None])
        for i, k in enumerate(ks):
            sums[2 + i] += hit[:, :k].any(dim=1).sum()
        if per_image:
            correct.append(hit[:, 0].cpu())
    model.train(was_training)
    sums = _all_reduce_sum(sums).cpu()
    n = sums[0].item()
    if n == 0:
        raise PaperpruneError("evaluate: the loader yielded no samples")
    out = {f"top{k}": 100.0 * sums[2 + i].item() / n for i, k in enumerate(ks)}
    out["loss"] = sums[1].item() / n
    if per_image:
        out["correct"] = torch.cat(correct).numpy()
    return out


# ----------------------------------------------------------------------------- checkpoints


def architecture_fingerprint(model: nn.Module) -> list[list]:
    """[[name, shape], ...] of every parameter and buffer in the model's state_dict."""
    return [[name, list(t.shape)] for name, t in _unwrap(model).state_dict().items()]


def _fingerprint_diff(saved: list, current: list) -> str:
    saved_d = {name: list(shape) for name, shape in saved}
    cur_d = {name: list(shape) for name, shape in current}
    parts = []
    missing = [n for n in saved_d if n not in cur_d]
    extra = [n for n in cur_d if n not in saved_d]
    shapes = [f"{n}: checkpoint {saved_d[n]} vs model {cur_d[n]}"
              for n in saved_d if n in cur_d and saved_d[n] != cur_d[n]]
    if missing:
        parts.append(f"{len(missing)} tensors only in the checkpoint (e.g. {', '.join(missing[:3])})")
    if extra:
        parts.append(f"{len(extra)} tensors only in the model (e.g. {', '.join(extra[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:3])})")
    return "; ".join(parts)


def load_checkpoint(
    out_dir: str | os.PathLike,
    model: nn.Module,
    config: TrainConfig,
    *,
    steps_per_epoch: int | None = None,
    world_size: int | None = None,
    precision: str | None = None,
) -> dict | None:
    """Load and validate `out_dir/checkpoint.pt` against `model` and `config`; None if absent.

    Raises PaperpruneError naming the file and what differs when it cannot be loaded, when
    its architecture fingerprint, training config, steps per epoch, world size or resolved
    precision differ, or when its weights are not finite. Reads only; nothing is modified.
    """
    path = Path(out_dir) / CHECKPOINT
    if not path.exists():
        return None
    fix = f"delete {path} (or choose another output directory) to start afresh"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable/corrupted file: report, never half-resume
        raise PaperpruneError(f"checkpoint {path} could not be loaded ({type(exc).__name__}: {exc}); {fix}") from exc
    required = {"format", "epoch", "model", "optimizer", "scheduler", "rng", "config", "fingerprint",
                "steps_per_epoch", "world_size"}
    if not isinstance(ckpt, dict) or not required <= set(ckpt):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise PaperpruneError(f"checkpoint {path} is not a paperprune training checkpoint (keys: {have}); {fix}")
    diff = _fingerprint_diff(ckpt["fingerprint"], architecture_fingerprint(model))
    if diff:
        raise PaperpruneError(f"checkpoint {path} was written for a different architecture: {diff}; {fix}")
    cur = asdict(config)
    changed = [f"{k}: checkpoint {ckpt['config'].get(k)!r} vs now {cur.get(k)!r}"
               for k in sorted(set(cur) | set(ckpt["config"])) if ckpt["config"].get(k) != cur.get(k)]
    if changed:
        raise PaperpruneError(f"checkpoint {path} was written with a different training config ({'; '.join(changed)}); "
                              f"rerun with the original settings to resume, or {fix}")
    if steps_per_epoch is not None and ckpt["steps_per_epoch"] != steps_per_epoch:
        raise PaperpruneError(f"checkpoint {path} has {ckpt['steps_per_epoch']} steps per epoch but the train loader "
                              f"now has {steps_per_epoch} (different data, batch size or sharding); {fix}")
    if world_size is not None and ckpt["world_size"] != world_size:
        raise PaperpruneError(f"checkpoint {path} was written by {ckpt['world_size']} processes, this run has "
                              f"{world_size}; resume with the same number of processes, or {fix}")
    if not 0 <= ckpt["epoch"] <= config.epochs:
        raise PaperpruneError(f"checkpoint {path} is at epoch {ckpt['epoch']}, outside 0..{config.epochs}; {fix}")
    if precision is not None and ckpt.get("precision") != precision:
        raise PaperpruneError(f"checkpoint {path} was trained in precision {ckpt.get('precision')!r}, this run would "
                              f"train in {precision!r} (precision 'auto' resolves per machine); resume on hardware "
                              f"with the same precision or pass it explicitly, or {fix}")
    check_finite(ckpt["model"], f"checkpoint {path}", fix)
    return ckpt


def save_checkpoint(run: _Run, epoch: int, rngs: list) -> None:
    """Write `out_dir/checkpoint.pt` atomically: everything `load_checkpoint` validates and resumes from."""
    atomic_torch_save({
        "format": _FORMAT,
        "epoch": epoch,
        "model": _cpu_state_dict(run.model),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
        "rng": rngs,
        "config": asdict(run.config),
        "precision": run.precision,
        "fingerprint": architecture_fingerprint(run.model),
        "steps_per_epoch": run.steps_per_epoch,
        "world_size": run.world_size,
    }, run.out_dir / CHECKPOINT)


def check_finite(state_dict: dict, what: str, fix: str) -> None:
    """PaperpruneError naming the first tensors of `state_dict` that hold NaN or inf values."""
    bad = [name for name, t in state_dict.items()
           if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise PaperpruneError(f"{what} has non-finite weights (NaN or inf) in {len(bad)} tensors "
                              f"(e.g. {', '.join(bad[:3])}): it comes from a diverged training; {fix}")


def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu_state_dict(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
            for k, v in _unwrap(model).state_dict().items()}


def _read_metrics(path: Path, upto_epoch: int) -> list[dict]:
    """Metrics lines of epochs 1..upto_epoch (lines past the checkpoint or unparsable are dropped)."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and 1 <= row["epoch"] <= upto_epoch:
            kept.append(row)
    return kept


def _write_metrics(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _set_epoch(loader: Any, epoch: int) -> None:
    """DeviceLoader.set_epoch, or DataLoader(sampler=DistributedSampler).sampler.set_epoch."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    elif hasattr(getattr(loader, "sampler", None), "set_epoch"):
        loader.sampler.set_epoch(epoch)


# ----------------------------------------------------------------------------- training


@dataclass
class _Run:
    """What one call of `train` carries from epoch to epoch (built by `_set_up`)."""

    config: TrainConfig
    out_dir: Path
    device: torch.device
    rank: int
    world_size: int
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    criterion: nn.Module
    precision: str
    channels_last: bool
    steps_per_epoch: int
    start_epoch: int
    resumed: bool
    history: list
    show: bool


def _set_up(model: nn.Module, train_loader: Iterable, config: TrainConfig, out_dir: Path, device: torch.device,
            resume: bool, progress: bool) -> _Run:
    """Validate everything, then place the model, build the optimizer and restore a checkpoint.

    Every check (loader, precision, checkpoint, finite weights) runs before `out_dir` is touched.
    """
    rank, world_size = distributed_info()
    if not hasattr(train_loader, "__len__") or len(train_loader) == 0:
        raise PaperpruneError("train_loader must have a length >= 1 (one epoch's number of batches)")
    steps_per_epoch = len(train_loader)
    total_steps = config.epochs * steps_per_epoch
    precision = resolve_precision(config.precision, device)
    ckpt = load_checkpoint(out_dir, model, config, steps_per_epoch=steps_per_epoch, world_size=world_size,
                           precision=precision) if resume else None
    if not ckpt:
        check_finite(_unwrap(model).state_dict(), "the model given to train",
                     "re-initialise it or load finite weights before training")
    channels_last = bool(config.channels_last and precision != "fp32")

    model.to(device)
    if ckpt:
        _unwrap(model).load_state_dict(ckpt["model"])
    else:
        seed_everything(config.seed)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = model
    if world_size > 1 and not isinstance(model, nn.parallel.DistributedDataParallel):
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        rngs = ckpt["rng"]
        _set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0])

    start_epoch = ckpt["epoch"] if ckpt else 0
    history = _read_metrics(out_dir / METRICS, start_epoch) if ckpt else []
    if world_size > 1:  # every rank has read the checkpoint before rank 0 touches out_dir
        dist.barrier()
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_metrics(out_dir / METRICS, history)
    return _Run(config=config, out_dir=out_dir, device=device, rank=rank, world_size=world_size, model=model,
                net=net, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                criterion=nn.CrossEntropyLoss(label_smoothing=config.label_smoothing), precision=precision,
                channels_last=channels_last, steps_per_epoch=steps_per_epoch, start_epoch=start_epoch,
                resumed=bool(ckpt), history=history, show=progress and rank == 0)


def _diverged(run: _Run, loss: torch.Tensor, epoch: int, step: int) -> PaperpruneError:
    cfg = run.config
    return PaperpruneError(
        f"training diverged: the loss is {loss.item()} at epoch {epoch}, step {step + 1} of {run.steps_per_epoch} "
        f"(lr now {run.optimizer.param_groups[0]['lr']:.4g} of lr={cfg.lr}, weight_decay={cfg.weight_decay}, "
        f"batch_size={cfg.batch_size}, precision {run.precision}). Too high an lr or weight decay usually causes "
        f"this: lower --lr (or --weight-decay) and train into a new --out; the checkpoint in {run.out_dir} "
        f"(epoch {epoch - 1}) is unchanged")


def _train_epoch(run: _Run, train_loader: Iterable, epoch: int) -> dict:
    """One epoch of SGD steps; returns the epoch's training numbers (summed over ranks)."""
    run.net.train()
    _set_epoch(train_loader, epoch)
    lr0 = run.optimizer.param_groups[0]["lr"]
    sums = torch.zeros(3, dtype=torch.float64, device=run.device)  # n, loss*n, correct
    t0 = time.perf_counter()
    bar = tqdm(train_loader, total=run.steps_per_epoch, desc=f"epoch {epoch}/{run.config.epochs}",
               disable=not run.show, leave=False, dynamic_ncols=True)
    for step, (images, labels) in enumerate(bar):
        images = images.to(run.device, non_blocking=True)
        labels = labels.to(run.device, non_blocking=True)
        if run.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(run.device, run.precision):
            logits = run.net(images)
            loss = run.criterion(logits.float(), labels)
        if not torch.isfinite(loss):
            raise _diverged(run, loss, epoch, step)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.scheduler.step()
        with torch.no_grad():
            n = labels.numel()
            sums[0] += n
            sums[1] += loss.detach().double() * n
            sums[2] += (logits.argmax(dim=1) == labels).sum()
        if run.show and step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{run.optimizer.param_groups[0]['lr']:.4f}")
    bar.close()
    sums = _all_reduce_sum(sums).cpu()
    return {"epoch": epoch, "lr": lr0, "train_loss": sums[1].item() / sums[0].item(),
            "train_top1": 100.0 * sums[2].item() / sums[0].item(),
            "images_per_second": sums[0].item() / (time.perf_counter() - t0), "train_images": int(sums[0].item())}


def _end_epoch(run: _Run, stats: dict, test: dict, epoch_seconds: float) -> None:
    """Record the epoch's metrics line, log it, and save the checkpoint (rank 0 writes)."""
    epoch = stats["epoch"]
    row = {**{k: stats[k] for k in ("epoch", "lr", "train_loss", "train_top1")},
           "test_top1": test["top1"], "test_top5": test["top5"], "test_loss": test["loss"],
           "epoch_seconds": epoch_seconds, "images_per_second": stats["images_per_second"],
           "train_images": stats["train_images"], "world_size": run.world_size, "device": str(run.device),
           "precision": run.precision, "channels_last": run.channels_last}
    run.history.append(row)
    rngs = [None] * run.world_size
    if run.world_size > 1:
        dist.all_gather_object(rngs, _rng_state())
    else:
        rngs = [_rng_state()]
    if run.rank == 0:
        if run.show:
            tqdm.write(f"epoch {epoch}/{run.config.epochs}  loss {row['train_loss']:.4f}  "
                       f"train {row['train_top1']:.2f}%  test {row['test_top1']:.2f}%  "
                       f"{row['images_per_second']:.0f} img/s  {epoch_seconds:.1f}s")
        _write_metrics(run.out_dir / METRICS, run.history)
        save_checkpoint(run, epoch, rngs)
    if run.world_size > 1:
        dist.barrier()


def train(
    model: nn.Module,
    train_loader: Iterable,
    test_loader: Iterable,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    device: str | torch.device | None = None,
    resume: bool = True,
    progress: bool = True,
) -> dict:
    """Train `model` with SGD + momentum and a per-iteration cosine schedule (METHOD.md section 2).

    Evaluates on `test_loader` after every epoch, appends a line to `out_dir/metrics.jsonl` and
    writes `out_dir/checkpoint.pt`; at the end writes `out_dir/final.pt` (state_dict only).
    With `resume=True` an existing checkpoint is validated first (PaperpruneError, out_dir
    untouched, if it is unreadable or does not match) and training continues at the next epoch,
    giving the same weights as an uninterrupted run. `resume=False` starts over. A non-finite
    loss stops training with a PaperpruneError; the last epoch's checkpoint stays.

    Sections: `_set_up` (validate, place the model, build the optimizer, restore a checkpoint
    through `load_checkpoint`), `_epoch` (the steps, the evaluation, the metrics line and
    `save_checkpoint`) once per remaining epoch, `_finish` (final.pt, the result).

    The model is trained in place (moved to `device`). Returns {"top1", "top5", "loss" (test,
    last epoch), "epochs", "resumed_from_epoch", "history" (the metrics lines), "precision",
    "channels_last", "world_size", "out_dir"}.
    """
    run = _set_up(model, train_loader, config, Path(out_dir), resolve_device(device), resume, progress)
    for epoch in range(run.start_epoch + 1, config.epochs + 1):
        _epoch(run, train_loader, test_loader, epoch)
    return _finish(run, test_loader)


def _epoch(run: _Run, train_loader: Iterable, test_loader: Iterable, epoch: int) -> None:
    """One epoch: the SGD steps, the test evaluation, its metrics line and the checkpoint."""
    t0 = time.perf_counter()
    stats = _train_epoch(run, train_loader, epoch)
    if run.world_size > 1:  # evaluate the weights and BN statistics that rank 0 checkpoints
        for buf in _unwrap(run.model).buffers():
            dist.broadcast(buf, src=0)
    test = evaluate(run.model, test_loader, run.device, precision=run.precision)
    _end_epoch(run, stats, test, time.perf_counter() - t0)


def _finish(run: _Run, test_loader: Iterable) -> dict:
    """Write final.pt (rank 0) and return the result `train` documents."""
    config = run.config
    if run.history and run.history[-1]["epoch"] == config.epochs:
        final = {k: run.history[-1][f"test_{k}"] for k in ("top1", "top5", "loss")}
    else:  # resumed from a finished checkpoint whose metrics lines were lost
        final = evaluate(run.model, test_loader, run.device, precision=run.precision)
    if run.rank == 0:
        atomic_torch_save(_cpu_state_dict(run.model), run.out_dir / FINAL)
    if run.world_size > 1:
        dist.barrier()
    return {
        **final,
        "epochs": config.epochs,
        "resumed_from_epoch": run.start_epoch if run.resumed else None,
        "history": run.history,
        "precision": run.precision,
        "channels_last": run.channels_last,
        "world_size": run.world_size,
        "out_dir": str(run.out_dir),
    }
