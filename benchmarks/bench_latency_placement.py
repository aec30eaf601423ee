"""Memory placement and CPU latency: does a fresh copy of a model measure like an earlier one? (results in
benchmarks/results/NAME.{json,md}, with the machine, the date and the commit).

`paperprune.latency.measure_side_by_side` copies both models afresh for every measurement. One VGG-16
(untrained, Fashion-MNIST's 1x32x32 input, batch 64, eager, one torch thread) and one pruned copy of it
(the first channels kept: 35% of each of the first seven convs, 80% of the rest) are measured side by
side `--repeats` times in one process, alternating two ways: "fresh", as `measure_side_by_side` does,
and "same", the copies made once at the start and reused (its internal copy replaced by a lookup). The
whole is run twice, each in its own Python process: with torch's CPU allocator on transparent huge pages
(THP_MEM_ALLOC_ENABLE=1, which torch reads before it first allocates, hence the separate process) and
without. Reported per process and way: each measurement's median reduction, its 95% interval, the median
times, and their spread over the repeats.

    python benchmarks/bench_latency_placement.py [--repeats 6]
"""
import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def child(repeats: int) -> dict:
    import torch

    import paperprune
    import paperprune.latency as latency
    from paperprune.lab.io import environment_info
    from paperprune.models import prunable_layers
    from paperprune.surgery import prune_channels

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = paperprune.create_model("vgg16", num_classes=10, in_channels=1).eval()
    layers = prunable_layers(model)
    modules = dict(model.named_modules())
    widths = {layer.name: round(modules[layer.conv].out_channels * (0.35 if i < 7 else 0.8))
              for i, layer in enumerate(layers)}
    pruned = prune_channels(copy.deepcopy(model), layers, {n: torch.arange(w) for n, w in widths.items()},
                            (1, 32, 32))
    example = torch.randn(64, 1, 32, 32)
    fresh_copy = latency._copy_to
    made_once = {id(model): fresh_copy(model, "cpu"), id(pruned): fresh_copy(pruned, "cpu")}
    rows = []
    for repeat in range(repeats):
        for way in ("fresh", "same"):
            latency._copy_to = fresh_copy if way == "fresh" else (lambda m, device: made_once[id(m)])
            m = latency.measure_side_by_side(model, pruned, example, "eager")
            rows.append({"repeat": repeat, "way": way, "reduction": m["reduction"],
                         "reduction_interval": m["reduction_interval"], "rounds": m["rounds"],
                         "before_ms": m["before_us"] / 1e3, "after_ms": m["after_us"] / 1e3})
            print(f"  {way} {repeat}: -{100 * m['reduction']:.1f}% [{100 * m['reduction_interval'][0]:.1f}, "
                  f"{100 * m['reduction_interval'][1]:.1f}], {m['before_us'] / 1e3:.0f} -> {m['after_us'] / 1e3:.0f} "
                  f"ms, {m['rounds']} rounds", file=sys.stderr, flush=True)
    latency._copy_to = fresh_copy
    return {"environment": environment_info("cpu"), "huge_pages": latency.huge_pages_in_use(),
            "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"), "widths": widths, "rows": rows}


def summary(rows, way):
    import numpy as np

    r = np.array([row["reduction"] for row in rows if row["way"] == way])
    before = np.array([row["before_ms"] for row in rows if row["way"] == way])
    half = max(max(abs(row["reduction_interval"][1] - row["reduction"]), abs(row["reduction"] - row["reduction_interval"][0]))
               for row in rows if row["way"] == way)
    return {"n": int(r.size), "reduction_median": float(np.median(r)), "reduction_min": float(r.min()),
            "reduction_max": float(r.max()), "widest_half_interval": float(half),
            "before_ms_min": float(before.min()), "before_ms_max": float(before.max())}


def markdown(result) -> str:
    env = result["runs"][0]["environment"]
    lines = ["# Memory placement and CPU latency (benchmarks/bench_latency_placement.py)", "",
             f"Host {env['hostname']}, cpu {env['processor']} x{env['cpu_count']}, torch {env['torch']}, one torch "
             f"thread. Run {env['date']} at commit {env['git_commit']}. Load average (1, 5, 15 min) at the start "
             f"{result['load_before']}, at the end {result['load_after']}.", "",
             "VGG-16 (untrained) and a pruned copy (first channels kept: 35% of each of the first seven convs, 80% of "
             "the rest), eager, batch 64, measured side by side by `paperprune.latency.measure_side_by_side` (median "
             "per-round reduction, rounds until its 95% interval is within 1 point or 41 rounds), "
             f"{result['repeats']} times each way, the two ways alternating: *fresh*, the two models copied afresh "
             "for every measurement (what `measure_side_by_side` does), and *same*, copies made once at the start "
             "and reused. Each allocator setting in its own process.", "",
             "| torch CPU allocator | huge pages in use | way | n | reduction: median (min to max) | widest "
             "half-interval of one measurement | unpruned model, median ms per measurement: min to max |",
             "|---|---|---|---:|---|---:|---|"]
    for run in result["runs"]:
        allocator = ("THP_MEM_ALLOC_ENABLE=1" if run["THP_MEM_ALLOC_ENABLE"] == "1" else "default")
        for way in ("fresh", "same"):
            s = run["summary"][way]
            lines.append(f"| {allocator} | {run['huge_pages']} | {way} | {s['n']} | {100 * s['reduction_median']:.1f}% "
                         f"({100 * s['reduction_min']:.1f}% to {100 * s['reduction_max']:.1f}%) | "
                         f"{100 * s['widest_half_interval']:.1f} points | {s['before_ms_min']:.0f} to "
                         f"{s['before_ms_max']:.0f} |")
    lines += ["", "Quiet machine: run alone, nothing else on the CPU."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6, help="measurements of each way per process")
    parser.add_argument("--name", default="latency-placement", help="results file stem")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.repeats)))
        return 0
    from paperprune.utils import atomic_write_json, atomic_write_text

    result = {"repeats": args.repeats, "load_before": os.getloadavg(), "runs": []}
    for value in ("0", "1"):
        print(f"THP_MEM_ALLOC_ENABLE={value}:", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats)], check=True,
                             env={**os.environ, "THP_MEM_ALLOC_ENABLE": value}, stdout=subprocess.PIPE, text=True)
        run = json.loads(out.stdout.strip().splitlines()[-1])
        run["summary"] = {way: summary(run["rows"], way) for way in ("fresh", "same")}
        result["runs"].append(run)
    result["load_after"] = os.getloadavg()
    atomic_write_json(RESULTS / f"{args.name}.json", result)
    atomic_write_text(RESULTS / f"{args.name}.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
