"""Activation ranges for INT8, per tensor and per method, from one histogram of |x| per tensor.

Two passes over the calibration images (the largest |x| of each tensor, then a histogram of |x| over [0, that])
give every method at once, so a per-tensor choice costs no extra inference:

- minmax: the largest |x| seen;
- percentile: the |x| below which `percentile` % of the values lie;
- entropy: the clipping threshold whose 128-level quantized histogram is closest to the full one in KL divergence
  (the search TensorRT's entropy calibrator describes);
- auto: of those three thresholds, the one with the smallest quantization error (clipping plus rounding) estimated
  from the same histogram. Post-GELU and Softmax outputs have long thin tails where minmax wastes levels and a
  fixed percentile can cut the few large values that matter; the estimate decides per tensor.

Symmetric int8 uses 127 levels on each side of zero, so the scale of a tensor is threshold / 127.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import onnx

from vitdeploy.errors import VitDeployError

METHODS = ("minmax", "percentile", "entropy")
CHOICES = (*METHODS, "auto")
BINS = 2048
LEVELS = 127  # symmetric int8: [-127, 127]
_ENTROPY_LEVELS = 128
_ENTROPY_STRIDE = 8  # candidate thresholds every 8 bins: 240 candidates of 2048 bins


@dataclass
class TensorHistogram:
    """|x| of one tensor over the calibration images: `counts` in BINS equal bins over [0, amax]."""

    amax: float
    counts: np.ndarray

    @property
    def width(self) -> float:
        return self.amax / len(self.counts) if self.amax > 0 else 0.0


def _with_outputs(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph outputs also include `tensors` (float activations)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    known = {v.name: v for v in probe.graph.value_info}
    for t in tensors:
        if t not in have:
            probe.graph.output.append(known[t] if t in known else
                                      onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, []))
    return probe


def collect_histograms(model: onnx.ModelProto, tensors: Iterable[str], images: np.ndarray, scratch: Path,
                       batch: int = 16, threads: Optional[int] = None) -> dict[str, TensorHistogram]:
    """The |x| histogram of each of `tensors` (activations of the FP32 `model`) over `images` (NCHW float32)."""
    from vitdeploy.deploy.onnx_export import scratch_graph
    from vitdeploy.runtime.onnxrt import OrtRunner

    names = list(dict.fromkeys(tensors))
    if not names:
        return {}
    if len(images) < 1:
        raise VitDeployError("INT8 calibration needs at least one image")
    x = np.ascontiguousarray(images, dtype=np.float32)
    static = _static_batch(model)
    step = static or batch
    amax = dict.fromkeys(names, 0.0)
    counts = {n: np.zeros(BINS, dtype=np.int64) for n in names}
    with scratch_graph(_with_outputs(model, names), scratch, "calibrate.onnx") as path, \
            OrtRunner(path, provider="cpu", threads=threads) as runner:
        outputs = [o.name for o in runner.session.get_outputs()]
        index = {n: outputs.index(n) for n in names}
        input_name = runner.session.get_inputs()[0].name

        def batches() -> Iterable[list[np.ndarray]]:
            for i in range(0, len(x), step):
                b = x[i:i + step]
                real = len(b)
                if static and real < static:
                    b = np.concatenate([b, np.repeat(b[-1:], static - real, axis=0)])
                got = runner.session.run(None, {input_name: b})
                yield [np.abs(got[index[n]][:real]) for n in names]

        for values in batches():  # pass 1: the range of each tensor
            for n, v in zip(names, values):
                amax[n] = max(amax[n], float(v.max()) if v.size else 0.0)
        for values in batches():  # pass 2: the histogram over that range
            for n, v in zip(names, values):
                if amax[n] > 0:
                    counts[n] += np.histogram(v, bins=BINS, range=(0.0, amax[n]))[0]
    return {n: TensorHistogram(amax[n], counts[n]) for n in names}


def _static_batch(model: onnx.ModelProto) -> Optional[int]:
    inits = {t.name for t in model.graph.initializer}
    inp = next(v for v in model.graph.input if v.name not in inits)
    dim = inp.type.tensor_type.shape.dim[0]
    return int(dim.dim_value) if dim.HasField("dim_value") else None


# ------------------------------------------------------------------------------------------ thresholds
def threshold(h: TensorHistogram, method: str, percentile: float = 99.999) -> float:
    """The clipping threshold (amax of the int8 range) of `method` for one tensor."""
    if h.amax <= 0 or h.counts.sum() == 0:
        return 0.0
    if method == "minmax":
        return h.amax
    if method == "percentile":
        cdf = np.cumsum(h.counts) / h.counts.sum()
        i = int(np.searchsorted(cdf, float(percentile) / 100.0))
        return float(min(i + 1, len(h.counts)) * h.width)
    if method == "entropy":
        return _entropy_threshold(h)
    raise VitDeployError(f"unknown calibration method {method!r}; use one of: {', '.join(CHOICES)}")


def _entropy_threshold(h: TensorHistogram) -> float:
    counts = h.counts.astype(np.float64)
    best_kl, best_i = np.inf, len(counts)
    for i in range(_ENTROPY_LEVELS, len(counts) + 1, _ENTROPY_STRIDE):
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()  # the clipped values land in the last bin
        kl = _kl(p, _expanded_quantized(counts[:i]))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(best_i * h.width)


def _expanded_quantized(p: np.ndarray) -> np.ndarray:
    """`p` merged into 128 levels, each level's mass spread evenly back over its non-empty bins."""
    edges = np.linspace(0, len(p), _ENTROPY_LEVELS + 1).astype(int)
    starts = edges[:-1]
    mass = np.add.reduceat(p, starts)
    nonzero = np.add.reduceat((p > 0).astype(np.float64), starts)
    per_bin = np.divide(mass, nonzero, out=np.zeros_like(mass), where=nonzero > 0)
    q = np.repeat(per_bin, np.diff(edges))
    return np.where(p > 0, q, 0.0)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    ps, qs = p.sum(), q.sum()
    if ps == 0 or qs == 0:
        return np.inf
    p, q = p / ps, q / qs
    mask = p > 0
    if np.any(q[mask] == 0):
        return np.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def quantization_error(h: TensorHistogram, t: float) -> float:
    """Mean squared error of symmetric int8 with threshold `t` on the histogram's values: rounding (step² / 12)
    below the threshold, clipping ((|x| - t)²) above it."""
    total = h.counts.sum()
    if total == 0 or t <= 0:
        return 0.0 if total == 0 or h.amax == 0 else float("inf")
    centres = (np.arange(len(h.counts)) + 0.5) * h.width
    step = t / LEVELS
    err = np.where(centres <= t, step * step / 12.0, (centres - t) ** 2)
    return float((h.counts * err).sum() / total)


def choose(h: TensorHistogram, method: str, percentile: float = 99.999) -> tuple[str, float]:
    """(method used, threshold) for one tensor; "auto" picks the method with the least quantization error."""
    if method != "auto":
        return method, threshold(h, method, percentile)
    options = [(quantization_error(h, t), m, t) for m in METHODS for t in [threshold(h, m, percentile)]]
    _, m, t = min(options, key=lambda o: o[0])
    return m, t
