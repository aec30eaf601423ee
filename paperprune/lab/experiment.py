"""End-to-end runs: pretrain (or load) -> statistics -> selection -> surgery -> fine-tune -> evaluate.

`run_experiment(RunConfig, out)` writes `out/run.json` through `paperprune.lab.record` (its one schema,
also the README's table). Every setting
is validated, and the data and a `--pretrained` checkpoint are checked, before anything is
written. The run then owns `out` through an OS lock (`out/.lock`) for its whole life: a second
run into the same folder is refused at once, naming the holder. Every stage leaves its
artifact atomically and is skipped when the artifact is there, so an interrupted run resumes
from its last completed stage (and fine-tuning from its last epoch). The baseline is trained
once per (dataset, data identity, arch, schedule, seed) in a shared cache, locked the same way
(runs needing a baseline that is being trained wait for it), and reused by every method.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..lasso import SOLVER_MAX_ITER
from ..utils import PaperpruneError, as_number, atomic_write_json, resolve_device, seed_everything
from .io import DirLock, environment_info, recorded_path, run_commit, state_sha256

STRUCTURES = ("embedding", "taxonomy")


@dataclass
class RunConfig:
    """Everything that defines a run; its hash (with the data's identity) keys the stage caches."""

    dataset: str
    arch: str
    method: str
    flops_reduction: float | None = None
    pretrain_epochs: int = 0
    pretrained: str | None = None
    finetune_epochs: int = 1
    seed: int = 0
    samples_per_class: int = 20
    omega: int = 4
    gamma_ratio: float = 0.5
    structure: str = "embedding"
    nonnegative: bool = False
    response: str = "class"
    rho: float = 0.5
    knn: int | None = None
    max_iter: int = SOLVER_MAX_ITER
    batch_size: int = 128
    lr: float = 0.1
    finetune_lr: float = 0.01
    weight_decay: float = 1e-4
    per_class: int | None = None
    test_per_class: int | None = None
    data_root: str | None = None
    device: str = "auto"
    precision: str = "auto"
    latency_reduction: float | None = None
    latency_mode: str = "eager"
    latency_batch_size: int = 64
    latency_rounding: bool = False
    statistics: str = "exact"
    block_size: int | None = None
    permutations: int | None = None
    allocation: str = "global"

    def validate(self) -> None:
        """Check (and normalise to plain Python values) every setting before anything is written.

        Messages name the setting as both the API and the CLI spell it, the value given and the fix.
        """
        from ..criteria import LASSO, RESPONSES, check_method
        from ..ib import check_statistics
        from .data import DATASETS
        from ..latency import check_budget
        from ..models import list_models
        from ..select import ALLOCATIONS

        for name, known in (("dataset", DATASETS), ("arch", list_models()), ("structure", STRUCTURES),
                            ("response", RESPONSES), ("allocation", ALLOCATIONS)):
            if getattr(self, name) not in known:
                raise PaperpruneError(f"unknown {name} {getattr(self, name)!r} ({_flag(name)}); "
                                      f"choose one of: {', '.join(known)}")
        check_method(self.method)
        for name, (kind, low, optional, meaning) in _NUMBERS.items():
            setattr(self, name, _checked_number(name, getattr(self, name), kind, low, optional, meaning))
        self.statistics, self.block_size, self.permutations = check_statistics(self.statistics, self.block_size,
                                                                               self.permutations)
        if self.statistics == "block" and self.method not in LASSO:
            raise PaperpruneError(f"statistics='block' (--statistics block) applies to the lasso criteria "
                                  f"({', '.join(LASSO)}), not to --method {self.method}; leave it at 'exact'")
        if self.flops_reduction is None and self.latency_reduction is None:
            raise PaperpruneError("no budget: pass --flops-reduction F or --latency-reduction L (flops_reduction= "
                                  "or latency_reduction= in the API), e.g. 0.5")
        from ..options import check_options

        check_options(asdict(self), spell=lambda name: f" ({_flag(name)})")
        if not isinstance(self.latency_rounding, (bool, np.bool_)):
            raise PaperpruneError(f"latency_rounding={self.latency_rounding!r} must be True or False "
                                  "(--latency-rounding)")
        self.latency_rounding = bool(self.latency_rounding)
        check_budget(self.flops_reduction, self.latency_reduction, self.latency_mode, self.latency_batch_size,
                     self.omega, self.latency_rounding)
        if not 0.0 <= self.rho < 1.0:
            raise PaperpruneError(f"rho={self.rho!r} ({_flag('rho')}) must lie in [0, 1): sGLP-IB links classes "
                                  "whose embeddings correlate above rho; e.g. 0.5")
        if not isinstance(self.nonnegative, (bool, np.bool_)):
            raise PaperpruneError(f"nonnegative={self.nonnegative!r} must be True or False (--nonnegative)")
        self.nonnegative = bool(self.nonnegative)
        for name in ("pretrained", "data_root"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise PaperpruneError(f"{name}={value!r} ({_flag(name)}) must be a path or None")
            setattr(self, name, None if value is None else str(value))
        if self.pretrained is None and self.pretrain_epochs < 1:
            raise PaperpruneError("no baseline: pass --pretrained CKPT or --pretrain-epochs N with N >= 1 "
                                  "(pretrained= or pretrain_epochs= in the API)")
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            raise PaperpruneError(f"--pretrained {self.pretrained!r} is not a file; pass the path of a state_dict "
                                  "or of a paperprune final.pt/checkpoint.pt")
        if self.data_root is not None and not Path(self.data_root).is_dir():
            raise PaperpruneError(f"--data-root {self.data_root!r} is not an existing directory; pass the folder "
                                  "holding the dataset files (or leave it out to use the default locations)")
        from .train import resolve_precision

        resolve_precision(self.precision, resolve_device(self.device, setting=_flag("device")))

    def check_data(self, info, train_counts, test_counts) -> None:
        """The checks that need the dataset: subset sizes, the class structure, the graph's knn."""
        for name, counts in (("per_class", train_counts), ("samples_per_class", train_counts),
                             ("test_per_class", test_counts)):
            value = getattr(self, name)
            if value is not None and counts and value > min(counts):
                raise PaperpruneError(f"{name}={value} ({_flag(name)}) exceeds the {min(counts)} images of the "
                                      f"smallest class of {self.dataset}; pass at most {min(counts)}")
        if self.structure == "taxonomy" and not info.taxonomy:
            raise PaperpruneError(f"structure='taxonomy' (--structure taxonomy): {self.dataset} has no known class "
                                  "hierarchy; use --structure embedding")
        if self.statistics == "block":
            from ..ib import check_block_samples

            check_block_samples(self.samples_per_class * info.num_classes, self.block_size)
        if self.knn is not None and self.knn > info.num_classes - 1:
            raise PaperpruneError(f"knn={self.knn} ({_flag('knn')}): {self.dataset} has {info.num_classes} classes, "
                                  f"so each has at most {info.num_classes - 1} neighbours; pass at most that")

    def key(self, names=None, data: dict | None = None) -> str:
        """Hash of the settings `names` (default all but device and data_root) and the data identity."""
        d = asdict(self)
        d = {k: d[k] for k in (names or d) if k not in ("device", "data_root")}
        if data is not None:
            d["data"] = data
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# setting: (kind, lowest allowed, None allowed, what it is)
_NUMBERS = {
    "flops_reduction": (float, None, True, "the fraction of MACs to remove, e.g. 0.5"),
    "latency_reduction": (float, None, True, "the fraction of the measured latency to remove, e.g. 0.4"),
    "latency_batch_size": (int, 1, False, "the batch size the latency budget is measured at, e.g. 64"),
    "pretrain_epochs": (int, 0, False, "epochs of baseline training"),
    "finetune_epochs": (int, 0, False, "epochs of fine-tuning (0 for none)"),
    "seed": (int, 0, False, "the random seed"),
    "samples_per_class": (int, 2, False, "calibration images per class; the kernels need at least 2, e.g. 20"),
    "omega": (int, 1, False, "the per-layer floor of kept channels, e.g. 4"),
    "gamma_ratio": (float, 0.0, False, "sGLP-IB's gamma / lam, e.g. 0.5"),
    "rho": (float, None, False, "sGLP-IB's correlation threshold in [0, 1), e.g. 0.5"),
    "knn": (int, 1, True, "sGLP-IB's neighbours per class, or None for the rho threshold"),
    "max_iter": (int, 1, False, f"the lasso solver's iterations per solve, e.g. {SOLVER_MAX_ITER}"),
    "batch_size": (int, 1, False, "images per training batch, e.g. 128"),
    "lr": (float, 0.0, False, "the pretraining learning rate, > 0, e.g. 0.1"),
    "finetune_lr": (float, 0.0, False, "the fine-tuning learning rate, > 0, e.g. 0.01"),
    "weight_decay": (float, 0.0, False, "the SGD weight decay, >= 0, e.g. 1e-4"),
    "per_class": (int, 1, True, "training images per class (None: all)"),
    "test_per_class": (int, 1, True, "test images per class (None: all)"),
}
_POSITIVE = ("lr", "finetune_lr")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _checked_number(name: str, value, kind, low, optional: bool, meaning: str):
    """A plain int/float (numpy and torch scalars accepted), finite and >= low (> 0 for learning rates)."""
    value = as_number(value, f"{name} ({_flag(name)})", kind, optional=optional)
    if value is None:
        return None
    if not math.isfinite(value):
        raise PaperpruneError(f"{name}={value!r} ({_flag(name)}) must be finite: {meaning}")
    if low is not None and (value < low or (name in _POSITIVE and value <= low)):
        bound = f"> {low:g}" if name in _POSITIVE else f">= {low:g}"
        raise PaperpruneError(f"{name}={value!r} ({_flag(name)}) must be {bound}: {meaning}")
    return value


BASELINE_FIELDS = ("dataset", "arch", "pretrain_epochs", "pretrained", "seed", "batch_size", "lr",
                   "weight_decay", "per_class", "test_per_class", "precision")


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
    from ..deploy import DEPLOY_MODE, prepare_for_inference

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


def _read_json(path: Path, required: tuple[str, ...] = ()) -> dict:
    """A stage file, checked: unreadable or missing a key is an error naming the file and the fix."""
    fix = "delete it and rerun the same command to recompute that stage"
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PaperpruneError(f"{path} is unreadable ({e}); {fix}") from None
    if not isinstance(record, dict):
        raise PaperpruneError(f"{path} is damaged (holds a {type(record).__name__}, not an object); {fix}")
    for dotted in required:
        node = record
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                raise PaperpruneError(f"{path} is damaged (no {dotted!r}); {fix}")
            node = node[part]
    return record


_EVALUATION_KEYS = ("top1", "top5", "params", "macs", "evaluation_s")
_PRUNE_KEYS = ("top1_before_finetune", "report.timings.statistics_s", "report.timings.selection_s",
               "report.timings.surgery_s", "report.criterion", "report.layers")


def _metrics_rows(folder: Path) -> list[dict]:
    """The readable lines of folder/metrics.jsonl (one per completed epoch, across resumes)."""
    path = folder / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _epoch_seconds(folder: Path) -> float:
    """Training time of the completed epochs recorded in folder/metrics.jsonl (across resumes)."""
    total = 0.0
    for row in _metrics_rows(folder):
        try:
            total += float(row.get("epoch_seconds", 0.0))
        except (TypeError, ValueError):
            continue
    return total


def _finetune_top1(folder: Path) -> list[float] | None:
    """Test top-1 after each fine-tuning epoch, in epoch order (None without fine-tuning)."""
    rows = sorted((row for row in _metrics_rows(folder) if "epoch" in row and "test_top1" in row),
                  key=lambda row: row["epoch"])
    return [float(row["test_top1"]) for row in rows] or None


def _baseline(config: RunConfig, data: dict, info, cache_dir: Path, device, progress: bool, input_size):
    """(baseline model, its evaluation, the cache folder or None, resumed?, pretraining seconds).

    A trained baseline is cached by the baseline settings and the data identity; the cache
    folder is locked while it is trained and evaluated (other runs wait for it)."""
    from ..models import create_model
    from .train import TrainConfig, train

    seed_everything(config.seed)
    model = create_model(config.arch, num_classes=info.num_classes, in_channels=info.in_channels)
    if config.pretrained is not None:
        start = time.perf_counter()
        load_weights(model, config.pretrained)
        return model.to(device), None, None, False, time.perf_counter() - start
    bdir = cache_dir / f"{config.dataset}-{config.arch}-{config.key(BASELINE_FIELDS, data)}"
    final, evaluation = bdir / "final.pt", bdir / "evaluation.json"
    with DirLock(bdir, "baseline cache", wait=True):
        resumed = final.is_file() or (bdir / "checkpoint.pt").is_file()
        if not final.is_file():
            from .data import make_loaders

            train_loader, _, _ = make_loaders(config.dataset, root=config.data_root, batch_size=config.batch_size,
                                              device=device, seed=config.seed, per_class=config.per_class)
            atomic_write_json(bdir / "config.json", {**{k: getattr(config, k) for k in BASELINE_FIELDS},
                                                     "data": data})
            tc = TrainConfig(epochs=config.pretrain_epochs, lr=config.lr, weight_decay=config.weight_decay,
                             batch_size=config.batch_size, seed=config.seed, precision=config.precision)
            train(model, train_loader, _test_loader(config, device), tc, bdir, device=device, progress=progress)
        load_weights(model, final)
        model = model.to(device)
        baseline = _evaluation(config, model, evaluation, device, input_size)
    return model, baseline, bdir, resumed, _epoch_seconds(bdir)


def _evaluation(config: RunConfig, model, path: Path, device, input_size) -> dict:
    """The baseline's test metrics and size, read from `path` or computed and written there."""
    from ..flops import count_flops_params
    from .train import evaluate, resolve_precision

    if path.is_file():
        return _read_json(path, _EVALUATION_KEYS)
    start = time.perf_counter()
    metrics = evaluate(model, _test_loader(config, device), device, topk=_topk(config),
                       precision=resolve_precision(config.precision, device))
    macs, params = count_flops_params(model, input_size)
    baseline = {"top1": metrics["top1"], "top5": metrics.get("top5"), "params": params, "macs": macs,
                "evaluation_s": time.perf_counter() - start}
    atomic_write_json(path, baseline)
    return baseline


def _topk(config: RunConfig) -> tuple[int, ...]:
    return (1, 5) if config.dataset == "imagenet" else (1,)


def load_weights(model: torch.nn.Module, path) -> torch.nn.Module:
    """Load a state_dict (or a paperprune checkpoint/final file) strictly; a mismatch or a
    non-finite weight is a clear error naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise PaperpruneError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PaperpruneError(f"{path} does not hold a state_dict (a dict of tensors)")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing key(s), e.g. {missing[0]!r}" if missing else "",
                 f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]!r}" if unexpected else "",
                 f"{len(shapes)} shape mismatch(es), e.g. {shapes[0]!r}: {tuple(state[shapes[0]].shape)} in the file, "
                 f"{tuple(expected[shapes[0]].shape)} in the model" if shapes else ""]
        raise PaperpruneError(f"{path} does not match the architecture {type(model).__name__} with "
                              f"{getattr(model.get_submodule(_last_linear(model)), 'out_features', '?')} classes: "
                              f"{'; '.join(p for p in parts if p)} (was it trained for another --arch or dataset?)")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise PaperpruneError(f"{path} holds non-finite weights ({len(bad)} tensor(s), e.g. {bad[0]!r}); the "
                              "training that wrote it diverged: retrain with a smaller learning rate")
    model.load_state_dict(state, strict=True)
    return model


def _last_linear(model: torch.nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    return names[-1] if names else ""


def _plain_loader(config: RunConfig, split: str, per_class: int | None, seed: int, batch_size: int, device,
                  setting: str):
    """A tensor dataset's split without augmentation, in a fixed order, optionally a seeded
    class-balanced subset of `per_class` images per class."""
    from .data import DeviceLoader, class_balanced_batch, dataset_info, load_tensors

    info = dataset_info(config.dataset, config.data_root)
    x, y = load_tensors(config.dataset, split, config.data_root)
    if per_class is not None:
        x, y = class_balanced_batch(x, y, per_class, seed, setting=setting)
    return DeviceLoader(x, y, batch_size=batch_size, mean=info.mean, std=info.std, train=False, device=device)


def _test_loader(config: RunConfig, device):
    """The test set (or, with `test_per_class`, a fixed class-balanced subset of it, for short CPU runs)."""
    if config.dataset == "imagenet":
        from .data import make_loaders

        return make_loaders("imagenet", root=config.data_root, batch_size=128, device=device)[1]
    return _plain_loader(config, "test", config.test_per_class, 0, 512, device, "test_per_class")


def _calibration_loader(config: RunConfig, device):
    """Training images without augmentation, in a fixed order (the calibration set is drawn from it)."""
    if config.dataset == "imagenet":
        from .data import imagenet_calibration_loader

        return imagenet_calibration_loader(config.data_root, samples_per_class=config.samples_per_class,
                                           device=device, seed=config.seed)
    return _plain_loader(config, "train", config.samples_per_class, config.seed, 256, device, "samples_per_class")


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_model(config: RunConfig, info, input_size, device) -> None:
    """Before anything is written: the floor omega alone must allow the target, the calibration
    statistics must fit in memory, and a --pretrained checkpoint must fit the model."""
    from ..ib import DEFAULT_MAX_BYTES
    from ..models import create_model, prunable_layers
    from ..select import check_floor
    from ..surgery import MacsPredictor

    model = create_model(config.arch, num_classes=info.num_classes, in_channels=info.in_channels)
    layers = prunable_layers(model)
    channels = {layer.name: model.get_submodule(layer.conv).out_channels for layer in layers}
    if config.flops_reduction is not None:
        check_floor(MacsPredictor(model, layers, input_size), channels, config.flops_reduction, config.omega)
    sizes = []
    hooks = [model.get_submodule(layer.observe).register_forward_hook(lambda m, i, o: sizes.append(o.numel()))
             for layer in layers]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_size))
    for h in hooks:
        h.remove()
    n = config.samples_per_class * info.num_classes
    held = max(sizes) if config.statistics == "exact" else 0   # block statistics never hold N x the features
    need = 4 * n * (math.prod(input_size) + held) + 2 * DEFAULT_MAX_BYTES
    available = _available_bytes(device)
    if available is not None and need > available:
        raise PaperpruneError(
            f"samples_per_class={config.samples_per_class} (--samples-per-class): the statistics of {n} calibration "
            f"images would hold about {need / 2**30:.1f} GiB ({4 * (math.prod(input_size) + held) / 2**20:.2f} "
            f"MiB per image plus 2 GiB of kernel tiles) but {available / 2**30:.1f} GiB are available on {device}; "
            "pass a smaller value (the lineage uses 5 to 20)")
    if config.pretrained is not None:
        load_weights(model, config.pretrained)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise PaperpruneError(f"--out {str(out)!r} exists and is not a directory; choose a directory path")
    parent = next((p for p in (out, *out.parents) if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PaperpruneError(f"--out {str(out)!r} cannot be created: {parent} is not a writable directory; "
                              "choose a writable location")


#: settings added after runs were recorded: a saved config without them ran with these values
_ADDED = {"latency_reduction": None, "latency_mode": "eager", "latency_batch_size": 64, "latency_rounding": False,
          "max_iter": 3000, "statistics": "exact", "block_size": None, "permutations": None,
          "allocation": "global"}
_STAGE_FILES = ("run.json", "config.json", "baseline.json", "pruned.pt", "prune.json", "error.json")


def _claim(out: Path, record_config: dict, data: dict, restart: bool) -> dict | None:
    """Make `out` this run's (under its lock): the complete record when run.json already holds
    this run, else None. A folder holding another config is refused, unless its run failed
    (error.json, no run.json) or `restart`: then its stage files are discarded (the baseline
    cache is not touched)."""
    saved_path = out / "config.json"
    if saved_path.is_file():
        saved = _read_json(saved_path)
        if saved.get("pretrained") is not None:  # a folder written when configs held the path as given
            saved["pretrained"] = recorded_path(saved["pretrained"])
        differ = {k: (saved.get(k, _ADDED.get(k)), v) for k, v in {**record_config, "data": data}.items()
                  if k not in ("device", "data_root") and saved.get(k, _ADDED.get(k)) != v}
        if differ:
            failed = (out / "error.json").is_file() and not (out / "run.json").is_file()
            if not (restart or failed):
                state = "a complete" if (out / "run.json").is_file() else "an interrupted"
                raise PaperpruneError(
                    f"{out} holds {state} run with a different config {differ} (saved, requested); rerun with "
                    "--restart (restart=True) to discard it, or use another --out")
            print(f"paperprune: discarding the {'failed' if failed else 'previous'} run in {out} "
                  f"(settings changed: {', '.join(differ)})", file=sys.stderr)
            for name in _STAGE_FILES:
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / "finetune", ignore_errors=True)
    if (out / "run.json").is_file():
        from .record import read_run

        return read_run(out / "run.json").to_dict()
    atomic_write_json(saved_path, {**record_config, "data": data})
    return None


def _validated(config: RunConfig, out: Path, latency_repeats, deployed_latency: bool):
    """Every check that can run before anything is written: (device, info, data identity, input size)."""
    from .data import class_counts, data_identity, dataset_info
    from ..models import input_size as model_input_size

    config.validate()
    latency_repeats = as_number(latency_repeats, "latency_repeats (--latency-repeats)", int)
    if latency_repeats < 0:
        raise PaperpruneError(f"latency_repeats={latency_repeats} (--latency-repeats) must be >= 0 (0: no timing)")
    if deployed_latency and latency_repeats > 0:
        from ..deploy import check_compiler

        check_compiler()
    _check_out(out)
    device = resolve_device(config.device, setting="--device")
    info = dataset_info(config.dataset, config.data_root)
    data = data_identity(config.dataset, config.data_root)
    config.check_data(info, *(class_counts(config.dataset, split, config.data_root, fingerprint=data["fingerprint"])
                              for split in ("train", "test")))
    input_size = model_input_size(info)
    _check_model(config, info, input_size, device)
    return device, info, data, input_size, latency_repeats


def _recorded_config(config: RunConfig) -> dict:
    """The config as records hold it: `asdict(config)` with `pretrained` named relative to the repository
    (`paperprune.lab.io.recorded_path`), never by an absolute path of this machine."""
    return {**asdict(config), "pretrained": recorded_path(config.pretrained)}


def run_experiment(config: RunConfig, out: str | Path, *, cache_dir: str | Path | None = None,
                   progress: bool = True, latency_repeats: int = 10, deployed_latency: bool = True,
                   restart: bool = False) -> dict:
    """Run (or resume) one pipeline run into `out`; returns the run.json record.

    `cache_dir` holds the shared baselines (default `out/../_baselines`, recorded in run.json).
    `latency_repeats` timed forwards per model and batch size (0: no latency record);
    `deployed_latency` also times base and pruned after `paperprune.deploy.prepare_for_inference`
    (torch.compile, which needs a C++ compiler on CPU; checked before anything is written).
    `restart` discards the stage files of another config's run in `out` (a failed run's are
    discarded without it). A failure after the start leaves `out/error.json`.
    """
    run_commit()  # the commit the record names: the code as the run starts
    out = Path(out)
    device, info, data, input_size, latency_repeats = _validated(config, out, latency_repeats, deployed_latency)
    cache_dir = Path(cache_dir) if cache_dir is not None else out.parent / "_baselines"
    record_config = _recorded_config(config)
    with DirLock(out, "run", fix=", or use another --out"):
        done = _claim(out, record_config, data, restart)
        if done is not None:
            return done
        try:
            record = _run(config, out, cache_dir, device, info, data, input_size, progress, latency_repeats,
                          deployed_latency)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            atomic_write_json(out / "error.json", {"config": record_config, "error": f"{type(e).__name__}: {e}"})
            raise
        (out / "error.json").unlink(missing_ok=True)
        return record


def _run(config: RunConfig, out: Path, cache_dir: Path, device, info, data, input_size, progress,
         latency_repeats, deployed_latency) -> dict:
    """The stages, each skipped when its artifact is there; timings are cumulative over resumes."""
    from ..flops import count_flops_params
    from .record import SCHEMA, DataIdentity, Evaluation, Layer, Packed, Pruned, RunRecord, Timings, write_run
    from .stats import pack_correct
    from .train import evaluate, resolve_precision

    base, baseline, bdir, pretrain_resumed, pretrain_s = _baseline(config, data, info, cache_dir, device,
                                                                   progress, input_size)
    resumed = ["pretrain"] if pretrain_resumed else []
    if baseline is None:
        baseline = _evaluation(config, base, out / "baseline.json", device, input_size)
    test_loader = _test_loader(config, device)
    pruned, pruning, prune_resumed = _prune_stage(config, out, base, info, input_size, test_loader, device, progress)
    resumed += ["prune"] if prune_resumed else []
    if _finetune(config, pruned, test_loader, out / "finetune", device, progress):
        resumed.append("finetune")

    precision = resolve_precision(config.precision, device)
    start = time.perf_counter()
    final = evaluate(pruned, test_loader, device, topk=_topk(config), per_image=True, precision=precision)
    report = pruning["report"]
    timings = {"pretrain_s": pretrain_s, **{k: report["timings"][k] for k in ("statistics_s", "selection_s",
                                                                              "surgery_s")},
               "finetune_s": _epoch_seconds(out / "finetune"),
               "evaluation_s": baseline["evaluation_s"] + time.perf_counter() - start}
    macs, params = count_flops_params(pruned, input_size)
    record = RunRecord(
        schema=SCHEMA, status="complete", config={**_recorded_config(config),
                                                  "baseline_sha256": state_sha256(base.state_dict())},
        data=DataIdentity(**data), baseline_cache=recorded_path(bdir), environment=environment_info(device),
        precision=precision,
        baseline=Evaluation(**{k: baseline[k] for k in ("top1", "top5", "params", "macs")}),
        pruned=Pruned(top1_before_finetune=pruning["top1_before_finetune"], top1=final["top1"], top5=final.get("top5"),
                      params=params, macs=macs, params_reduction=1.0 - params / baseline["params"],
                      macs_reduction=1.0 - macs / baseline["macs"], correct=Packed(**pack_correct(final["correct"])),
                      finetune_top1=_finetune_top1(out / "finetune")),
        lam=report["criterion"].get("lam"), criterion=report["criterion"],
        layers=[Layer(**row) for row in report["layers"]],
        latency=_latency(base, pruned, input_size, latency_repeats, deployed_latency) if latency_repeats else {},
        latency_budget=report.get("latency"), timings=Timings(**timings), resumed=resumed)
    return write_run(out / "run.json", record)


def _prune_stage(config: RunConfig, out: Path, base, info, input_size, test_loader, device, progress):
    """(pruned model, prune.json record, resumed?): read back when both artifacts are there."""
    from ..pipeline import prune
    from ..surgery import load_pruned, save_pruned
    from .train import evaluate, resolve_precision

    pruned_path, prune_path = out / "pruned.pt", out / "prune.json"
    if pruned_path.is_file() and prune_path.is_file():
        pruning = _read_json(prune_path, _PRUNE_KEYS)
        try:
            pruned = load_pruned(pruned_path).to(device)
        except PaperpruneError as e:
            raise PaperpruneError(f"{e}; delete {pruned_path} and rerun the same command to recompute it") from None
        return pruned, pruning, True
    seed_everything(config.seed)
    pruned, report = prune(base, _calibration_loader(config, device), method=config.method,
                           flops_reduction=config.flops_reduction, input_size=input_size,
                           num_classes=info.num_classes, samples_per_class=config.samples_per_class,
                           omega=config.omega, gamma_ratio=config.gamma_ratio, nonnegative=config.nonnegative,
                           structure=config.structure, response=config.response, rho=config.rho, knn=config.knn,
                           max_iter=config.max_iter, taxonomy=info.taxonomy,
                           seed=config.seed, device=device, progress=progress,
                           latency_reduction=config.latency_reduction, latency_mode=config.latency_mode,
                           latency_batch_size=config.latency_batch_size, latency_rounding=config.latency_rounding,
                           statistics=config.statistics, block_size=config.block_size,
                           permutations=config.permutations, allocation=config.allocation)
    before = evaluate(pruned, test_loader, device, topk=_topk(config),
                      precision=resolve_precision(config.precision, device))
    pruning = {"report": report.to_dict(), "top1_before_finetune": before["top1"],
               "top5_before_finetune": before.get("top5")}
    save_pruned(pruned, pruned_path, arch=config.arch, num_classes=info.num_classes,
                in_channels=info.in_channels, input_size=input_size)
    atomic_write_json(prune_path, pruning)
    return pruned, pruning, False


def _finetune(config: RunConfig, pruned, test_loader, folder: Path, device, progress: bool) -> bool:
    """Fine-tune in place (resumable from folder/checkpoint.pt); True when it resumed."""
    if config.finetune_epochs == 0:
        return False
    from .data import make_loaders
    from .train import TrainConfig, train

    train_loader, _, _ = make_loaders(config.dataset, root=config.data_root, batch_size=config.batch_size,
                                      device=device, seed=config.seed, per_class=config.per_class)
    tc = TrainConfig(epochs=config.finetune_epochs, lr=config.finetune_lr, weight_decay=config.weight_decay,
                     batch_size=config.batch_size, seed=config.seed, precision=config.precision)
    resumed = (folder / "checkpoint.pt").is_file()
    train(pruned, train_loader, test_loader, tc, folder, device=device, progress=progress)
    return resumed
