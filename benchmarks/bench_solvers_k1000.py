"""Solves at ImageNet's K = 1,000 classes: sGLP-IB (k-nearest-class graph) and sTLP-IB on
normalised-HSIC-like instances (`bench_solvers.hsic_like_instance`), one CPU thread (`--threads N`: N torch
threads, as `prune` runs on a machine's cores).

Per (method, C, lam fraction): wall time of a cold solve and of a warm-started one (from the
solution at the next larger lam, as the budget bisection warm-starts), iterations, working-set
size, kept rows, and the objective. lam is a fraction of max |R|, gamma = 0.5 lam. The first solve
of a graph or tree pays its one-off setup (the sGLP factorisation, the tree's levels), later ones
reuse it, as the solves of one layer's bisection do.

`--before REF` runs the same solves with `paperprune/lasso.py` as it is at git revision REF (loaded
from `git show`, importing the rest of the package from this tree), interleaved with the current
solver case by case (before, then after), so a slow spell of a shared machine lands on both; each
row of the current solver reports its objective's relative difference from the reference's.

    python benchmarks/bench_solvers_k1000.py [--sizes 256,512] [--classes 1000] [--knn 5]
        [--fractions 0.5,0.2,0.1] [--methods sglp,stlp] [--max-iter 20000] [--dtype float64]
        [--threads 1] [--before REF] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_solvers import hsic_like_instance  # noqa: E402

import paperprune.lasso  # noqa: E402
from paperprune.structure import class_graph_from_embeddings, class_tree_from_embeddings  # noqa: E402
from paperprune.utils import atomic_write_json  # noqa: E402
from paperprune.lab.io import environment_info  # noqa: E402


def reference_lasso(ref: str) -> types.ModuleType:
    """paperprune/lasso.py at git revision `ref`, as a module of this tree's package."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:paperprune/lasso.py"], check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"paperprune._lasso_at_{ref}")
    module.__package__ = "paperprune"
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{ref}:paperprune/lasso.py", "exec"), module.__dict__)
    return module


def _solvers(lasso, Q, R, graph, tree, max_iter):
    return {"sglp": lambda lam, B0: lasso.solve_sglp(Q, R, graph, lam, 0.5 * lam, tol=1e-7, max_iter=max_iter, B0=B0),
            "stlp": lambda lam, B0: lasso.solve_stlp(Q, R, tree, lam, tol=1e-7, max_iter=max_iter, B0=B0)}


def _timed(solve, lam, B0):
    t = time.perf_counter()
    res = solve(lam, B0)
    return res, time.perf_counter() - t


def run(sizes, classes, knn, fractions, methods, max_iter, dtype, before=None):
    versions = {"after": paperprune.lasso} if before is None else {"before": reference_lasso(before),
                                                                    "after": paperprune.lasso}
    rows = []
    for C in sizes:
        Q, R, emb = hsic_like_instance(C, classes, seed=0)
        Q, R = Q.to(dtype), R.to(dtype)
        emb = torch.tensor(emb, dtype=torch.float64)
        graph = class_graph_from_embeddings(emb, knn=knn).to(dtype=dtype)
        tree = class_tree_from_embeddings(emb)
        top = float(R.abs().max())
        solvers = {name: _solvers(lasso, Q, R, graph, tree, max_iter) for name, lasso in versions.items()}
        for method in methods:
            warm = dict.fromkeys(versions)
            for fraction in sorted(fractions, reverse=True):
                lam = fraction * top
                for start in ("cold", "warm"):
                    if start == "warm" and warm["after"] is None:
                        continue
                    results = {}
                    for version in versions:
                        res, wall = _timed(solvers[version][method], lam, None if start == "cold" else warm[version])
                        results[version] = res
                        row = {"version": version, "method": method, "C": C, "K": classes, "edges": graph.num_edges,
                               "fraction": fraction, "start": start, "wall_s": wall, "iterations": res.iterations,
                               "converged": res.converged, "objective": res.objective,
                               "kept": int((res.B.norm(dim=1) > 1e-7).sum()), **res.certificate}
                        if version == "after" and "before" in results:
                            ref = results["before"].objective
                            row["objective_vs_before"] = (res.objective - ref) / abs(ref)
                        rows.append(row)
                        print({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in row.items()},
                              flush=True)
                warm = {version: res.B for version, res in results.items()}  # the next lam starts from this one
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--knn", type=int, default=5)
    p.add_argument("--fractions", default="0.5,0.2,0.1")
    p.add_argument("--methods", default="sglp,stlp")
    p.add_argument("--max-iter", type=int, default=20000)
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    p.add_argument("--before", default=None, help="git revision whose paperprune/lasso.py runs beside the current")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads takes a positive integer, got {args.threads}")
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    if not set(methods) <= {"sglp", "stlp"}:
        p.error(f"--methods takes sglp and/or stlp, got {args.methods}")
    rows = run([int(s) for s in args.sizes.split(",")], args.classes, args.knn,
               [float(f) for f in args.fractions.split(",")], methods, args.max_iter, getattr(torch, args.dtype),
               args.before)
    if args.out:
        name = (f"solvers-k{args.classes}" + ("-before-after" if args.before else "")
                + (f"-{args.threads}threads" if args.threads != 1 else ""))
        atomic_write_json(args.out / f"{name}.json",
                          {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "environment": environment_info(torch.device("cpu")),
                           "args": vars(args) | {"out": str(args.out)},
                           "rows": rows})


if __name__ == "__main__":
    main()
