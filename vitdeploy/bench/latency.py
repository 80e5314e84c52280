"""Latency and throughput measurement over any Runner, and a profiling loop over artifacts x batch sizes, interleaved
by default so that drift of the machine hits every artifact alike and speedups come as paired ratios with intervals.

Every variant sees the same seeded random-normal input (never zeros: some kernels shortcut on zeros), each
call is timed with time.perf_counter around runner.infer (which returns host memory, so GPU work is done: on a GPU
this is synchronised host-to-host timing, the latency a server sees).
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

from vitdeploy.runtime.host import gpu_clocks, host_info
from vitdeploy.runtime.registry import gemm_peak
from vitdeploy.bench.memory import rss_growth
from vitdeploy.bench.paired import drift, format_speedup, paired_speedup, split_blocks
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
                      extras: Extras | None = None, interleaved: bool = True, rounds: int | None = None,
                      reference: str | None = None, roofline: bool = True,
                      peak_backends: list[str] | None = None) -> dict[str, Any]:
    """Measure every item at every batch size its runner accepts.

    Interleaved (the default): for each backend x batch, every runner is warmed up, then timed in `rounds` rounds;
    each round runs every artifact for a block of calls, in an order that rotates from round to round, so a slow
    spell of the machine lands on all of them alike. Sequential: each artifact is timed in one go, as one block after
    the other. Either way percentiles are over all calls and each result keeps the median of every block
    ("rounds_ms"), in time order.

    With more than one artifact per backend x batch, the `reference` label (else the first item) is compared with
    the others: a speedup with a 95 % bootstrap interval and a verdict from the paired per-round medians
    (interleaved), or the bare ratio of p50s (sequential). `roofline` measures the backend's GEMM peak in the same
    run and gives each result with known MACs ("macs" in its meta) its achieved MAC rate and share of that peak:
    the peak of each backend in `peak_backends` is taken before the timing and again after it, the better of the two
    kept (a busy machine lowers one of them), other backends' after the timing only.

    Returns {"host", "settings", "results", "skipped", "comparisons", "drift", "peaks"}.
    """
    if not items:
        raise VitDeployError("nothing to profile: no artifacts given")
    if not batches:
        raise VitDeployError("no batch sizes given")
    for b in batches:
        _validate(b, input_size, warmup, iters, duration)
    if reference is not None and reference not in {i.label for i in items}:
        raise VitDeployError(f"reference {reference!r} is not one of the artifacts profiled")
    n_rounds = _rounds(rounds, iters, duration)
    extras = extras or Extras()
    clocks_before = gpu_clocks()
    peaks_before = {b: gemm_peak(b, threads) for b in peak_backends or []} if roofline else {}
    timing = _interleaved if interleaved else _sequential
    results, skipped = timing(items, batches, warmup, iters, duration, seed, input_size, n_rounds, extras,
                              console, show_progress)
    comparisons, drifts = compare_results(results, reference, paired=interleaved)
    peaks = _roofline(results, threads, peaks_before) if roofline else {}
    settings = {"warmup": warmup, "iters": None if duration is not None else iters, "duration_s": duration,
                "seed": seed, "input_size": list(input_size), "mode": "interleaved" if interleaved else "sequential",
                "rounds": n_rounds, "reference": reference}
    host = host_info(threads=threads)
    if clocks_before is not None:
        host["gpu_clocks"] = {"before": clocks_before, "after": gpu_clocks()}
    return {"host": host, "settings": settings, "results": results, "skipped": skipped,
            "comparisons": comparisons, "drift": drifts, "peaks": peaks}


DEFAULT_ROUNDS = 20


def _rounds(rounds: int | None, iters: int, duration: float | None) -> int:
    """The number of rounds: `rounds`, else DEFAULT_ROUNDS, never more than the calls per artifact."""
    if rounds is not None and rounds < 1:
        raise VitDeployError(f"rounds must be >= 1, got {rounds}")
    if rounds is not None and duration is None and rounds > iters:
        raise VitDeployError(f"--rounds {rounds} is more than --iters {iters}: every round times each artifact at least once")
    return rounds if rounds is not None else (DEFAULT_ROUNDS if duration is not None else min(DEFAULT_ROUNDS, iters))


def _skip(item: ProfileItem, runner: Runner, b: int) -> dict[str, Any]:
    low, high = runner.batch_range
    return {"artifact": item.label, "backend": runner.name, "batch": b, "reason": f"takes batches {low} to {high}"}


def _block(runner: Runner, x: np.ndarray, calls: int | None, seconds: float | None,
           progress: Callable[[int], Any] | None) -> list[float]:
    """One block of timed calls: `calls` of them, or as many as fit in `seconds` (at least one)."""
    times = _timed_loop(runner, x, calls or 1, seconds, progress)
    return times or _timed_loop(runner, x, 1, None, progress)


def _row(item: ProfileItem, runner: Runner, b: int, times: list[float], blocks: list[float], warmup: int,
         mode: str) -> dict[str, Any]:
    stats = latency_stats(times)
    return {"artifact": item.label, "backend": runner.name, **item.meta, "batch": b, "iters": len(times),
            "warmup": max(1, warmup), "latency_ms": stats,
            "throughput_ips": b * 1000.0 / stats["mean"] if stats["mean"] > 0 else float("inf"),
            "threads": getattr(runner, "threads", None), "seconds": float(sum(times) / 1000.0),
            "mode": mode, "rounds_ms": blocks}


def _warm(runner: Runner, x: np.ndarray, warmup: int) -> None:
    _check_output(runner, runner.infer(x), len(x))  # the first call doubles as warm-up and sanity check
    for _ in range(max(0, warmup - 1)):
        runner.infer(x)


def _sequential(items, batches, warmup, iters, duration, seed, input_size, n_rounds, extras, console, show_progress):
    """Each artifact timed in one go, batch after batch (consecutive blocks: their medians show drift over time)."""
    results, skipped = [], []
    sizes = split_blocks(iters, n_rounds) if duration is None else [None] * n_rounds
    with progress_bar(console, show_progress) as bar:
        overall = bar.add_task("profiling", total=len(items) * len(batches))
        for item in items:
            with item.make_runner() as runner:
                for b in batches:
                    if not runner.supports_batch(b):
                        skipped.append(_skip(item, runner, b))
                        bar.advance(overall, 1)
                        continue
                    step = bar.add_task(f"{item.label} [{runner.name}] batch {b}",
                                        total=None if duration is not None else iters)
                    x = make_input(b, input_size, seed)
                    _warm(runner, x, warmup)
                    times, blocks = [], []
                    for n in sizes:
                        block = _block(runner, x, n, None if duration is None else duration / n_rounds,
                                       lambda k, t=step: bar.advance(t, k))
                        times += block
                        blocks.append(float(np.median(block)))
                    row = _measured_row(item, runner, b, times, blocks, warmup, "sequential", x, extras, bar, step)
                    bar.remove_task(step)
                    results.append(row)
                    bar.advance(overall, 1)
    return results, skipped


def _measured_row(item, runner, b, times, blocks, warmup, mode, x, extras, bar, task) -> dict:
    """One artifact x batch row from its call times, with the leak check and op profile when asked for (both
    timing modes end each artifact this way)."""
    row = _row(item, runner, b, times, blocks, warmup, mode)
    if extras.leak_runs or extras.op_profile_top:
        bar.update(task, description=f"{item.label} [{runner.name}] batch {b}: leak check / op profile")
        row.update(_extras(runner, x, extras))
    return row


def _interleaved(items, batches, warmup, iters, duration, seed, input_size, n_rounds, extras, console, show_progress):
    """All runners live at once; per backend x batch: warm every one up, then rounds of one block each, the order
    rotating by one artifact per round."""
    results, skipped = [], []
    sizes = split_blocks(iters, n_rounds) if duration is None else [None] * n_rounds
    seconds = None if duration is None else duration / n_rounds
    with contextlib.ExitStack() as stack, progress_bar(console, show_progress) as bar:
        live = [(item, stack.enter_context(item.make_runner())) for item in items]
        groups: dict[tuple[str, int], list[tuple[ProfileItem, Runner]]] = {}
        for b in batches:
            for item, runner in live:
                if runner.supports_batch(b):
                    groups.setdefault((runner.name, b), []).append((item, runner))
                else:
                    skipped.append(_skip(item, runner, b))
        for (backend, b), members in groups.items():
            x = make_input(b, input_size, seed)
            task = bar.add_task(f"{len(members)} artifact(s) [{backend}] batch {b}, interleaved",
                                total=None if duration is not None else iters * len(members))
            for _, runner in members:
                _warm(runner, x, warmup)
            times: list[list[float]] = [[] for _ in members]
            blocks: list[list[float]] = [[] for _ in members]
            for r, n in enumerate(sizes):
                for k in range(len(members)):
                    i = (k + r) % len(members)
                    block = _block(members[i][1], x, n, seconds, lambda c: bar.advance(task, c))
                    times[i] += block
                    blocks[i].append(float(np.median(block)))
            for (item, runner), t, bl in zip(members, times, blocks):
                results.append(_measured_row(item, runner, b, t, bl, warmup, "interleaved", x, extras, bar, task))
            bar.remove_task(task)
    order = {item.label: i for i, item in enumerate(items)}
    results.sort(key=lambda r: (order[r["artifact"]], batches.index(r["batch"])))
    return results, skipped


def compare_results(results: list[dict[str, Any]], reference: str | None = None,
                    paired: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Speedups against the reference per backend x batch, written into each result as "speedup", and the
    reference's drift. The reference is the `reference` label where it was measured there, else the first result.
    Paired (interleaved rounds): median of per-round ratios with its bootstrap interval and verdict; else the ratio
    of p50s alone."""
    comparisons, drifts = [], []
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["backend"], r["batch"]), []).append(r)
    for (backend, batch), rows in groups.items():
        ref = next((r for r in rows if r["artifact"] == reference), rows[0])
        if paired and len(rows) > 1:  # drift matters where something is compared
            drifts.append({"backend": backend, "batch": batch, "reference": ref["artifact"],
                           "precision": ref.get("precision"), **drift(ref["rounds_ms"])})
        for r in rows:
            if r is ref:
                continue
            if paired:
                s = paired_speedup(ref["rounds_ms"], r["rounds_ms"], seed=0)
            else:
                s = {"speedup": ref["latency_ms"]["p50"] / r["latency_ms"]["p50"], "ci95": None, "verdict": None,
                     "rounds": None}
            r["speedup"] = {"reference": ref["artifact"], "reference_precision": ref.get("precision"), **s}
            comparisons.append({"backend": backend, "batch": batch, "artifact": r["artifact"],
                                "precision": r.get("precision"), **r["speedup"]})
    return comparisons, drifts


def _roofline(results: list[dict[str, Any]], threads: int | None, before: dict[str, Any]) -> dict[str, Any]:
    """The GEMM peak of every backend measured here (the better of `before` and now), and each result's achieved MAC
    rate as a share of it."""
    peaks: dict[str, Any] = {}
    for r in results:
        if r["backend"] not in peaks:
            now = gemm_peak(r["backend"], r.get("threads") or threads)
            then = before.get(r["backend"]) or {}
            peaks[r["backend"]] = {k: max(v, then[k]) if isinstance(v, float) and isinstance(then.get(k), float) else v
                                   for k, v in now.items()}
        peak = peaks[r["backend"]]
        if not r.get("macs") or not peak:
            continue
        kind = roofline_precision(r.get("precision"), peak)
        achieved = r["macs"] * r["batch"] / (r["latency_ms"]["p50"] / 1000.0) / 1e9
        r["roofline"] = {"gmacs": achieved, "peak": kind, "peak_gmacs": peak[kind],
                         "share": achieved / peak[kind] if peak[kind] else None}
    return peaks


def roofline_precision(precision: str | None, peak: dict[str, Any]) -> str:
    """Which GEMM peak a precision is held against: its own where the backend measured one, else FP32 (FP16 graphs
    on a CPU without FP16 kernels, INT8 where no INT8 GEMM was measured)."""
    p = "fp16" if str(precision).startswith("fp16") else str(precision)
    return p if peak.get(p) else "fp32"


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
    if row.get("kind") != "torch" and (row.get("variant") or Path(label).parent.name):
        label = f"{row.get('variant') or Path(label).parent.name}/{Path(label).name}"
    return label if len(label) <= width else "…" + label[-(width - 1):]


_VERDICT_CELL = {"faster": "faster", "slower": "slower", "not distinguishable": "tied"}


def results_table(result: dict[str, Any]) -> Table:
    """A rich table of profile_artifacts' results: one row per artifact x backend x batch, with the speedup against
    the reference and its interval, the verdict, and the share of the GEMM peak; narrow enough for an 80-column
    terminal (mean, std and the rest are in the JSON, and the tails too where speedups take their place)."""
    host = result.get("host") or {}
    title = "Latency"
    if host:
        gpu = (host.get("gpu") or {}).get("name")
        title += f" on {host.get('cpu', '?')}" + (f" + {gpu}" if gpu else "")
    rows = result.get("results", [])
    mode = (result.get("settings") or {}).get("mode", "sequential")
    leak = [r["memory"] for r in rows if "memory" in r]
    threads = sorted({str(r["threads"]) for r in rows if r.get("threads") is not None})
    backends = list(dict.fromkeys(str(r.get("backend", "")) for r in rows))
    compared = any(r.get("speedup") for r in rows)
    peak = any(r.get("roofline") for r in rows)
    title += f", {mode}" + (f" ({result['settings'].get('rounds')} rounds)" if mode == "interleaved" else "")
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    caption = ["ms per call; img/s = batch / mean" + ("; p90, p99 and the rest in the JSON" if compared else "")]
    if threads:
        caption.append(f"intra-op threads {', '.join(threads)}")
    if compared:
        caption.append("speedup = reference time / this time, " + (
            "median of per-round ratios [95 % interval]; tied: not distinguishable at this noise" if mode == "interleaved"
            else "ratio of p50s, timed one after another (no interval: drift lands on single artifacts)"))
    if peak:
        caption.append("peak = achieved MACs/s as a share of this run's GEMM peak")
    if leak:
        caption.append(f"RSS Δ = resident memory growth (MiB) over {leak[0]['runs']} more calls")
    table.caption = "; ".join(caption)
    named = all(str(r.get("precision")) in Path(str(r.get("artifact", ""))).name.split(".") for r in rows)
    table.add_column("artifact", overflow="fold", min_width=14)  # the only column that wraps on a narrow terminal
    if len(backends) > 1:
        table.add_column("backend", no_wrap=True)
    if not named:  # model.fp16.onnx says its precision already
        table.add_column("prec", no_wrap=True)
    spread = ("p50",) if compared else ("p50", "p90", "p99")  # with speedups, the tails are left to the JSON
    cols = ["batch", *spread, "img/s"] + (["speedup", "vs ref"] if compared else []) + (["peak"] if peak else []) \
        + (["RSS Δ"] if leak else [])
    for col in cols:
        table.add_column(col, justify="right" if col != "vs ref" else "left", no_wrap=True)
    for r in rows:
        lat = r["latency_ms"]
        cells = [_short(r), *([str(r.get("backend", ""))] if len(backends) > 1 else []),
                 *([] if named else [str(r.get("precision", ""))]),
                 str(r["batch"]), *(_ms(lat[k]) for k in spread), f"{r['throughput_ips']:.0f}"]
        if compared:
            s = r.get("speedup")
            cells += [format_speedup(s), _VERDICT_CELL.get(s.get("verdict"), "—") if s else "ref"]
        if peak:
            share = (r.get("roofline") or {}).get("share")
            cells.append("—" if share is None else f"{100 * share:.0f} %")
        if leak:
            cells.append(f"{r['memory']['growth_mib']:+.1f}" if "memory" in r else "-")
        table.add_row(*cells)
    return table


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One line per backend x batch whose reference drifted by more than DRIFT_WARN during the run, and one line
    per backend on the roofline: how close the best FP32 artifact comes to the GEMM peak, and where the rest is."""
    lines = []
    for d in result.get("drift") or []:
        if d.get("large"):
            lines.append(drift_line(d, f"{d['backend']} batch {d['batch']}"))
    for backend, peak in (result.get("peaks") or {}).items():
        rows = [r for r in result.get("results", []) if r["backend"] == backend and r.get("roofline")]
        line = roofline_line(backend, peak, rows)
        if line:
            lines.append(line)
    return lines


def drift_line(d: dict[str, Any], where: str) -> str:
    """The machine moved: by how much, and what that means for the numbers."""
    return (f"drift on {where}: the reference's per-round p50 moved by {100 * d['spread']:.0f} % "
            f"({_ms(d['p10_ms'])} to {_ms(d['p90_ms'])} ms, 10th to 90th percentile of rounds); the paired speedups "
            "cancel it, single p50s carry it")


def roofline_line(backend: str, peak: dict[str, Any], rows: list[dict[str, Any]],
                  name: Callable[[dict[str, Any]], str] | None = None) -> str | None:
    """Where the headroom is, from the FP32 artifact closest to the FP32 GEMM peak (`name` labels a row)."""
    fp32 = [r for r in rows if r["roofline"]["peak"] == "fp32" and r["roofline"].get("share") is not None
            and str(r.get("precision")) == "fp32"]
    if not peak.get("fp32") or not fp32:
        return None
    best = max(fp32, key=lambda r: r["roofline"]["share"])
    share = best["roofline"]["share"]
    line = (f"roofline on {backend}: FP32 GEMM peak {peak['fp32']:.0f} GMAC/s"
            + (f", INT8 {peak['int8']:.0f} GMAC/s ({peak['int8'] / peak['fp32']:.1f}×)" if peak.get("int8") else "")
            + (f", FP16 {peak['fp16']:.0f} GMAC/s" if peak.get("fp16") else "")
            + f"; {(name or _short)(best)} at batch {best['batch']} reaches {100 * share:.0f} % of FP32: ")
    if share >= 0.8:
        lower = "INT8 and fewer MACs" if peak.get("int8") else "lower precision and fewer MACs"
        return line + f"the headroom is in {lower}, not in graph tweaks"
    if share < 0.3:
        return line + "per-call overhead and the ops around the matmuls dominate at this size; larger batches amortise them"
    return line + "the rest goes to the ops around the matmuls (see --op-profile)"


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
