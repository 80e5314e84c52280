"""Latency and throughput measurement over any Runner, and a profiling loop over artifacts x batch sizes.

Every variant sees the same seeded random-normal input (never zeros: some kernels shortcut on zeros), each
call is timed with time.perf_counter around runner.infer (which returns host memory, so GPU work is done).
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterable

import numpy as np
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vitdeploy.bench.host import host_info
from vitdeploy.bench.runners import Runner
from vitdeploy.errors import VitDeployError

PERCENTILES = (50, 90, 95, 99)


def make_input(batch: int, input_size: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """The fixed benchmark batch: seeded standard-normal float32, NCHW."""
    return np.random.default_rng(seed).standard_normal((batch, *input_size), dtype=np.float32)


def latency_stats(times_ms: Iterable[float]) -> dict[str, float]:
    """p50/p90/p95/p99/mean/std/min/max of a list of latencies in ms."""
    t = np.asarray(list(times_ms), dtype=np.float64)
    if t.size == 0:
        raise VitDeployError("no latency samples to summarise")
    stats = {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(t, PERCENTILES))}
    stats.update(mean=float(t.mean()), std=float(t.std(ddof=1)) if t.size > 1 else 0.0,
                 min=float(t.min()), max=float(t.max()))
    return stats


def _validate(batch: int, input_size: tuple[int, int, int], warmup: int, iters: int, duration: float | None) -> None:
    if batch < 1:
        raise VitDeployError(f"batch must be >= 1, got {batch}")
    if len(input_size) != 3 or any(int(s) < 1 for s in input_size):
        raise VitDeployError(f"input_size must be (channels, height, width), got {input_size!r}")
    if warmup < 0:
        raise VitDeployError(f"warmup must be >= 0, got {warmup}")
    if duration is None and iters < 1:
        raise VitDeployError(f"iters must be >= 1, got {iters}")
    if duration is not None and duration <= 0:
        raise VitDeployError(f"duration must be > 0 seconds, got {duration}")


def measure_latency(runner: Runner, batch: int, input_size: tuple[int, int, int], warmup: int = 10, iters: int = 50,
                    duration: float | None = None, seed: int = 0,
                    progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Time `runner.infer` on one fixed batch; `duration` (seconds) replaces `iters` when given.

    Activates the runner for the call if it is not active yet. `progress(1)` is called per timed iteration.
    At least one untimed call is made (it also checks the output's batch dim); "warmup" reports the count.
    """
    _validate(batch, input_size, warmup, iters, duration)
    x = make_input(batch, tuple(int(s) for s in input_size), seed)  # type: ignore[arg-type]
    with contextlib.ExitStack() as stack:
        if not runner.active:
            stack.enter_context(runner)
        _check_output(runner, runner.infer(x), batch)  # first call doubles as warmup and sanity check
        for _ in range(max(0, warmup - 1)):
            runner.infer(x)
        times_ms = _timed_loop(runner, x, iters, duration, progress)
    stats = latency_stats(times_ms)
    return {
        "batch": batch,
        "iters": len(times_ms),
        "warmup": max(1, warmup),
        "latency_ms": stats,
        "throughput_ips": batch * 1000.0 / stats["mean"] if stats["mean"] > 0 else float("inf"),
        "threads": getattr(runner, "threads", None),
        "seconds": float(sum(times_ms) / 1000.0),
    }


def _check_output(runner: Runner, out: np.ndarray, batch: int) -> None:
    if out.ndim < 1 or out.shape[0] != batch:
        raise VitDeployError(f"runner {runner.name!r} returned shape {out.shape} for a batch of {batch}")


def _timed_loop(runner: Runner, x: np.ndarray, iters: int, duration: float | None,
                progress: Callable[[int], Any] | None) -> list[float]:
    times: list[float] = []
    clock = time.perf_counter
    start = clock()
    while (clock() - start < duration) if duration is not None else (len(times) < iters):
        t0 = clock()
        runner.infer(x)
        times.append((clock() - t0) * 1000.0)
        if progress is not None:
            progress(1)
    return times


def _progress(console: Console | None, enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True, disable=not enabled)


def profile_artifacts(items: list[tuple[str, Callable[[], Runner]]], batches: list[int], warmup: int = 10,
                      iters: int = 50, duration: float | None = None, seed: int = 0,
                      input_size: tuple[int, int, int] = (3, 224, 224), threads: int | None = None,
                      console: Console | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Measure every artifact at every batch size; each runner is built and activated once.

    `items` are (label, runner factory). Returns {"host": host_info(), "results": [...]} where each result
    is measure_latency's dict plus "artifact" and "backend".
    """
    if not items:
        raise VitDeployError("nothing to profile: no artifacts given")
    if not batches:
        raise VitDeployError("no batch sizes given")
    for b in batches:
        _validate(b, input_size, warmup, iters, duration)
    results: list[dict[str, Any]] = []
    with _progress(console, show_progress) as bar:
        overall = bar.add_task("profiling", total=len(items) * len(batches))
        for label, factory in items:
            with factory() as runner:
                for b in batches:
                    step = bar.add_task(f"{label} [{runner.name}] batch {b}",
                                        total=None if duration is not None else iters)
                    res = measure_latency(runner, b, input_size, warmup=warmup, iters=iters, duration=duration,
                                          seed=seed, progress=lambda n, t=step: bar.advance(t, n))
                    bar.remove_task(step)
                    results.append({"artifact": label, "backend": runner.name, **res})
                    bar.advance(overall, 1)
    return {"host": host_info(threads=threads), "results": results}


def _ms(v: float) -> str:
    """Milliseconds with about four significant digits."""
    return f"{v:.2f}" if v < 100 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def results_table(result: dict[str, Any]) -> Table:
    """A rich table of profile_artifacts' results: one row per artifact x backend x batch."""
    host = result.get("host") or {}
    title = "Latency"
    if host:
        gpu = (host.get("gpu") or {}).get("name")
        title += f" on {host.get('cpu', '?')}" + (f" + {gpu}" if gpu else "")
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.caption = "latencies in ms; thr = intra-op threads"
    table.add_column("artifact", overflow="fold", min_width=12)
    table.add_column("backend", no_wrap=True)
    for col in ("batch", "thr", "p50", "p90", "p99", "mean", "std", "img/s"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in result.get("results", []):
        lat = r["latency_ms"]
        table.add_row(str(r.get("artifact", "")), str(r.get("backend", "")), str(r["batch"]),
                      str(r.get("threads", "")), *(_ms(lat[k]) for k in ("p50", "p90", "p99", "mean", "std")),
                      f"{r['throughput_ips']:.1f}")
    return table
