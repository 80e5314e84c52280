"""Paired comparisons from interleaved timing: speedups with bootstrap intervals, verdicts, and how far the machine
drifted during a run.

Interleaved profiling times every artifact for a short block in each round, so round r of two artifacts saw the same
machine. The ratio of their per-round medians cancels whatever the machine did in that round; the median of those
ratios over the rounds is the speedup, and resampling the rounds gives its interval. Pure functions on plain numbers.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vitdeploy.errors import VitDeployError

FASTER, SLOWER, SAME = "faster", "slower", "not distinguishable"
DRIFT_WARN = 0.10  # a spread of the reference's per-round medians above this is reported as drift
RESAMPLES = 2000


def paired_speedup(reference_ms: Sequence[float], other_ms: Sequence[float], resamples: int = RESAMPLES,
                   seed: int = 0, level: float = 0.95) -> dict:
    """Speedup of `other` over `reference` from their per-round medians (same rounds, same order).

    Returns the median of the per-round ratios reference / other (> 1: other is faster), its `level` bootstrap
    interval (rounds resampled with replacement, each round's pair kept together), and the verdict: faster or
    slower when the interval excludes 1, else not distinguishable at this noise."""
    ref, oth = np.asarray(reference_ms, dtype=np.float64), np.asarray(other_ms, dtype=np.float64)
    if ref.shape != oth.shape or ref.ndim != 1 or ref.size == 0:
        raise VitDeployError(f"paired speedup needs the same non-zero number of rounds, got {ref.size} and {oth.size}")
    if np.any(ref <= 0) or np.any(oth <= 0):
        raise VitDeployError("paired speedup needs positive per-round latencies")
    ratios = ref / oth
    estimate = float(np.median(ratios))
    if ratios.size < 2:
        return {"speedup": estimate, "ci95": None, "verdict": SAME, "rounds": int(ratios.size)}
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, ratios.size, size=(resamples, ratios.size))
    boots = np.median(ratios[picks], axis=1)
    tail = (1.0 - level) / 2
    lo, hi = float(np.quantile(boots, tail)), float(np.quantile(boots, 1.0 - tail))
    return {"speedup": estimate, "ci95": [lo, hi], "verdict": verdict(lo, hi), "rounds": int(ratios.size)}


def verdict(lo: float, hi: float) -> str:
    """faster when the whole interval lies above 1, slower when below, else not distinguishable."""
    return FASTER if lo > 1.0 else SLOWER if hi < 1.0 else SAME


def drift(rounds_ms: Sequence[float]) -> dict:
    """How much the machine moved during a run, read from one artifact's per-round medians: the spread between
    their 10th and 90th percentiles as a fraction of the 10th (0.35: the slow rounds ran 35 % longer), and whether
    that is more than DRIFT_WARN."""
    t = np.asarray(rounds_ms, dtype=np.float64)
    if t.size == 0:
        raise VitDeployError("no rounds to read drift from")
    lo, hi = (float(v) for v in np.percentile(t, (10, 90)))
    spread = hi / lo - 1.0 if lo > 0 else 0.0
    return {"spread": spread, "p10_ms": lo, "p90_ms": hi, "min_ms": float(t.min()), "max_ms": float(t.max()),
            "large": spread > DRIFT_WARN}


def split_blocks(total: int, rounds: int) -> list[int]:
    """`total` calls spread over `rounds` blocks as evenly as possible (the first blocks take the remainder)."""
    if rounds < 1 or total < rounds:
        raise VitDeployError(f"cannot spread {total} calls over {rounds} rounds: each round needs at least one call")
    base, extra = divmod(total, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


def format_speedup(s: dict | None) -> str:
    """1.18× [1.12–1.25] faster; or the bare ratio when there is no interval."""
    if not s:
        return "—"
    text = f"{s['speedup']:.2f}×"
    if s.get("ci95"):
        lo, hi = s["ci95"]
        text += f" [{lo:.2f}–{hi:.2f}]"
    return text
