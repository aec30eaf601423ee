"""Memory placement and CPU latency: does a fresh copy of a model measure like another? (results in
benchmarks/results/NAME.{json,md}, with the machine, the date and the commit).

`paperprune.latency.measure_side_by_side` copies both models afresh for every measurement. One VGG-16
(untrained, Fashion-MNIST's 1x32x32 input, batch 64, eager, one torch thread) and one pruned copy of it
(the first channels kept: 35% of each of the first seven convs, 80% of the rest) are measured side by
side `--repeats` times, in a process whose heap first held and freed the Fashion-MNIST training set
and 200 MiB of tensors, as a long-running one has. Three ways, alternating:

- *allocator*: each copy's weights where torch's allocator puts them (a deep copy);
- *packed*: each copy's weights packed into one fresh mapping advised for huge pages, what
  `measure_side_by_side` does (`paperprune.latency._copy_to`);
- *same*: two packed copies made once at the start and reused.

Reported per way: each measurement's median reduction, its 95% interval, the median times, and their
spread over the repeats.

    python benchmarks/bench_latency_placement.py [--repeats 6]
"""
import argparse
import copy
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not the installed one

import paperprune  # noqa: E402
import paperprune.latency as latency
from paperprune.lab.data import load_tensors
from paperprune.lab.io import environment_info
from paperprune.models import prunable_layers
from paperprune.surgery import prune_channels
from paperprune.utils import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
WAYS = ("allocator", "packed", "same")


def measure(repeats: int) -> list[dict]:
    torch.manual_seed(0)
    model = paperprune.create_model("vgg16", num_classes=10, in_channels=1).eval()
    layers = prunable_layers(model)
    modules = dict(model.named_modules())
    widths = {layer.name: round(modules[layer.conv].out_channels * (0.35 if i < 7 else 0.8))
              for i, layer in enumerate(layers)}
    pruned = prune_channels(copy.deepcopy(model), layers, {n: torch.arange(w) for n, w in widths.items()},
                            (1, 32, 32))
    example = torch.randn(64, 1, 32, 32)
    packed = latency._copy_to
    made_once = {id(model): packed(model, "cpu"), id(pruned): packed(pruned, "cpu")}
    copies = {"allocator": lambda m, device: copy.deepcopy(m).to(device).eval(), "packed": packed,
              "same": lambda m, device: made_once[id(m)]}
    rows = []
    try:
        for repeat in range(repeats):
            for way in WAYS:
                latency._copy_to = copies[way]
                m = latency.measure_side_by_side(model, pruned, example, "eager")
                rows.append({"repeat": repeat, "way": way, "reduction": m["reduction"],
                             "reduction_interval": m["reduction_interval"], "rounds": m["rounds"],
                             "before_ms": m["before_us"] / 1e3, "after_ms": m["after_us"] / 1e3})
                print(f"{way} {repeat}: -{100 * m['reduction']:.1f}% [{100 * m['reduction_interval'][0]:.1f}, "
                      f"{100 * m['reduction_interval'][1]:.1f}], {m['before_us'] / 1e3:.0f} -> "
                      f"{m['after_us'] / 1e3:.0f} ms, {m['rounds']} rounds", flush=True)
    finally:
        latency._copy_to = packed
    return rows


def summary(rows, way) -> dict:
    mine = [row for row in rows if row["way"] == way]
    r = np.array([row["reduction"] for row in mine])
    before = np.array([row["before_ms"] for row in mine])
    half = max(max(row["reduction_interval"][1] - row["reduction"], row["reduction"] - row["reduction_interval"][0])
               for row in mine)
    return {"n": int(r.size), "reduction_median": float(np.median(r)), "reduction_min": float(r.min()),
            "reduction_max": float(r.max()), "widest_half_interval": float(half),
            "before_ms_min": float(before.min()), "before_ms_max": float(before.max())}


def markdown(result) -> str:
    env = result["environment"]
    lines = ["# Memory placement and CPU latency (benchmarks/bench_latency_placement.py)", "",
             f"Host {env['hostname']}, cpu {env['processor']} x{env['cpu_count']}, torch {env['torch']}, one torch "
             f"thread. Run {env['date']} at commit {env['git_commit']}. Load average (1, 5, 15 min) at the start "
             f"{result['load_before']}, at the end {result['load_after']}. Transparent huge pages available: "
             f"{result['huge_pages']}.", "",
             "VGG-16 (untrained) and a pruned copy (first channels kept: 35% of each of the first seven convs, 80% of "
             "the rest), eager, batch 64, measured side by side by `paperprune.latency.measure_side_by_side` (median "
             "per-round reduction, rounds until its 95% interval is within 1 point or 41 rounds), "
             f"{result['repeats']} times each way, the ways alternating, in a process whose heap already held and "
             "freed other tensors. *allocator*: fresh copies where torch's allocator puts them; *packed*: fresh "
             "copies packed onto one mapping advised for huge pages (what `measure_side_by_side` does); *same*: "
             "two packed copies made once and reused.", "",
             "| way | n | reduction: median (min to max) | widest half-interval of one measurement | unpruned model, "
             "median ms per measurement: min to max |",
             "|---|---:|---|---:|---|"]
    for way in WAYS:
        s = result["summary"][way]
        lines.append(f"| {way} | {s['n']} | {100 * s['reduction_median']:.1f}% ({100 * s['reduction_min']:.1f}% to "
                     f"{100 * s['reduction_max']:.1f}%) | {100 * s['widest_half_interval']:.1f} points | "
                     f"{s['before_ms_min']:.0f} to {s['before_ms_max']:.0f} |")
    lines += ["", "Quiet machine: run alone, nothing else on the CPU."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6, help="measurements of each way")
    parser.add_argument("--name", default="latency-placement", help="results file stem")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    held = load_tensors("fashion-mnist", "train"), [torch.randn(1 << 20) for _ in range(50)]
    del held  # a heap that has held and freed tensors, as a long-running process's has
    rows = measure(args.repeats)
    result = {"environment": environment_info("cpu"), "repeats": args.repeats, "load_before": load_before,
              "load_after": os.getloadavg(), "huge_pages": latency.huge_pages_available(), "rows": rows,
              "summary": {way: summary(rows, way) for way in WAYS}}
    atomic_write_json(RESULTS / f"{args.name}.json", result)
    atomic_write_text(RESULTS / f"{args.name}.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
