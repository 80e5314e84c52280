"""Choosing a variant from measured (latency, accuracy) points: the Pareto front and the pick for a latency budget.

Pure functions on plain numbers, so the rule the report states in words is the rule the code applies.
"""
from __future__ import annotations

from typing import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points that no other point beats, fastest first.

    A point is beaten when another one is at least as fast and at least as accurate, and strictly better in one of
    the two. Of exact duplicates only the first is kept (choosing between them is a coin toss).
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best = float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def best_within(points: Sequence[tuple[float, float]], budget: float) -> int | None:
    """The most accurate point whose latency fits `budget` (the faster one of equally accurate points); None if
    nothing fits."""
    fits = [i for i, (lat, _) in enumerate(points) if lat <= budget]
    if not fits:
        return None
    return max(fits, key=lambda i: (points[i][1], -points[i][0], -i))


def budget_bands(points: Sequence[tuple[float, float]]) -> list[tuple[float, float | None, int]]:
    """For every budget, the answer of best_within, as bands: (from_ms, to_ms or None for no upper end, index).

    The answer only changes at the latency of a Pareto point, so the bands start at those latencies.
    """
    front = pareto_front(points)
    lats = [points[i][0] for i in front]
    return [(lats[k], lats[k + 1] if k + 1 < len(front) else None, i) for k, i in enumerate(front)]
