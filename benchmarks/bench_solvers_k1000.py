"""Solves at ImageNet's K = 1,000 classes: sGLP-IB (k-nearest-class graph) and sTLP-IB on
normalised-HSIC-like instances (`bench_solvers.hsic_like_instance`), one CPU thread.

Per (method, C, lam fraction): wall time of a cold solve and of a warm-started one (from the
solution at the next larger lam, as the budget bisection warm-starts), iterations, working-set
size, kept rows, and the setup cost the solve pays before its first iteration. lam is a fraction
of max |R|, gamma = 0.5 lam.

    python benchmarks/bench_solvers_k1000.py [--sizes 256,512] [--classes 1000] [--knn 5]
        [--fractions 0.5,0.2,0.1] [--max-iter 20000] [--out benchmarks/results]
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_solvers import hsic_like_instance  # noqa: E402

from paperprune.lasso import solve_sglp, solve_stlp  # noqa: E402
from paperprune.structure import class_graph_from_embeddings, class_tree_from_embeddings  # noqa: E402
from paperprune.utils import atomic_write_json
from paperprune.lab.io import environment_info  # noqa: E402


def run(sizes, classes, knn, fractions, max_iter, dtype):
    rows = []
    for C in sizes:
        Q, R, emb = hsic_like_instance(C, classes, seed=0)
        Q, R = Q.to(dtype), R.to(dtype)
        emb = torch.tensor(emb, dtype=torch.float64)
        graph = class_graph_from_embeddings(emb, knn=knn).to(dtype=dtype)
        tree = class_tree_from_embeddings(emb)
        top = float(R.abs().max())
        solvers = {"sglp": lambda lam, B0: solve_sglp(Q, R, graph, lam, 0.5 * lam, tol=1e-7, max_iter=max_iter, B0=B0),
                   "stlp": lambda lam, B0: solve_stlp(Q, R, tree, lam, tol=1e-7, max_iter=max_iter, B0=B0)}
        for method, solve in solvers.items():
            warm = None
            for fraction in sorted(fractions, reverse=True):
                lam = fraction * top
                for start in ("cold", "warm"):
                    if start == "warm" and warm is None:
                        continue
                    t = time.perf_counter()
                    res = solve(lam, None if start == "cold" else warm)
                    wall = time.perf_counter() - t
                    row = {"method": method, "C": C, "K": classes, "edges": graph.num_edges, "fraction": fraction,
                           "start": start, "wall_s": wall, "iterations": res.iterations, "converged": res.converged,
                           "kept": int((res.B.norm(dim=1) > 1e-7).sum()), **res.certificate}
                    rows.append(row)
                    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
                warm = res.B
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--knn", type=int, default=5)
    p.add_argument("--fractions", default="0.5,0.2,0.1")
    p.add_argument("--max-iter", type=int, default=20000)
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = run([int(s) for s in args.sizes.split(",")], args.classes, args.knn,
               [float(f) for f in args.fractions.split(",")], args.max_iter, getattr(torch, args.dtype))
    if args.out:
        atomic_write_json(args.out / "solvers-k1000.json",
                          {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "environment": environment_info(torch.device("cpu")),
                           "args": vars(args) | {"out": str(args.out)},
                           "rows": rows})


if __name__ == "__main__":
    main()
