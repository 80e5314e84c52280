"""Shared by the INT8 planning benchmarks (bench_int8_fashion.py, bench_int8_deit.py): Q/DQ counts, interleaved
timing with per-round ratios and bootstrap intervals, predictions and op profiles on ONNX Runtime's CPU backend."""
from __future__ import annotations

import collections
import time
from pathlib import Path

import numpy as np
import onnx

from common import ort_session


def qdq_counts(path: Path) -> dict:
    """How many Q and DQ nodes a graph has, and how many MatMul/Gemm read a DequantizeLinear output."""
    m = onnx.load(str(path), load_external_data=False)
    ops = collections.Counter(n.op_type for n in m.graph.node)
    dq = {n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    readers = collections.Counter(n.op_type for n in m.graph.node if any(i in dq for i in n.input))
    return {"QuantizeLinear": ops["QuantizeLinear"], "DequantizeLinear": ops["DequantizeLinear"],
            "dq_readers": dict(readers), "nodes": sum(ops.values()),
            "opset": next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)}


def predictions(path: Path, images: np.ndarray, threads: int, batch: int = 50) -> np.ndarray:
    """Top-1 class per image on ORT CPU."""
    s = ort_session(path, threads)
    name = s.get_inputs()[0].name
    dtype = np.float16 if "16" in s.get_inputs()[0].type else np.float32
    return np.concatenate([s.run(None, {name: images[i:i + batch].astype(dtype)})[0].argmax(axis=1)
                           for i in range(0, len(images), batch)])


def interleaved_ratios(paths: dict[str, Path], x: np.ndarray, threads: int, rounds: int = 20, calls: int = 3,
                       warmup: int = 3, baseline: str = "fp32", contender: str = "planned",
                       resamples: int = 5000) -> dict:
    """Each graph called `calls` times per round, graphs in rotating order each round (so drift of a shared machine
    lands on all of them alike). Per graph: p50 ms over every call, and its speedup over `baseline` as the median of
    the per-round ratios (round medians) with a 95 % bootstrap interval over rounds; and, the same way, how much
    faster `contender` is than each other graph."""
    sessions = {k: ort_session(p, threads) for k, p in paths.items()}
    feeds = {}
    for k, s in sessions.items():
        inp = s.get_inputs()[0]
        feeds[k] = {inp.name: x.astype(np.float16 if "16" in inp.type else np.float32)}
        for _ in range(warmup):
            s.run(None, feeds[k])
    names = list(sessions)
    per_round = np.zeros((rounds, len(names)))
    every: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for k in order:
            t_round = []
            for _ in range(calls):
                t = time.perf_counter()
                sessions[k].run(None, feeds[k])
                t_round.append((time.perf_counter() - t) * 1e3)
            every[k] += t_round
            per_round[r, names.index(k)] = np.median(t_round)
    rng = np.random.default_rng(0)

    def ratio_of(num: str, den: str) -> tuple[float, list[float]]:
        ratio = per_round[:, names.index(num)] / per_round[:, names.index(den)]
        boots = [np.median(ratio[rng.integers(0, rounds, rounds)]) for _ in range(resamples)]
        return round(float(np.median(ratio)), 3), [round(float(np.quantile(boots, q)), 3) for q in (0.025, 0.975)]

    out = {"batch": int(len(x)), "threads": threads, "rounds": rounds, "calls_per_round": calls, "graphs": {}}
    for k in names:
        speedup, ci = ratio_of(baseline, k)
        out["graphs"][k] = {"p50_ms": round(float(np.median(every[k])), 2),
                            "p90_ms": round(float(np.quantile(every[k], 0.9)), 2),
                            "speedup_vs_fp32": speedup, "speedup_ci95": ci}
        if contender in names and k not in (contender, baseline):  # > 1: the contender is faster than k
            out["graphs"][k][f"{contender}_speedup_over_this"], out["graphs"][k][f"{contender}_ci95"] = \
                ratio_of(k, contender)
    return out


def op_profile(path: Path, x: np.ndarray, threads: int, runs: int = 10, top: int = 10) -> dict:
    """ONNX Runtime's per-op profile (by op type), in a separate session after the timing."""
    from vitdeploy.runtime.onnxrt import ort_op_profile

    p = ort_op_profile(path, "cpu", threads, x, runs=runs, warmup=2, top=top)
    return {"kernel_ms_per_run": round(p["kernel_ms_per_run"], 2),
            "by_op_type": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}
                           for row in p["by_op_type"]]}
