"""Explicit Q/DQ on chosen MatMul/Gemm nodes, from activation thresholds that are already known.

The planner builds dozens of graphs from one calibration (every layer alone, every layer left out, the candidate
plans), so building a graph must not calibrate again and must not requantize the weights: `QdqBuilder` quantizes
each weight once and then writes any placement. The graphs follow the rules `int8.qdq_problems` checks: one
QuantizeLinear → DequantizeLinear pair per quantized activation tensor, read only by the chosen nodes (other
readers keep the float tensor); int8 weights with one scale per output channel; every zero point int8 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vitdeploy.deploy.calibrate import LEVELS
from vitdeploy.deploy.onnx_export import copy_fields
from vitdeploy.errors import VitDeployError

_TINY = 1e-12


@dataclass
class _Weight:
    name: str  # the float initializer
    axis: int  # the output-channel axis
    tensors: list  # int8 weight, per-channel scale, zero point (TensorProtos)


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    out = {t.name: t for t in model.graph.initializer}
    out.update({n.output[0]: n.attribute[0].t for n in model.graph.node if n.op_type == "Constant"})
    return out


def weight_axis(node: onnx.NodeProto, ndim: int) -> int:
    """The output-channel axis of a Linear weight: the last one for MatMul ([in, out]), 0 for Gemm with transB."""
    if node.op_type == "Gemm" and next((a.i for a in node.attribute if a.name == "transB"), 0):
        return 0
    return ndim - 1


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8: (int8 weight, float32 scale per channel along `axis`)."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.maximum(np.abs(w).max(axis=reduce), _TINY).astype(np.float32) / LEVELS
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -LEVELS, LEVELS).astype(np.int8)
    return q, scale.astype(np.float32)


class QdqBuilder:
    """Writes Q/DQ graphs of one clean FP32 `model` for any set of its MatMul/Gemm nodes.

    `thresholds` maps each activation tensor that may be quantized to its calibrated |x| threshold.
    """

    def __init__(self, model: onnx.ModelProto, thresholds: dict[str, float]) -> None:
        self.model, self.thresholds = model, dict(thresholds)
        self.nodes = {n.name: n for n in model.graph.node}
        self._consts = _constants(model)
        self._weights: dict[str, _Weight] = {}

    def _weight(self, node: onnx.NodeProto) -> _Weight:
        if node.name not in self._weights:
            name = node.input[1]
            w = numpy_helper.to_array(self._consts[name]).astype(np.float32)
            axis = weight_axis(node, w.ndim)
            q, scale = quantize_weight(w, axis)
            base = f"{name}_{node.name}"
            self._weights[node.name] = _Weight(name, axis, [
                numpy_helper.from_array(q, f"{base}_quantized"),
                numpy_helper.from_array(scale, f"{base}_scale"),
                numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point")])
        return self._weights[node.name]

    def activations(self, node_name: str) -> list[str]:
        """The activation (non-constant) inputs of a MatMul/Gemm node: the tensors its Q/DQ sit on."""
        n = self.nodes[node_name]
        return [i for i in n.input[:2] if i and i not in self._consts]

    def build(self, chosen: Iterable[str]) -> onnx.ModelProto:
        """The graph with Q/DQ on the inputs of `chosen` nodes only (an empty set gives the float graph back)."""
        chosen = set(chosen)
        unknown = sorted(c for c in chosen if c not in self.nodes or self.nodes[c].op_type not in ("MatMul", "Gemm"))
        if unknown:
            raise VitDeployError(f"cannot quantize unknown MatMul/Gemm node(s): {', '.join(unknown[:4])}")
        missing = sorted({t for c in chosen for t in self.activations(c) if t not in self.thresholds})
        if missing:
            raise VitDeployError(f"no calibrated range for tensor(s): {', '.join(missing[:4])}")
        g = self.model.graph
        out = onnx.ModelProto()
        copy_fields(self.model, out, skip="graph")
        for f in ("name", "doc_string"):
            setattr(out.graph, f, getattr(g, f))
        out.graph.input.extend(g.input)
        out.graph.output.extend(g.output)
        out.graph.value_info.extend(g.value_info)
        new_inits: list[onnx.TensorProto] = []
        done: dict[str, str] = {}  # activation tensor -> its DequantizeLinear output
        nodes: list[onnx.NodeProto] = []
        for n in g.node:
            if n.name in chosen:
                n = self._quantized_node(n, done, nodes, new_inits)
            nodes.append(n)
        out.graph.node.extend(nodes)
        still_read = {i for n in nodes for i in n.input}
        out.graph.initializer.extend(t for t in g.initializer if t.name in still_read)
        out.graph.initializer.extend(new_inits)
        return out

    def _quantized_node(self, n: onnx.NodeProto, done: dict[str, str], nodes: list, inits: list) -> onnx.NodeProto:
        q = onnx.NodeProto()
        q.CopyFrom(n)
        for k, name in enumerate(n.input[:2]):
            if name in self._consts:
                if k != 1:
                    raise VitDeployError(f"node '{n.name}' has a constant first input; only Linear weights are "
                                         f"quantized per channel")
                w = self._weight(n)
                inits.extend(w.tensors)
                out = f"{w.tensors[0].name}_DequantizeLinear_Output"
                nodes.append(helper.make_node("DequantizeLinear", [t.name for t in w.tensors], [out],
                                              name=f"{w.tensors[0].name}_DequantizeLinear", axis=w.axis))
                q.input[k] = out
            else:
                if name not in done:
                    done[name] = self._activation_qdq(name, nodes, inits)
                q.input[k] = done[name]
        return q

    def _activation_qdq(self, name: str, nodes: list, inits: list) -> str:
        scale = np.float32(max(float(self.thresholds[name]), _TINY) / LEVELS)
        s, z = f"{name}_scale", f"{name}_zero_point"
        inits += [numpy_helper.from_array(np.array(scale, np.float32), s), numpy_helper.from_array(np.array(0, np.int8), z)]
        nodes += [helper.make_node("QuantizeLinear", [name, s, z], [f"{name}_quantized"], name=f"{name}_QuantizeLinear"),
                  helper.make_node("DequantizeLinear", [f"{name}_quantized", s, z], [f"{name}_dequantized"],
                                   name=f"{name}_DequantizeLinear")]
        return f"{name}_dequantized"


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """MatMul/Gemm nodes that read a DequantizeLinear output, in graph order."""
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and any(i in dq for i in n.input)]


def qdq_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the QuantizeLinear and DequantizeLinear nodes."""
    return [n.name for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def scale_of(model: onnx.ModelProto, tensor: str) -> Optional[float]:
    """The activation scale a graph uses on `tensor` (None where it is not quantized)."""
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] == tensor:
            return float(numpy_helper.to_array(inits[n.input[1]]))
    return None
