"""Latency and throughput measurement over any Runner, and a profiling loop over artifacts x batch sizes.

Every variant sees the same seeded random-normal input (never zeros: some kernels shortcut on zeros), each
call is timed with time.perf_counter around runner.infer (which returns host memory, so GPU work is done).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vitdeploy.runtime.host import host_info
from vitdeploy.bench.memory import rss_growth
from vitdeploy.runtime.base import Runner
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


def progress_bar(console: Console | None, enabled: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True, disable=not enabled)


@dataclass
class ProfileItem:
    """One thing to profile: a label, a factory for its runner, and fields copied into each of its results
    (kind, precision, sha256, variant: what a report needs to match a measurement to a run)."""

    label: str
    make_runner: Callable[[], Runner]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Extras:
    """Work done after each timed measurement, never inside it: op-level profile (ORT) and a leak check."""

    op_profile_top: int = 0  # 0: off; else the number of op types and nodes kept
    op_profile_runs: int = 20
    leak_runs: int = 0  # 0: off; else calls between the two RSS readings


def profile_artifacts(items: list[ProfileItem], batches: list[int], warmup: int = 10, iters: int = 50,
                      duration: float | None = None, seed: int = 0,
                      input_size: tuple[int, int, int] = (3, 224, 224), threads: int | None = None,
                      console: Console | None = None, show_progress: bool = True,
                      extras: Extras | None = None) -> dict[str, Any]:
    """Measure every item at every batch size its runner accepts; each runner is built and activated once.

    Returns {"host", "settings", "results", "skipped"}: each result is measure_latency's dict plus "artifact",
    "backend" and the item's meta, with "op_profile" and "memory" when `extras` asks for them; batches outside a
    runner's batch range (static graphs, engine profiles) are listed in "skipped" with the reason.
    """
    if not items:
        raise VitDeployError("nothing to profile: no artifacts given")
    if not batches:
        raise VitDeployError("no batch sizes given")
    for b in batches:
        _validate(b, input_size, warmup, iters, duration)
    extras = extras or Extras()
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    with progress_bar(console, show_progress) as bar:
        overall = bar.add_task("profiling", total=len(items) * len(batches))
        for item in items:
            with item.make_runner() as runner:
                for b in batches:
                    if not runner.supports_batch(b):
                        low, high = runner.batch_range
                        skipped.append({"artifact": item.label, "backend": runner.name, "batch": b,
                                        "reason": f"takes batches {low} to {high}"})
                        bar.advance(overall, 1)
                        continue
                    step = bar.add_task(f"{item.label} [{runner.name}] batch {b}",
                                        total=None if duration is not None else iters)
                    res = measure_latency(runner, b, input_size, warmup=warmup, iters=iters, duration=duration,
                                          seed=seed, progress=lambda n, t=step: bar.advance(t, n))
                    row = {"artifact": item.label, "backend": runner.name, **item.meta, **res}
                    if extras.leak_runs or extras.op_profile_top:
                        bar.update(step, description=f"{item.label} [{runner.name}] batch {b}: leak check / op profile")
                        row.update(_extras(runner, make_input(b, input_size, seed), extras))
                    bar.remove_task(step)
                    results.append(row)
                    bar.advance(overall, 1)
    settings = {"warmup": warmup, "iters": None if duration is not None else iters, "duration_s": duration,
                "seed": seed, "input_size": list(input_size)}
    return {"host": host_info(threads=threads), "settings": settings, "results": results, "skipped": skipped}


def _extras(runner: Runner, x: np.ndarray, extras: Extras) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if extras.leak_runs:
        out["memory"] = rss_growth(runner, x, runs=extras.leak_runs)
    if extras.op_profile_top:
        prof = runner.op_profile(x, runs=extras.op_profile_runs, top=extras.op_profile_top)
        if prof is not None:
            out["op_profile"] = prof
    return out


def _ms(v: float) -> str:
    """Milliseconds with about four significant digits."""
    return f"{v:.2f}" if v < 100 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _short(row: dict[str, Any], width: int = 32) -> str:
    """A result's artifact as `variant/file` where the variant is known, else its label cut from the left."""
    label = str(row.get("artifact", ""))
    if row.get("variant") and row.get("kind") != "torch":
        label = f"{row['variant']}/{Path(label).name}"
    return label if len(label) <= width else "…" + label[-(width - 1):]


def results_table(result: dict[str, Any]) -> Table:
    """A rich table of profile_artifacts' results: one row per artifact x backend x batch, narrow enough for an
    80-column terminal (mean, std and the rest are in the JSON)."""
    host = result.get("host") or {}
    title = "Latency"
    if host:
        gpu = (host.get("gpu") or {}).get("name")
        title += f" on {host.get('cpu', '?')}" + (f" + {gpu}" if gpu else "")
    rows = result.get("results", [])
    leak = [r["memory"] for r in rows if "memory" in r]
    threads = sorted({str(r["threads"]) for r in rows if r.get("threads") is not None})
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.caption = "ms per call; img/s = batch / mean" + (f"; intra-op threads {', '.join(threads)}" if threads else "")
    if leak:
        table.caption += f"; RSS Δ = resident memory growth (MiB) over {leak[0]['runs']} more calls"
    table.add_column("artifact", overflow="fold", min_width=14)  # the only column that wraps on a narrow terminal
    table.add_column("backend", no_wrap=True)
    table.add_column("prec", no_wrap=True)
    for col in ("batch", "p50", "p90", "p99", "img/s") + (("RSS Δ",) if leak else ()):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        lat = r["latency_ms"]
        cells = [_short(r), str(r.get("backend", "")), str(r.get("precision", "")), str(r["batch"]),
                 *(_ms(lat[k]) for k in ("p50", "p90", "p99")), f"{r['throughput_ips']:.0f}"]
        if leak:
            cells.append(f"{r['memory']['growth_mib']:+.1f}" if "memory" in r else "-")
        table.add_row(*cells)
    return table


def op_profile_table(result: dict[str, Any], top: int = 5) -> Table | None:
    """The `top` op types by time of every result that carries an op profile; None when none does."""
    rows = [r for r in result.get("results", []) if r.get("op_profile")]
    if not rows:
        return None
    table = Table(title="Where the time goes (onnxruntime profiler, separate session)", box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True)
    table.caption = "profiling adds overhead per node: compare shares, not milliseconds (those are in the JSON)"
    table.add_column("artifact", overflow="fold")
    table.add_column("batch", justify="right")
    table.add_column("top op types (share of kernel time)", overflow="fold")
    for r in rows:
        ops = ", ".join(f"{o['op_type']} {o['percent']:.0f}%" for o in r["op_profile"]["by_op_type"][:top])
        table.add_row(_short(r), str(r["batch"]), ops)
    return table
