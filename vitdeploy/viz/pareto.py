"""Choosing a variant from measured (latency, accuracy) points: the Pareto front and the pick for a latency budget.

Pure functions on plain numbers, so the rule the report states in words is the rule the code applies.
"""
from __future__ import annotations

from typing import Callable, Sequence


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


def front_at_noise(points: Sequence[tuple[float, float, float]],
                   same_speed: Callable[[int, int], bool]) -> tuple[list[int], dict[int, tuple[int, str]]]:
    """The Pareto front when latencies are only known up to noise: (latency, accuracy, size) points and a test of
    whether two points' speeds are distinguishable (`same_speed(i, j)`: True when they are not).

    Walking from the fastest point, a point is beaten by a front point that is at least as accurate and either
    distinguishably faster, or as fast at this noise and more accurate, or as fast, as accurate and no larger. A
    point that joins the front removes the front points it is as fast as and more accurate than (or as accurate
    and smaller than). Returns the front, fastest first with accuracy rising, and for every other point the index
    that beats it with the reason: "faster" or "as fast" (equivalent at this noise), a front point where one beats
    it directly.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], points[i][2], i))
    front: list[int] = []
    beaten: dict[int, tuple[int, str]] = {}

    def covers(f: int, p: int) -> str | None:
        (_, acc_f, size_f), (_, acc_p, size_p) = points[f], points[p]
        if acc_f < acc_p:
            return None
        if not same_speed(f, p):
            return "faster" if points[f][0] <= points[p][0] else None
        return "as fast" if acc_f > acc_p or size_f <= size_p else None

    for p in order:
        by = next(((f, why) for f in front if (why := covers(f, p))), None)
        if by is not None:
            beaten[p] = by
            continue
        for f in [f for f in front if same_speed(f, p) and covers(p, f)]:
            front.remove(f)
            beaten[f] = (p, "as fast")
        front.append(p)
    for i in beaten:  # name a front point that beats it where one does (the first one to beat it may have left)
        by = next(((f, why) for f in front if (why := covers(f, i))), None)
        if by is not None:
            beaten[i] = by
    return front, beaten
