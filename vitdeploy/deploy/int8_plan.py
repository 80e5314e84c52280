"""INT8 planned under an accuracy budget: each layer's measured sensitivity against its measured speed gain.

    calibrate once (|x| histograms; per-tensor method) ─▶ sensitivity on held-out images, every layer
    alone and every layer left out of the full placement ─▶ per-layer timing on the CPU backend ─▶ return the
    least valuable layers to float until the budget holds (binary search over that order) ─▶ the mixed graph

The full placement is every Linear (its input and its per-channel weight) and both attention matmuls (Q·Kᵀ and
P·V, both inputs): the most aggressive one whose Q/DQ feed only MatMul/Gemm, the rule TensorRT's Q/DQ fusion and
`qdq_problems` hold. The value of a layer is the milliseconds INT8 saves on it divided by the accuracy it costs
(the mean of its alone and left-out effects, plus half an image so that ties go to speed). A layer INT8 does not
speed up (per-layer timing) goes back to float before the search, whatever the budget. Held-out images never come
from the split evaluation scores on.
"""
from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vitdeploy.deploy.calibrate import CHOICES, choose, collect_histograms
from vitdeploy.deploy.int8 import attention_nodes, linear_nodes, module_name
from vitdeploy.deploy.onnx_export import scratch_graph
from vitdeploy.deploy.qdq import QdqBuilder
from vitdeploy.errors import VitDeployError

DEFAULT_PLAN_IMAGES = 1000
_TIMING_ROUNDS, _TIMING_WARMUP = 15, 3


@dataclass
class PlanConfig:
    """The accuracy budget and how the plan is measured."""

    max_drop: Optional[float] = None  # top-1 points below FP32 on the held-out images
    min_agreement: Optional[float] = None  # top-1 agreement with FP32 on the held-out images, in (0, 1]
    images: int = DEFAULT_PLAN_IMAGES  # held-out images
    method: str = "auto"  # activation calibration: one method for all, or "auto" per tensor
    percentile: float = 99.999
    batch: int = 8  # batch of the per-layer and end-to-end timing
    threads: Optional[int] = None
    drop_slower: bool = True  # layers that INT8 does not speed up go back to float even when the budget holds

    def __post_init__(self) -> None:
        if self.max_drop is None and self.min_agreement is None:
            raise VitDeployError("an INT8 plan needs --int8-max-drop or --int8-min-agreement")
        if self.max_drop is not None and not (math.isfinite(self.max_drop) and 0 <= self.max_drop <= 100):
            raise VitDeployError(f"--int8-max-drop must be top-1 points in [0, 100], got {self.max_drop}")
        if self.min_agreement is not None and not (math.isfinite(self.min_agreement) and 0 < self.min_agreement <= 1):
            raise VitDeployError(f"--int8-min-agreement must be a fraction in (0, 1], got {self.min_agreement}")
        if int(self.images) < 1:
            raise VitDeployError(f"--int8-plan-images must be >= 1, got {self.images}")
        if self.method not in CHOICES:
            raise VitDeployError(f"unknown calibration method {self.method!r}; use one of: {', '.join(CHOICES)}")

    def budget(self) -> dict:
        return {k: v for k, v in (("max_drop_points", self.max_drop), ("min_agreement", self.min_agreement))
                if v is not None}


@dataclass
class Unit:
    """One quantizable layer: a Linear, or one of the two attention matmuls of a block."""

    name: str  # "blocks.0.attn.qkv", "blocks.0.attn.qk"
    kind: str  # qkv, proj, fc1, fc2 (reads GELU's output), head, qk, pv (reads the attention probabilities)
    node: str  # the ONNX MatMul/Gemm
    record: dict = field(default_factory=dict)


def find_units(model: onnx.ModelProto, exclude: set[str] = frozenset()) -> list[Unit]:
    """Every quantizable layer of a clean FP32 ViT graph in graph order, but the `exclude`d nodes."""
    linear = {n.name for n in linear_nodes(model)}
    attention = {n.name for n in attention_nodes(model)}
    seen: dict[str, int] = {}
    units = []
    for n in model.graph.node:
        if n.name in linear:
            mod = module_name(n.name)
            name, kind = mod or n.name, (mod.rsplit(".", 1)[-1] if mod else "linear")
        elif n.name in attention:
            mod = module_name(n.name)
            k = seen.get(mod, 0)
            seen[mod] = k + 1
            kind = ("qk", "pv")[k] if k < 2 else f"matmul{k}"
            name = f"{mod}.{kind}" if mod else n.name
        else:
            continue
        if n.name not in exclude:
            units.append(Unit(name, kind, n.name))
    if not units:
        raise VitDeployError("nothing left to quantize: every MatMul/Gemm is excluded")
    return units


# -------------------------------------------------------------------------------------------- scoring
class HeldOut:
    """Held-out images with labels; scores any graph by top-1 and by top-1 agreement with the FP32 graph."""

    def __init__(self, fp32: onnx.ModelProto, images: np.ndarray, labels: np.ndarray, scratch: Path,
                 threads: Optional[int] = None) -> None:
        self.x, self.y = np.ascontiguousarray(images, dtype=np.float32), np.asarray(labels)
        self.scratch, self.threads = scratch, threads
        self.graphs = 0
        self.ref = self.predict(fp32)  # FP32's predictions: what agreement is measured against
        self.fp32 = self.score_predictions(self.ref)

    def predict(self, model: onnx.ModelProto) -> np.ndarray:
        self.graphs += 1
        session = cpu_session(model, self.scratch, self.threads)
        inp = session.get_inputs()[0]
        static = inp.shape[0] if isinstance(inp.shape[0], int) else None
        step = static or 32
        preds = []
        for i in range(0, len(self.x), step):
            b = self.x[i:i + step]
            real = len(b)
            if static and real < static:
                b = np.concatenate([b, np.repeat(b[-1:], static - real, axis=0)])
            preds.append(session.run(None, {inp.name: b})[0][:real].argmax(axis=1))
        return np.concatenate(preds)

    def score_predictions(self, pred: np.ndarray) -> dict:
        return {"top1": float((pred == self.y).mean()), "agreement": float((pred == self.ref).mean())}

    def score(self, model: onnx.ModelProto) -> dict:
        return self.score_predictions(self.predict(model))

    @property
    def n(self) -> int:
        return int(len(self.x))


def cpu_session(model: onnx.ModelProto, scratch: Path, threads: Optional[int], spin: bool = True) -> Any:
    """An ONNX Runtime CPU session on an in-memory graph: from its bytes (no file, no checker pass: the planner
    opens a hundred of these), or from a scratch file where the graph is over protobuf's 2 GiB."""
    import onnxruntime as ort

    from vitdeploy.deploy.onnx_export import needs_external_data
    from vitdeploy.runtime.host import physical_cores
    from vitdeploy.runtime.onnxrt import session_options

    so = session_options(threads or physical_cores(), spin=spin)
    if not needs_external_data(model):
        return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    with scratch_graph(model, scratch, "session.onnx") as path:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def loss_points(score: dict, fp32: dict, cfg: PlanConfig) -> float:
    """How far `score` is from FP32 in the budget's own terms, in points (the worse of the two when both are set)."""
    parts = []
    if cfg.max_drop is not None:
        parts.append(100.0 * (fp32["top1"] - score["top1"]))
    if cfg.min_agreement is not None:
        parts.append(100.0 * (1.0 - score["agreement"]))
    return max(parts)


def meets(score: dict, fp32: dict, cfg: PlanConfig) -> bool:
    ok = True
    if cfg.max_drop is not None:
        ok &= 100.0 * (fp32["top1"] - score["top1"]) <= cfg.max_drop + 1e-9
    if cfg.min_agreement is not None:
        ok &= score["agreement"] >= cfg.min_agreement - 1e-9
    return bool(ok)


# --------------------------------------------------------------------------------------------- timing
def _shape(model: onnx.ModelProto, tensor: str, batch: int) -> Optional[list[int]]:
    """Concrete shape of an activation at `batch` (its first dim is the batch), None where a dim is unknown."""
    for v in [*model.graph.value_info, *model.graph.input]:
        if v.name == tensor:
            dims = v.type.tensor_type.shape.dim
            out = [batch if k == 0 else (d.dim_value if d.HasField("dim_value") else None) for k, d in enumerate(dims)]
            return None if not dims or any(d is None for d in out) else out
    return None


def _micro_graph(model: onnx.ModelProto, node: onnx.NodeProto, shapes: dict[str, list[int]]) -> onnx.ModelProto:
    """The layer alone: its activation inputs as graph inputs, its weight (and Gemm bias) as initializers."""
    inits = {t.name: t for t in model.graph.initializer}
    inputs = [helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, s) for t, s in shapes.items()]
    consts = [inits[i] for i in node.input if i in inits]
    g = helper.make_graph([node], "layer", inputs, [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT,
                                                                                  None)], consts)
    return helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def layer_gains(model: onnx.ModelProto, builder: QdqBuilder, units: list[Unit], batch: int,
                threads: int) -> dict[str, Optional[dict]]:
    """Per unit: its float and INT8 (Q/DQ) milliseconds on ONNX Runtime's CPU backend at `batch`, timed alone and
    interleaved; layers of the same shape share one measurement."""
    import onnxruntime as ort

    from vitdeploy.runtime.onnxrt import session_options

    rng = np.random.default_rng(0)
    cache: dict[tuple, Optional[dict]] = {}
    out: dict[str, Optional[dict]] = {}
    for u in units:
        node = builder.nodes[u.node]
        acts = builder.activations(u.node)
        shapes = {t: _shape(model, t, batch) for t in acts}
        consts = [list(numpy_helper.to_array(builder._consts[i]).shape) for i in node.input[1:] if i in builder._consts]
        key = (node.op_type, tuple(tuple(s) if s else None for s in shapes.values()), tuple(map(tuple, consts)),
               tuple((a.name, a.i) for a in node.attribute))
        if key not in cache:
            if any(s is None for s in shapes.values()):
                cache[key] = None
            else:
                micro = _micro_graph(model, node, shapes)
                q = QdqBuilder(micro, {t: builder.thresholds[t] for t in acts}).build([node.name])
                feeds = {t: (rng.standard_normal(s).astype(np.float32) * builder.thresholds[t] / 4) for t, s in shapes.items()}
                so = session_options(threads, spin=False)
                sessions = [ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
                            for m in (micro, q)]
                cache[key] = _interleaved_ms(sessions, feeds)
        out[u.name] = cache[key]
    return out


def _interleaved_ms(sessions: list, feeds: dict) -> dict:
    for s in sessions:
        for _ in range(_TIMING_WARMUP):
            s.run(None, feeds)
    times: list[list[float]] = [[] for _ in sessions]
    for r in range(_TIMING_ROUNDS):
        order = range(len(sessions)) if r % 2 == 0 else reversed(range(len(sessions)))
        for k in order:
            t = time.perf_counter()
            sessions[k].run(None, feeds)
            times[k].append((time.perf_counter() - t) * 1e3)
    f32, i8 = (float(np.median(t)) for t in times)
    return {"fp32_ms": round(f32, 4), "int8_ms": round(i8, 4), "gain_ms": round(f32 - i8, 4)}


def end_to_end(graphs: dict[str, onnx.ModelProto], x: np.ndarray, scratch: Path, threads: Optional[int],
               rounds: int = 10) -> dict:
    """Whole-graph p50 milliseconds of each graph on `x`, interleaved, and each one's speedup over the first with
    the spread (10th-90th percentile) of the per-round ratios: an export-time indication, not a benchmark."""
    names = list(graphs)
    sessions = [cpu_session(m, scratch, threads, spin=False) for m in graphs.values()]
    feeds = {sessions[0].get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    for s in sessions:
        s.run(None, feeds)
    times = np.zeros((rounds, len(sessions)))
    for r in range(rounds):
        order = list(range(len(sessions)))
        for k in (order if r % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            sessions[k].run(None, feeds)
            times[r, k] = (time.perf_counter() - t) * 1e3
    base = times[:, 0]
    rec: dict[str, Any] = {"batch": int(len(x)), "threads": threads, "rounds": rounds, "graphs": {}}
    for k, name in enumerate(names):
        ratio = base / times[:, k]
        rec["graphs"][name] = {"p50_ms": round(float(np.median(times[:, k])), 3),
                               "speedup": round(float(np.median(ratio)), 3),
                               "speedup_p10_p90": [round(float(np.quantile(ratio, q)), 3) for q in (0.1, 0.9)]}
    return rec


# -------------------------------------------------------------------------------------------- planning
@dataclass
class Plan:
    model: onnx.ModelProto  # the planned Q/DQ graph (float elsewhere)
    record: dict
    rows: list[dict]  # the sensitivity table
    held: HeldOut  # scores more graphs on the same held-out images
    builder: QdqBuilder  # builds other placements from the same calibration

    def full_model(self) -> onnx.ModelProto:
        """Every candidate layer in INT8: the placement the plan started from."""
        return self.builder.build([r["node"] for r in self.rows])


def plan_int8(clean: onnx.ModelProto, calib: np.ndarray, held_images: np.ndarray, held_labels: np.ndarray,
              cfg: PlanConfig, scratch: Path, exclude: set[str] = frozenset(),
              step: Callable[[str], None] = lambda s: None) -> Plan:
    """Plan INT8 for the clean FP32 graph: calibrate on `calib`, measure on the held-out images, search under the
    budget of `cfg`; layers in `exclude` (node names) stay float."""
    from vitdeploy.runtime.host import physical_cores

    if cfg.threads is None:
        cfg = replace(cfg, threads=physical_cores())
    units = find_units(clean, set(exclude))
    probe = QdqBuilder(clean, {})
    tensors = [t for u in units for t in probe.activations(u.node)]
    step("int8 plan: calibrate")
    hist = collect_histograms(clean, tensors, calib, scratch, threads=cfg.threads)
    chosen = {t: choose(h, cfg.method, cfg.percentile) for t, h in hist.items()}
    builder = QdqBuilder(clean, {t: thr for t, (_, thr) in chosen.items()})
    held = HeldOut(clean, held_images, held_labels, scratch, cfg.threads)
    fp32 = held.fp32
    full_nodes = [u.node for u in units]
    step("int8 plan: full placement")
    full = held.score(builder.build(full_nodes))
    for i, u in enumerate(units):
        step(f"int8 plan: sensitivity {i + 1}/{len(units)}")
        alone = held.score(builder.build([u.node]))
        left_out = held.score(builder.build([n for n in full_nodes if n != u.node]))
        u.record = {"alone": alone, "left_out": left_out,
                    "alone_loss": loss_points(alone, fp32, cfg),
                    "left_out_gain": loss_points(full, fp32, cfg) - loss_points(left_out, fp32, cfg)}
    step("int8 plan: per-layer timing")
    timing = layer_gains(clean, builder, units, cfg.batch, cfg.threads)
    eps = 0.5 * 100.0 / held.n  # half an image, in points
    for u in units:
        t = timing[u.name]
        gain = t["gain_ms"] if t else 0.0
        harm = max(0.0, 0.5 * (u.record["alone_loss"] + u.record["left_out_gain"]))
        u.record.update(timing=t, harm=harm, value=(gain / (harm + eps)) if gain > 0 else gain)
    order = sorted(units, key=lambda u: u.record["value"])  # least valuable first: the not-faster ones lead
    slower = [u for u in order if u.record["timing"] is not None and u.record["timing"]["gain_ms"] <= 0]
    start = len(slower) if cfg.drop_slower else 0
    if start == len(units):
        raise VitDeployError("INT8 is not faster than float for any layer on this backend (per-layer timing); "
                             "export fp32 instead")

    def nodes_after(k: int) -> list[str]:
        back = {u.node for u in order[:k]}
        return [n for n in full_nodes if n not in back]

    first = full if start == 0 else held.score(builder.build(nodes_after(start)))
    trail = [{"returned": start, **first, "loss_points": round(loss_points(first, fp32, cfg), 4),
              "meets": meets(first, fp32, cfg)}]
    lo, hi = start, len(units)
    if trail[0]["meets"]:
        hi = start
    while hi - lo > 1:
        mid = (lo + hi) // 2
        step(f"int8 plan: search, {mid} layer(s) back to float")
        s = held.score(builder.build(nodes_after(mid)))
        ok = meets(s, fp32, cfg)
        trail.append({"returned": mid, **s, "loss_points": round(loss_points(s, fp32, cfg), 4), "meets": ok})
        lo, hi = (lo, mid) if ok else (mid, hi)
    if hi >= len(units):
        best = order[-1]
        raise VitDeployError(f"no INT8 placement meets the budget ({_budget_text(cfg)}): with only "
                             f"{best.name} in INT8 the held-out split already misses it; relax the budget or export "
                             f"fp32/fp16 instead")
    planned_nodes = nodes_after(hi)
    model = builder.build(planned_nodes)
    measured = next(t for t in trail if t["returned"] == hi)
    kept = set(planned_nodes)
    rows = _rows(units, order, kept, chosen, builder)
    record = {
        "budget": cfg.budget(), "method": cfg.method,
        "held_out": {"images": held.n, "graphs_scored": held.graphs},
        "fp32": fp32, "full": {**full, "layers": len(units), "drop_points": _drop(full, fp32)},
        "planned": {"top1": measured["top1"], "agreement": measured["agreement"], "drop_points": _drop(measured, fp32),
                    "layers": len(planned_nodes), "returned_to_float": [u.name for u in order[:hi]],
                    "returned_not_faster": [u.name for u in order[:start]]},
        "predicted": {"drop_points": round(sum(100.0 * (fp32["top1"] - u.record["alone"]["top1"]) for u in units
                                               if u.node in kept), 3),
                      "disagreement_points": round(sum(100.0 * (1 - u.record["alone"]["agreement"]) for u in units
                                                       if u.node in kept), 3),
                      "saving_ms": round(sum((u.record["timing"] or {}).get("gain_ms", 0.0) for u in units
                                             if u.node in kept), 3),
                      "saving_ms_full": round(sum((u.record["timing"] or {}).get("gain_ms", 0.0) for u in units), 3)},
        "search": trail,
        "timing": {"backend": "ort-cpu", "batch": cfg.batch, "threads": cfg.threads,
                   "rounds": _TIMING_ROUNDS, "source": "per-layer timing (each layer alone, float vs Q/DQ)"},
        "layers": rows,
        "quantized_nodes": planned_nodes,
    }
    return Plan(model, record, rows, held, builder)


def with_fp16_rest(model: onnx.ModelProto, io_dtype: str = "fp32") -> onnx.ModelProto:
    """The planned graph with everything that is not INT8 in FP16 (LayerNorm, Softmax, residual Adds in FP32 as in
    the FP16 graph). The Q/DQ and the INT8 MatMul/Gemm with their bias Adds stay FP32, with Casts around them, so
    each DequantizeLinear still feeds its MatMul directly (opset 17 Q/DQ are FP32 only)."""
    from vitdeploy.deploy.fp16 import convert_fp16, matmul_groups
    from vitdeploy.deploy.qdq import qdq_nodes, quantized_nodes

    groups = matmul_groups(model)
    keep = [*qdq_nodes(model), *(m for n in quantized_nodes(model) for m in groups.get(n, [n]))]
    return convert_fp16(model, io_dtype, keep_fp32=keep)


def _drop(s: dict, fp32: dict) -> float:
    return round(100.0 * (fp32["top1"] - s["top1"]), 3)


def _budget_text(cfg: PlanConfig) -> str:
    parts = []
    if cfg.max_drop is not None:
        parts.append(f"top-1 drop <= {cfg.max_drop:g} points")
    if cfg.min_agreement is not None:
        parts.append(f"agreement >= {cfg.min_agreement:g}")
    return ", ".join(parts)


def _rows(units: list[Unit], order: list[Unit], kept: set[str], chosen: dict, builder: QdqBuilder) -> list[dict]:
    rank = {u.name: i + 1 for i, u in enumerate(order)}
    rows = []
    for u in units:
        r, t = u.record, u.record["timing"] or {}
        acts = builder.activations(u.node)
        rows.append({
            "layer": u.name, "kind": u.kind, "node": u.node, "int8": u.node in kept,
            "calibration": "+".join(chosen[a][0] for a in acts),
            "threshold": [round(float(chosen[a][1]), 6) for a in acts],
            "alone_top1": round(r["alone"]["top1"], 5), "alone_agreement": round(r["alone"]["agreement"], 5),
            "left_out_top1": round(r["left_out"]["top1"], 5), "left_out_agreement": round(r["left_out"]["agreement"], 5),
            "alone_loss_points": round(r["alone_loss"], 3), "left_out_gain_points": round(r["left_out_gain"], 3),
            "fp32_ms": t.get("fp32_ms"), "int8_ms": t.get("int8_ms"), "gain_ms": t.get("gain_ms"),
            "value": round(float(r["value"]), 4), "return_order": rank[u.name],
        })
    return rows


TABLE_COLUMNS = ("layer", "kind", "int8", "calibration", "alone_loss_points", "left_out_gain_points", "alone_top1",
                 "alone_agreement", "left_out_top1", "left_out_agreement", "fp32_ms", "int8_ms", "gain_ms", "value",
                 "return_order", "node")


def sensitivity_csv(rows: list[dict]) -> str:
    """The sensitivity table as CSV text: one row per layer, in graph order."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(TABLE_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "int8": "yes" if r["int8"] else "no"})
    return buf.getvalue()
