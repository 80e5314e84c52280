"""The FP16 graph: weights and activations in FP16, with LayerNorm, Softmax and the residual adds kept in FP32.

FP16 LayerNorm overflows in its variance (a ViT-B fell from 85 % to 19 % top-1 that way), Softmax loses its
small probabilities, and the residual stream accumulates every block's output, so those stay FP32 and the
precision is written into the graph with explicit Casts: TensorRT 11 builds strongly typed networks only and
takes every layer's precision from the graph. onnxruntime's converter does the conversion; `_tidy_casts` then
removes the FP32→FP16→FP32 round trips it leaves on the residual stream (which would silently make it FP16
again) and the duplicate Cast nodes it emits when two blocked nodes read the same tensor.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from vitdeploy.deploy.graph import infer_model_shapes, to_graph, to_model
from vitdeploy.deploy.onnx_export import needs_external_data
from vitdeploy.errors import VitDeployError

FP32_OPS = ("LayerNormalization", "Softmax")
IO_DTYPES = ("fp32", "fp16")
# An FP16 graph meets its target when it agrees this well with the FP32 graph on the parity inputs.
TARGET = {"top1_agreement": 0.99, "cosine": 0.999}
_F32, _F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16

Compare = Callable[[onnx.ModelProto], dict]


# ------------------------------------------------------------------------------------ structure queries
def residual_adds(model: onnx.ModelProto) -> list[str]:
    """Names of the residual Adds: both inputs are activations and one is the residual stream.

    The residual stream is recognised by its other reader: in a pre-norm ViT block the stream `x` feeds the
    block's LayerNormalization and, around the branch, the Add `x + branch(norm(x))`.
    """
    consts = _constant_names(model)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out = []
    for n in model.graph.node:
        if n.op_type != "Add" or len(n.input) != 2 or any(i in consts for i in n.input):
            continue
        if any(r.op_type == "LayerNormalization" for i in n.input for r in readers.get(i, [])):
            out.append(n.name)
    return out


def matmul_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Each MatMul/Gemm with the bias Add that follows it: the unit the sensitivity check keeps in FP32."""
    consts = _constant_names(model)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    groups = {}
    for n in model.graph.node:
        if n.op_type not in ("MatMul", "Gemm"):
            continue
        after = readers.get(n.output[0], [])
        bias = [r.name for r in after if len(after) == 1 and r.op_type == "Add" and any(i in consts for i in r.input)]
        groups[n.name] = [n.name, *bias]
    return groups


def _constant_names(model: onnx.ModelProto) -> set[str]:
    names = {t.name for t in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return names


# -------------------------------------------------------------------------------------------- conversion
def convert_fp16(model: onnx.ModelProto, io_dtype: str = "fp32", keep_fp32: Iterable[str] = ()) -> onnx.ModelProto:
    """An FP16 copy of the clean FP32 `model`; LayerNorm, Softmax, residual Adds and `keep_fp32` nodes stay FP32.

    `io_dtype="fp32"` keeps the input and logits FP32 with Casts at the boundary; "fp16" makes them FP16.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    if io_dtype not in IO_DTYPES:
        raise VitDeployError(f"unknown io dtype {io_dtype!r}; use one of: {', '.join(IO_DTYPES)}")
    blocked = list(dict.fromkeys([*residual_adds(model), *keep_fp32]))
    known = {n.name for n in model.graph.node}
    missing = [b for b in blocked if b not in known]
    if missing:
        raise VitDeployError(f"cannot keep unknown node(s) in FP32: {', '.join(missing[:5])}")
    src = _unshare_initializers(copy.deepcopy(model), set(blocked), set(FP32_OPS))
    # The converter's own shape inference serializes the whole model (not possible over protobuf's 2 GiB); the clean
    # FP32 graph carries inferred shapes already (infer_model_shapes), which is what the converter reads.
    large = needs_external_data(src)
    converted = convert_float_to_float16(src, keep_io_types=io_dtype == "fp32", disable_shape_infer=large,
                                         op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS], node_block_list=blocked)
    graph = _readable_names(_tidy_casts(to_graph(_drop_duplicate_nodes(converted))))
    return infer_model_shapes(to_model(graph, like=model), inplace=True)


def _unshare_initializers(model: onnx.ModelProto, blocked: set[str], fp32_ops: set[str]) -> onnx.ModelProto:
    """Give FP32 nodes their own copy of any float weight they share with FP16 nodes (else it would become FP16)."""
    inits = {t.name: t for t in model.graph.initializer if t.data_type == _F32}
    users: dict[str, list[tuple[onnx.NodeProto, bool]]] = {}
    for n in model.graph.node:
        fp32 = n.name in blocked or n.op_type in fp32_ops
        for i in n.input:
            if i in inits:
                users.setdefault(i, []).append((n, fp32))
    for name, uses in users.items():
        if len({fp32 for _, fp32 in uses}) < 2:
            continue
        copy_name = f"{name}_fp32"
        t = copy.deepcopy(inits[name])
        t.name = copy_name
        model.graph.initializer.append(t)
        for node, fp32 in uses:
            if fp32:
                node.input[:] = [copy_name if i == name else i for i in node.input]
    return model


def _drop_duplicate_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove nodes that write a tensor another node already writes (the converter's duplicate Casts)."""
    seen: set[str] = set()
    keep = []
    for n in model.graph.node:
        if any(o in seen for o in n.output):
            continue
        seen.update(n.output)
        keep.append(n)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


def _cast_to(node: gs.Node) -> Optional[int]:
    return int(node.attrs["to"]) if node.op == "Cast" else None


def _tidy_casts(graph: gs.Graph) -> gs.Graph:
    """Fold Cast pairs that come back to the original type (FP32→FP16→FP32 reads the FP32 tensor again,
    FP16→FP32→FP16 the FP16 one) and merge Casts of one tensor to one type, so every FP32 region reads exactly
    the FP32 values it was meant to."""
    for node in [n for n in graph.nodes if n.op == "Cast"]:
        producer = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
        if producer is not None and producer.op == "Cast" and _elem_type(producer.inputs[0]) == _cast_to(node):
            _reroute(graph, node, producer.inputs[0])
    seen: dict[tuple[str, int], gs.Tensor] = {}
    for node in [n for n in graph.nodes if n.op == "Cast" and n.outputs]:
        key = (node.inputs[0].name, _cast_to(node))
        if key in seen:
            _reroute(graph, node, seen[key])
        else:
            seen[key] = node.outputs[0]
    graph.cleanup().toposort()
    return graph


_CAST_SUFFIXES = ("_cast_to_fp16", "_cast_to_fp32")


def _readable_names(graph: gs.Graph) -> gs.Graph:
    """Give tensors names that match their type again: the converter names an FP32 output `X_cast_to_fp16` and
    the Cast that follows it `X`. Afterwards every op writes its original tensor name and a Cast writes `X_fp16`
    or `X_fp32`, which is what a person reading the graph (or a TensorRT layer report) expects."""
    io = {t.name for t in [*graph.inputs, *graph.outputs]}
    renames: list[tuple[gs.Variable, str]] = []
    for var in graph.tensors().values():
        if not isinstance(var, gs.Variable) or var.name in io or not var.inputs:
            continue
        base = _strip(var.name)
        producer = var.inputs[0]
        if producer.op == "Cast":
            base = f"{_strip(producer.inputs[0].name)}_{'fp16' if _cast_to(producer) == _F16 else 'fp32'}"
        renames.append((var, base))
    moving = {id(var) for var, _ in renames}
    taken = set(io) | {t.name for t in graph.tensors().values() if id(t) not in moving}
    for var, name in renames:
        final, k = name, 0
        while final in taken:
            k += 1
            final = f"{name}_{k}"
        taken.add(final)
        var.name = final
    return graph


def _strip(name: str) -> str:
    while name.endswith(_CAST_SUFFIXES):
        name = name[: -len(_CAST_SUFFIXES[0])]
    return name


def _elem_type(t: gs.Tensor) -> Optional[int]:
    return {np.dtype(np.float32): _F32, np.dtype(np.float16): _F16}.get(np.dtype(t.dtype)) if t.dtype is not None else None


def _reroute(graph: gs.Graph, node: gs.Node, keep: gs.Tensor) -> None:
    out = node.outputs[0]
    if out in graph.outputs:
        return
    for consumer in list(out.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is out:
                consumer.inputs[i] = keep
    node.outputs.clear()


def fp32_nodes(model: onnx.ModelProto) -> list[str]:
    """Compute nodes (not Casts) whose float inputs are FP32 in a converted graph: what actually runs in FP32."""
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input,
                                                            *model.graph.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    out = []
    for n in model.graph.node:
        if n.op_type in ("Cast", "Shape", "Constant"):
            continue
        float_ins = [types.get(i) for i in n.input if types.get(i) in (_F32, _F16)]
        if float_ins and all(t == _F32 for t in float_ins):
            out.append(n.name)
    return out


# ----------------------------------------------------------------------------------------- emulation
def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input,
                                                            *model.graph.output]}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def emulate_fp16(fp32: onnx.ModelProto, fp16: onnx.ModelProto) -> onnx.ModelProto:
    """The FP32 graph with every tensor that `fp16` stores in FP16 rounded to FP16 (a Cast pair), compute in FP32.

    onnxruntime's CPU provider has few FP16 kernels: it runs an FP16 graph's MatMuls in FP32 and drops the
    Casts around them, so an activation that overflows FP16 on a GPU (inf, then NaN after Softmax) stays finite
    on the CPU. This graph gives FP16 storage with FP32 accumulation (what TensorRT's FP16 kernels do) at FP32
    speed, so the FP16 agreement is measured honestly here. Node names match between the two graphs.
    """
    types = _elem_types(fp16)
    nodes16 = {n.name: n for n in fp16.graph.node}
    graph = to_graph(fp32)
    rounded: dict[str, gs.Variable] = {}
    made: set[int] = set()

    def round16(t: gs.Tensor) -> gs.Variable:
        if t.name not in rounded:
            half = gs.Variable(f"{t.name}__as_fp16", dtype=np.float16, shape=t.shape)
            back = gs.Variable(f"{t.name}__rounded", dtype=np.float32, shape=t.shape)
            graph.nodes += [gs.Node("Cast", f"{t.name}__to_fp16", {"to": _F16}, [t], [half]),
                            gs.Node("Cast", f"{t.name}__to_fp32", {"to": _F32}, [half], [back])]
            rounded[t.name] = back
            made.add(id(back))
        return rounded[t.name]

    for node in list(graph.nodes):
        n16 = nodes16.get(node.name)
        if n16 is None:
            continue
        for i, t in enumerate(list(node.inputs)):
            if i < len(n16.input) and _is_f32(t) and id(t) not in made and types.get(n16.input[i]) == _F16:
                node.inputs[i] = round16(t)
        if node.op in _EXACT_OPS:
            continue  # moves FP16 values without arithmetic: its inputs are rounded already
        for j, out in enumerate(node.outputs):
            if j < len(n16.output) and _is_f32(out) and types.get(n16.output[j]) == _F16 and out not in graph.outputs:
                readers = list(out.outputs)
                r = round16(out)
                for reader in readers:
                    for k, t in enumerate(reader.inputs):
                        if t is out:
                            reader.inputs[k] = r
    graph.cleanup().toposort()
    return to_model(graph, like=fp32)


_EXACT_OPS = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Split", "Concat", "Gather", "Slice", "Flatten",
              "Expand", "Identity"}


def _is_f32(t: gs.Tensor) -> bool:
    return t.dtype is not None and np.dtype(t.dtype) == np.float32


# --------------------------------------------------------------------------------------- sensitivity
def meets_target(agreement: dict, target: dict = TARGET) -> bool:
    cosine, top1 = agreement.get("cosine"), agreement.get("top1_agreement")
    return bool(cosine is not None and np.isfinite(cosine) and cosine >= target["cosine"]
                and top1 is not None and top1 >= target["top1_agreement"])


def build_fp16(model: onnx.ModelProto, compare: Compare, io_dtype: str = "fp32", max_extra: int = 8,
               target: dict = TARGET, progress: Optional[Callable[[str], Any]] = None) -> tuple[onnx.ModelProto, dict]:
    """Convert, and when the FP16 graph misses `target` against FP32, find MatMul/Gemm groups that need FP32: rank
    every group by how much keeping it alone in FP32 helps, then keep the best ones in order until the target is
    met (at most `max_extra`). Returns the graph and what was kept.

    `compare(model)` gives top-1 agreement and cosine of an FP32-typed graph's logits with the FP32 graph's; it
    is called on `emulate_fp16` of each candidate, so FP16 overflow and rounding count as they would on a GPU.
    """
    fp16 = convert_fp16(model, io_dtype)
    first = compare(emulate_fp16(model, fp16))
    record: dict[str, Any] = {
        "io_dtype": io_dtype, "fp32_ops": list(FP32_OPS), "residual_adds": residual_adds(model),
        "target": dict(target), "agreement": _brief(first), "agreement_measured_on": "FP16 storage emulated on "
        "onnxruntime CPU (emulate_fp16)", "sensitivity": None, "kept_for_accuracy": [],
    }
    if not meets_target(first, target):
        fp16, record["sensitivity"] = _sensitivity(model, compare, io_dtype, first, max_extra, target, progress)
        record["kept_for_accuracy"] = record["sensitivity"]["kept"]
        record["agreement"] = record["sensitivity"]["after"]
    record["fp32_nodes"] = fp32_nodes(fp16)
    return fp16, record


def _brief(p: dict) -> dict:
    """The agreement numbers, with NaN (an overflow reached the logits) written as None so the JSON stays valid."""
    return {k: (float(p[k]) if np.isfinite(p[k]) else None) for k in ("top1_agreement", "cosine", "max_abs_diff")
            if k in p}


def _score(p: dict) -> tuple[float, float]:
    cosine = p["cosine"]
    return (cosine if cosine is not None and np.isfinite(cosine) else -1.0, p["top1_agreement"] or 0.0)


def _sensitivity(model: onnx.ModelProto, compare: Compare, io_dtype: str, first: dict, max_extra: int,
                 target: dict, progress: Optional[Callable[[str], Any]]) -> tuple[onnx.ModelProto, dict]:
    groups = matmul_groups(model)
    ranking = []
    for name, nodes in groups.items():
        if progress:
            progress(f"fp16 sensitivity: {name}")
        p = compare(emulate_fp16(model, convert_fp16(model, io_dtype, nodes)))
        ranking.append({"node": name, **_brief(p)})
    ranking.sort(key=lambda r: _score(r), reverse=True)
    kept: list[str] = []
    best, best_p = None, first
    for r in ranking[:max_extra]:
        if _score(r) <= _score(first):
            break  # keeping this group alone did not help; neither will the ones after it
        kept.append(r["node"])
        best = convert_fp16(model, io_dtype, [n for k in kept for n in groups[k]])
        best_p = compare(emulate_fp16(model, best))
        if meets_target(best_p, target):
            break
    fp16 = best if best is not None else convert_fp16(model, io_dtype)
    return fp16, {"before": _brief(first), "ranking": ranking, "kept": kept, "after": _brief(best_p),
                  "met": meets_target(best_p, target)}
