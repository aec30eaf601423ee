"""ImageNet scale on one CPU with block statistics (METHOD.md section 2b): `paperprune.prune` end to end.

torchvision ResNet-50 (its prunable widths found by `paperprune.discover`), generated images (the
cost does not depend on their content), sGLP-IB with a k-nearest-class graph and sTLP-IB, 50% fewer
MACs, `statistics="block"`. Each run measures wall time, peak resident memory, the per-stage split
(forward pass, block kernels, class means, each bisection step's solves, surgery), the solver
iterations, the machine, date and commit, and is appended to a JSON list of runs with a Markdown
summary beside it (regenerated from the whole list).

The paper's setting (about 40 minutes of the whole 2-core CPU for both methods):

    OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 python benchmarks/bench_imagenet_scale.py --threads 2

`--time-limit S` stops each method after S seconds and records what it measured up to then (the
statistics, every finished solve), labelled as interrupted. A smoke test (seconds; writes elsewhere):

    python benchmarks/bench_imagenet_scale.py --classes 20 --size 64 --per-class 2 --out /tmp/scale.json

The exact statistics for comparison, measured at a smaller N and projected to the paper's (the forward
passes regrouped for the larger features and costed by the measured passes, the rest scaled by N squared:
`projected_forward`; `--statistics-only` stops at the first solve):

    python benchmarks/bench_imagenet_scale.py --statistics exact --per-class 2 --classes 250 --methods stlp \
        --statistics-only --threads 2
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_imagenet import Sampler, batches  # noqa: E402

import paperprune  # noqa: E402
import paperprune.lasso as lasso  # noqa: E402
from paperprune import ib  # noqa: E402
from paperprune.criteria import LassoCriterion  # noqa: E402
from paperprune.utils import atomic_write_json, atomic_write_text
from paperprune.lab.io import environment_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 1 << 30
PAPER_SAMPLES = 2000  # ImageNet's 1,000 classes at 2 images each


class Probes:
    """Timers wrapped around the stages `prune` runs: the block kernels (`ib._BlockStream`'s per-batch
    work, inside the forward pass), the class means of the classifier's input (`ib._ClassMeans.hook`, inside the
    same pass), every solver call (with its iterations) and
    every lam the budget rule asks for (`LassoCriterion.solutions`: the bracket search and each bisection
    step). `restore()` undoes the wrapping."""

    def __init__(self):
        self.kernels_s, self.embeddings_s, self.forward_s = 0.0, 0.0, 0.0
        self.solves: list[dict] = []
        self.levels: list[dict] = []
        self._undo = []
        self._wrap(ib._BlockStream, "features", self._kernels)
        self._wrap(ib._BlockStream, "batch_end", self._kernels)
        self._wrap(ib._ClassMeans, "hook", self._embeddings)
        self._wrap(ib, "_forward", self._forward)  # the exact statistics' feature passes (block: kernels inside)
        self._wrap(ib, "_groups", self._groups)  # how the exact statistics group layers into passes
        self.passes: list[dict] = []
        self.grouping = None
        self._wrap(LassoCriterion, "solutions", self._solutions)
        self._wrap(LassoCriterion, "prepare", self._prepare)
        self.bracket = 0   # levels asked inside `prepare`: the search for the lam that empties every layer
        self.statistics_only = False  # stop at the first solve (`--statistics-only`)
        for name in ("solve_sglp", "solve_stlp"):
            self._wrap(lasso, name, self._solve)

    def _wrap(self, owner, name, timer):
        original = getattr(owner, name)
        self._undo.append((owner, name, original))

        def wrapper(*args, **kwargs):
            return timer(original, *args, **kwargs)
        setattr(owner, name, wrapper)

    def restore(self):
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)

    def _kernels(self, original, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            self.kernels_s += time.perf_counter() - start

    def _forward(self, original, model, layers, images, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(model, layers, images, *args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            self.forward_s += elapsed
            self.passes.append({"layers": [layer.name for layer in layers], "images": int(images.shape[0]),
                                "s": elapsed})

    def _groups(self, original, layers, sizes, max_bytes):
        self.grouping = ([layer.name for layer in layers], dict(sizes), max_bytes)
        return original(layers, sizes, max_bytes)

    def _embeddings(self, original, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            self.embeddings_s += time.perf_counter() - start

    def _prepare(self, original, *args, **kwargs):
        out = original(*args, **kwargs)
        self.bracket = len(self.levels)
        return out

    def _solve(self, original, Q, R, *args, **kwargs):
        if self.statistics_only:
            raise TimeLimit
        start, cpu = time.perf_counter(), time.process_time()
        result = original(Q, R, *args, **kwargs)
        self.solves.append({"start": start, "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
                            "channels": int(Q.shape[0]), "iterations": int(result.iterations),
                            "converged": bool(result.converged), "warm": kwargs.get("B0") is not None})
        return result

    def _solutions(self, original, criterion, lam):
        start = time.perf_counter()
        before = len(self.solves)
        out = original(criterion, lam)
        solves = self.solves[before:]
        self.levels.append({"lam": float(lam), "wall_s": time.perf_counter() - start,
                            "solver_s": sum(s["wall_s"] for s in solves),
                            "iterations": sum(s["iterations"] for s in solves),
                            "max_iterations": max((s["iterations"] for s in solves), default=0),
                            "unconverged": sum(not s["converged"] for s in solves)})
        return out


class TimeLimit(Exception):
    """`--time-limit` reached: the run stops where it is and is recorded as interrupted."""


def _alarm(signum, frame):
    raise TimeLimit


def run(method: str, args) -> dict:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=args.classes).eval()
    block = dict(block_size=args.block_size, permutations=args.permutations) if args.statistics == "block" else {}
    options = dict(knn=args.knn) if method == "sglp" else {}
    probes = Probes()
    probes.statistics_only = args.statistics_only
    signal.signal(signal.SIGALRM, _alarm)
    try:
        with Sampler() as sampler:
            start = time.perf_counter()
            signal.alarm(args.time_limit or 0)
            try:
                _, report = paperprune.prune(model, batches(args.classes, args.per_class, args.size), method=method,
                                             flops_reduction=args.flops_reduction, samples_per_class=args.per_class,
                                             statistics=args.statistics, max_iter=args.max_iter, progress=True,
                                             **block, **options)
            except TimeLimit:
                return interrupted(method, args, probes, sampler, start)
            finally:
                signal.alarm(0)
            wall = time.perf_counter() - start
    finally:
        probes.restore()
    t = report.timings
    stats_end = start + t["statistics_s"]
    bracket = probes.levels[:probes.bracket]
    solver_in_statistics = sum(level["wall_s"] for level in bracket)
    gathered = t["statistics_s"] - probes.kernels_s - probes.embeddings_s - solver_in_statistics
    stages = {"statistics_s": t["statistics_s"],
              "forward_s": gathered if args.statistics == "block" else None,
              "kernels_s": probes.kernels_s if args.statistics == "block" else None,
              "embeddings_s": probes.embeddings_s,
              "bracket_s": solver_in_statistics,   # the lam that empties every layer, found in `prepare`
              "selection_s": t["selection_s"], "surgery_s": t["surgery_s"],
              "bracket": bracket, "bisection": probes.levels[probes.bracket:]}
    row = {**_shared(method, args, probes), "samples": report.num_calibration,
           "block_size": report.criterion.get("block_size"), "permutations": report.criterion.get("permutations"),
           "wall_s": wall, "peak_rss_gib": sampler.peak(start, time.perf_counter()),
           "peak_rss_statistics_gib": sampler.peak(start, stats_end), "cpu_s": sampler.cpu(start, time.perf_counter()),
           "stages": stages, "budget_steps": report.budget_steps, "macs_reduction": report.macs_reduction,
           "params_reduction": report.params_reduction, "lam": report.criterion.get("lam"),
           "unconverged_layers": report.criterion.get("unconverged_layers")}
    print(f"{method}: wall {wall:.0f} s, peak {row['peak_rss_gib']:.2f} GiB, statistics {t['statistics_s']:.0f} s "
          f"(kernels {probes.kernels_s:.0f} s), selection {t['selection_s']:.0f} s over {len(probes.levels)} lam "
          f"values, {row['solver_iterations']} solver iterations", flush=True)
    return row


def _shared(method: str, args, probes: Probes) -> dict:
    """The fields of a finished and of an interrupted row alike: the setting, the solves so far, the machine."""
    env = environment_info(torch.device("cpu"))
    return {"method": method, "classes": args.classes, "image_size": args.size, "statistics": args.statistics,
            "knn": args.knn if method == "sglp" else None, "threads": torch.get_num_threads(),
            "solver_iterations": sum(s["iterations"] for s in probes.solves), "solver_calls": len(probes.solves),
            "solver_s": sum(s["wall_s"] for s in probes.solves),
            "unconverged_solves": sum(not s["converged"] for s in probes.solves),
            "machine": {k: env.get(k) for k in ("hostname", "processor", "cpu_count", "torch", "torch_threads")},
            "date": env.get("date"), "commit": env.get("git_commit")}


def interrupted(method: str, args, probes: Probes, sampler, start: float) -> dict:
    """The row of a run stopped by `--time-limit`: what was measured up to then, labelled as such (no
    reduction reached; `stages.bisection` holds the finished bisection steps, `solves` every finished solve)."""
    now = time.perf_counter()
    first_solve = probes.solves[0]["start"] if probes.solves else now
    exact = args.statistics == "exact"
    row = {**_shared(method, args, probes), "samples": args.classes * args.per_class,
           "block_size": args.block_size if args.statistics == "block" else None,
           "permutations": args.permutations if args.statistics == "block" else None,
           "interrupted_after_s": now - start, "statistics_only": args.statistics_only, "wall_s": None,
           "peak_rss_gib": sampler.peak(start, now), "cpu_s": sampler.cpu(start, now),
           "stages": {"until_first_solve_s": first_solve - start,
                      "forward_s": probes.forward_s if exact else None,
                      "kernels_s": first_solve - start - probes.forward_s if exact else probes.kernels_s,
                      "embeddings_s": probes.embeddings_s, "bracket": probes.levels[:probes.bracket],
                      "bisection": probes.levels[probes.bracket:]},
           "solves": [{k: v for k, v in s.items() if k != "start"} | {"at_s": s["start"] - start}
                      for s in probes.solves]}
    if args.statistics_only:
        row["forward_passes"] = probes.passes
        if exact:
            row["projected_forward_s"] = projected_forward(probes, PAPER_SAMPLES)
        print(f"{method}: statistics only, {row['stages']['until_first_solve_s']:.0f} s before the first solve "
              f"(forward passes {probes.forward_s:.0f} s), peak {row['peak_rss_gib']:.2f} GiB", flush=True)
        return row
    print(f"{method}: stopped by --time-limit after {row['interrupted_after_s']:.0f} s: statistics and setup "
          f"{row['stages']['until_first_solve_s']:.0f} s, {len(probes.solves)} solves finished in "
          f"{row['solver_s']:.0f} s ({row['unconverged_solves']} at max_iter)", flush=True)
    return row


def projected_forward(probes: Probes, samples: int) -> float | None:
    """The exact statistics' forward passes at `samples` images, from those measured: the layers regrouped by
    `ib._groups` with every feature size scaled to `samples` (more, smaller groups), each pass costing
    samples / N times the measured pass time at the depth of its deepest layer (interpolated over the measured
    passes' deepest layers, in the layers' order)."""
    import numpy as np

    if probes.grouping is None:
        return None
    order, sizes, max_bytes = probes.grouping
    measured = [p for p in probes.passes if p["images"] > 1]  # not the one-image shape probe
    n = measured[0]["images"]
    depth = {name: i for i, name in enumerate(order)}
    points = sorted((max(depth[name] for name in p["layers"] if name in depth), p["s"]) for p in measured)
    scale = samples / n
    groups = ib._groups([_Named(name) for name in order], {k: v * scale for k, v in sizes.items()}, max_bytes)
    deepest = [max(depth[layer.name] for layer in group) for group in groups]
    return float(scale * np.interp(deepest, [d for d, _ in points], [t for _, t in points]).sum())


class _Named:
    """A stand-in layer for `ib._groups`, which reads only `.name`."""

    def __init__(self, name):
        self.name = name


def _steps(bisection: list[dict]) -> str:
    """The finished bisection steps as lam_hi / x (seconds), lam_hi being the first step's lam."""
    if not bisection:
        return "-"
    hi = bisection[0]["lam"]
    return ", ".join(f"{hi / b['lam']:.0f} ({b['wall_s']:.0f})" for b in bisection)


def markdown(runs: list[dict]) -> str:
    lines = ["# ImageNet scale on one CPU: block statistics end to end (benchmarks/bench_imagenet_scale.py)", "",
             "torchvision ResNet-50, generated images, `paperprune.prune` at 50% fewer MACs; sGLP-IB with a "
             "k-nearest-class graph, sTLP-IB. Wall and stage seconds; forward = the streamed pass without the "
             "block kernels and the class means; embeddings = gathering the class means of the classifier's "
             "input (a second forward pass in runs up to commit 5bcd396, a hook inside the first since); "
             "bracket = the solves that find the lam emptying every layer (in `prepare`); "
             "selection = the budget bisection, whose per-step solves are in the JSON (`stages.bisection`: "
             "lam, wall, solver seconds, iterations, unconverged layers per step); lam values = its steps.", "",
             "| date | commit | method | classes | px | N | statistics | threads | wall s | peak RSS GiB | forward s "
             "| kernels s | embeddings s | bracket s | selection s | lam values | solver iterations | unconverged "
             "| MACs reduction |",
             "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def f(v):
        return "-" if v is None else f"{v:.1f}"
    statistics_only = [r for r in runs if r.get("statistics_only")]
    interrupted_runs = [r for r in runs if r.get("interrupted_after_s") is not None and r not in statistics_only]
    for r in runs:
        if r in interrupted_runs or r in statistics_only:
            continue
        s = r["stages"]
        stat = r["statistics"] + (f" B={r['block_size']} M={r['permutations']}" if r["statistics"] == "block" else "")
        lines.append(f"| {r['date']} | {str(r['commit'])[:10]} | {r['method']} | {r['classes']} | {r['image_size']} | "
                     f"{r['samples']} | {stat} | {r['threads']} | {r['wall_s']:.1f} | {r['peak_rss_gib']:.2f} | "
                     f"{f(s['forward_s'])} | {f(s['kernels_s'])} | {f(s['embeddings_s'])} | {f(s['bracket_s'])} | "
                     f"{f(s['selection_s'])} | {len(s['bisection'])} | {r['solver_iterations']} | "
                     f"{r['unconverged_solves']} | {r['macs_reduction']:.4f} |")
    if interrupted_runs:
        lines += ["", "Runs stopped before they finished, by `--time-limit` unless a note below the table says otherwise "
                  "(no reduction reached; what they measured up to then):", "",
                  "| date | commit | method | classes | px | N | statistics | threads | stopped after s | peak RSS GiB "
                  "| statistics and setup s | solves finished | solver s | slowest solve s (iterations) | at max_iter "
                  "| bisection steps finished: lam_hi / x (s) |",
                  "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in interrupted_runs:
            n = r["solver_calls"]
            slowest = max(r["solves"], key=lambda x: x["wall_s"], default={"wall_s": float("nan"), "iterations": 0})
            stat = r["statistics"] + (f" B={r['block_size']} M={r['permutations']}" if r["statistics"] == "block" else "")
            lines.append(f"| {r['date']} | {str(r['commit'])[:10]} | {r['method']} | {r['classes']} | {r['image_size']} "
                         f"| {r['samples']} | {stat} | {r['threads']} | {r['interrupted_after_s']:.0f} | "
                         f"{r['peak_rss_gib']:.2f} | {r['stages']['until_first_solve_s']:.0f} | {n} | "
                         f"{r['solver_s']:.0f} | {slowest['wall_s']:.0f} ({slowest['iterations']}) | "
                         f"{r['unconverged_solves']} | {_steps(r['stages']['bisection'])} |")
        lines += [f"- {r['date']}: {r['note']}" for r in interrupted_runs if r.get("note")]
    if statistics_only:
        lines += ["", f"Statistics alone (`--statistics-only`: stopped at the first solve), measured at N samples and "
                  f"**projected** to the paper's N = {PAPER_SAMPLES}: the forward passes regrouped as `ib._groups` "
                  "groups the layers at that N (features N times larger, so more passes), each pass N-fold the "
                  "measured time of a pass as deep; the kernels (the rest before the first solve: the statistics "
                  "from the gathered features, and setup) to N squared. Projections are arithmetic on the "
                  "measured row, not runs.", "",
                  "| date | commit | classes | px | N | statistics | threads | measured s | forward s | kernels s "
                  "| peak RSS GiB | projected to N = 2,000: forward s | kernels s | total s |",
                  "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in statistics_only:
            s, scale = r["stages"], PAPER_SAMPLES / r["samples"]
            forward, kernels = s.get("forward_s"), s["kernels_s"]
            forward_n = r.get("projected_forward_s")
            projected = ("- | - | -" if forward_n is None else
                         f"{forward_n:.0f} | {kernels * scale ** 2:.0f} | {forward_n + kernels * scale ** 2:.0f}")
            lines.append(f"| {r['date']} | {str(r['commit'])[:10]} | {r['classes']} | {r['image_size']} | "
                         f"{r['samples']} | {r['statistics']} | {r['threads']} | {s['until_first_solve_s']:.0f} | "
                         f"{f(forward)} | {f(kernels)} | {r['peak_rss_gib']:.2f} | {projected} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--per-class", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["sglp", "stlp"], choices=["sglp", "stlp"])
    p.add_argument("--statistics", default="block", choices=list(ib.STATISTICS))
    p.add_argument("--block-size", type=int, default=ib.BLOCK_SIZE)
    p.add_argument("--permutations", type=int, default=ib.PERMUTATIONS)
    p.add_argument("--knn", type=int, default=5, help="sGLP-IB: each class's graph neighbours")
    p.add_argument("--flops-reduction", type=float, default=0.5)
    p.add_argument("--max-iter", type=int, default=lasso.SOLVER_MAX_ITER)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--time-limit", type=int, default=None,
                   help="seconds per method; a run stopped by it is recorded as interrupted with what it measured")
    p.add_argument("--statistics-only", action="store_true",
                   help="stop each method at its first solve: the statistics' cost alone, recorded with a projection "
                        f"to N = {PAPER_SAMPLES}")
    p.add_argument("--out", type=Path, default=RESULTS / "imagenet-scale.json",
                   help="the JSON list of runs to append to (the Markdown summary goes beside it)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = json.loads(args.out.read_text()) if args.out.is_file() else []
    for method in args.methods:
        runs.append(run(method, args))
        atomic_write_json(args.out, runs)
        atomic_write_text(args.out.with_suffix(".md"), markdown(runs))
    print(f"-> {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
