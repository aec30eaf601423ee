"""Solver benchmark: paperprune.lasso (torch) against cvxpy on the same sGLP-IB / sTLP-IB problems.

Instances mimic the per-layer statistics of METHOD.md section 2: Q is a normalised-HSIC Gram
(Q = Phi^T Phi with unit-norm, non-negative columns, so Q is PSD with unit diagonal and positive
off-diagonals around 0.5-0.7, as normalised HSIC between ReLU channels is), R = Phi^T Y in [0, 1]
with class-selective channels; the class graph and tree come from the library's builders on
class embeddings with planted superclasses. lam is a fixed fraction of max R (the B = 0
threshold of the plain non-negative lasso), gamma = GAMMA_RATIO * lam.

Timings: torch on CPU, one thread (Clarabel is single-threaded); ours is the median of full
solves (eigendecomposition included); cvxpy is wall time of problem construction +
canonicalisation + solve with its default solver (CLARABEL, default tolerances), plus the solver's
own reported solve time. The two are interleaved: a round is REPEATS solves of ours then one of
cvxpy, and an instance whose cvxpy run takes under CVXPY_REPEAT_UNDER_S gets CVXPY_ROUNDS rounds,
so that a slow spell of a shared machine lands on both sides of a millisecond-scale ratio; the
ratio is median(cvxpy) / median(ours). Gap = (F_ours - F_cvxpy) / |F_cvxpy| (negative: ours is lower).

    python benchmarks/bench_solvers.py [--sizes 64x10,512x10,256x100] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paperprune.lasso import (solve_sglp,  # noqa: E402
                              solve_stlp)
from paperprune.utils import atomic_write_json, atomic_write_text, environment_info  # noqa: E402

LAM_FRACTION = 0.5
GAMMA_RATIO = 0.5
REPEATS = 7
CVXPY_ROUNDS = 3
CVXPY_REPEAT_UNDER_S = 5.0
CVXPY_TIME_LIMIT_S = 1800.0  # sTLP 256x100 took 588 s of solve on 2026-12-01; keep a 3x margin


def hsic_like_instance(C: int, K: int, seed: int = 0):
    """(Q (C,C), R (C,K), class embeddings (K,64)) shaped like normalised-HSIC statistics."""
    rng = np.random.default_rng(seed)
    D = 4 * C
    groups = rng.integers(0, max(2, K // 5), size=K)  # planted superclasses
    super_dirs = rng.standard_normal((D, groups.max() + 1))
    class_dirs = super_dirs[:, groups] + rng.standard_normal((D, K))
    common = rng.standard_normal(D)
    selectivity = rng.dirichlet(np.full(K, 0.3), size=C)  # each channel prefers a few classes
    Phi = np.abs(common[:, None] + 1.5 * class_dirs @ selectivity.T + rng.standard_normal((D, C)))
    Phi /= np.linalg.norm(Phi, axis=0)
    Y = np.abs(0.5 * common[:, None] + 1.5 * class_dirs + rng.standard_normal((D, K)))
    Y /= np.linalg.norm(Y, axis=0)
    emb = np.eye(groups.max() + 1)[groups] @ rng.standard_normal((groups.max() + 1, 64)) \
        + 0.7 * rng.standard_normal((K, 64))
    return torch.tensor(Phi.T @ Phi), torch.tensor(Phi.T @ Y), emb


def _cvxpy_problem(Q, R, lam, *, graph=None, gamma=0.0, tree=None):
    import cvxpy as cp

    q, U = np.linalg.eigh(Q.numpy())
    F = (U * np.sqrt(np.clip(q, 0, None))).T  # F^T F = Q
    C, K = R.shape
    B = cp.Variable((C, K), nonneg=True)
    obj = 0.5 * cp.sum_squares(F @ B) - cp.sum(cp.multiply(R.numpy(), B))
    if graph is not None:
        obj = obj + lam * cp.sum(B)
        if graph.num_edges:
            D = graph.incidence(K).numpy()
            obj = obj + gamma * cp.sum(cp.abs(B @ D.T) @ graph.weights.numpy())
    else:
        obj = obj + lam * sum(float(w) * cp.sum(cp.norm(B[:, g], 2, axis=1))
                              for g, w in zip(tree.groups, tree.weights.tolist()) if w > 0)
    return cp.Problem(cp.Minimize(obj))


def _run_cvxpy(build):
    import cvxpy as cp

    t0 = time.perf_counter()
    prob = build()
    try:
        prob.solve(solver="CLARABEL", time_limit=CVXPY_TIME_LIMIT_S)
        status = prob.status
    except cp.error.SolverError as e:  # e.g. the time limit was hit
        status = f"solver error: {e}"
    wall = time.perf_counter() - t0
    value = prob.value if status in ("optimal", "optimal_inaccurate") else None
    stats = prob.solver_stats
    return {"objective": None if value is None else float(value), "status": status, "wall_s": wall,
            "solve_s": float(stats.solve_time) if stats is not None and stats.solve_time else wall}


def bench_one(problem: str, C: int, K: int, seed: int = 0) -> dict:
    Q, R, emb = hsic_like_instance(C, K, seed)
    lam = LAM_FRACTION * float(R.max())
    if problem == "sglp":
        graph = class_graph_from_embeddings(emb)
        gamma = GAMMA_RATIO * lam
        ours = lambda: solve_sglp(Q, R, graph, lam, gamma)  # noqa: E731
        build = lambda: _cvxpy_problem(Q, R, lam, graph=graph, gamma=gamma)  # noqa: E731
        structure = {"edges": graph.num_edges, "gamma": gamma}
    else:
        tree = class_tree_from_embeddings(emb)
        ours = lambda: solve_stlp(Q, R, tree, lam)  # noqa: E731
        build = lambda: _cvxpy_problem(Q, R, lam, tree=tree)  # noqa: E731
        structure = {"tree_nodes": tree.num_nodes, "tree_levels": len(tree.levels)}
    times, runs = [], []
    while not runs or (len(runs) < CVXPY_ROUNDS and runs[0]["wall_s"] < CVXPY_REPEAT_UNDER_S):
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            res = ours()
            times.append(time.perf_counter() - t0)
        if not runs:
            print(f"[{problem} C={C} K={K}] ours {statistics.median(times):.3f}s ({res.iterations} it, "
                  f"converged={res.converged}); running cvxpy ...", flush=True)
        runs.append(_run_cvxpy(build))
    t_ours = statistics.median(times)
    cv = {"wall_s": statistics.median(r["wall_s"] for r in runs), "solve_s": statistics.median(r["solve_s"] for r in runs),
          "status": runs[0]["status"], "objective": runs[0]["objective"]}
    gap = None if cv["objective"] is None else (res.objective - cv["objective"]) / abs(cv["objective"])
    row = {
        "problem": problem, "C": C, "K": K, "lam": lam, **structure,
        "ours_s": t_ours, "ours_times_s": times, "cvxpy_wall_times_s": [r["wall_s"] for r in runs],
        "iterations": res.iterations, "converged": res.converged,
        "residual": res.residual, "objective": res.objective,
        "kept_channels": int((res.B.abs().sum(1) > 0).sum()),
        "cvxpy_wall_s": cv["wall_s"], "cvxpy_solve_s": cv["solve_s"], "cvxpy_status": cv["status"],
        "cvxpy_objective": cv["objective"], "relative_gap": gap,
        "speedup_wall": cv["wall_s"] / t_ours, "speedup_solve": cv["solve_s"] / t_ours,
    }
    print(f"    cvxpy {cv['wall_s']:.1f}s wall ({cv['solve_s']:.1f}s solve, {cv['status']}), gap {gap}, "
          f"speedup {row['speedup_wall']:.0f}x wall / {row['speedup_solve']:.0f}x solve", flush=True)
    return row


def to_markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        "# Solver benchmark: paperprune.lasso vs cvxpy",
        "",
        f"Date {result['date']}; {env['processor']} ({env['cpu_count']} CPUs), torch {env['torch']} "
        f"with {result['torch_threads']} thread(s), cvxpy {result['cvxpy']} (CLARABEL, default tolerances); "
        f"host {env['hostname']}, commit {env['git_commit']}.",
        "",
        f"Instances: normalised-HSIC-like Q (unit diagonal, positive off-diagonals), R in [0, 1], "
        f"lam = {LAM_FRACTION} max R, gamma = {GAMMA_RATIO} lam; graph and tree from the builders on "
        "class embeddings with planted superclasses (see benchmarks/bench_solvers.py).",
        "Gap = (F_ours - F_cvxpy) / |F_cvxpy|, negative when ours is lower. Speed-up = cvxpy wall time "
        "(build + solve) / ours, and cvxpy's own solve time / ours in brackets, each a median: ours over "
        f"{REPEATS} solves a round, cvxpy over {CVXPY_ROUNDS} interleaved rounds where one run takes under "
        f"{CVXPY_REPEAT_UNDER_S:.0f} s, else one run (column `runs`).",
        "",
        "| problem | C | K | ours (s) | iterations | kept | cvxpy wall (s) | cvxpy solve (s) | runs | cvxpy status | speed-up | gap |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        gap = "n/a" if r["relative_gap"] is None else f"{r['relative_gap']:.1e}"
        lines.append(f"| {r['problem']} | {r['C']} | {r['K']} | {r['ours_s']:.4f} | {r['iterations']} | "
                     f"{r['kept_channels']}/{r['C']} | {r['cvxpy_wall_s']:.2f} | {r['cvxpy_solve_s']:.2f} | "
                     f"{len(r['cvxpy_wall_times_s'])} | {r['cvxpy_status']} | "
                     f"{r['speedup_wall']:.0f}x ({r['speedup_solve']:.0f}x) | {gap} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64x10,512x10,256x100", help="comma-separated CxK")
    ap.add_argument("--problems", default="sglp,stlp")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    import cvxpy

    torch.set_num_threads(1)
    solve_stlp(*hsic_like_instance(8, 3)[:2], class_tree_from_embeddings(np.random.default_rng(0).normal(size=(3, 4))),
               0.1)  # warm-up: first-call overheads
    rows = []
    for size in args.sizes.split(","):
        C, K = (int(x) for x in size.lower().split("x"))
        for problem in args.problems.split(","):
            rows.append(bench_one(problem, C, K))
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "environment": environment_info("cpu"), "torch_threads": torch.get_num_threads(),
              "cvxpy": cvxpy.__version__, "lam_fraction": LAM_FRACTION, "gamma_ratio": GAMMA_RATIO,
              "rows": rows}
    out = Path(args.out)
    atomic_write_json(out / "solvers.json", result)
    atomic_write_text(out / "solvers.md", to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
