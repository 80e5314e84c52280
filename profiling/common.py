"""Shared by the benchmarks: pinned threads, interleaved timing, a GEMM roofline, and result files with host info."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from vitdeploy.bench.host import host_info
from vitdeploy.io import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(name: str, payload: dict, threads: int | None = None) -> Path:
    path = RESULTS / f"{name}.json"
    atomic_write_json(path, {"benchmark": name, "host": host_info(threads=threads), **payload})
    print(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path


def gemm_roofline_gflops(threads: int, n: int = 2048, reps: int = 5) -> float:
    """Best fp32 GFLOP/s of a large square matmul with `threads` threads: the CPU ceiling in this run."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def interleaved_p50(runs: dict[str, callable], iters: int, warmup: int = 5) -> dict[str, float]:
    """Median ms of each callable, timed round-robin so drift in machine load hits every variant alike."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(iters):
        for k, fn in runs.items():
            t = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}
