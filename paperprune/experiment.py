"""End-to-end runs: pretrain (or load) -> statistics -> selection -> surgery -> fine-tune -> evaluate.

`run_experiment(RunConfig, out)` writes `out/run.json` (schema in the README). Every stage
leaves its artifact atomically and is skipped when the artifact is there, so an interrupted
run resumes from its last completed stage (and fine-tuning from its last epoch). The
baseline is trained once per (dataset, arch, schedule, seed) in a shared cache and reused
by every method.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .utils import PaperpruneError, atomic_write_json, environment_info, resolve_device, seed_everything

SCHEMA = 1


@dataclass
class RunConfig:
    """Everything that defines a run; its hash keys the stage caches."""

    dataset: str
    arch: str
    method: str
    flops_reduction: float
    pretrain_epochs: int = 0
    pretrained: str | None = None
    finetune_epochs: int = 1
    seed: int = 0
    samples_per_class: int = 20
    omega: int = 4
    gamma_ratio: float = 0.5
    structure: str = "embedding"
    batch_size: int = 128
    lr: float = 0.1
    finetune_lr: float = 0.01
    weight_decay: float = 1e-4
    per_class: int | None = None
    test_per_class: int | None = None
    data_root: str | None = None
    device: str = "auto"

    def validate(self) -> None:
        """Check everything that can be checked before anything is written."""
        from .criteria import check_method
        from .data import DATASETS
        from .models import list_models
        from .select import validate_target

        if self.dataset not in DATASETS:
            raise PaperpruneError(f"unknown dataset {self.dataset!r}; known datasets: {', '.join(DATASETS)}")
        if self.arch not in list_models():
            raise PaperpruneError(f"unknown arch {self.arch!r}; known architectures: {', '.join(list_models())}")
        check_method(self.method)
        validate_target(self.flops_reduction, self.omega)
        if self.pretrained is None and self.pretrain_epochs < 1:
            raise PaperpruneError("no baseline: pass --pretrained CKPT or --pretrain-epochs N (N >= 1)")
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            raise PaperpruneError(f"--pretrained {self.pretrained!r} is not a file")
        if self.finetune_epochs < 0:
            raise PaperpruneError(f"finetune_epochs={self.finetune_epochs} must be >= 0")
        resolve_device(self.device)

    def key(self, names=None) -> str:
        d = asdict(self)
        d = {k: d[k] for k in (names or d) if k not in ("device", "data_root")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


BASELINE_FIELDS = ("dataset", "arch", "pretrain_epochs", "pretrained", "seed", "batch_size", "lr",
                   "weight_decay", "per_class", "test_per_class")


def measure_latency(model: torch.nn.Module, input_size, batch_size: int, device, repeats: int = 10,
                    warmup: int = 3) -> float:
    """Median wall time (ms) of one forward pass of a batch, eval mode, under inference_mode.

    `model` may be one returned by `paperprune.deploy.prepare_for_inference` for this batch shape
    and device.
    """
    model = model.to(device).eval()
    x = torch.randn(batch_size, *input_size, device=device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(1000.0 * (time.perf_counter() - start))
    return float(torch.tensor(times).median())


def _latency(base, pruned, input_size, cpu_repeats: int, deployed: bool) -> dict:
    """Forward times of base and pruned: eager at CPU batch 1 and 64 (CUDA batch 64 when present) and,
    when `deployed`, also after `paperprune.deploy.prepare_for_inference` at batch 64 (compiling is
    seconds per model, so batch 1 is eager only)."""
    from .deploy import DEPLOY_MODE, prepare_for_inference

    def times(device, batch_size, repeats, warmup, deploy):
        row = {}
        x = torch.randn(batch_size, *input_size, device=device)
        for name, model in (("base", base), ("pruned", pruned)):
            model = model.to(device)
            row[f"{name}_ms"] = measure_latency(model, input_size, batch_size, device, repeats, warmup)
            if deploy:
                row[f"deployed_{name}_ms"] = measure_latency(prepare_for_inference(model, x), input_size,
                                                             batch_size, device, repeats, warmup)
        return {**row, "deployed": DEPLOY_MODE} if deploy else row

    cpu = torch.device("cpu")
    out = {f"cpu_bs{bs}": {**times(cpu, bs, cpu_repeats, 1, deployed and bs == 64), "repeats": cpu_repeats}
           for bs in (1, 64)}
    if torch.cuda.is_available():
        out["cuda_bs64"] = times(torch.device("cuda"), 64, 50, 3, deployed)
    return out


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PaperpruneError(f"{path} is unreadable ({e}); delete it to recompute that stage") from None


def _baseline(config: RunConfig, cache_dir: Path, device, progress: bool):
    """The trained baseline model (cached by the baseline fields of the config)."""
    from .data import dataset_info, make_loaders
    from .models import create_model
    from .train import TrainConfig, train

    info = dataset_info(config.dataset, config.data_root)
    seed_everything(config.seed)
    model = create_model(config.arch, num_classes=info.num_classes, in_channels=info.in_channels)
    if config.pretrained is not None:
        load_weights(model, config.pretrained)
        return model.to(device), None
    bdir = cache_dir / f"{config.dataset}-{config.arch}-{config.key(BASELINE_FIELDS)}"
    final = bdir / "final.pt"
    bdir.mkdir(parents=True, exist_ok=True)
    with open(bdir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # runs sharing this baseline wait for one to train it
        if not final.is_file():
            train_loader, _, _ = make_loaders(config.dataset, root=config.data_root, batch_size=config.batch_size,
                                              device=device, seed=config.seed, per_class=config.per_class)
            atomic_write_json(bdir / "config.json", {k: getattr(config, k) for k in BASELINE_FIELDS})
            tc = TrainConfig(epochs=config.pretrain_epochs, lr=config.lr, weight_decay=config.weight_decay,
                             batch_size=config.batch_size, seed=config.seed)
            train(model, train_loader, _test_loader(config, device), tc, bdir, device=device, progress=progress)
    load_weights(model, final)
    return model.to(device), bdir


def load_weights(model: torch.nn.Module, path) -> torch.nn.Module:
    """Load a state_dict (or a paperprune checkpoint/final file) strictly; a mismatch is a clear error."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise PaperpruneError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise PaperpruneError(f"{path} does not hold a state_dict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PaperpruneError(f"{path} does not match the architecture: {str(e).splitlines()[0]} "
                              "(was it trained for another --arch or dataset?)") from None
    return model


def _plain_loader(config: RunConfig, split: str, per_class: int | None, seed: int, batch_size: int, device):
    """A tensor dataset's split without augmentation, in a fixed order, optionally a seeded
    class-balanced subset of `per_class` images per class."""
    from .data import DeviceLoader, class_balanced_batch, dataset_info, load_tensors

    info = dataset_info(config.dataset, config.data_root)
    x, y = load_tensors(config.dataset, split, config.data_root)
    if per_class is not None:
        x, y = class_balanced_batch(x, y, per_class, seed)
    return DeviceLoader(x, y, batch_size=batch_size, mean=info.mean, std=info.std, train=False, device=device)


def _test_loader(config: RunConfig, device):
    """The test set (or, with `test_per_class`, a fixed class-balanced subset of it, for short CPU runs)."""
    if config.dataset == "imagenet":
        from .data import make_loaders

        return make_loaders("imagenet", root=config.data_root, batch_size=128, device=device)[1]
    return _plain_loader(config, "test", config.test_per_class, 0, 512, device)


def _calibration_loader(config: RunConfig, device):
    """Training images without augmentation, in a fixed order (the calibration set is drawn from it)."""
    if config.dataset == "imagenet":
        from .data import imagenet_calibration_loader

        return imagenet_calibration_loader(config.data_root, samples_per_class=config.samples_per_class,
                                           device=device, seed=config.seed)
    return _plain_loader(config, "train", config.samples_per_class, config.seed, 256, device)


def _check_reachable(config: RunConfig, info, input_size) -> None:
    """The floor omega alone must allow the target: checked before anything is written."""
    from .models import create_model, prunable_layers
    from .select import check_floor
    from .surgery import MacsPredictor

    model = create_model(config.arch, num_classes=info.num_classes, in_channels=info.in_channels)
    layers = prunable_layers(model)
    channels = {layer.name: model.get_submodule(layer.conv).out_channels for layer in layers}
    check_floor(MacsPredictor(model, layers, input_size), channels, config.flops_reduction, config.omega)


def run_experiment(config: RunConfig, out: str | Path, *, cache_dir: str | Path | None = None,
                   progress: bool = True, latency_repeats: int = 10, deployed_latency: bool = True) -> dict:
    """Run (or resume) one pipeline run into `out`; returns the run.json record.

    `deployed_latency` also times base and pruned after `paperprune.deploy.prepare_for_inference`
    (torch.compile, which needs a C++ compiler on CPU; checked before anything is written).
    """
    from .data import dataset_info, make_loaders
    from .flops import count_flops_params
    from .models import input_size as model_input_size
    from .pipeline import prune
    from .surgery import load_pruned, save_pruned
    from .train import TrainConfig, evaluate, train

    config.validate()
    if deployed_latency:
        from .deploy import check_compiler

        check_compiler()
    out = Path(out)
    device = resolve_device(config.device)
    info = dataset_info(config.dataset, config.data_root)
    input_size = model_input_size(info)
    _check_reachable(config, info, input_size)
    record_config = asdict(config)
    config_path = out / "config.json"
    if config_path.is_file():
        saved = _read_json(config_path)
        differ = {k: (saved.get(k), v) for k, v in record_config.items()
                  if k not in ("device", "data_root") and saved.get(k) != v}
        if differ:
            raise PaperpruneError(f"{out} holds a run with a different config {differ} (saved, requested); "
                                  "use another --out or delete that directory")
    if (out / "run.json").is_file():
        return _read_json(out / "run.json")
    timings = {}
    cache_dir = Path(cache_dir) if cache_dir is not None else out.parent / "_baselines"

    start = time.perf_counter()
    base, bdir = _baseline(config, cache_dir, device, progress)
    timings["pretrain_s"] = time.perf_counter() - start
    atomic_write_json(config_path, record_config)

    topk = (1, 5) if config.dataset == "imagenet" else (1,)
    test_loader = _test_loader(config, device)
    # a cached baseline is evaluated once for all the runs that share it (same test set)
    baseline_path = out / "baseline.json" if bdir is None else bdir / "evaluation.json"
    if baseline_path.is_file():
        baseline = _read_json(baseline_path)
    else:
        start = time.perf_counter()
        metrics = evaluate(base, test_loader, device, topk=topk)
        macs, params = count_flops_params(base, input_size)
        baseline = {"top1": metrics["top1"], "top5": metrics.get("top5"), "params": params, "macs": macs,
                    "evaluation_s": time.perf_counter() - start}
        atomic_write_json(baseline_path, baseline)

    pruned_path, prune_path = out / "pruned.pt", out / "prune.json"
    if pruned_path.is_file() and prune_path.is_file():
        pruned = load_pruned(pruned_path).to(device)
        pruning = _read_json(prune_path)
    else:
        seed_everything(config.seed)
        pruned, report = prune(base, _calibration_loader(config, device), method=config.method,
                               flops_reduction=config.flops_reduction, input_size=input_size,
                               num_classes=info.num_classes, samples_per_class=config.samples_per_class,
                               omega=config.omega, gamma_ratio=config.gamma_ratio, structure=config.structure,
                               taxonomy=info.taxonomy, seed=config.seed, device=device, progress=progress)
        before = evaluate(pruned, test_loader, device, topk=topk)
        pruning = {"report": report.to_dict(), "top1_before_finetune": before["top1"],
                   "top5_before_finetune": before.get("top5")}
        save_pruned(pruned, pruned_path, arch=config.arch, num_classes=info.num_classes,
                    in_channels=info.in_channels, input_size=input_size)
        atomic_write_json(prune_path, pruning)
    report = pruning["report"]
    timings.update({k: report["timings"][k] for k in ("statistics_s", "selection_s", "surgery_s")})

    start = time.perf_counter()
    if config.finetune_epochs > 0:
        train_loader, _, _ = make_loaders(config.dataset, root=config.data_root, batch_size=config.batch_size,
                                          device=device, seed=config.seed, per_class=config.per_class)
        tc = TrainConfig(epochs=config.finetune_epochs, lr=config.finetune_lr, weight_decay=config.weight_decay,
                         batch_size=config.batch_size, seed=config.seed)
        train(pruned, train_loader, test_loader, tc, out / "finetune", device=device, progress=progress)
    timings["finetune_s"] = time.perf_counter() - start

    start = time.perf_counter()
    final = evaluate(pruned, test_loader, device, topk=topk)
    timings["evaluation_s"] = baseline["evaluation_s"] + time.perf_counter() - start
    macs, params = count_flops_params(pruned, input_size)
    record = {
        "schema": SCHEMA,
        "status": "complete",
        "config": record_config,
        "environment": environment_info(device),
        "baseline": {k: baseline[k] for k in ("top1", "top5", "params", "macs")},
        "pruned": {"top1_before_finetune": pruning["top1_before_finetune"], "top1": final["top1"],
                   "top5": final.get("top5"), "params": params, "macs": macs,
                   "params_reduction": 1.0 - params / baseline["params"],
                   "macs_reduction": 1.0 - macs / baseline["macs"]},
        "lam": report["criterion"].get("lam"),
        "criterion": report["criterion"],
        "layers": report["layers"],
        "latency": _latency(base, pruned, input_size, latency_repeats, deployed_latency),
        "timings": timings,
    }
    atomic_write_json(out / "run.json", record)
    return record
