"""Batch reproduction: run a profile's stages, then rebuild every table and figure.

    python -m paperprune.lab.reproduce --profile NAME [--jobs N] [--devices 0,1,...]   (NAME: see `profiles`)

A profile has up to three stages, run in this order, each skipped where its record is there:
1. baselines: `python -m paperprune train` into RUNS/PROFILE/baselines/<arch>/ (resumes from its
   checkpoint; done when final.pt is there);
2. pruning curves: `notebooks/curves.ipynb` (`paperprune.lab.curves.run`, resumable per (criterion,
   seed)) into RUNS/PROFILE/curves/<dataset>-<arch>[-<variant>]/; done when curves.json is there;
3. runs: `notebooks/experiment.ipynb` per run in its own kernel process (resumable per stage);
   done when run.json is there.
A curves job or run may name a stage-1 baseline (`baseline="<arch>"`): it then starts from that
baseline's final.pt (a profile with `baselines_from` shares another profile's baselines folder); or
shipped weights (`pretrained="fashion-mnist"`, as `create_model` names
them). A failed job leaves `error.json` (and the failed notebook) and the batch
goes on; failures are listed at the end. Then the tables and figures are written under
FIGURES (curves: `reporting.curves_report`; runs: `notebooks/report.ipynb`; baselines: a table),
and the records (run.json, curves.json, executed notebooks, the baselines' config.json and
metrics.jsonl; no checkpoints) are copied under FIGURES/records/. `--dry-run` lists what is left
and, where the profile's costs are known, its estimated wall time.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..criteria import CLASSWISE
from ..select import split_entry
from ..models.pretrained import PRETRAINED, pretrained_path
from ..utils import PaperpruneError, atomic_write_json, atomic_write_text
from .io import DirLock
from .profiles import MODULES as PROFILE_MODULES

REPO = Path(__file__).resolve().parents[2]

@dataclass
class Profile:
    name: str
    description: str
    runs: list[dict] = field(default_factory=list)
    #: pruning-curve jobs (`paperprune.lab.curves.run` arguments), run through notebooks/curves.ipynb
    curves: list[dict] = field(default_factory=list)
    #: baselines trained first (`python -m paperprune train` settings: dataset, arch, epochs, lr, weight_decay,
    #: batch_size, seed, precision, optionally per_class); a curves job or run names one with `baseline="<arch>"`
    baselines: list[dict] = field(default_factory=list)
    latency_repeats: int = 10
    deployed_latency: bool = True
    #: the profile whose main curves this profile's curves are compared with on the results page, unpaired
    #: (`reporting.curves.unpaired_table`: other calibration samples, so no seed pairs them); None: none
    compared_with: str | None = None
    #: the profile whose RUNS/<name>/baselines/ holds the baselines (trained there when absent), so two profiles
    #: share one trained baseline; None: this profile's own folder
    baselines_from: str | None = None

    @property
    def baselines_home(self) -> str:
        return self.baselines_from or self.name


def expand_grid(grid: dict) -> list[dict]:
    """The runs of one of a profile's `run_grids`: every (dataset, arch), method and seed, in that order,
    each with its arch's `flops_reduction` and the grid's `settings`. A method entry "name:uniform" is that
    criterion under the uniform allocation (`select.split_entry`); plain names keep the settings' allocation."""
    runs = []
    for (dataset, arch), entry, seed in itertools.product(grid["datasets_archs"], grid["methods"], grid["seeds"]):
        run = dict(dataset=dataset, arch=arch, method=entry, seed=seed, flops_reduction=grid["flops_reduction"][arch],
                   **grid["settings"])
        if ":" in entry:
            run["method"], run["allocation"] = split_entry(entry)
        runs.append(run)
    return runs


def load_profile(module: str) -> Profile:
    """The profile defined by `paperprune/lab/profiles/<module>.py` (its `PROFILE` data)."""
    data = copy.deepcopy(importlib.import_module(f"{__package__}.profiles.{module}").PROFILE)
    runs = [run for grid in data.pop("run_grids", []) for run in expand_grid(grid)]
    return Profile(**data, runs=runs)


def profiles() -> dict[str, Profile]:
    """The profiles, one data module each in paperprune/lab/profiles/."""
    return {p.name: p for p in map(load_profile, PROFILE_MODULES)}


# --------------------------------------------------------------------------- wall-time estimate

#: Costs on this project's 2-core CPU (2 threads; Fashion-MNIST at 32x32), the basis of `estimate`.
#: ResNet-56, measured: train_step_s, one bf16 autocast + channels_last training step at batch 128 on a quiet
#: machine (the shipped model's epochs took 240-340 s, 0.51-0.73 s a step, beside other jobs);
#: eval_bf16_s, one bf16 evaluation of the 10,000 test images by the unpruned model, fitted to the quick
#: profile's curves.json (figures/quick/records: evaluate_s of 60 points, two evaluations of 5,000 images
#: each); statistics_s (once per criterion and seed) and select_s (selection, surgery and adaptive BN per
#: point), lasso criteria (apib, classwise, sglp, stlp) and the others, from the same record (264 s of its
#: 1,392 s outside statistics and evaluation); gap, benchmarks/results/pipeline.md's eager MACs ratio /
#: latency ratio at 60% fewer MACs (a pruned model costs min(1, kept MACs share x gap) of the base).
#: Derived: eval_fp32_s, eval_bf16_s x 2.67 (2.4 s against 0.9 s per 256 images on one thread, measured).
#: VGG-16: train_step_s measured as ResNet-56's; its evaluations scaled from ResNet-56's by the train-step
#: ratio (0.57 / 0.31); its statistics and selection our guess (up to 512 channels a layer, 32 for ResNet-56).
COSTS = {
    "resnet56": dict(train_step_s=0.31, eval_fp32_s=53.0, eval_bf16_s=19.9, gap=1.76,
                     statistics_s={"lasso": 2.0, "other": 1.0}, select_s={"lasso": 6.0, "other": 2.0}),
    "vgg16": dict(train_step_s=0.57, eval_fp32_s=97.7, eval_bf16_s=36.6, gap=1.47,
                  statistics_s={"lasso": 10.0, "other": 3.0}, select_s={"lasso": 15.0, "other": 4.0}),
}
#: curves points are evaluated with BatchNorm folded (`paperprune.lab.curves.EVALUATED`), COSTS' evaluations not:
#: the folded one is this much faster (bf16, l1-pruned by 30/55/75%, the median of the three targets;
#: benchmarks/results/eval.md, 2026-12-03: ResNet-56 1.27-1.35x, VGG-16 1.04-1.08x)
EVAL_FOLD_SPEEDUP = {"resnet56": 1.29, "vgg16": 1.07}
KERNEL_S = 10.0  # starting a papermill kernel and importing torch and paperprune, per notebook
#: the reports: per curves record 15 s of figures (the paired differences over seeds of `paperprune.lab.seeds` cost
#: no measurable time); the run report 60 s
FIGURES_S, RUN_REPORT_S = 15.0, 60.0
TRAIN_IMAGES, TEST_IMAGES = 60000, 10000
_LASSO = ("apib", *CLASSWISE)


def _steps(images: int, batch_size: int) -> int:
    return -(-images // batch_size)


def _kind(method: str) -> str:
    return "lasso" if method in _LASSO else "other"


def _pruned(cost: dict, reduction: float) -> float:
    return min(1.0, (1.0 - reduction) * cost["gap"])


def estimate(profile: Profile, baselines=None, curves=None, runs=None) -> dict[str, float] | None:
    """Estimated seconds of each stage of `profile` on this project's 2-core CPU, from COSTS; only the
    jobs given (default: all of the profile's); None when an arch or dataset has no known costs.

    Baseline: epochs x (469 steps + a bf16 test evaluation). Curves point: selection, surgery and
    BN re-estimation (select_s), two test evaluations of the pruned model; per (criterion, seed) the
    statistics once. Run: a kernel, statistics, selection, three test evaluations in the run's
    precision (baseline, pruned, fine-tuned), the fine-tuning steps of the pruned model and its bf16
    test evaluation.
    Reports: figures per curves record, the run report (FIGURES_S)."""
    baselines = profile.baselines if baselines is None else baselines
    curves = profile.curves if curves is None else curves
    runs = profile.runs if runs is None else runs
    if any(job["arch"] not in COSTS or job["dataset"] != "fashion-mnist" for job in [*baselines, *curves, *runs]):
        return None
    out = {"baselines": 0.0, "curves": 0.0, "runs": 0.0, "reports": RUN_REPORT_S if runs else 0.0}
    for job in baselines:
        cost = COSTS[job["arch"]]
        out["baselines"] += job["epochs"] * (_steps(TRAIN_IMAGES, job["batch_size"]) * cost["train_step_s"]
                                             * job["batch_size"] / 128 + cost["eval_bf16_s"])
    for job in curves:
        cost = COSTS[job["arch"]]
        evaluation = cost["eval_fp32_s" if job.get("precision", "fp32") == "fp32" else "eval_bf16_s"]
        evaluation /= EVAL_FOLD_SPEEDUP[job["arch"]]
        scale = 10 * job["test_per_class"] / TEST_IMAGES if job.get("test_per_class") else 1.0
        out["curves"] += KERNEL_S + len(job["seeds"]) * sum(
            cost["statistics_s"][_kind(m)]
            + sum(cost["select_s"][_kind(m)] + 2 * scale * evaluation * _pruned(cost, t) for t in job["targets"])
            for m in job["methods"])
        out["reports"] += FIGURES_S
    for job in runs:
        cost, kind = COSTS[job["arch"]], _kind(job["method"])
        pruned = _pruned(cost, job["flops_reduction"])
        images = 10 * job["per_class"] if job.get("per_class") else TRAIN_IMAGES
        epochs = job.get("finetune_epochs", 1)
        evaluation = cost["eval_fp32_s" if job.get("precision", "auto") == "fp32" else "eval_bf16_s"]
        out["runs"] += (KERNEL_S + cost["statistics_s"][kind] + cost["select_s"][kind]
                        + evaluation * (1 + 2 * pruned)
                        + epochs * pruned * (_steps(images, job["batch_size"]) * cost["train_step_s"]
                                             + cost["eval_bf16_s"]))
    return out


def estimate_text(profile: Profile, baselines_todo, curves_todo, runs_todo, runs_root: Path) -> str:
    """The dry run's estimate: the whole profile, and what is left of it."""
    whole = estimate(profile)
    if whole is None:
        return "estimate: no measured costs for this profile's datasets and archs (COSTS)"
    left_b = [b for b in profile.baselines
              if baseline_dir(runs_root, profile.baselines_home, b["arch"]) in baselines_todo]
    left_c = [j for out, j in zip([o for o, _ in plan_curves(profile, runs_root)], profile.curves) if out in curves_todo]
    left_r = [r for out, r in zip([o for o, _ in plan(profile, runs_root)], profile.runs) if out in runs_todo]
    left = estimate(profile, left_b, left_c, left_r)
    lines = [f"estimated wall time on 2 CPU cores (COSTS in paperprune/lab/reproduce.py): "
             f"{sum(whole.values()) / 60:.0f} min for the whole profile, {sum(left.values()) / 60:.0f} min left"]
    lines += [f"  {stage}: {whole[stage] / 60:.0f} min ({left[stage] / 60:.0f} left)" for stage in whole]
    return "\n".join(lines)


def run_dir(runs_root: Path, profile: str, params: dict) -> Path:
    fr = f"{params['flops_reduction']:.2f}".replace(".", "p")
    method = params["method"] + ("-uniform" if params.get("allocation", "global") == "uniform" else "")
    return runs_root / profile / params["dataset"] / params["arch"] / f"{method}-fr{fr}-s{params['seed']}"


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


def _with_defaults(params: dict, defaults: dict) -> dict:
    """`params` with every other setting at its API default, for papermill: a notebook's parameters
    cell holds demo values (e.g. `test_per_class = 10`), which would otherwise apply to whatever a
    job leaves out."""
    return {**{k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}, **params}


def _run_defaults() -> dict:
    from dataclasses import MISSING, fields

    from .experiment import RunConfig

    return {f.name: f.default for f in fields(RunConfig) if f.default is not MISSING}


def _curves_defaults() -> dict:
    import inspect

    from .curves import run

    return {name: p.default for name, p in inspect.signature(run).parameters.items()
            if p.default is not inspect.Parameter.empty and p.kind is p.KEYWORD_ONLY}


def execute_run(notebook: Path, out: Path, params: dict, *, cache_dir: Path, threads: int,
                latency_repeats: int = 10, deployed_latency: bool = True) -> None:
    """Execute the experiment notebook for one run (every RunConfig field injected: the ones `params`
    leaves out at RunConfig's defaults); on failure record error.json and re-raise."""
    parameters = dict(_with_defaults(params, _run_defaults()), out=str(out), cache_dir=str(cache_dir),
                      threads=threads, progress=False, latency_repeats=latency_repeats,
                      deployed_latency=deployed_latency)
    _execute_recorded(notebook, out, "experiment", parameters, params)


def _execute_recorded(notebook: Path, out: Path, stem: str, parameters: dict, config: dict) -> None:
    """Execute `notebook` into out/<stem>.ipynb; on failure record out/error.json (config, error,
    traceback; never into a folder another process holds) and re-raise; on success remove a stale one."""
    try:
        _execute(notebook, out / f"{stem}.ipynb", parameters, failed=out / f"{stem}-failed.ipynb")
    except BaseException as e:
        record = {"config": config, "error": error_message(e)[:4000], "traceback": traceback.format_exc()[-8000:]}
        try:
            with DirLock(out, stem):  # never into a folder another process's run owns
                atomic_write_json(out / "error.json", record)
        except PaperpruneError:
            pass
        raise
    (out / "error.json").unlink(missing_ok=True)


def curves_dir(runs_root: Path, profile: str, job: dict) -> Path:
    from .curves import variant_name

    variant = variant_name(job.get("criterion_options"))
    return runs_root / profile / "curves" / "-".join(filter(None, (job["dataset"], job["arch"], variant)))


def baseline_dir(runs_root: Path, profile: str, arch: str) -> Path:
    return Path(runs_root) / profile / "baselines" / arch


def train_command(job: dict, out: Path, data_root: str | None = None) -> list[str]:
    """The `python -m paperprune train` command of a baseline job (rerunning it resumes)."""
    cmd = [sys.executable, "-m", "paperprune", "train", "--dataset", job["dataset"], "--arch", job["arch"],
           "--epochs", str(job["epochs"]), "--out", str(out), "--lr", str(job["lr"]),
           "--weight-decay", str(job["weight_decay"]), "--batch-size", str(job["batch_size"]),
           "--seed", str(job["seed"]), "--precision", job["precision"], "--no-progress"]
    cmd += ["--per-class", str(job["per_class"])] if job.get("per_class") else []
    return cmd + (["--data-root", data_root] if data_root else [])


def _run_baselines(jobs: list[tuple[Path, dict]], data_root: str | None):
    """Train each baseline not yet done (final.pt) in its own process, output in OUT/train.log;
    (failures, seconds)."""
    failures, start = [], time.perf_counter()
    for out, job in jobs:
        if (out / "final.pt").is_file():
            continue
        out.mkdir(parents=True, exist_ok=True)
        cmd = train_command(job, out, data_root)
        print(f"training baseline {job['arch']}: {' '.join(cmd[1:])}", flush=True)
        with open(out / "train.log", "a", encoding="utf-8") as log:
            done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, check=False)
        if done.returncode != 0 or not (out / "final.pt").is_file():
            lines = (out / "train.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()
            failures.append((out, f"train exited {done.returncode}: {lines[-1] if lines else ''}"[:300]))
    return failures, time.perf_counter() - start


def _baselines_table(jobs: list[tuple[Path, dict]], figures: Path) -> None:
    from .reporting import write_table
    from .reporting.pages import baselines_table

    table = baselines_table([out for out, _ in jobs if (out / "final.pt").is_file()])
    if table is not None:
        write_table(table, figures / "tables", "baselines")


def execute_curves(notebook: Path, out: Path, job: dict, *, threads: int, device: str = "cpu") -> None:
    """Execute the curves notebook for one job on `device` (resumable inside `paperprune.lab.curves.run`; what
    the job leaves out at `curves.run`'s defaults); on failure record error.json and re-raise."""
    parameters = dict(_with_defaults(job, _curves_defaults()), out=str(out), threads=threads, device=device,
                      progress=False)
    _execute_recorded(notebook, out, "curves", parameters, job)


def _run_curves(profile: Profile, jobs: list[tuple[Path, dict]], notebooks: Path, figures: Path, device: str):
    """Run the profile's curve jobs one after another on `device` (each takes every CPU thread), then write
    each record's tables and figures under `figures`; (failures, seconds)."""
    from .reporting import curves_report, load_curves

    failures, start = [], time.perf_counter()
    for out, job in tqdm(jobs, desc=f"{profile.name} curves"):
        try:
            if not (out / "curves.json").is_file():
                _need_baseline(job.get("weights"))
                execute_curves(notebooks / "curves.ipynb", out, job, threads=os.cpu_count() or 1, device=device)
            curves_report(load_curves(out / "curves.json"), figures)
        except Exception as e:  # noqa: BLE001 - a failed job is recorded and the batch goes on
            failures.append((out, error_message(e)[:300]))
    return failures, time.perf_counter() - start


def ablation_tables(jobs: list[tuple[Path, dict]], figures: Path) -> list[Path]:
    """Each ablation variant (a curves job with criterion options) against the main curves of its dataset and
    arch (the job without options), raw and after adaptive BN, where both records are there
    (`reporting.curves.variant_table`); the files written."""
    from .reporting import load_curves
    from .reporting.pages import ablation_report

    main = {(j["dataset"], j["arch"]): out for out, j in jobs if not j.get("criterion_options")}
    written = []
    for out, job in jobs:
        base = main.get((job["dataset"], job["arch"]))
        if not job.get("criterion_options") or base is None or not (out / "curves.json").is_file() \
                or not (base / "curves.json").is_file():
            continue
        written += ablation_report(load_curves(base), load_curves(out), figures)
    return written


#: the results page, generated from every profile's records under figures/ (`write_results_page`)
RESULTS_PAGE = REPO / "docs" / "results.md"


def write_results_page(figures_root: Path = REPO / "figures", page: Path = RESULTS_PAGE) -> Path:
    """docs/results.md from the records of every profile under `figures_root` (`reporting.pages.results_page`)."""
    from .reporting.pages import results_page

    every = profiles()
    return atomic_write_text(page, results_page(figures_root, {n: p.description for n, p in every.items()},
                                                {n: p.compared_with for n, p in every.items() if p.compared_with}))


def _rebuild(profile: Profile, figures: Path) -> int:
    """`--rebuild`: the profile's tables and figures from its records, then the results page; runs nothing."""
    from .reporting.pages import rebuild

    if not (figures / "records").is_dir():
        raise PaperpruneError(f"{figures / 'records'} does not exist: profile {profile.name} has no committed "
                              "records to rebuild from; run the profile first (without --rebuild)")
    written = rebuild(figures, profile.compared_with and figures.parent / profile.compared_with)
    page = write_results_page()
    print(f"profile {profile.name}: {len(written)} table and figure file(s) rebuilt under {figures} from its "
          f"records; results page: {page}")
    return 0


def build_reports(runs_root: Path, figures: Path, notebooks: Path) -> Path:
    """Execute notebooks/report.ipynb over all recorded runs; the executed copy goes to `figures`."""
    return _execute(notebooks / "report.ipynb", figures / "report.ipynb",
                    {"runs_root": str(runs_root), "out_dir": str(figures)})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paperprune.lab.reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", help=" | ".join(profiles()))
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each in its own kernel process)")
    parser.add_argument("--devices", default=None,
                        help="comma-separated CUDA device ids to spread runs over; curve jobs use the first "
                             "(default: cpu)")
    parser.add_argument("--runs-root", default="runs", help="where run directories go (default runs/)")
    parser.add_argument("--figures", default=None,
                        help="where tables and figures go (default figures/PROFILE/)")
    parser.add_argument("--data-root", default=None, help="dataset root (else $PAPERPRUNE_DATA, system paths)")
    parser.add_argument("--pretrained-dir", default=None,
                        help="folder of <dataset>-<arch>.pt baselines to use instead of pretraining")
    parser.add_argument("--notebooks", default=str(REPO / "notebooks"), help="folder holding experiment.ipynb")
    parser.add_argument("--dry-run", action="store_true", help="list the grid and what is done, run nothing")
    parser.add_argument("--rebuild", action="store_true",
                        help="rebuild the profile's tables and figures from its committed records "
                             "(figures/PROFILE/records) and the results page docs/results.md from every "
                             "profile's records; run nothing")
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except PaperpruneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _need_baseline(weights: str | None) -> None:
    if weights is not None and not Path(weights).is_file():
        raise PaperpruneError(f"baseline {weights} is missing: its training failed or has not run (see train.log "
                              "beside it); rerun the profile to train it")


def _baseline_weights(profile: Profile, runs_root: Path, arch: str) -> str:
    if arch not in {b["arch"] for b in profile.baselines}:
        raise PaperpruneError(f"profile {profile.name}: baseline={arch!r} names no baseline of the profile "
                              f"({', '.join(b['arch'] for b in profile.baselines) or 'none'})")
    return str(baseline_dir(runs_root, profile.baselines_home, arch) / "final.pt")


def plan_baselines(profile: Profile, runs_root: Path) -> list[tuple[Path, dict]]:
    """(folder, train settings) of every baseline of `profile`; one per arch."""
    archs = [b["arch"] for b in profile.baselines]
    if len(set(archs)) != len(archs):
        raise PaperpruneError(f"profile {profile.name}: two baselines of one arch ({archs}); one per arch")
    return [(baseline_dir(Path(runs_root), profile.baselines_home, b["arch"]), b) for b in profile.baselines]


def plan_curves(profile: Profile, runs_root: Path, *, data_root: str | None = None) -> list[tuple[Path, dict]]:
    """(folder, notebook parameters) of every curves job of `profile`; a job naming a stage-1 baseline
    gets its final.pt as `weights`."""
    planned = []
    for job in profile.curves:
        job = dict(job, data_root=data_root)
        if "baseline" in job:
            job.update(weights=_baseline_weights(profile, Path(runs_root), job.pop("baseline")), pretrained=None)
        planned.append((curves_dir(Path(runs_root), profile.name, job), job))
    return planned


def plan(profile: Profile, runs_root: Path, *, data_root: str | None = None,
         pretrained_dir: str | None = None) -> list[tuple[Path, dict]]:
    """(run folder, notebook parameters) of every run of `profile`: the data root, and a baseline: a
    stage-1 baseline the run names (`baseline="<arch>"`: its final.pt, no pretraining), shipped
    weights it names (`pretrained="fashion-mnist"`: their file), or
    `<dataset>-<arch>.pt` from `pretrained_dir` when there is one."""
    planned = []
    for params in profile.runs:
        params = dict(params, data_root=data_root)
        if "baseline" in params:
            params.update(pretrained=_baseline_weights(profile, Path(runs_root), params.pop("baseline")),
                          pretrain_epochs=0)
        elif (params["arch"], params.get("pretrained")) in PRETRAINED:
            params.update(pretrained=str(pretrained_path(params["arch"], params["pretrained"])), pretrain_epochs=0)
        elif pretrained_dir:
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
    if args.rebuild:
        return _rebuild(all_profiles[args.profile], Path(args.figures or REPO / "figures" / args.profile))
    devices = _devices(args.devices)
    for flag, folder in (("--data-root", args.data_root), ("--pretrained-dir", args.pretrained_dir)):
        if folder is not None and not Path(folder).is_dir():
            raise PaperpruneError(f"{flag} {folder!r} is not an existing directory")
    profile = all_profiles[args.profile]
    runs_root = Path(args.runs_root).resolve()
    figures = Path(args.figures or Path("figures") / profile.name).resolve()
    cache_dir = runs_root / profile.name / "_baselines"
    baselines = plan_baselines(profile, runs_root)
    curve_jobs = plan_curves(profile, runs_root, data_root=args.data_root)
    planned = plan(profile, runs_root, data_root=args.data_root, pretrained_dir=args.pretrained_dir)
    baselines_todo = [out for out, _ in baselines if not (out / "final.pt").is_file()]
    curves_todo = [out for out, _ in curve_jobs if not (out / "curves.json").is_file()]
    todo = [(out, params) for out, params in planned if not (out / "run.json").is_file()]
    done = len(planned) - len(todo)
    trained = f"{len(baselines)} baseline(s), {len(baselines_todo)} to train; " if baselines else ""
    print(f"profile {profile.name}: {profile.description}\n{trained}{len(profile.runs)} runs, {done} already "
          f"complete, {len(todo)} to run with --jobs {args.jobs} on {', '.join(devices)}; {len(curve_jobs)} curve "
          f"job(s), {len(curves_todo)} to run")
    if args.dry_run:
        for out in baselines_todo + curves_todo + [out for out, _ in todo]:
            print(f"  todo {out}")
        print(estimate_text(profile, baselines_todo, curves_todo, [out for out, _ in todo], runs_root))
        return 0
    # one batch per profile folder at a time: two would run the same folders' notebooks at once
    with DirLock(runs_root / profile.name, "reproduce batch", fix=", or use another --runs-root"):
        failures, train_seconds = _run_baselines(baselines, args.data_root)
        _baselines_table(baselines, figures)
        curve_failures, curve_seconds = _run_curves(profile, curve_jobs, notebooks, figures, devices[0])
        failures += curve_failures
        try:
            ablation_tables(curve_jobs, figures)
        except Exception as e:  # noqa: BLE001 - recorded with the failures, the batch goes on
            failures.append((figures / "tables", f"ablation tables: {error_message(e)[:300]}"))
        seconds, report = 0.0, None
        if profile.runs:
            run_failures, seconds = _run_batch(profile, todo, devices, args.jobs, notebooks, cache_dir)
            failures += run_failures
            report = build_reports(runs_root / profile.name, figures, notebooks)
        own_baselines = baselines if profile.baselines_from is None else []  # else recorded with their profile's
        copied = collect_records(runs_root / profile.name, [out for out, _ in own_baselines + curve_jobs + planned],
                                 figures / "records")
        if profile.compared_with and (figures.parent / profile.compared_with / "records").is_dir():
            from .reporting.pages import unpaired_tables

            unpaired_tables(figures, figures.parent / profile.compared_with)
        if figures == (REPO / "figures" / profile.name).resolve():
            write_results_page()
    print(f"baselines took {train_seconds:.0f} s, curves {curve_seconds:.0f} s, runs {seconds:.0f} s; tables and "
          f"figures under {figures}" + (f"; report: {report}" if report else "")
          + f"; {copied} record file(s) under {figures / 'records'}")
    if failures:
        print(f"{len(failures)} run(s) failed (see error.json in each):", file=sys.stderr)
        for out, msg in failures:
            print(f"  {out}: {msg}", file=sys.stderr)
        return 1
    return 0


#: what `collect_records` copies: the records and executed notebooks of runs and curves, and a baseline's
#: training command, metrics and log (never checkpoints: final.pt, pruned.pt, checkpoint.pt)
RECORD_FILES = ("run.json", "experiment.ipynb", "curves.json", "curves.ipynb", "error.json")
BASELINE_RECORD_FILES = ("config.json", "metrics.jsonl", "train.log")


def collect_records(root: Path, folders: list[Path], dest: Path) -> int:
    """Copy the record files of `folders` (each under `root`) to the same relative paths under `dest`;
    the number of files copied (each replaced atomically)."""
    copied = 0
    for folder in folders:
        names = RECORD_FILES + (BASELINE_RECORD_FILES if folder.parent.name == "baselines" else ())
        for name in names:
            source = folder / name
            if source.is_file():
                target = dest / folder.relative_to(root) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
                shutil.copyfile(source, tmp)
                os.replace(tmp, target)
                copied += 1
    return copied


def _run_batch(profile: Profile, todo, devices, jobs: int, notebooks: Path, cache_dir: Path):
    """Execute the runs `todo` with `jobs` at once; (failures as (folder, message), seconds)."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if devices == ["cpu"] else 4
    failures = []
    start = time.perf_counter()

    def one(i, out, params):
        params = dict(params, device=devices[i % len(devices)])
        _need_baseline(params.get("pretrained"))
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
