"""Figures (PNG and PDF, matplotlib's Agg through Figure objects) from loaded run records."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ...utils import PaperpruneError, atomic_write_bytes
from .records import (METRICS, complete_runs, find_sweeps, group_labels, group_stats, is_number, load_references,
                      mean_std_n, method_label, method_rank, reference_stats, run_metrics, seed_groups, show_value)

def new_figure(width: float = 4.8, height: float = 3.4) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()



def save_figure(fig: Figure, out_dir: str | Path, stem: str) -> list[Path]:
    """Write `stem`.png and .pdf (Agg backend). Both are rendered in memory first and each is
    replaced atomically."""
    blobs = {}
    for ext in ("png", "pdf"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150, metadata={"CreationDate": None} if ext == "pdf" else None)
        blobs[ext] = buf.getvalue()
    return [atomic_write_bytes(Path(out_dir) / f"{stem}.{ext}", data) for ext, data in blobs.items()]



def _need(runs: list[dict], what: str) -> None:
    if not runs:
        raise PaperpruneError(f"no completed runs for {what}; check the runs root and load_runs(...) statuses")



def plot_tradeoff(runs: Sequence[dict], dataset: str, arch: str, references: Sequence[dict] | None = None,
                  metric: str = "top1") -> Figure:
    """Top-1 (metric "top1") or Δ top-1 (metric "delta_top1") against FLOPs reduction, one line
    per method (mean ± std over seeds); published points as black markers, their source in the legend.
    A published point appears only where its source gives both coordinates."""
    if metric not in ("top1", "delta_top1"):
        raise PaperpruneError(f"metric {metric!r} unknown; use 'top1' or 'delta_top1'")
    ours = complete_runs(runs, dataset=dataset, arch=arch)
    _need(ours, f"{dataset}/{arch}")
    fig, ax = new_figure(4.8, 4.4)
    groups = sorted(seed_groups(ours), key=lambda g: method_rank(g[0]["config"]["method"]))
    series: dict[str, list[dict]] = {}
    for g, label in zip(groups, group_labels([g[0]["config"] for g in groups], include_target=False)):
        series.setdefault(label, []).append(group_stats(g))
    for label, stats in series.items():
        stats.sort(key=lambda s: s["flops_reduction"][0])
        x = [100 * s["flops_reduction"][0] for s in stats]
        y = [s[metric][0] for s in stats]
        ax.errorbar(x, y, xerr=[100 * s["flops_reduction"][1] for s in stats], yerr=[s[metric][1] for s in stats],
                    marker="o", ms=4, capsize=2, lw=1, label=label)
    if metric == "top1":
        base = mean_std_n(run_metrics(r)["top1_base"] for r in ours)
        ax.axhline(base[0], color="grey", ls="--", lw=0.8, label=f"our baseline ({base[0]:.2f})")
    else:
        ax.axhline(0.0, color="grey", ls="--", lw=0.8)
    refs = load_references() if references is None else references
    points = [(ref, reference_stats(ref)[metric]) for ref in refs
              if ref["dataset"] == dataset and ref["arch"] == arch and ref["flops_reduction"] is not None]
    for (ref, y), marker in zip([p for p in points if p[1] is not None], "*PXDv^<>"):
        ax.scatter([100 * ref["flops_reduction"]], [y[0]], marker=marker, s=70, color="black", zorder=3,
                   label=f"published: {method_label(ref['method'])} [{ref['source']}]")
    ax.set_xlabel("FLOPs reduction (%)")
    ax.set_ylabel("top-1 (%)" if metric == "top1" else "Δ top-1 (points)")
    ax.set_title(f"{arch} on {dataset}", fontsize=9)
    fig.legend(loc="outside lower center", fontsize=5.5, markerscale=0.7, frameon=False)
    return fig



def plot_layer_widths(runs: Sequence[dict], dataset: str, arch: str) -> Figure:
    """Fraction of channels kept per prunable layer index, one line per configuration (mean over seeds)."""
    ours = [r for r in complete_runs(runs, dataset=dataset, arch=arch) if r.get("layers")]
    _need(ours, f"{dataset}/{arch} with recorded layer widths")
    fig, ax = new_figure(5.6, 3.2)
    groups = sorted(seed_groups(ours), key=lambda g: method_rank(g[0]["config"]["method"]))
    for g, label in zip(groups, group_labels([g[0]["config"] for g in groups])):
        lengths = {len(r["layers"]) for r in g}
        if len(lengths) != 1:
            raise PaperpruneError(f"runs {[r['relpath'] for r in g]} record different numbers of layers "
                                  f"{sorted(lengths)}")
        kept = np.array([[l["width_after"] / l["width_before"] for l in r["layers"]] for r in g]).mean(axis=0)
        ax.plot(np.arange(kept.size), kept, marker="o", ms=2.5, lw=1, label=label)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("prunable layer index")
    ax.set_ylabel("fraction of channels kept")
    ax.set_title(f"Kept widths: {arch} on {dataset}", fontsize=9)
    ax.legend(fontsize=6)
    return fig



def plot_sensitivity(runs: Sequence[dict], param: str, metric: str = "top1") -> Figure:
    """`metric` (a results-table metric key, e.g. top1, delta_top1, flops_reduction) against the
    values of `param`, one line per sweep (see sensitivity_table), mean ± std over seeds."""
    known = {m.key for m in METRICS}
    if metric not in known:
        raise PaperpruneError(f"metric {metric!r} unknown; use one of {', '.join(sorted(known))}")
    sweeps = find_sweeps(runs, param)
    if not sweeps:
        raise PaperpruneError(f"no sweep of {param!r}: need runs equal in every other config value "
                              f"with at least two values of {param}")
    fig, ax = new_figure()
    scale = 100.0 if next(m for m in METRICS if m.key == metric).percent else 1.0
    labels = group_labels([s[0][0]["config"] for s in sweeps], ignore=[param])
    values = sorted({show_value(g[0]["config"][param]) for s in sweeps for g in s})
    for sweep, label in zip(sweeps, labels):
        raw = [g[0]["config"][param] for g in sweep]
        x = raw if all(is_number(v) for v in raw) else [values.index(show_value(v)) for v in raw]
        stats = [group_stats(g)[metric] for g in sweep]
        kept = [(xi, s) for xi, s in zip(x, stats) if s is not None]
        c = sweep[0][0]["config"]
        ax.errorbar([k[0] for k in kept], [scale * k[1][0] for k in kept], yerr=[scale * k[1][1] for k in kept],
                    marker="o", ms=4, capsize=2, lw=1, label=f"{c['dataset']}/{c['arch']}: {label}")
    if not all(is_number(g[0]["config"][param]) for s in sweeps for g in s):
        ax.set_xticks(range(len(values)), values)
    ax.set_xlabel(param)
    ax.set_ylabel(next(m.header for m in METRICS if m.key == metric))
    ax.set_title(f"Sensitivity to {param}", fontsize=9)
    ax.legend(fontsize=6)
    return fig



def _graph_arrays(graph: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(graph, (tuple, list)) and len(graph) == 3:
        edges, weights, signs = graph
    else:
        edges, weights, signs = graph.edges, graph.weights, graph.signs
    return (np.asarray(edges, dtype=np.int64).reshape(-1, 2), np.asarray(weights, dtype=float).ravel(),
            np.asarray(signs, dtype=float).ravel())



def plot_class_graph(graph: Any, class_names: Sequence[str]) -> Figure:
    """The sGLP-IB class graph (METHOD.md section 2): classes on a circle, one line per edge,
    width proportional to the weight |corr|, blue solid for sign +1, red dashed for -1.

    `graph`: (edges (E,2), weights (E,), signs (E,)) arrays or any object with those attributes.
    """
    edges, weights, signs = _graph_arrays(graph)
    k = len(class_names)
    if not (len(weights) == len(signs) == len(edges)):
        raise PaperpruneError(f"graph has {len(edges)} edges, {len(weights)} weights, {len(signs)} signs; "
                              "they must match")
    if edges.size and (edges.min() < 0 or edges.max() >= k):
        raise PaperpruneError(f"graph edges name classes outside 0..{k - 1}; pass all {k} class names")
    angle = np.pi / 2 - 2 * np.pi * np.arange(k) / k
    pos = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    fig, ax = new_figure(4.2, 4.2)
    if edges.size:
        width = 0.5 + 3.0 * weights / max(float(np.abs(weights).max()), 1e-12)
        positive = signs >= 0
        for mask, color, style in ((positive, "tab:blue", "solid"), (~positive, "tab:red", "dashed")):
            if mask.any():
                ax.add_collection(LineCollection(pos[edges[mask]], linewidths=width[mask], colors=color,
                                                 linestyles=style, alpha=0.7))
    ax.scatter(pos[:, 0], pos[:, 1], s=60, color="white", edgecolors="black", zorder=3)
    for (x, y), name in zip(1.18 * pos, class_names):
        ax.text(x, y, name, ha="center", va="center", fontsize=6)
    ax.set_xlim(-1.45, 1.45)
    ax.set_ylim(-1.45, 1.45)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"Class graph: {len(edges)} edges (blue +, red −)", fontsize=9)
    return fig



def plot_class_tree(linkage_or_tree: Any, class_names: Sequence[str]) -> Figure:
    """The sTLP-IB class tree (METHOD.md section 2).

    Accepts a scipy linkage matrix ((K-1, 4) array: drawn as a dendrogram), or a tree given as
    its node groups (a list of class-index lists, or an object with `.groups` and optional
    `.weights`, e.g. lasso.ClassTree): drawn as nested boxes, root on top, node weight inside.
    """
    k = len(class_names)
    groups = getattr(linkage_or_tree, "groups", None)
    weights = getattr(linkage_or_tree, "weights", None)
    if groups is None and not isinstance(linkage_or_tree, np.ndarray) and isinstance(linkage_or_tree, (list, tuple)) \
            and all(isinstance(g, (list, tuple)) for g in linkage_or_tree):
        groups = linkage_or_tree
    if groups is None:
        from scipy.cluster.hierarchy import dendrogram

        linkage = np.asarray(linkage_or_tree, dtype=float)
        if linkage.shape != (k - 1, 4):
            raise PaperpruneError(f"linkage matrix has shape {linkage.shape}; expected ({k - 1}, 4) for {k} classes")
        fig, ax = new_figure(5.0, 3.2)
        dendrogram(linkage, labels=list(class_names), ax=ax, leaf_font_size=6, color_threshold=0)
        ax.set_ylabel("linkage distance")
        ax.set_title("Class tree (agglomerative clustering)", fontsize=9)
        return fig
    return _plot_tree_groups([sorted({int(c) for c in g}) for g in groups],
                             None if weights is None else np.asarray(weights, dtype=float).ravel(), class_names)



def _plot_tree_groups(groups: list[list[int]], weights: np.ndarray | None, class_names: Sequence[str]) -> Figure:
    k = len(class_names)
    if any(not g or g[0] < 0 or g[-1] >= k for g in groups):
        raise PaperpruneError(f"tree groups must be non-empty and name classes in 0..{k - 1}")
    if weights is not None and weights.size != len(groups):
        raise PaperpruneError(f"tree has {len(groups)} groups but {weights.size} weights")
    order = sorted(range(len(groups)), key=lambda i: (-len(groups[i]), groups[i]))
    sets = [set(groups[i]) for i in order]
    for a in range(len(sets)):
        for b in range(a):
            if sets[a] & sets[b] and not sets[a] <= sets[b]:
                raise PaperpruneError("tree groups must be nested or disjoint (a tree), "
                                      f"got {sorted(sets[b])} and {sorted(sets[a])}")
    # Each class sorted by its root-to-leaf path of node ranks puts every node's classes side by side.
    paths = {c: [r for r, s in enumerate(sets) if c in s] for c in range(k)}
    leaf_pos = {c: p for p, c in enumerate(sorted(range(k), key=lambda c: paths[c]))}
    depth = [sum(1 for b in range(a) if sets[a] < sets[b]) for a in range(len(sets))]
    fig, ax = new_figure(5.6, 0.6 + 0.45 * (max(depth, default=0) + 2))
    for a, s in enumerate(sets):
        lo, hi = min(leaf_pos[c] for c in s), max(leaf_pos[c] for c in s)
        ax.add_patch(Rectangle((lo + 0.05, -depth[a] - 0.9), hi - lo + 0.9, 0.8, facecolor="tab:blue",
                               alpha=0.15 + 0.5 * len(s) / k, edgecolor="black", lw=0.5))
        if weights is not None:
            ax.text((lo + hi + 1) / 2, -depth[a] - 0.5, f"w = {weights[order[a]]:.2g}", ha="center", va="center",
                    fontsize=7)
    bottom = -max(depth, default=0) - 1
    for c, p in leaf_pos.items():
        ax.text(p + 0.5, bottom - 0.1, class_names[c], rotation=90, ha="center", va="top", fontsize=8)
    ax.set_xlim(0, k)
    ax.set_ylim(bottom - 2.2, 0.1)
    ax.axis("off")
    ax.set_title(f"Class tree: {len(groups)} nodes" + (" (node weight inside)" if weights is not None else ""),
                 fontsize=9)
    return fig

