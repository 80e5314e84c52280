"""How close two models' outputs are: logit comparison metrics (max/mean abs diff, cosine, top-1 agreement), and
inference over any number of samples on a runner whose batch range is limited. Export's parity checks, eval and
the benchmarks all measure with these."""
from __future__ import annotations

from typing import Any

import numpy as np

from vitdeploy.errors import VitDeployError
from vitdeploy.runtime.base import Runner


def cosine_per_sample(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b` (float64)."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(denom, 1e-12)


def compare_logits(got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """max/mean abs diff, mean per-sample cosine, top-1 agreement and n of two logit arrays."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise VitDeployError(f"logit shapes differ: {got.shape} vs {ref.shape}")
    diff = np.abs(got - ref)
    return {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "cosine": float(cosine_per_sample(got, ref).mean()),
        "top1_agreement": float((got.argmax(axis=1) == ref.argmax(axis=1)).mean()),
        "n": int(len(got)),
    }


def infer_in_range(runner: Runner, x: np.ndarray, max_batch: int | None = None) -> np.ndarray:
    """Logits for any number of samples on a runner with a limited batch range (a static graph, an engine's
    profile): chunks of at most its largest batch (and `max_batch`), a short last chunk padded with copies of its
    last sample."""
    low, high = runner.batch_range
    step = min(b for b in (high, max_batch, len(x)) if b)
    outs = []
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        n = len(chunk)
        if n < low:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], low - n, axis=0)])
        outs.append(runner.infer(chunk)[:n])
    return np.concatenate(outs)
