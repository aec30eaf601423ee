"""ImageNet-scale pruning cost (results in benchmarks/results/imagenet.{json,md}).

`paperprune.prune` with sGLP-IB and sTLP-IB on torchvision's ResNet-50 (its prunable groups
found by `paperprune.discover`) at 50% fewer MACs, with generated images (the cost does not
depend on their content): time and peak resident memory of the statistics and of the
selection, the statistics' multiply-add count (forward passes plus kernels, so GPU time can be
projected), and the solvers' share. The issue's setting is 224x224, 1,000 classes and 2 images
per class (target on this CPU: under 20 min and 12 GiB); smaller settings show where the time goes.

    python benchmarks/bench_imagenet.py [--size 224] [--classes 1000] [--per-class 2] [--threads N]
                                        [--methods sglp stlp] [--name imagenet]
    python benchmarks/bench_imagenet.py --summarise NAME [NAME ...]   # imagenet.{json,md} from runs
"""
import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not the installed one

import paperprune
import paperprune.lasso as lasso
from paperprune import ib
from paperprune.discover import discover
from paperprune.utils import atomic_write_json, atomic_write_text
from paperprune.lab.io import environment_info

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 1 << 30


def batches(classes, per_class, size, batch=100):
    """Class-balanced generated images, made batch by batch (as a loader would hand them over)."""
    labels = torch.arange(classes).repeat(per_class)
    gen = torch.Generator().manual_seed(0)
    for start in range(0, labels.numel(), batch):
        y = labels[start:start + batch]
        yield torch.randn(y.numel(), 3, size, size, generator=gen), y


def _prefix_macs(model, layers, size):
    """Per image: the conv/linear multiply-adds of a forward pass up to the end of each layer's observe
    module (its first call), and of the whole pass."""
    from paperprune.flops import layer_macs

    per = layer_macs(model, (3, size, size))
    names = {m: n for n, m in model.named_modules()}
    done, total = {}, [0]

    def hook(module, inputs, output):
        name = names[module]
        if name not in done:
            total[0] += per.get(name, 0)
            done[name] = total[0]

    hooks = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return {layer.name: done[layer.observe] for layer in layers}, sum(per.values())


def statistics_macs(model, layers, size, n, max_bytes=ib.DEFAULT_MAX_BYTES, batch=64):
    """Multiply-adds and memory of the statistics (METHOD.md section 2; the code of ib.layer_statistics):
    one forward pass per group of consecutive layers whose float32 features fit `max_bytes`, each stopping
    at the group's last observed module after its first batch (which runs whole), plus the class
    embeddings' whole pass; per layer N^2 C (2D + C) for the two kernel passes and the Gram. Peak memory:
    the largest group's features (held until its layers are done; the kernels centre them in place), one
    kernel tile (at most `max_bytes`) and the calibration images (float32)."""
    probe = ib.channel_features(model, layers, torch.zeros(1, 3, size, size))
    shapes = {name: (f.shape[1], f.shape[2]) for name, f in probe.items()}
    sizes = {name: c * d * n * 4 for name, (c, d) in shapes.items()}
    groups = ib._groups(layers, sizes, max_bytes)
    prefix, full = _prefix_macs(model, layers, size)
    first = min(batch, n)
    passes = [max(prefix[layer.name] for layer in g) * (n - first) + full * first for g in groups]
    forward = sum(passes) + full * n
    kernels = sum(n * n * c * (2 * d + c) for c, d in shapes.values())
    group_bytes = max(sum(sizes[layer.name] for layer in g) for g in groups)
    return {"forward_passes": len(groups) + 1, "forward_macs_per_pass": full * n, "forward_macs": forward,
            "embeddings_macs": full * n,
            "forward_macs_whole_passes": full * n * (len(groups) + 1), "kernel_macs": kernels,
            "channels": sum(c for c, _ in shapes.values()), "layers": len(layers),
            "largest_layer_features_gib": max(sizes.values()) / GIB, "max_bytes": max_bytes,
            "largest_group_gib": group_bytes / GIB, "images_gib": n * 3 * size * size * 4 / GIB,
            "peak_estimate_gib": (group_bytes + max_bytes + n * 3 * size * size * 4) / GIB}


class Sampler:
    """Resident memory and CPU time (user + system) of this process every 50 ms, with timestamps: on a
    shared machine the CPU seconds say what the work costs, the wall seconds what it took."""

    def __init__(self):
        self.samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        proc = psutil.Process()
        while not self._stop.is_set():
            cpu = proc.cpu_times()
            self.samples.append((time.perf_counter(), proc.memory_info().rss, cpu.user + cpu.system))
            time.sleep(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def peak(self, t0, t1):
        inside = [rss for t, rss, _ in self.samples if t0 <= t <= t1]
        return max(inside) / GIB if inside else None

    def cpu(self, t0, t1):
        inside = [cpu for t, _, cpu in self.samples if t0 <= t <= t1]
        return inside[-1] - inside[0] if inside else None


def timed_solvers():
    """Wrap the two solvers; returns the list of (start, wall seconds, CPU seconds) calls they record."""
    calls = []
    for name in ("solve_sglp", "solve_stlp"):
        original = getattr(lasso, name)

        def wrapper(*args, _original=original, **kwargs):
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return _original(*args, **kwargs)
            finally:
                calls.append((start, time.perf_counter() - start, time.process_time() - cpu))
        setattr(lasso, name, wrapper)
    return calls


def run(method, args, calls):
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=args.classes).eval()
    calls.clear()
    with Sampler() as sampler:
        start = time.perf_counter()
        _, report = paperprune.prune(model, batches(args.classes, args.per_class, args.size), method=method,
                                     flops_reduction=0.5, samples_per_class=args.per_class, progress=True)
        total = time.perf_counter() - start
    stats_end = start + report.timings["statistics_s"]
    select_end = stats_end + report.timings["selection_s"]

    def solver(t0, t1, cpu=False):
        return sum(c if cpu else s for t, s, c in calls if t0 <= t < t1)

    row = {"method": method, "total_s": total, **report.timings,
           "solver_in_statistics_s": solver(start, stats_end), "solver_in_selection_s": solver(stats_end, select_end),
           "statistics_cpu_s": sampler.cpu(start, stats_end), "selection_cpu_s": sampler.cpu(stats_end, select_end),
           "solver_cpu_s": solver(start, select_end, cpu=True),
           "solver_calls": len(calls), "peak_rss_statistics_gib": sampler.peak(start, stats_end),
           "peak_rss_selection_gib": sampler.peak(stats_end, select_end),
           "peak_rss_gib": sampler.peak(start, time.perf_counter()), "budget_steps": report.budget_steps,
           "macs_reduction": report.macs_reduction, "layers": len(report.layers),
           "criterion": report.criterion}
    row["solver_share"] = (row["solver_in_statistics_s"] + row["solver_in_selection_s"]) / (
        report.timings["statistics_s"] + report.timings["selection_s"])
    print(f"{method}: statistics {report.timings['statistics_s']:.0f} s ({row['statistics_cpu_s']:.0f} s CPU), "
          f"selection {report.timings['selection_s']:.0f} s ({row['selection_cpu_s']:.0f} s CPU), "
          f"solver share {row['solver_share']:.2f}, peak {row['peak_rss_gib']:.2f} GiB", flush=True)
    return row


ISSUE = {"size": 224, "classes": 1000, "per_class": 2}


def projection(result):
    """Lines projecting this run to the issue's setting: statistics at this run's multiply-add rate per
    CPU second; the solvers scaled by K (each ADMM iteration costs C^2 K) as if the iteration counts and
    bisection steps stayed the same, which they need not: they depend on the statistics."""
    a, issue = result["args"], result.get("issue_setting_macs")
    if issue is None:
        return []
    m = result["statistics_macs"]
    lines = [f"**Projection to the issue's setting** (224x224, 1,000 classes, N = 2,000), from this run's CPU "
             f"seconds: the statistics need {issue['forward_passes']} forward passes of "
             f"{issue['forward_macs_per_pass'] / 1e12:.1f} T multiply-adds ({issue['forward_macs'] / 1e12:.0f} T) and "
             f"{issue['kernel_macs'] / 1e12:.0f} T for the kernels; the largest layer's features take "
             f"{issue['largest_layer_features_gib']:.2f} GiB.", ""]
    for r in result["rows"]:
        rate = (m["forward_macs"] + m["kernel_macs"]) / max(r["statistics_cpu_s"], 1e-9)
        stats = (issue["forward_macs"] + issue["kernel_macs"]) / rate
        solver = r["solver_cpu_s"] * ISSUE["classes"] / a["classes"]
        lines.append(f"- {r['method']}: statistics at {rate / 1e9:.1f} G multiply-adds per CPU second -> about "
                     f"{stats / 3600:.1f} CPU hours; solvers {r['solver_cpu_s']:.0f} CPU s here, x "
                     f"{ISSUE['classes'] // a['classes']} for 1,000 classes = {solver / 3600:.1f} CPU hours if the "
                     "iteration counts stayed the same.")
    return lines


def markdown(result):
    a, env, m = result["args"], result["environment"], result["statistics_macs"]
    n = a["classes"] * a["per_class"]
    lines = [
        "# ImageNet-scale pruning cost (benchmarks/bench_imagenet.py)", "",
        f"Date {env['date']}, host {env['hostname']}, {env['processor']}, {env['cpu_count']} CPUs, torch "
        f"{env['torch']} ({env['torch_threads']} threads), commit {env['git_commit']}. Load average before/after: "
        f"{result['load_before']} / {result['load_after']} (the machine is shared)."
        + (f" Note: {result['note']}." if result.get("note") else ""), "",
        f"torchvision ResNet-50, {a['size']}x{a['size']}, {a['classes']} classes, {a['per_class']} generated images "
        f"per class (N = {n}), 50% fewer MACs, `paperprune.prune` with the groups `paperprune.discover` finds "
        f"({m['layers']} layers, {m['channels']} channels). Target (224x224, 1,000 classes, 2 per class): "
        "under 20 min and 12 GiB on this CPU.", "",
        "Wall seconds, and in brackets the process's CPU seconds (user + system), which do not depend on how busy "
        "the shared machine was.", "",
        "| method | statistics s | selection s | solver s (statistics + selection) | solver CPU s | solver share "
        "| peak RSS statistics GiB | peak RSS selection GiB | bisection steps | MACs reduction |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['statistics_s']:.1f} ({r['statistics_cpu_s']:.1f}) | "
                     f"{r['selection_s']:.1f} ({r['selection_cpu_s']:.1f}) | "
                     f"{r['solver_in_statistics_s']:.1f} + {r['solver_in_selection_s']:.1f} | {r['solver_cpu_s']:.1f} | "
                     f"{r['solver_share']:.2f} | "
                     f"{r['peak_rss_statistics_gib']:.2f} | {r['peak_rss_selection_gib']:.2f} | {r['budget_steps']} | "
                     f"{r['macs_reduction']:.4f} |")
    lines += [""] + projection(result) + ["", "Statistics multiply-adds (cost model of `paperprune.ib.feature_statistics`): "
              f"{m['forward_passes']} forward passes of at most {m['forward_macs_per_pass'] / 1e12:.2f} T each "
              f"({m['forward_macs'] / 1e12:.2f} T; one pass per group of layers whose features fit 1 GiB, plus the "
              f"class embeddings'), kernels {m['kernel_macs'] / 1e12:.2f} T (N^2 C (2D + C) per layer); the largest "
              f"layer's features take {m['largest_layer_features_gib']:.2f} GiB.", ""]
    return "\n".join(lines)


def memory_check(n):
    """Peak RSS of the statistics of the largest layer alone (the stem's 64 x 112 x 112 features) at N = `n`,
    against the cost model's peak (features + one tile + images): what the model leaves out (the process,
    the model, temporaries). Writes results/imagenet-memcheck.json."""
    model = torchvision.models.resnet50(num_classes=ISSUE["classes"]).eval()
    layers = [layer for layer in discover(model, (3, 224, 224)).layers if layer.conv == "conv1"]
    images, labels = torch.randn(n, 3, 224, 224), torch.arange(n) % ISSUE["classes"]
    macs = statistics_macs(model, layers, 224, n)
    with Sampler() as sampler:
        start = time.perf_counter()
        ib.layer_statistics(model, layers, images, labels, ISSUE["classes"], response=None)
        end = time.perf_counter()
    result = {"n": n, "layer": "conv1", "peak_rss_gib": sampler.peak(start, end),
              "model_peak_gib": macs["peak_estimate_gib"], "kernel_macs": macs["kernel_macs"],
              "forward_macs": macs["forward_macs"] - macs["embeddings_macs"],  # layer_statistics alone
              "cpu_s": sampler.cpu(start, end), "wall_s": end - start, "environment": environment_info("cpu")}
    atomic_write_json(RESULTS / "imagenet-memcheck.json", result)
    print(result)


def estimate(rates, kernel_rate, solver_cpu_s, budgets_gib=(1, 2, 4, 8)):
    """The issue's setting by the cost model (`statistics_macs`) for several feature budgets (ib's
    max_bytes; 1 GiB is the default): forward passes at the measured forward rates (`rates`, multiply-adds
    per CPU second of the 224 px runs, whose statistics are nearly all forward passes), kernels at
    `kernel_rate` (the memory check's, nearly all kernels; None: the forward rates); the solvers' CPU
    seconds of the 10-class runs scaled by K (an order of magnitude, see `projection`)."""
    model = torchvision.models.resnet50(num_classes=ISSUE["classes"]).eval()
    layers = discover(model, (3, ISSUE["size"], ISSUE["size"])).layers
    n = ISSUE["classes"] * ISSUE["per_class"]
    rows = [statistics_macs(model, layers, ISSUE["size"], n, max_bytes=b * GIB) for b in budgets_gib]
    lo, hi = min(rates), max(rates)
    k_lo, k_hi = (kernel_rate, kernel_rate) if kernel_rate else (lo, hi)
    lines = ["| feature budget GiB | forward passes | forward T multiply-adds (whole passes would be) | kernels T | "
             "statistics CPU min | peak memory GiB (model) |", "|---:|---:|---:|---:|---:|---:|"]
    for b, r in zip(budgets_gib, rows):
        fast = r["forward_macs"] / hi + r["kernel_macs"] / k_hi
        slow = r["forward_macs"] / lo + r["kernel_macs"] / k_lo
        r["statistics_cpu_min"] = [fast / 60, slow / 60]
        lines.append(f"| {b} | {r['forward_passes']} | {r['forward_macs'] / 1e12:.0f} "
                     f"({r['forward_macs_whole_passes'] / 1e12:.0f}) | {r['kernel_macs'] / 1e12:.0f} | "
                     f"{fast / 60:.0f}-{slow / 60:.0f} | {r['peak_estimate_gib']:.1f} |")
    solvers = {m: s_ * ISSUE["classes"] / 10 / 3600 for m, s_ in solver_cpu_s.items()}
    return rows, lines, solvers


def summarise(names):
    """benchmarks/results/imagenet.{json,md}: the recorded runs `names`, each with its projection, and the
    cost model's estimate of the issue's setting."""
    runs = [json.loads((RESULTS / f"{name}.json").read_text()) for name in names]
    rates = [(r["statistics_macs"]["forward_macs"] + r["statistics_macs"]["kernel_macs"]) / row["statistics_cpu_s"]
             for r in runs if r["args"]["size"] == ISSUE["size"] for row in r["rows"]]
    solver = {}
    for r in runs:
        if r["args"]["size"] == ISSUE["size"] and r["args"]["classes"] == 10:
            for row in r["rows"]:
                solver[row["method"]] = max(solver.get(row["method"], 0), row["solver_cpu_s"])
    memcheck = RESULTS / "imagenet-memcheck.json"
    check = json.loads(memcheck.read_text()) if memcheck.is_file() else None
    extra = check["peak_rss_gib"] - check["model_peak_gib"] if check else 0.0
    kernel_rate = None
    if check:  # the check's CPU seconds less its forward pass at the best forward rate
        kernel_rate = check["kernel_macs"] / (check["cpu_s"] - check["forward_macs"] / max(rates))
    rows, table, solvers = estimate(rates, kernel_rate, solver)
    default, big = rows[0], rows[-1]
    head = ["# ImageNet-scale pruning cost: summary (benchmarks/bench_imagenet.py)", "",
            "The issue's setting (torchvision ResNet-50, 224x224, 1,000 classes, 2 images per class, N = 2,000) "
            "has not been run on this shared 2-core CPU; the runs below (10 and 40 classes) measured the rates, "
            "and the cost model of `statistics_macs` (which follows ib.layer_statistics: one forward pass per "
            "group of layers whose float32 features fit the feature budget, each stopping at its group's last "
            "observed layer after the first batch; the class embeddings' whole pass; N^2 C (2D + C) per layer for "
            "the kernels) gives the issue's setting. Target: under 20 min and 12 GiB.", "",
            f"Statistics CPU time: forward passes at the {min(rates) / 1e9:.0f}-{max(rates) / 1e9:.0f} G "
            "multiply-adds per CPU second of the 224 px runs (nearly all forward), kernels at "
            + (f"{kernel_rate / 1e9:.1f} G per CPU second (the memory check below: the stem's kernels at "
               f"N = {check['n']}, {check['cpu_s']:.0f} CPU s)" if kernel_rate else "the same rates")
            + "; CPU seconds do not depend on the shared machine's load:", ""] + table + [
            "",
            f"- **Statistics.** With the default 1 GiB budget the {default['forward_passes']} passes cost "
            f"{default['forward_macs'] / 1e12:.0f} T multiply-adds ({default['forward_macs_whole_passes'] / 1e12:.0f} "
            "T if they ran whole; earlier summaries counted whole passes), and the kernels "
            f"{default['kernel_macs'] / 1e12:.0f} T, which no grouping changes: they are the exact statistic "
            "(every pair of the 2,000 samples, per channel). The memory target is met at the default budget: the "
            f"largest group is the stem's {default['largest_layer_features_gib']:.1f} GiB of features, which the "
            "kernels centre in place (earlier summaries assumed a copy), plus a 1 GiB tile and "
            f"{default['images_gib']:.1f} GiB of images: about {default['peak_estimate_gib']:.0f} GiB"
            + (f" by the model; measured on the stem alone at N = {check['n']} the peak RSS was "
               f"{check['peak_rss_gib']:.2f} GiB against the model's {check['model_peak_gib']:.2f} (the process, "
               f"the network, temporaries), so about {default['peak_estimate_gib'] + extra:.0f} GiB here"
               if check else "") + ". A larger "
            f"budget trades memory for passes ({big['forward_passes']} passes, "
            f"{big['forward_macs'] / 1e12:.0f} T at {big['max_bytes'] // GIB} GiB, about "
            f"{big['peak_estimate_gib']:.0f} GiB): the feature budget is not an option of `prune` yet "
            "(`ib.layer_statistics(max_bytes=)`); exposing it, and sizing it from the memory target, is the change "
            "that would cut the statistics' time most on a CPU.",
            f"- **Solvers.** The 10-class runs spent {', '.join(f'{m} {v:.0f}' for m, v in sorted(solver.items()))} "
            "CPU s in the solvers; each ADMM iteration costs C^2 K, so at K = 1,000 about "
            f"{', '.join(f'{m} {v:.1f}' for m, v in sorted(solvers.items()))} CPU hours if the iteration counts "
            "stayed the same (they depend on the statistics: the 40-class run at 32 px differs by 8x between "
            "the two methods), an order of magnitude, not a bound.",
            "- **Verdict.** Neither part fits 20 minutes on this CPU: the kernels alone are "
            f"{default['kernel_macs'] / 1e12:.0f} T multiply-adds, "
            f"{default['kernel_macs'] / (2 * (kernel_rate or max(rates))) / 60:.0f} minutes on both cores at the "
            "rate measured, before any forward pass or solver iteration. Both run unchanged on CUDA (the same torch "
            f"code): the statistics' {(big['forward_macs'] + big['kernel_macs']) / 1e12:.0f}-"
            f"{(default['forward_macs'] + default['kernel_macs']) / 1e12:.0f} T multiply-adds are seconds at a "
            "data-centre GPU's sustained fp32 rate (tens of T multiply-adds per second; not measured here). On this "
            "CPU no setting of the method meets it: 2 images per class is already the least the class kernels "
            "allow, and the larger feature budget leaves the kernels untouched.", "",
            "Ready to run (do not start it on a shared machine; it takes hours here): "
            "`OMP_NUM_THREADS=2 python benchmarks/bench_imagenet.py --threads 2 --name imagenet-224px-1000cls`, then "
            "`python benchmarks/bench_imagenet.py --summarise imagenet-224px-1000cls ...`.", "",
            "Projections from each run (CPU seconds; see the run's section; runs recorded before the cost model "
            "counted early-stopped passes project with whole passes):", ""]
    head += [f"- run {name}: {line}" for name, result in zip(names, runs) for line in
             [ln[2:] for ln in projection(result) if ln.startswith("- ")]]
    body = [markdown(result).replace("# ImageNet-scale pruning cost (benchmarks/bench_imagenet.py)",
                                     f"## Run {name}") for name, result in zip(names, runs)]
    atomic_write_json(RESULTS / "imagenet.json", {"runs": dict(zip(names, runs)), "estimate": rows,
                                                  "solver_hours_scaled": solvers})
    atomic_write_text(RESULTS / "imagenet.md", "\n".join(head) + "\n\n" + "\n\n".join(body))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--summarise", nargs="+", metavar="NAME", help="write imagenet.{json,md} from recorded runs")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--methods", nargs="+", default=["sglp", "stlp"])
    parser.add_argument("--name", default="imagenet", help="results file stem under benchmarks/results/")
    parser.add_argument("--memory-check", type=int, metavar="N", help="peak memory of the stem's statistics at N")
    args = parser.parse_args()
    if args.summarise:
        return summarise(args.summarise)
    if args.memory_check:
        torch.set_num_threads(args.threads)
        return memory_check(args.memory_check)
    torch.set_num_threads(args.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    model = torchvision.models.resnet50(num_classes=args.classes).eval()
    layers = discover(model, (3, args.size, args.size)).layers
    macs = statistics_macs(model, layers, args.size, args.classes * args.per_class)
    issue = None
    if {k: getattr(args, k) for k in ISSUE} != ISSUE:
        full = torchvision.models.resnet50(num_classes=ISSUE["classes"]).eval()
        issue = statistics_macs(full, discover(full, (3, 224, 224)).layers, 224, ISSUE["classes"] * ISSUE["per_class"])
        del full
    del model
    calls = timed_solvers()
    rows = [run(method, args, calls) for method in args.methods]
    result = {"args": vars(args), "environment": environment_info("cpu"), "statistics_macs": macs,
              "issue_setting_macs": issue, "rows": rows,
              "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()]}
    atomic_write_json(RESULTS / f"{args.name}.json", result)
    atomic_write_text(RESULTS / f"{args.name}.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
