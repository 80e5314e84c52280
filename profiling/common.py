"""Shared by the benchmarks: pinned threads, interleaved timing, ONNX variants timed against a dense baseline, a GEMM
roofline, and result files with host info."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from vitdeploy.bench.host import host_info
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


def ort_session(path: Path, threads: int):
    """An ORT CPU session with pinned threads and spin-waiting off: several live sessions timed round-robin share
    the cores, and a spinning idle session would steal them from the one being timed."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def export_variants(models: dict, folder: Path, size: tuple, rng: np.random.Generator,
                    parity_images: int = 2) -> tuple[dict, dict]:
    """Each model exported by vitdeploy's exporter and checked against PyTorch on seeded random images:
    ({name: params, MACs, parity}, {name: graph path})."""
    stats, paths = {}, {}
    for name, model in models.items():
        paths[name] = export_onnx(model, Path(folder) / f"{name}.onnx", size)
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
