"""Every torchvision classifier, pruned by one call or refused with its reason (table: docs/any-cnn.md).

For each name of `torchvision.models.list_models(module=torchvision.models)` (the image
classifiers), random weights with random BatchNorm statistics (so that masking a channel
matters), float64, an input of 3 x SIZE x SIZE: `paperprune.prune(model, data, method="l1",
flops_reduction=0.5)` with no layer list. A model counts as pruned when

- the MACs reduction is within 1% of the target (|achieved - 0.5| <= 0.01, paperprune.flops),
- the pruned model's output equals the original's with the removed channels zeroed where
  they are consumed (Torch-Pruning's dependency group of each removal; an MLP's removed hidden
  features on the last axis of the next linear layer's input), and
- `save_pruned` then `load_pruned(path, model=<a fresh instance>)` gives the same output;

otherwise the row holds the refusal's message (PaperpruneError) or the unexpected error. `l1`
keeps this a test of discovery and surgery, not of a criterion's statistics.

    python benchmarks/bench_torchvision.py                       # every model, writes docs/any-cnn.md
    python benchmarks/bench_torchvision.py --models resnet18 squeezenet1_1 --out /tmp/t.md

Each model runs in a child process, so one that exhausts the machine's memory (regnet_y_128gf's 645 M
parameters in float64 and the copies the checks need) is a row of its own ("killed") instead of the end
of the run. The rows are kept in a JSON file beside the table (`--out` with .json); a rerun skips the
models it already holds (`--fresh` starts over).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import psutil
import torch
import torch_pruning as tp
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package, not the installed one

import paperprune
from paperprune.discover import channel_axis, tolerant_concat_mapping, unit_width
from paperprune.flops import count_flops_params
from paperprune.utils import PaperpruneError, atomic_write_text

CLASSES = 10
#: constructor arguments a model needs beyond num_classes (auxiliary heads off, sizes for small inputs)
EXTRA = {"googlenet": dict(aux_logits=False, init_weights=True), "inception_v3": dict(aux_logits=False,
                                                                                      init_weights=True)}
#: the smallest input a model accepts when SIZE is smaller (inception_v3's stem needs 75; MaxViT's
#: 7 x 7 partitions of its last stage, at 1/32 of the input, need 224)
MIN_SIZE = {"inception_v3": 75, "maxvit_t": 224}


def input_side(name: str, size: int) -> int:
    """The input's height and width for a model: SIZE, raised to MIN_SIZE, and for a ViT rounded up to a
    multiple of its patch (vit_h_14 at SIZE 64: 70)."""
    size = max(size, MIN_SIZE.get(name, 0))
    if name.startswith("vit_"):
        patch = int(name.rsplit("_", 1)[1])
        size = -(-size // patch) * patch
    return size


def kwargs_of(name: str, size: int) -> dict:
    """Constructor arguments: num_classes, EXTRA, and the input size of models built for one (ViT, MaxViT)."""
    kwargs = dict(EXTRA.get(name, {}), num_classes=CLASSES)
    if name.startswith("vit_"):
        kwargs["image_size"] = size
    if name.startswith("maxvit_"):
        kwargs["input_size"] = (size, size)
    return kwargs


def build(name: str, size: int, seed: int = 0) -> nn.Module:
    """The model with random weights, random BatchNorm statistics and conv biases, float64, eval."""
    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, **kwargs_of(name, size)).double().eval()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.num_features
            m.running_mean.copy_(0.2 * torch.rand(n, generator=g, dtype=torch.float64) - 0.1)
            m.running_var.copy_(0.5 + torch.rand(n, generator=g, dtype=torch.float64))
            if m.affine:
                m.weight.data.copy_(0.5 + torch.rand(n, generator=g, dtype=torch.float64))
                m.bias.data.copy_(0.2 * torch.rand(n, generator=g, dtype=torch.float64) - 0.1)
    return model


def masked_output(model: nn.Module, report, x: torch.Tensor) -> torch.Tensor:
    """The unpruned model's output with every channel `report` removed zeroed at the input of each
    conv/linear that consumes it (found from Torch-Pruning's group of the removal; the tracer made to
    leave a concatenation of unknown width unmapped, as paperprune's discovery does, for Swin-S/B)."""
    zero = {}
    with tolerant_concat_mapping():
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=x[:1])
        for row in report.layers:
            root = model.get_submodule(row["name"])
            removed = sorted(set(range(unit_width(root))) - set(row["kept"]))
            if not removed:
                continue
            handler = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
            for dep, idxs in dg.get_pruning_group(root, handler, idxs=removed):
                if dep.handler in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
                    zero.setdefault(dep.target.module, set()).update(idxs)

    def hook(idx):
        def pre(module, inputs):
            y = inputs[0].clone()
            y.index_fill_(channel_axis(module), torch.tensor(idx), 0)  # a linear layer reads the last axis
            return (y,) + tuple(inputs[1:])
        return pre

    hooks = [m.register_forward_pre_hook(hook(sorted(idx))) for m, idx in zero.items()]
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in hooks:
            h.remove()


def one(name: str, size: int, target: float) -> dict:
    """Prune one model and check it (module docstring); a row of the table."""
    size = input_side(name, size)
    row = {"model": name, "input": f"3x{size}x{size}"}
    start = time.perf_counter()
    try:
        model = build(name, size)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2 * CLASSES, 3, size, size, generator=g, dtype=torch.float64)
        data = [(x, torch.arange(CLASSES).repeat(2))]
        pruned, report = paperprune.prune(model, data, method="l1", flops_reduction=target, samples_per_class=2,
                                          progress=False)
        base, macs = count_flops_params(model, (3, size, size))[0], count_flops_params(pruned, (3, size, size))[0]
        sample = x[:4]
        expected = masked_output(model, report, sample)
        with torch.no_grad():
            got = pruned.eval()(sample)
        scale = max(1.0, expected.abs().max().item())
        with tempfile.TemporaryDirectory() as tmp:
            paperprune.save_pruned(pruned, Path(tmp) / "pruned.pt")
            back = paperprune.load_pruned(Path(tmp) / "pruned.pt",
                                          model=lambda: torchvision.models.get_model(name, **kwargs_of(name, size)))
        with torch.no_grad():
            again = back.double()(sample)
        row.update(layers=len(report.layers), macs_before=base, reduction=1 - macs / base,
                   masked_diff=(got - expected).abs().max().item() / scale,
                   reload_diff=(again - got).abs().max().item() / scale)
        ok = (abs(row["reduction"] - target) <= 0.01 and row["masked_diff"] <= 1e-9
              and row["reload_diff"] == 0.0)
        row["result"] = "pruned" if ok else "FAILED check"
    except PaperpruneError as e:
        row.update(result="refused", reason=str(e).split("\n")[0])
    except Exception as e:  # noqa: BLE001 - an unexpected error is a finding of the benchmark, tabled
        row.update(result="error", reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                   traceback=traceback.format_exc(limit=3))
    row["seconds"] = time.perf_counter() - start
    return row


def table(rows: list[dict], args) -> str:
    """The markdown page: how it was made, the summary, one row per model."""
    pruned = sum(r["result"] == "pruned" for r in rows)
    versions = (f"torch {torch.__version__}, torchvision {torchvision.__version__}, Torch-Pruning "
                f"{tp.__version__}, paperprune {paperprune.__version__}")
    lines = [
        "# Any CNN: every torchvision classifier", "",
        f"Made by `python benchmarks/bench_torchvision.py{' ' + ' '.join(args.argv) if args.argv else ''}` on "
        f"{datetime.date.today().isoformat()} ({versions}; CPU, {torch.get_num_threads()} thread(s)).", "",
        f"Each model of `torchvision.models.list_models(module=torchvision.models)`, random weights and BatchNorm "
        f"statistics, float64, pruned by `paperprune.prune(model, data, method=\"l1\", flops_reduction="
        f"{args.reduction})` with no layer list (20 random images, 2 per class of {CLASSES}). *pruned*: the MACs "
        "reduction within 1% of the target, the output equal to the original's with the removed channels zeroed "
        "where they are consumed (max |difference| / max |output| <= 1e-9), and `save_pruned` / `load_pruned` "
        "giving the same output. *refused*: paperprune's message. *error*: an unexpected exception (a bug).", "",
        f"**{pruned} of {len(rows)} pruned ({100 * pruned / max(1, len(rows)):.0f}%).**", "",
        "| model | input | result | layers | MACs before | MACs removed | masked diff | reload diff | s | reason |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        numbers = (f"{r['layers']} | {r['macs_before'] / 1e6:.1f}M | {100 * r['reduction']:.2f}% | "
                   f"{r['masked_diff']:.1e} | {r['reload_diff']:.1e}") if "reduction" in r else " | | | | "
        reason = r.get("reason", "").replace("|", "\\|")
        lines.append(f"| {r['model']} | {r['input']} | {r['result']} | {numbers} | {r['seconds']:.0f} | {reason} |")
    return "\n".join(lines) + "\n"


#: the exit status of a child stopped by `_memory_watch`
OVER_MEMORY = 3


def _memory_watch(limit_gib: float) -> None:
    """In the child: end the process (status OVER_MEMORY) once its resident memory exceeds limit_gib, so a
    model whose check grows without bound is a row of its own within minutes, not a machine swapping."""
    proc = psutil.Process()
    while proc.memory_info().rss < limit_gib * 2 ** 30:
        time.sleep(0.2)
    os._exit(OVER_MEMORY)


def run_child(name: str, size: int, target: float, memory_gib: float) -> dict:
    """`one(name)` in a child process (its memory is returned when it ends); a child stopped for memory, or
    killed by a signal (the kernel's out-of-memory killer), gives an "error" row saying so."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        done = subprocess.run([sys.executable, __file__, "--one", name, "--size", str(size), "--reduction",
                               str(target), "--row", str(out), "--memory-gib", str(memory_gib)],
                              capture_output=True, text=True, check=False)
        if out.is_file():
            return json.loads(out.read_text())
    if done.returncode == OVER_MEMORY:
        reason = f"the check's process grew past --memory-gib {memory_gib:g} GiB and was stopped"
    else:
        how = f"signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
        reason = (f"the check's process was killed ({how}; out of memory on this {memory:.0f} GiB machine?): "
                  + (done.stderr.strip().splitlines() or [""])[-1][:200])
    return {"model": name, "input": f"3x{input_side(name, size)}x{input_side(name, size)}",
            "result": "error", "seconds": time.perf_counter() - start, "reason": reason}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help="default: every torchvision classifier")
    parser.add_argument("--size", type=int, default=64, help="input height and width (default 64)")
    parser.add_argument("--reduction", type=float, default=0.5, help="flops_reduction (default 0.5)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "any-cnn.md")
    parser.add_argument("--fresh", action="store_true", help="ignore the rows of an earlier run")
    parser.add_argument("--memory-gib", type=float, default=20.0,
                        help="a model's check is stopped when its process holds more (default 20 GiB: "
                             "regnet_y_128gf and vit_h_14 need about 15)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child: one model, its row to --row
    parser.add_argument("--row", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        threading.Thread(target=_memory_watch, args=(args.memory_gib,), daemon=True).start()
        args.row.write_text(json.dumps(one(args.one, args.size, args.reduction)))
        return 0
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    names = args.models or torchvision.models.list_models(module=torchvision.models)
    store = args.out.with_suffix(".json")
    done = {} if args.fresh or not store.is_file() else {r["model"]: r for r in json.loads(store.read_text())}
    rows = []
    for i, name in enumerate(names):
        r = done.get(name) or run_child(name, args.size, args.reduction, args.memory_gib)
        rows.append(r)
        print(f"{name:<24} {r['result']:<12} {r['seconds']:6.1f}s {r.get('reason', '')[:100]}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        later = [done[n] for n in names[i + 1:] if n in done]  # kept, so that a run stopped here loses no row
        atomic_write_text(store, json.dumps(rows + later, indent=1))  # after every model: a long run resumes
        atomic_write_text(args.out, table(rows, args))
    return 0 if all(r["result"] in ("pruned", "refused") for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
