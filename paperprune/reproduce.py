"""Batch reproduction: run a profile's grid through papermill, then rebuild every table and figure.

    python -m paperprune.reproduce --profile quick|fmnist|paper [--jobs N] [--devices 0,1,...]

Each run executes `notebooks/experiment.ipynb` with its parameters in its own kernel process
and leaves the executed copy next to its `run.json`. Completed runs are skipped; a failed run
leaves `error.json` (and `experiment-failed.ipynb`) and the batch goes on; failures are listed
at the end. Finally `notebooks/report.ipynb` rebuilds the tables and figures from all runs.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .criteria import METHODS
from .utils import DirLock, PaperpruneError, atomic_write_json

REPO = Path(__file__).resolve().parent.parent

# FLOPs reductions of the paper grid: the paper's abstract for VGG-16 (61%); otherwise APIB's
# README targets (ResNet-56 57e6, ResNet-110 96e6, GoogLeNet 568e6, ResNet-50 1.55e9 of the
# published baselines) and HRank's DenseNet-40 (167.41M of 282.00M). See reference_numbers.csv.
PAPER_REDUCTIONS = {"vgg16": 0.61, "resnet56": 0.55, "resnet110": 0.62, "googlenet": 0.63,
                    "densenet40": 0.41, "resnet50": 0.62}


@dataclass
class Profile:
    name: str
    description: str
    runs: list[dict] = field(default_factory=list)
    #: pruning-curve jobs (`paperprune.curves.run` arguments), run through notebooks/curves.ipynb
    curves: list[dict] = field(default_factory=list)
    latency_repeats: int = 10
    deployed_latency: bool = True


def _grid(datasets_archs, methods, seeds, reductions, **common) -> list[dict]:
    runs = []
    for (dataset, arch), method, seed in itertools.product(datasets_archs, methods, seeds):
        runs.append(dict(dataset=dataset, arch=arch, method=method, seed=seed,
                         flops_reduction=reductions[arch], **common))
    return runs


# The quick profile's sizes are ours, chosen for its 15-minute budget on 2 CPU cores: 63 points of a ResNet-56
# evaluated twice (raw, adaptive BN) cost ~11 s each on 5,000 test images in bf16 (0.9 s per 256 images on
# one thread for the unpruned model, measured; fp32 took 2.4 s), the whole test set would double that.
QUICK_SAMPLES = 10  # calibration images per class of the quick profile


def profiles() -> dict[str, Profile]:
    """The three profiles. Schedules are ours unless a comment cites a source."""
    quick = Profile(
        "quick",
        "Fashion-MNIST, the shipped ResNet-56 (create_model(..., pretrained='fashion-mnist')): pruning curves of "
        "all seven criteria at 30/55/75% FLOPs, three calibration seeds (10 images per class), top-1 on 5,000 "
        "test images (500 per class) right after pruning, raw and after adaptive BN (256 training images), "
        "evaluated in bf16 where the CPU runs it; no training, no fine-tuning.",
        curves=[dict(dataset="fashion-mnist", arch="resnet56", pretrained="fashion-mnist", methods=list(METHODS),
                     targets=[0.30, 0.55, 0.75], seeds=[0, 1, 2], samples_per_class=QUICK_SAMPLES,
                     bn_images=256, test_per_class=500, precision="auto")],
        latency_repeats=3)
    fmnist = Profile(
        "fmnist",
        "Fashion-MNIST, all six architectures, all criteria at 50% FLOPs, three seeds; 100 epochs of "
        "pretraining and 50 of fine-tuning on the full training set. A GPU is recommended.",
        _grid([("fashion-mnist", a) for a in PAPER_REDUCTIONS], METHODS, [0, 1, 2],
              {a: 0.5 for a in PAPER_REDUCTIONS}, pretrain_epochs=100, finetune_epochs=50,
              samples_per_class=20, batch_size=128, lr=0.1, finetune_lr=0.01))
    cifar_grid = [("cifar10", a) for a in ("vgg16", "resnet56", "resnet110", "googlenet", "densenet40")]
    cifar_grid += [("cifar100", "vgg16"), ("cifar100", "resnet56")]
    paper = Profile(
        "paper",
        "The grid of METHOD.md section 3: CIFAR-10 (five models), CIFAR-100 (VGG-16, ResNet-56), "
        "ImageNet (ResNet-50); APIB's recipe (200 epochs pretraining on CIFAR, 150 fine-tuning; "
        "ImageNet from a pretrained ResNet-50, 90 fine-tuning). Needs the data and GPUs.",
        _grid(cifar_grid, METHODS, [0], PAPER_REDUCTIONS, pretrain_epochs=200, finetune_epochs=150,
              samples_per_class=20, batch_size=128, lr=0.1, finetune_lr=0.01)
        + _grid([("imagenet", "resnet50")], METHODS, [0], PAPER_REDUCTIONS, pretrain_epochs=0,
                finetune_epochs=90, samples_per_class=5, batch_size=128, lr=0.01, finetune_lr=0.01))
    return {p.name: p for p in (quick, fmnist, paper)}


def run_dir(runs_root: Path, profile: str, params: dict) -> Path:
    fr = f"{params['flops_reduction']:.2f}".replace(".", "p")
    return runs_root / profile / params["dataset"] / params["arch"] / f"{params['method']}-fr{fr}-s{params['seed']}"


def error_message(e: BaseException) -> str:
    """One line: for a notebook that failed, the error raised inside it."""
    if hasattr(e, "ename") and hasattr(e, "evalue"):
        return f"{e.ename}: {e.evalue}"
    return f"{type(e).__name__}: {e}".strip()


def _execute(notebook: Path, final: Path, parameters: dict, *, failed: Path | None = None) -> Path:
    """Execute `notebook` with papermill into a temporary file and rename it to `final` only on
    success, so no half-written notebook is ever left under its final name. On failure the
    partial copy is moved to `failed` (kept for debugging) or removed."""
    import papermill

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.stem}.running.ipynb"
    try:
        papermill.execute_notebook(str(notebook), str(tmp), parameters=parameters, kernel_name="python3",
                                   progress_bar=False, cwd=str(REPO))
    except BaseException:
        if failed is not None and tmp.exists():
            os.replace(tmp, failed)
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)
    return final


def execute_run(notebook: Path, out: Path, params: dict, *, cache_dir: Path, threads: int,
                latency_repeats: int = 10, deployed_latency: bool = True) -> None:
    """Execute the experiment notebook for one run; on failure record error.json and re-raise."""
    parameters = dict(params, out=str(out), cache_dir=str(cache_dir), threads=threads, progress=False,
                      latency_repeats=latency_repeats, deployed_latency=deployed_latency)
    try:
        _execute(notebook, out / "experiment.ipynb", parameters, failed=out / "experiment-failed.ipynb")
    except BaseException as e:
        record = {"config": params, "error": error_message(e)[:4000], "traceback": traceback.format_exc()[-8000:]}
        try:
            with DirLock(out, "run"):  # never into a folder another process's run owns
                atomic_write_json(out / "error.json", record)
        except PaperpruneError:
            pass
        raise
    (out / "error.json").unlink(missing_ok=True)


def curves_dir(runs_root: Path, profile: str, job: dict) -> Path:
    return runs_root / profile / "curves" / f"{job['dataset']}-{job['arch']}"


def execute_curves(notebook: Path, out: Path, job: dict, *, threads: int) -> None:
    """Execute the curves notebook for one job (resumable inside `paperprune.curves.run`); on
    failure record error.json and re-raise."""
    try:
        _execute(notebook, out / "curves.ipynb", dict(job, out=str(out), threads=threads, progress=False),
                 failed=out / "curves-failed.ipynb")
    except BaseException as e:
        atomic_write_json(out / "error.json", {"config": job, "error": error_message(e)[:4000],
                                               "traceback": traceback.format_exc()[-8000:]})
        raise
    (out / "error.json").unlink(missing_ok=True)


def _run_curves(profile: Profile, jobs: list[tuple[Path, dict]], notebooks: Path, figures: Path):
    """Run the profile's curve jobs one after another (each takes every CPU thread), then write each
    record's tables and figures under `figures`; (failures, seconds)."""
    from .reporting import curves_report, load_curves

    failures, start = [], time.perf_counter()
    for out, job in tqdm(jobs, desc=f"{profile.name} curves"):
        try:
            if not (out / "curves.json").is_file():
                execute_curves(notebooks / "curves.ipynb", out, job, threads=os.cpu_count() or 1)
            curves_report(load_curves(out / "curves.json"), figures)
        except Exception as e:  # noqa: BLE001 - a failed job is recorded and the batch goes on
            failures.append((out, error_message(e)[:300]))
    return failures, time.perf_counter() - start


def build_reports(runs_root: Path, figures: Path, notebooks: Path) -> Path:
    """Execute notebooks/report.ipynb over all recorded runs; the executed copy goes to `figures`."""
    return _execute(notebooks / "report.ipynb", figures / "report.ipynb",
                    {"runs_root": str(runs_root), "out_dir": str(figures)})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paperprune.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", help="quick | fmnist | paper")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each in its own kernel process)")
    parser.add_argument("--devices", default=None,
                        help="comma-separated CUDA device ids to spread runs over (default: cpu)")
    parser.add_argument("--runs-root", default="runs", help="where run directories go (default runs/)")
    parser.add_argument("--figures", default=None,
                        help="where tables and figures go (default figures/PROFILE/)")
    parser.add_argument("--data-root", default=None, help="dataset root (else $PAPERPRUNE_DATA, system paths)")
    parser.add_argument("--pretrained-dir", default=None,
                        help="folder of <dataset>-<arch>.pt baselines to use instead of pretraining")
    parser.add_argument("--notebooks", default=str(REPO / "notebooks"), help="folder holding experiment.ipynb")
    parser.add_argument("--dry-run", action="store_true", help="list the grid and what is done, run nothing")
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except PaperpruneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def plan(profile: Profile, runs_root: Path, *, data_root: str | None = None,
         pretrained_dir: str | None = None) -> list[tuple[Path, dict]]:
    """(run folder, notebook parameters) of every run of `profile`: the data root, and a baseline
    `<dataset>-<arch>.pt` from `pretrained_dir` when there is one."""
    planned = []
    for params in profile.runs:
        params = dict(params, data_root=data_root)
        if pretrained_dir:
            ckpt = Path(pretrained_dir) / f"{params['dataset']}-{params['arch']}.pt"
            if ckpt.is_file():
                params["pretrained"] = str(ckpt.resolve())
        planned.append((run_dir(Path(runs_root), profile.name, params), params))
    return planned


def _devices(spec: str | None) -> list[str]:
    """`--devices 0,1` as ["cuda:0", "cuda:1"], checked against this machine before anything runs."""
    if spec is None:
        return ["cpu"]
    import torch

    ids = [d.strip() for d in spec.split(",")]
    if not all(d.isdigit() for d in ids):
        raise PaperpruneError(f"--devices {spec!r}: give comma-separated CUDA device numbers, e.g. 0,1 "
                              "(leave --devices out to run on the CPU)")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [d for d in ids if int(d) >= count]
    if missing:
        have = f"devices 0-{count - 1}" if count else "no CUDA device"
        raise PaperpruneError(f"--devices {spec!r}: this machine has {have}, so {', '.join(missing)} do(es) not "
                              "exist; pass existing device numbers or leave --devices out to run on the CPU")
    return [f"cuda:{d}" for d in ids]


def _main(args) -> int:
    all_profiles = profiles()
    if args.profile not in all_profiles:
        raise PaperpruneError(f"unknown profile {args.profile!r}; known profiles: {', '.join(all_profiles)}")
    if args.jobs < 1:
        raise PaperpruneError(f"--jobs {args.jobs}: need at least 1")
    notebooks = Path(args.notebooks)
    for name in ("experiment.ipynb", "curves.ipynb"):
        if not (notebooks / name).is_file():
            raise PaperpruneError(f"{notebooks / name} not found; pass --notebooks pointing at the "
                                  "repository's notebooks/ folder")
    devices = _devices(args.devices)
    for flag, folder in (("--data-root", args.data_root), ("--pretrained-dir", args.pretrained_dir)):
        if folder is not None and not Path(folder).is_dir():
            raise PaperpruneError(f"{flag} {folder!r} is not an existing directory")
    profile = all_profiles[args.profile]
    runs_root = Path(args.runs_root).resolve()
    figures = Path(args.figures or Path("figures") / profile.name).resolve()
    cache_dir = runs_root / profile.name / "_baselines"
    planned = plan(profile, runs_root, data_root=args.data_root, pretrained_dir=args.pretrained_dir)
    todo = [(out, params) for out, params in planned if not (out / "run.json").is_file()]
    curve_jobs = [(curves_dir(runs_root, profile.name, job), dict(job, data_root=args.data_root))
                  for job in profile.curves]
    curves_todo = [out for out, _ in curve_jobs if not (out / "curves.json").is_file()]
    done = len(planned) - len(todo)
    print(f"profile {profile.name}: {profile.description}\n{len(profile.runs)} runs, {done} already complete, "
          f"{len(todo)} to run with --jobs {args.jobs} on {', '.join(devices)}; {len(curve_jobs)} curve job(s), "
          f"{len(curves_todo)} to run")
    if args.dry_run:
        for out in [out for out, _ in todo] + curves_todo:
            print(f"  todo {out}")
        return 0
    # one batch per profile folder at a time: two would run the same folders' notebooks at once
    with DirLock(runs_root / profile.name, "reproduce batch", fix=", or use another --runs-root"):
        failures, curve_seconds = _run_curves(profile, curve_jobs, notebooks, figures)
        seconds, report = 0.0, None
        if profile.runs:
            run_failures, seconds = _run_batch(profile, todo, devices, args.jobs, notebooks, cache_dir)
            failures += run_failures
            report = build_reports(runs_root / profile.name, figures, notebooks)
    print(f"curves took {curve_seconds:.0f} s, runs {seconds:.0f} s; tables and figures under {figures}"
          + (f"; report: {report}" if report else ""))
    if failures:
        print(f"{len(failures)} run(s) failed (see error.json in each):", file=sys.stderr)
        for out, msg in failures:
            print(f"  {out}: {msg}", file=sys.stderr)
        return 1
    return 0


def _run_batch(profile: Profile, todo, devices, jobs: int, notebooks: Path, cache_dir: Path):
    """Execute the runs `todo` with `jobs` at once; (failures as (folder, message), seconds)."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if devices == ["cpu"] else 4
    failures = []
    start = time.perf_counter()

    def one(i, out, params):
        params = dict(params, device=devices[i % len(devices)])
        execute_run(notebooks / "experiment.ipynb", out, params, cache_dir=cache_dir, threads=threads,
                    latency_repeats=profile.latency_repeats, deployed_latency=profile.deployed_latency)

    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(todo), desc=profile.name) as bar:
        futures = {pool.submit(one, i, out, params): out for i, (out, params) in enumerate(todo)}
        for future in as_completed(futures):
            try:
                future.result()
            except Exception as e:  # noqa: BLE001 - a failed run is recorded and the batch goes on
                failures.append((futures[future], error_message(e)[:300]))
            bar.update(1)
    return failures, time.perf_counter() - start

if __name__ == "__main__":
    raise SystemExit(main())
