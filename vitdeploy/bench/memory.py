"""Does a runner leak? Resident memory before and after many calls on the same input.

A server calls the model millions of times; a few KiB kept per call is an outage a week later. One short check
catches it: warm up (allocator arenas and caches fill on the first calls), read RSS, run N calls, read RSS again.
"""
from __future__ import annotations

import os
import resource
from typing import Any

import numpy as np

from vitdeploy.runtime.base import Runner
from vitdeploy.errors import VitDeployError


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; elsewhere the peak, which can only over-report)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_growth(runner: Runner, x: np.ndarray, runs: int = 1000, warmup: int = 20) -> dict[str, Any]:
    """RSS before and after `runs` calls of an active runner on `x`, after `warmup` calls, in MiB."""
    if runs < 1:
        raise VitDeployError(f"leak-check runs must be >= 1, got {runs}")
    if not runner.active:
        raise VitDeployError(f"runner {runner.name!r} is not active")
    for _ in range(warmup):
        runner.infer(x)
    before = rss_bytes()
    for _ in range(runs):
        runner.infer(x)
    after = rss_bytes()
    return {"runs": runs, "warmup": warmup, "rss_before_mib": before / 2**20, "rss_after_mib": after / 2**20,
            "growth_mib": (after - before) / 2**20, "growth_per_run_kib": (after - before) / 1024 / runs}
