"""Does `vitdeploy profile` report what a bare timing loop measures? Target: for the same onnxruntime session and the
same input, the profiler's p50 agrees with a bare `session.run` loop within 5 %.

One process, one session per model, pinned threads. Rounds alternate which of the two goes first; each round times a
block of calls with the profiler (measure_latency, with a live progress bar as the CLI draws it) and a block with the
bare loop; the result compares the medians of the per-block p50s. vit_digits (sub-millisecond, where per-call
overhead shows most) and DeiT-S (random weights: only shapes matter for speed). Writes results/profiler_overhead.json.

    python profiling/bench_profiler_overhead.py           # the full run (a quiet machine)
    python profiling/bench_profiler_overhead.py --smoke   # a quick check that it works
"""
import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from vitdeploy.bench.latency import make_input, measure_latency, progress_bar
from vitdeploy.runtime.onnxrt import OrtRunner
from vitdeploy.deploy.onnx_export import export_onnx
from vitdeploy.models import load_model

from common import write_result

THREADS, TARGET = 2, 0.05
CASES = (("vit_digits", 1), ("vit_digits", 8), ("deit_small_patch16_224", 1))


def bare_p50(session, name: str, x: np.ndarray, iters: int) -> float:
    """The reference: perf_counter around session.run and nothing else."""
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def profiler_p50(runner: OrtRunner, batch: int, size: tuple, iters: int) -> float:
    """What `vitdeploy profile` does per measurement, progress bar included (drawn to a string, not the terminal)."""
    with progress_bar(Console(file=io.StringIO(), force_terminal=True), True) as bar:
        task = bar.add_task("profile", total=iters)
        res = measure_latency(runner, batch, size, warmup=0, iters=iters, progress=lambda n: bar.advance(task, n))
    return res["latency_ms"]["p50"]


def compare(model: str, batch: int, rounds: int, iters: int, tmp: Path) -> dict:
    loaded = load_model(model)
    size = tuple(loaded.input_size)
    path = export_onnx(loaded.model, tmp / f"{model}.onnx", size)
    x = make_input(batch, size)  # the profiler's own input, so both time the same data
    with OrtRunner(path, threads=THREADS) as runner:
        name = runner.session.get_inputs()[0].name
        for _ in range(10):
            runner.session.run(None, {name: x})
        prof, bare = [], []
        for r in range(rounds):
            order = (prof, bare) if r % 2 == 0 else (bare, prof)
            for sink in order:
                sink.append(profiler_p50(runner, batch, size, iters) if sink is prof
                            else bare_p50(runner.session, name, x, iters))
    ratio = float(np.median(prof) / np.median(bare))
    return {"model": model, "batch": batch, "rounds": rounds, "iters_per_block": iters,
            "profiler_p50_ms": float(np.median(prof)), "bare_p50_ms": float(np.median(bare)),
            "ratio": round(ratio, 4), "within_target": abs(ratio - 1) <= TARGET,
            "block_p50s_ms": {"profiler": prof, "bare": bare}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="few rounds and iterations: check that it runs")
    args = ap.parse_args()
    rounds, iters = (2, 5) if args.smoke else (10, 100)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, batch in CASES:
            deit = model.startswith("deit")
            rows.append(compare(model, batch, rounds, max(3, iters // 5) if deit else iters, Path(tmp)))
            print(f"{model} batch {batch}: profiler / bare p50 = {rows[-1]['ratio']:.3f}")
    write_result("profiler_overhead", {
        "target": f"profiler p50 within {TARGET:.0%} of a bare session.run loop", "threads": THREADS,
        "smoke": args.smoke, "rows": rows, "all_within_target": all(r["within_target"] for r in rows),
    }, threads=THREADS)


if __name__ == "__main__":
    main()
