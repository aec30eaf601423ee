"""Statistics over seeds and test images: aggregation, binomial noise, paired bootstrap intervals.

The comparison the paper's claim needs (issue 12 items 5 and 8): mean +- std over seeds for each
(arch, method, target), and a method's paired difference from another with a 95% confidence
interval. The bootstrap is paired twice over: both methods are scored on the same test images
and the same calibration seeds, so one resample (of seeds, and of images within the test set)
is applied to both, which cancels the noise they share (Efron & Tibshirani 1993, ch. 16; as in
Dror et al., ACL 2018, for comparing models on one test set).

Per-image correctness is stored packed (`pack_correct`: numpy.packbits, base64) so a record of
10,000 test images costs 1.7 kB.
"""
from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence

import numpy as np

from .utils import PaperpruneError

__all__ = ["aggregate", "binomial_std", "pack_correct", "paired_bootstrap", "unpack_correct"]


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


def paired_bootstrap(correct_a, correct_b, *, n_boot: int = 10000, confidence: float = 0.95,
                     seed: int = 0) -> dict:
    """Top-1 difference b - a (percentage points) with a paired bootstrap confidence interval.

    `correct_a`, `correct_b`: booleans of shape (seeds, images) (or (images,) for one seed), entry
    [s, i] = whether the method got test image i right with seed s; row s of both must come from
    the same seed. Each bootstrap draw resamples the seeds and, independently, the images (the
    same draws for both methods) and takes the difference of mean accuracies. Returns {"diff",
    "low", "high", "confidence", "n_boot", "seeds", "images"}; percentile interval.
    """
    a, b = np.atleast_2d(np.asarray(correct_a, dtype=bool)), np.atleast_2d(np.asarray(correct_b, dtype=bool))
    if a.shape != b.shape or a.size == 0:
        raise PaperpruneError(f"paired_bootstrap needs two non-empty arrays of one shape (seeds, images); got "
                              f"{a.shape} and {b.shape}")
    if not 0.0 < confidence < 1.0 or n_boot < 100:
        raise PaperpruneError(f"confidence must lie in (0, 1) and n_boot >= 100; got {confidence}, {n_boot}")
    d = b.astype(np.float64) - a.astype(np.float64)  # per (seed, image): -1, 0 or +1
    seeds, images = d.shape
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    chunk = max(1, min(n_boot, 2_000_000 // images))
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        img_counts = _resample_counts(rng, m, images)   # (m, images): how often each image is drawn
        seed_counts = _resample_counts(rng, m, seeds)   # (m, seeds)
        per_seed = img_counts @ d.T / images            # (m, seeds): resampled accuracy difference per seed
        draws[start:start + m] = (seed_counts * per_seed).sum(axis=1) / seeds
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return {"diff": 100.0 * float(d.mean()), "low": 100.0 * float(low), "high": 100.0 * float(high),
            "confidence": confidence, "n_boot": n_boot, "seeds": seeds, "images": images}


def _resample_counts(rng: np.random.Generator, m: int, n: int) -> np.ndarray:
    """(m, n) counts: row k says how often each of n items appears in the k-th resample of size n."""
    picks = rng.integers(0, n, size=(m, n)) + (np.arange(m) * n)[:, None]
    return np.bincount(picks.ravel(), minlength=m * n).reshape(m, n).astype(np.float64)
