"""Does `vitdeploy profile` survive a noisy machine? Two byte-identical copies of a DeiT-S graph (random init, built by
`vitdeploy.export`), profiled while a competing CPU load (a busy-loop process) runs for the later part of the run,
once interleaved (the default) and once with --sequential. The two copies are the same graph, so the right answer is
a speedup of 1.00 with an interval that contains 1.0.

Targets (issue 15): interleaved, the speedup stays within 1.00 ± 0.03 and its 95 % interval contains 1.0;
--sequential shows the error interleaving removes. And the profiler's p50 (interleaved) agrees with a bare
`session.run` loop on a session with the same options within 5 % (no competing load for that part; rounds alternate
the order so drift cancels; bare loops both on the profiler's own a/b schedule and back to back). The roofline: the dense graph's achieved MAC rate against this run's FP32 GEMM peak at
batch 1 and 8.

Two pinned threads; the load average is recorded before and after. Writes results/profile_drift.json.

    python profiling/bench_profile_drift.py           # about three minutes on 2 cores
    python profiling/bench_profile_drift.py --smoke   # a quick check that it runs
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

import vitdeploy
from vitdeploy.bench.latency import make_input
from vitdeploy.bench.paired import paired_speedup
from vitdeploy.runtime.onnxrt import session_options

from common import write_result

THREADS, MODEL, SIZE = 2, "deit_small_patch16_224", (3, 224, 224)
LOAD_FROM = 0.5  # the competing load starts half-way through the (estimated) run and lasts until it ends
LOAD_PROCESSES = 2  # busy loops: one per core of the 2-core machine these figures come from
TOLERANCE, AGREEMENT = 0.03, 0.05


def build_twins(folder: Path) -> tuple[Path, Path]:
    """The FP32 graph `vitdeploy export` writes for random-init DeiT-S, and a byte-identical copy of it."""
    deploy = vitdeploy.export(MODEL, folder / "deploy", precisions=["fp32"], release_model=True)
    graph = deploy.graphs["fp32"]
    a, b = folder / "a" / "model.onnx", folder / "b" / "model.onnx"
    for copy in (a, b):
        copy.parent.mkdir()
        copy.write_bytes(graph.read_bytes())
    assert a.read_bytes() == b.read_bytes()
    return a, b


def bare_session(path: Path) -> ort.InferenceSession:
    """A session with the options the profiler's interleaved sessions have (pinned threads, no spin-waiting)."""
    return ort.InferenceSession(str(path), session_options(THREADS, spin=False), providers=["CPUExecutionProvider"])


def call_ms(path: Path, calls: int = 5) -> float:
    s = bare_session(path)
    x = {s.get_inputs()[0].name: make_input(1, SIZE)}
    s.run(None, x)
    t = time.perf_counter()
    for _ in range(calls):
        s.run(None, x)
    return (time.perf_counter() - t) * 1000 / calls


class Load:
    """LOAD_PROCESSES busy-loop processes that start `start` seconds after `begin()` and stop at `end()`."""

    def __init__(self, start: float) -> None:
        self.start, self.on_s, self.off_s = start, None, None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._done = threading.Event()
        self._t0 = 0.0

    def begin(self) -> None:
        self._t0 = time.perf_counter()
        self._thread.start()

    def _run(self) -> None:
        if self._done.wait(self.start):
            return  # the run ended first
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(LOAD_PROCESSES)]
        self.on_s = time.perf_counter() - self._t0
        self._done.wait()
        for proc in procs:
            proc.terminate()
            proc.wait()
        self.off_s = time.perf_counter() - self._t0

    def end(self) -> None:
        self._done.set()
        self._thread.join()


def drift_run(a: Path, b: Path, sequential: bool, iters: int, warmup: int, est_ms: float, rounds: int) -> dict:
    """One profile of the twins with the load on for part of it."""
    estimate = 2 * (iters + warmup) * est_ms / 1000 + 2.0  # two sessions' calls, plus creating them
    load = Load(LOAD_FROM * estimate)
    load.begin()
    t0 = time.perf_counter()
    r = vitdeploy.profile([a, b], batch=[1], warmup=warmup, iters=iters, threads=THREADS, sequential=sequential,
                          rounds=None if sequential else rounds, reference=a, show_progress=False, roofline=False)
    wall = time.perf_counter() - t0
    load.end()
    rec = r.record
    ra, rb = rec["results"]
    s = rb["speedup"]
    out = {"mode": rec["settings"]["mode"], "rounds": rec["settings"]["rounds"], "iters": iters, "wall_s": round(wall, 1),
           "load_on_s": None if load.on_s is None else round(load.on_s, 1), "load_off_s": round(load.off_s or 0, 1),
           "p50_ms": {"a": ra["latency_ms"]["p50"], "b": rb["latency_ms"]["p50"]},
           "speedup_b_over_a": s["speedup"], "ci95": s["ci95"], "verdict": s["verdict"],
           "rounds_ms": {"a": ra["rounds_ms"], "b": rb["rounds_ms"]}}
    if sequential:  # what an interval would claim if the blocks were treated as paired: confidently wrong
        blockwise = paired_speedup(ra["rounds_ms"], rb["rounds_ms"])
        out["blockwise_ci95_not_valid"] = blockwise["ci95"]
        out["blockwise_verdict_not_valid"] = blockwise["verdict"]
    else:
        out["drift_spread"] = rec["drift"][0]["spread"]
    return out


def agreement(a: Path, b: Path, rounds: int, iters: int) -> dict:
    """The profiler's interleaved p50 of each copy against two bare `session.run` loops on sessions with the same
    options: one on the profiler's own schedule (a call of a, a call of b, and so on: what the profiler's machinery
    costs) and one with each copy's calls back to back (what a program running that graph alone would see). Rounds
    alternate which of the three goes first, so drift of the machine cancels."""
    bare = {k: bare_session(p) for k, p in (("a", a), ("b", b))}
    x = make_input(1, SIZE)
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in bare.items()}
    for k, s in bare.items():
        for _ in range(3):
            s.run(None, feeds[k])
    got: dict[str, dict[str, list[float]]] = {m: {"a": [], "b": []} for m in ("profiler", "interleaved", "consecutive")}

    def timed(k: str) -> float:
        t = time.perf_counter()
        bare[k].run(None, feeds[k])
        return (time.perf_counter() - t) * 1000

    def profiler() -> None:
        rec = vitdeploy.profile([a, b], batch=[1], warmup=3, iters=iters, threads=THREADS, show_progress=False,
                                roofline=False).record
        for k, row in zip("ab", rec["results"]):
            got["profiler"][k].append(row["latency_ms"]["p50"])

    def interleaved() -> None:
        times = {"a": [], "b": []}
        for i in range(iters):
            for k in ("ab" if i % 2 == 0 else "ba"):
                times[k].append(timed(k))
        for k in "ab":
            got["interleaved"][k].append(float(np.median(times[k])))

    def consecutive() -> None:
        for k in "ab":
            got["consecutive"][k].append(float(np.median([timed(k) for _ in range(iters)])))

    steps = [profiler, interleaved, consecutive]
    for r in range(rounds):
        for step in steps[r % 3:] + steps[:r % 3]:
            step()
    out = {}
    for k in "ab":
        prof = float(np.median(got["profiler"][k]))
        row = {"profiler_p50_ms": prof}
        for mode in ("interleaved", "consecutive"):
            bare_p50 = float(np.median(got[mode][k]))
            row[f"bare_{mode}_p50_ms"] = bare_p50
            row[f"ratio_vs_bare_{mode}"] = round(prof / bare_p50, 4)
        # the target, as bench_profiler_overhead.py has it: the profiler's machinery against a bare loop on the same
        # schedule; the back-to-back loop is recorded beside it (it adds what interleaving itself changes)
        row["within_target"] = abs(row["ratio_vs_bare_interleaved"] - 1) <= AGREEMENT
        row["consecutive_within_5pct"] = abs(row["ratio_vs_bare_consecutive"] - 1) <= AGREEMENT
        row["per_round"] = {m: got[m][k] for m in got}
        out[k] = row
    return out


def roofline(a: Path, iters: int) -> dict:
    rec = vitdeploy.profile([a], batch=[1, 8], warmup=2, iters=iters, threads=THREADS, show_progress=False).record
    return {"peaks_gmacs": {k: v for k, v in rec["peaks"]["ort-cpu"].items()},
            "rows": [{"batch": r["batch"], "p50_ms": r["latency_ms"]["p50"], "macs_per_image": r["macs"],
                      **{k: r["roofline"][k] for k in ("gmacs", "share")}} for r in rec["results"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="few iterations: check that it runs")
    args = ap.parse_args()
    iters, rounds, warmup, agree_rounds, agree_iters, roof_iters = \
        (20, 10, 2, 3, 5, 3) if args.smoke else (120, 40, 5, 6, 20, 8)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        a, b = build_twins(Path(tmp))
        est = call_ms(a)
        print(f"DeiT-S batch 1: about {est:.0f} ms per call here")
        runs = {}
        for mode in ("interleaved", "sequential"):
            runs[mode] = drift_run(a, b, mode == "sequential", iters, warmup, est, rounds)
            r = runs[mode]
            ci = f" [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]" if r["ci95"] else ""
            print(f"{mode}: speedup of the copy {r['speedup_b_over_a']:.3f}{ci} ({r['verdict']}), load on "
                  f"{r['load_on_s']}-{r['load_off_s']} s of {r['wall_s']} s")
        agree = agreement(a, b, agree_rounds, agree_iters)
        print("profiler / bare p50 (bare on the profiler's schedule, bare back to back): " + ", ".join(
            f"{k} {v['ratio_vs_bare_interleaved']:.3f} {v['ratio_vs_bare_consecutive']:.3f}" for k, v in agree.items()))
        roof = roofline(a, roof_iters)
        print("roofline: " + ", ".join(f"b{r['batch']} {100 * r['share']:.0f} %" for r in roof["rows"]))
    inter = runs["interleaved"]
    write_result("profile_drift", {
        "targets": {"interleaved": f"speedup within 1.00 ± {TOLERANCE} and its 95 % interval contains 1.0",
                    "agreement": f"profiler p50 within {AGREEMENT:.0%} of a bare session.run loop on the profiler's own schedule "
                     "(also recorded: against a loop running each copy's calls back to back)"},
        "model": f"{MODEL} (random init), FP32 graph from vitdeploy.export, two byte-identical copies",
        "threads": THREADS, "smoke": args.smoke,
        "load": f"{LOAD_PROCESSES} busy-loop processes from {LOAD_FROM:.0%} of each run's estimated length to its end "
                "(the sequential run times copy a first, then copy b)",
        "loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "runs": runs,
        "interleaved_within_target": bool(abs(inter["speedup_b_over_a"] - 1) <= TOLERANCE
                                          and inter["ci95"][0] <= 1.0 <= inter["ci95"][1]),
        "sequential_error": round(runs["sequential"]["speedup_b_over_a"] - 1, 4),
        "agreement": agree, "agreement_within_target": all(v["within_target"] for v in agree.values()),
        "roofline": roof, "wall_s": round(time.perf_counter() - t_start, 1),
    }, threads=THREADS)


if __name__ == "__main__":
    main()
