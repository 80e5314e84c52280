"""Shared by the benchmarks: pinned threads, interleaved timing, ONNX variants timed against a dense baseline, a GEMM
roofline, and result files with host info."""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from vitdeploy.runtime.host import host_info
from vitdeploy.runtime.onnxrt import session_options, summarize_ort_profile
from vitdeploy.deploy.graph import clean_graph
from vitdeploy.deploy.onnx_export import export_onnx, parity
from vitdeploy.io import atomic_write_json
from vitdeploy.models import count_macs, count_params

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


def ort_session(path: Path, threads: int, spin: bool = False, profile_prefix: str | None = None):
    """An ORT CPU session with pinned threads and spin-waiting off by default (vitdeploy's own session options):
    several live sessions timed round-robin share the cores, and a spinning idle session would steal them from the
    one being timed. `spin=True` is ORT's own default, what a server running one model gets; timed round-robin it
    needs a pause between sessions (paired_speed_rows' `park_s`) so that the last one's threads stop spinning.
    `profile_prefix` turns on ORT's profiler."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads, spin=spin, profile_prefix=profile_prefix),
                                providers=["CPUExecutionProvider"])


def export_variants(models: dict, folder: Path, size: tuple, rng: np.random.Generator,
                    parity_images: int = 2, clean: bool = False) -> tuple[dict, dict]:
    """Each model exported by vitdeploy's exporter and checked against PyTorch on seeded random images:
    ({name: params, MACs, parity}, {name: graph path}). With `clean`, each graph also goes through the export's
    cleanup passes (deploy/graph.clean_graph), as `vitdeploy export` ships it, and parity is that graph's."""
    stats, paths = {}, {}
    for name, model in models.items():
        paths[name] = export_onnx(model, Path(folder) / f"{name}.onnx", size)
        if clean:
            onnx.save(clean_graph(onnx.load(str(paths[name])))[0], str(paths[name]))
        p = parity(model, paths[name], rng.standard_normal((parity_images, *size), dtype=np.float32))
        stats[name] = {"params": count_params(model), "macs": count_macs(model, size),
                       "parity_max_abs_diff": p["max_abs_diff"], "parity_cosine": p["cosine"]}
    return stats, paths


def speed_rows(paths: dict, stats: dict, size: tuple, rng: np.random.Generator, threads: int, iters: int,
               batches: tuple = (8, 1), baseline: str = "dense") -> list[dict]:
    """Per batch: every graph's p50 (sessions timed interleaved), and each variant's speedup over the baseline
    against its MACs ratio."""
    sessions = {k: ort_session(p, threads) for k, p in paths.items()}
    rows = []
    for batch in batches:
        x = rng.standard_normal((batch, *size), dtype=np.float32)
        p50 = interleaved_p50({k: (lambda s=s: s.run(None, {"input": x})) for k, s in sessions.items()}, iters)
        row = {"batch": batch, "p50_ms": {k: round(v, 2) for k, v in p50.items()}, "variants": {}}
        for k in paths:
            if k == baseline:
                continue
            macs_ratio = stats[baseline]["macs"] / stats[k]["macs"]
            speedup = p50[baseline] / p50[k]
            row["variants"][k] = {"macs_ratio": round(macs_ratio, 3), "speedup": round(speedup, 3),
                                  "speedup_over_macs_ratio": round(speedup / macs_ratio, 3)}
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------- accuracy statistics
Z95 = 1.959964


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def top1_record(correct: np.ndarray) -> dict:
    """Top-1 of a per-image bool vector with its 95 % Wilson interval."""
    k, n = int(correct.sum()), int(correct.size)
    lo, hi = wilson(k, n)
    return {"n": n, "correct": k, "top1": k / n, "ci95": [round(lo, 5), round(hi, 5)]}


def paired_difference(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0) -> dict:
    """Top-1 of `a` minus top-1 of `b`, scored on the same images (per-image bool vectors): the difference, its 95 %
    bootstrap interval (images resampled with replacement, the pair kept together), and McNemar's exact two-sided p
    from the discordant images (a right and b wrong, and the reverse)."""
    from scipy.stats import binomtest

    a, b = np.asarray(a, bool), np.asarray(b, bool)
    d = a.astype(np.int8) - b.astype(np.int8)  # +1, 0, -1 per image
    rng = np.random.default_rng(seed)
    boots = np.array([d[rng.integers(0, d.size, d.size)].mean() for _ in range(resamples)])
    only_a, only_b = int((d > 0).sum()), int((d < 0).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"difference": float(d.mean()), "ci95_bootstrap": [float(np.quantile(boots, 0.025)),
                                                              float(np.quantile(boots, 0.975))],
            "only_a_right": only_a, "only_b_right": only_b, "mcnemar_p": float(p)}


def paired_speed_rows(paths: dict, stats: dict, size: tuple, rng: np.random.Generator, threads: int, rounds: int,
                      batches: tuple = (8, 1), baseline: str = "dense", per_round: int = 3, spin: bool = False,
                      park_s: float = 0.05) -> list[dict]:
    """Per batch: the graphs timed round-robin (`per_round` runs each per round, the round's median kept), and each
    variant's paired speedup over the baseline with its bootstrap interval over rounds, the speedup ÷ MACs ratio
    (its interval scaled alike), and the p50 of every graph. With `spin` (ORT's default session), each graph's
    runs start `park_s` after the previous graph's, once that session's idle threads have stopped spinning."""
    from vitdeploy.bench.paired import paired_speedup

    sessions = {k: ort_session(p, threads, spin=spin) for k, p in paths.items()}
    rows = []
    for batch in batches:
        x = rng.standard_normal((batch, *size), dtype=np.float32)
        for s in sessions.values():
            for _ in range(3):
                s.run(None, {"input": x})
        per: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(rounds):
            for k, s in sessions.items():
                if spin:
                    time.sleep(park_s)
                t = []
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    s.run(None, {"input": x})
                    t.append((time.perf_counter() - t0) * 1e3)
                per[k].append(float(np.median(t)))
        row = {"batch": batch, "rounds": rounds, "spin": spin,
               "p50_ms": {k: round(float(np.median(v)), 2) for k, v in per.items()}, "variants": {}}
        for k in paths:
            if k == baseline:
                continue
            macs_ratio = stats[baseline]["macs"] / stats[k]["macs"]
            s = paired_speedup(per[baseline], per[k])
            lo, hi = s["ci95"]
            row["variants"][k] = {"macs_ratio": round(macs_ratio, 3), "speedup": round(s["speedup"], 3),
                                  "speedup_ci95": [round(lo, 3), round(hi, 3)],
                                  "speedup_over_macs_ratio": round(s["speedup"] / macs_ratio, 3),
                                  "speedup_over_macs_ratio_ci95": [round(lo / macs_ratio, 3), round(hi / macs_ratio, 3)]}
        rows.append(row)
    return rows


def interleaved_op_profile(paths: dict, threads: int, x: np.ndarray, rounds: int = 20, warmup: int = 3,
                           top: int = 14) -> dict:
    """ORT's op profile of every graph, the runs taken round-robin across the graphs (one per graph per round) so
    that the machine's drift falls on all alike and the per-op times can be compared between graphs: per graph the
    kernel time per run and the `top` op types (ms per run)."""
    scratch = Path(tempfile.mkdtemp(prefix="interleaved-op-profile."))
    try:
        sessions = {k: ort_session(p, threads, profile_prefix=str(scratch / k)) for k, p in paths.items()}
        for s in sessions.values():
            for _ in range(warmup):
                s.run(None, {"input": x})
        names = list(sessions)
        for r in range(rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:
                sessions[k].run(None, {"input": x})
        out = {}
        for k, s in sessions.items():
            prof = summarize_ort_profile(json.loads(Path(s.end_profiling()).read_text()), skip_runs=warmup, top=top)
            out[k] = {"kernel_ms": round(prof["kernel_ms_per_run"], 2),
                      "by_op_type": {r["op_type"]: round(r["ms"], 3) for r in prof["by_op_type"]}}
        return out
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
