"""Records of seeds and test images: aggregation over seeds, binomial noise, packed per-image correctness.

`aggregate` gives mean +- std over seeds per (arch, method, target); intervals over seeds and
the comparison of two criteria are `paperprune.lab.seeds` (METHOD.md section 6). Per-image
correctness is stored packed (`pack_correct`: numpy.packbits, base64) so a record of 10,000
test images costs 1.7 kB; `unpack_correct` gives back the per-seed arrays that
`paperprune.lab.seeds.two_level_bootstrap` takes.
"""
from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence

import numpy as np

from ..utils import PaperpruneError

__all__ = ["aggregate", "binomial_std", "pack_correct", "unpack_correct"]


def binomial_std(top1: float, n: int) -> float:
    """Standard deviation (percentage points) of a top-1 accuracy (percent) measured on n images."""
    if n < 1 or not 0.0 <= top1 <= 100.0:
        raise PaperpruneError(f"binomial_std needs 0 <= top1 <= 100 and n >= 1, got top1={top1}, n={n}")
    p = top1 / 100.0
    return 100.0 * math.sqrt(p * (1.0 - p) / n)


def pack_correct(correct: Sequence[bool] | np.ndarray) -> dict:
    """{"n": len, "bits": base64 of numpy.packbits} of a per-image correctness vector."""
    arr = np.asarray(correct, dtype=bool)
    if arr.ndim != 1:
        raise PaperpruneError(f"pack_correct takes a 1-D vector of per-image correctness, got shape {arr.shape}")
    return {"n": int(arr.size), "bits": base64.b64encode(np.packbits(arr).tobytes()).decode("ascii")}


def unpack_correct(packed: dict) -> np.ndarray:
    """The boolean vector `pack_correct` packed."""
    raw = np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8)
    return np.unpackbits(raw, count=int(packed["n"])).astype(bool)


def aggregate(rows: Iterable[dict], by: Sequence[str], value: str) -> list[dict]:
    """Group `rows` (flat dicts) by the keys `by`; per group: n, mean, std (ddof 1; None for n = 1),
    min, max of `value`, and the sorted `seed`s when rows carry one. Groups in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        missing = [k for k in (*by, value) if k not in row]
        if missing:
            raise PaperpruneError(f"aggregate: a row lacks {', '.join(missing)} (its keys: {', '.join(sorted(row))})")
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key, members in groups.items():
        vals = np.array([float(r[value]) for r in members])
        out.append({**dict(zip(by, key)), "n": len(vals), "mean": float(vals.mean()),
                    "std": float(vals.std(ddof=1)) if len(vals) > 1 else None,
                    "min": float(vals.min()), "max": float(vals.max()),
                    "seeds": sorted(r["seed"] for r in members) if all("seed" in r for r in members) else None})
    return out
