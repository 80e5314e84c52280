"""Cleanup passes for an exported ViT graph, with onnx-graphsurgeon.

The TorchScript exporter leaves shape arithmetic in the graph (Shape→Gather→Unsqueeze→Concat chains that rebuild
the batch size for every Reshape and Expand), Identity nodes for deduplicated weights, and no-op arithmetic.
TensorRT, onnxruntime and the FP16/INT8 converters all work better on a graph without them. Each pass is a short
named function from graph to graph that ends with `cleanup().toposort()`; `clean_graph` runs them in order and,
given a `check`, measures parity after every pass so a pass that changes the function is named where it happens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from vitdeploy.deploy.onnx_export import needs_external_data
from vitdeploy.errors import VitDeployError

Pass = Callable[[gs.Graph], gs.Graph]
Check = Callable[[onnx.ModelProto], dict]
# Initializers above this size are left out of the copy that shape inference serializes (protobuf's 2 GiB limit).
_SHAPE_INFERENCE_INLINE_BYTES = 1 << 20


# ------------------------------------------------------------------------------------------ conversions
def to_graph(model: onnx.ModelProto) -> gs.Graph:
    return gs.import_onnx(model)


def to_model(graph: gs.Graph, like: Optional[onnx.ModelProto] = None) -> onnx.ModelProto:
    """Export `graph`, keeping the opset imports and producer of `like` (the model it came from)."""
    model = gs.export_onnx(graph)
    if like is not None:
        model.producer_name, model.producer_version = like.producer_name, like.producer_version
        model.ir_version = like.ir_version
    return model


def infer_model_shapes(model: onnx.ModelProto, inplace: bool = False) -> onnx.ModelProto:
    """ONNX shape inference with data propagation (so Shape→Gather→Concat chains get symbolic shapes).

    Large weights are replaced by typed graph inputs in the copy that is inferred, so models over protobuf's
    2 GiB limit work too; the inferred value_info is copied back onto a copy of `model`, or onto `model` itself with
    `inplace` (for a model that is about to be dropped anyway: saves a copy of the weights).
    """
    from vitdeploy.deploy.onnx_export import copy_fields

    # `light` is built field by field so the weights are never copied into it: it has only the small initializers.
    light = onnx.ModelProto()
    copy_fields(model, light, skip="graph")
    copy_fields(model.graph, light.graph, skip="initializer")
    for t in model.graph.initializer:
        if _tensor_nbytes(t) > _SHAPE_INFERENCE_INLINE_BYTES:
            light.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            light.graph.initializer.append(t)
    del light.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    out = model
    if not inplace:
        out = onnx.ModelProto()
        out.CopyFrom(model)
    del out.graph.value_info[:]
    out.graph.value_info.extend(inferred.graph.value_info)
    return out


def _tensor_nbytes(t: onnx.TensorProto) -> int:
    if t.HasField("raw_data"):
        return len(t.raw_data)
    return int(np.prod(t.dims, dtype=np.int64)) * 4


# ------------------------------------------------------------------------------------------ small helpers
def _bypass(graph: gs.Graph, node: gs.Node, keep: gs.Tensor) -> bool:
    """Remove `node` (one output) by routing its consumers to `keep`; False where that would rename a graph output."""
    out = node.outputs[0]
    if out in graph.outputs:
        producer = keep.inputs[0] if isinstance(keep, gs.Variable) and keep.inputs else None
        if producer is None or keep in graph.outputs or len(keep.outputs) > 1:
            return False  # the graph output must keep its name and its own producer
        producer.outputs[producer.outputs.index(keep)] = out
        node.outputs.clear()
        return True
    for consumer in list(out.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is out:
                consumer.inputs[i] = keep
    node.outputs.clear()
    return True


def _constant_value(t: gs.Tensor) -> Optional[np.ndarray]:
    return np.asarray(t.values) if isinstance(t, gs.Constant) else None


def _same_shape_after_broadcast(x: gs.Tensor, c: np.ndarray, out: gs.Tensor) -> bool:
    """True when `x op c` has x's shape and dtype, so the op can be dropped without changing any shape."""
    if c.size == 1 and (x.shape is not None and len(x.shape) >= c.ndim):
        return x.dtype == out.dtype or out.dtype is None
    if x.shape is None or out.shape is None:
        return False
    return list(x.shape) == list(out.shape) and len(x.shape) >= c.ndim


class _Names:
    """Fresh tensor and node names that do not collide with any name already in the graph."""

    def __init__(self, graph: gs.Graph) -> None:
        self.taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes}

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name


# ------------------------------------------------------------------------------------------------ passes
def infer_shapes(graph: gs.Graph) -> gs.Graph:
    """Shape inference, so folding and the later passes know every tensor's rank, dtype and (symbolic) dims."""
    return to_graph(infer_model_shapes(to_model(graph), inplace=True))


def fold_constants(graph: gs.Graph) -> gs.Graph:
    """Fold every subgraph whose inputs are constants, including shapes that shape inference made static."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # graphsurgeon evaluates with onnxruntime; keep its optimizer notes quiet
    graph.fold_constants(fold_shapes=True, error_ok=False).cleanup().toposort()
    return graph


def remove_identities(graph: gs.Graph) -> gs.Graph:
    """Drop Identity nodes (the exporter emits them for weights it deduplicated)."""
    for node in [n for n in graph.nodes if n.op == "Identity"]:
        _bypass(graph, node, node.inputs[0])
    graph.cleanup().toposort()
    return graph


_NEUTRAL = {"Add": (0.0, "any"), "Sub": (0.0, 1), "Mul": (1.0, "any"), "Div": (1.0, 1)}


def remove_noop_arithmetic(graph: gs.Graph) -> gs.Graph:
    """Drop x+0, x-0, x*1 and x/1 where the constant does not broadcast x to a new shape (e.g. zero biases)."""
    for node in [n for n in graph.nodes if n.op in _NEUTRAL and len(n.inputs) == 2]:
        neutral, const_pos = _NEUTRAL[node.op]
        for pos in ((0, 1) if const_pos == "any" else (const_pos,)):
            c, x = _constant_value(node.inputs[pos]), node.inputs[1 - pos]
            if c is None or isinstance(x, gs.Constant) or not np.all(c == neutral):
                continue
            if _same_shape_after_broadcast(x, c, node.outputs[0]) and _bypass(graph, node, x):
                break
    graph.cleanup().toposort()
    return graph


# ---------------------------------------------------------------- shape subgraphs (symbolic evaluation)
@dataclass(frozen=True, eq=False)
class SymDim:
    """A dimension only known at run time: `name` is its symbol (e.g. "batch"); `source`/`axis` say where to read it."""

    name: str
    source: gs.Tensor
    axis: int

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SymDim) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class _Unknown(Exception):
    """A value the symbolic evaluator cannot express (a float, an unnamed dim, an unsupported op)."""


class _ShapeValues:
    """The contents of the graph's small integer tensors, as arrays of ints and SymDims where the evaluator can say.

    This is what shape arithmetic computes: the batch size read with Shape, moved around with Gather/Slice/
    Unsqueeze/Concat, compared with Equal/Where. Knowing each element lets a Reshape take a constant target.
    """

    def __init__(self, graph: gs.Graph) -> None:
        self.values: dict[str, np.ndarray] = {}
        self.computed: set[str] = set()
        self._symbols: dict[str, SymDim] = {}
        for t in graph.inputs:  # prefer graph inputs as the place a symbol is read from
            self._dims(t)
        for node in graph.nodes:
            try:
                outs = self._eval(node)
            except _Unknown:
                continue
            for var, value in zip(node.outputs, outs):
                self.values[var.name] = value
                self.computed.add(var.name)

    def get(self, t: gs.Tensor) -> np.ndarray:
        if isinstance(t, gs.Constant):
            v = np.asarray(t.values)
            if not _int_or_bool_dtype(v.dtype) or v.size > 64:
                raise _Unknown
            return v.astype(object)
        if t.name not in self.values:
            raise _Unknown
        return self.values[t.name]

    def _dims(self, t: gs.Tensor) -> list[Any]:
        if t.shape is None:
            raise _Unknown
        dims: list[Any] = []
        for axis, d in enumerate(t.shape):
            if isinstance(d, (int, np.integer)) and d >= 0:
                dims.append(int(d))
                continue
            name = d if isinstance(d, str) and d else None
            if name is None:  # an unnamed dynamic dim: a symbol of its own, equal only to itself
                name = f"?{t.name}:{axis}"
            dims.append(self._symbols.setdefault(name, SymDim(name, t, axis)))
        return dims

    def _eval(self, node: gs.Node) -> list[np.ndarray]:
        op, a = node.op, node.attrs
        if op == "Shape":
            dims = self._dims(node.inputs[0])
            return [np.array(dims[slice(a.get("start", 0), a.get("end"))], dtype=object)]
        ins = [self.get(t) for t in node.inputs if not (isinstance(t, gs.Variable) and t.name == "")]
        if op in ("Identity", "Cast") and _is_int_or_bool(node.outputs[0]):
            return [ins[0]]
        if op == "Gather" and ins[0].ndim == 1 and a.get("axis", 0) == 0:
            return [_objects(np.take(ins[0], ins[1].astype(np.int64)))]
        if op == "Unsqueeze" and ins[0].ndim == 0:
            return [ins[0].reshape(1)]
        if op == "Squeeze" and ins[0].size == 1:
            return [ins[0].reshape(())]
        if op == "Reshape" and ins[0].ndim <= 1 and list(ins[1]) == [-1]:
            return [ins[0].reshape(-1)]
        if op == "Concat" and all(v.ndim == 1 for v in ins):
            return [np.concatenate(ins)]
        if op == "Slice" and ins[0].ndim == 1:
            return [_slice_1d(ins)]
        if op == "ConstantOfShape" and all(isinstance(v, int) for v in ins[0].tolist()):
            fill = np.asarray(a["value"].values).reshape(-1)[0] if "value" in a else 0
            return [np.full([int(v) for v in ins[0]], fill).astype(object)]
        if op in ("Add", "Sub", "Mul", "Div", "Equal"):
            return [_elementwise(op, ins[0], ins[1])]
        if op == "Where":
            cond = ins[0]
            if not all(isinstance(c, (bool, np.bool_)) for c in cond.reshape(-1)):
                raise _Unknown
            return [np.where(cond.astype(bool), ins[1], ins[2]).astype(object)]
        raise _Unknown


def _objects(v: Any) -> np.ndarray:
    """`v` as an object array (np.take on a 0-d index returns a bare element)."""
    out = np.empty(np.shape(v), dtype=object)
    out[...] = v
    return out


def _int_or_bool_dtype(dtype: Any) -> bool:
    return dtype is not None and (np.issubdtype(dtype, np.integer) or np.dtype(dtype) == np.bool_)


def _is_int_or_bool(t: gs.Tensor) -> bool:
    return _int_or_bool_dtype(t.dtype)


def _slice_1d(ins: list[np.ndarray]) -> np.ndarray:
    starts, ends = int(ins[1][0]), int(ins[2][0])
    if len(ins) > 3 and int(ins[3][0]) not in (0, -1):
        raise _Unknown
    step = int(ins[4][0]) if len(ins) > 4 else 1
    return ins[0][slice(starts, ends, step)]


def _elementwise(op: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Integer arithmetic and comparison, where a SymDim may only meet a neutral value or a negative one."""

    def one(u: Any, v: Any) -> Any:
        if not isinstance(u, SymDim) and not isinstance(v, SymDim):
            if op == "Equal":
                return bool(u == v)
            u, v = int(u), int(v)
            if op == "Div":
                if v == 0:
                    raise _Unknown
                return int(np.trunc(u / v))
            return {"Add": u + v, "Sub": u - v, "Mul": u * v}[op]
        if op == "Equal":
            if isinstance(u, SymDim) and isinstance(v, SymDim) and u == v:
                return True
            n = v if isinstance(u, SymDim) else u
            if not isinstance(n, SymDim) and int(n) < 0:  # a dimension is never negative
                return False
            raise _Unknown
        if isinstance(u, SymDim) and not isinstance(v, SymDim) and int(v) == _RIGHT_NEUTRAL[op]:
            return u  # x+0, x-0, x*1, x/1
        if isinstance(v, SymDim) and not isinstance(u, SymDim) and op in ("Add", "Mul") and int(u) == _RIGHT_NEUTRAL[op]:
            return v  # 0+x, 1*x
        raise _Unknown

    xb, yb = np.broadcast_arrays(x, y)
    out = np.empty(xb.shape, dtype=object)
    for idx in np.ndindex(xb.shape):
        out[idx] = one(xb[idx], yb[idx])
    return out


_RIGHT_NEUTRAL = {"Add": 0, "Sub": 0, "Mul": 1, "Div": 1}


def _reshape_target(values: np.ndarray, data: gs.Tensor, allowzero: int) -> Optional[np.ndarray]:
    """A constant Reshape target for symbolic `values`: 0 copies a matching input dim, -1 takes one other."""
    target, free = [], 0
    in_shape = list(data.shape) if data.shape is not None else []
    for i, v in enumerate(values.tolist()):
        if not isinstance(v, SymDim):
            free += int(v) == -1
            target.append(int(v))
        elif not allowzero and i < len(in_shape) and isinstance(in_shape[i], str) and in_shape[i] == v.name:
            target.append(0)
        else:
            free += 1
            target.append(-1)
    return np.array(target, dtype=np.int64) if free <= 1 else None


def _shape_builder(graph: gs.Graph, values: np.ndarray, cache: dict, names: "_Names") -> gs.Variable:
    """A 1-D int64 tensor holding `values`, built from one Shape slice per run of symbols and one constant per run of ints."""
    key = tuple(values.tolist())
    if key in cache:
        return cache[key]
    pieces: list[gs.Tensor] = []
    runs: list[list[Any]] = []
    for v in values.tolist():
        same_kind = runs and isinstance(runs[-1][-1], SymDim) == isinstance(v, SymDim)
        if same_kind and isinstance(v, SymDim):
            last = runs[-1][-1]
            same_kind = v.source is last.source and v.axis == last.axis + 1
        if same_kind:
            runs[-1].append(v)
        else:
            runs.append([v])
    for run in runs:
        if isinstance(run[0], SymDim):
            out = gs.Variable(names.fresh("shape_dims"), dtype=np.int64, shape=[len(run)])
            graph.nodes.append(gs.Node("Shape", name=names.fresh("/shape/Shape"),
                                       attrs={"start": run[0].axis, "end": run[-1].axis + 1},
                                       inputs=[run[0].source], outputs=[out]))
            pieces.append(out)
        else:
            pieces.append(gs.Constant(names.fresh("shape_const"), np.array(run, dtype=np.int64)))
    if len(pieces) == 1 and isinstance(pieces[0], gs.Variable):
        result = pieces[0]
    else:
        result = gs.Variable(names.fresh("shape_concat"), dtype=np.int64, shape=[len(values)])
        graph.nodes.append(gs.Node("Concat", name=names.fresh("/shape/Concat"), attrs={"axis": 0},
                                   inputs=pieces, outputs=[result]))
    cache[key] = result
    return result


def _is_minimal_shape_tensor(t: gs.Tensor) -> bool:
    """Already a Shape slice, or a Concat of Shape slices and constants: nothing left to simplify."""
    if not t.inputs:
        return True
    prod = t.inputs[0]
    if prod.op == "Shape":
        return True
    return prod.op == "Concat" and all(isinstance(i, gs.Constant) or (i.inputs and i.inputs[0].op == "Shape")
                                       for i in prod.inputs)


def fold_shape_subgraphs(graph: gs.Graph) -> gs.Graph:
    """Replace shape arithmetic by constants while the batch stays symbolic.

    Every integer tensor a real op consumes (a Reshape target, an Expand shape, ...) is evaluated element by
    element: known sizes become constants, the batch becomes 0 ("copy this input dim") or -1 in Reshape targets,
    and where an op needs the run-time value it is read with one `Shape(start, end)` slice of the tensor that
    carries it (preferably the graph input) instead of a Shape→Gather→Unsqueeze→Concat→Equal→Where chain.
    """
    values = _ShapeValues(graph)
    cache: dict = {}
    names = _Names(graph)
    for node in list(graph.nodes):
        if all(o.name in values.computed for o in node.outputs):
            continue  # part of the shape arithmetic itself; it goes away once nothing reads it
        for i, t in enumerate(list(node.inputs)):
            if not isinstance(t, gs.Variable) or t.name not in values.computed:
                continue
            v = values.values[t.name]
            if not any(isinstance(e, SymDim) for e in v.reshape(-1)):
                node.inputs[i] = gs.Constant(names.fresh(f"{t.name}_folded"),
                                             np.asarray(v.astype(np.int64)).astype(t.dtype or np.int64))
            elif node.op == "Reshape" and i == 1:
                target = _reshape_target(v, node.inputs[0], int(node.attrs.get("allowzero", 0)))
                if target is not None:
                    node.inputs[i] = gs.Constant(names.fresh(f"{t.name}_folded"), target)
            elif v.ndim == 1 and np.issubdtype(t.dtype or np.int64, np.int64) and not _is_minimal_shape_tensor(t):
                node.inputs[i] = _shape_builder(graph, v, cache, names)
    graph.cleanup().toposort()
    return fold_constants(graph)  # casts and math on what just became constant (e.g. the attention scale)


# --------------------------------------------------------------------------------------------- the runner
CLEANUP_PASSES: tuple[tuple[str, Pass], ...] = (
    ("infer_shapes", infer_shapes),
    ("fold_constants", fold_constants),
    ("fold_shape_subgraphs", fold_shape_subgraphs),
    ("remove_identities", remove_identities),
    ("remove_noop_arithmetic", remove_noop_arithmetic),
)


def clean_graph(model: onnx.ModelProto, check: Optional[Check] = None, max_abs_diff: float = 1e-3,
                passes: tuple[tuple[str, Pass], ...] = CLEANUP_PASSES) -> tuple[onnx.ModelProto, list[dict]]:
    """Run the cleanup passes; returns the clean model (shapes inferred, toposorted, checked) and a record per pass.

    `check(model)` measures parity of a model with the reference (a dict with at least "max_abs_diff"); it runs
    on the raw graph and after every pass, and a pass whose result drifts more than `max_abs_diff` beyond the
    raw graph's own difference raises, naming the pass (1e-3 is well above the FP32 reordering noise of folding
    and well below what a wrong rewrite does to logits).
    """
    records: list[dict] = []

    def record(name: str, m: onnx.ModelProto) -> None:
        rec: dict[str, Any] = {"pass": name, "nodes": len(m.graph.node)}
        if check is not None:
            p = check(m)
            rec["max_abs_diff"] = p["max_abs_diff"]
            base = records[0].get("max_abs_diff", 0.0) if records else p["max_abs_diff"]
            if not p["max_abs_diff"] <= base + max_abs_diff:  # NaN fails too
                raise VitDeployError(f"cleanup pass '{name}' changed the model's function: max |Δ| vs the reference "
                                     f"{p['max_abs_diff']:.2e} (before the passes {base:.2e})")
        records.append(rec)

    record("raw", model)
    graph = to_graph(model)
    for name, fn in passes:
        graph = fn(graph)
        record(name, to_model(graph, like=model))
    clean = infer_model_shapes(to_model(graph.cleanup().toposort(), like=model), inplace=True)
    if not needs_external_data(clean):  # larger models are checked from their files by write_onnx
        onnx.checker.check_model(clean, full_check=False)
    return clean, records
