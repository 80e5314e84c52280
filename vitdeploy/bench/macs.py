"""Multiply-accumulates of an ONNX graph, counted from its shapes: what a roofline needs for an artifact that has
no PyTorch model beside it (a bare .onnx file, a graph copied from elsewhere)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
import onnx.shape_inference

_MATMULS = ("MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul")


def onnx_macs(proto: onnx.ModelProto) -> Optional[int]:
    """MACs of one image through the graph's MatMul, Gemm and Conv nodes (attention matmuls included), from ONNX
    shape inference with the batch set to 1; None when a shape cannot be inferred."""
    graph = onnx.ModelProto()
    graph.CopyFrom(proto)
    for v in graph.graph.input:
        dims = v.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(graph, data_prop=True)
    except Exception:  # shape inference refuses the graph: no count rather than a wrong one
        return None
    shapes: dict[str, list[int]] = {}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
    for t in inferred.graph.initializer:
        shapes[t.name] = list(t.dims)
    total = 0
    for node in inferred.graph.node:
        if node.op_type not in (*_MATMULS, "Gemm", "Conv"):
            continue
        out = shapes.get(node.output[0])
        first = shapes.get(node.input[0])
        if not out or 0 in out or not first or 0 in first:
            return None
        if node.op_type in _MATMULS:  # (..., M, K) x (..., K, N): every output element takes K MACs
            total += int(np.prod(out)) * first[-1]
        elif node.op_type == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            total += int(np.prod(out)) * (first[0] if trans_a else first[-1])
        else:  # Conv: every output element takes C_in / groups x kernel MACs
            weight = shapes.get(node.input[1]) or [0]
            total += int(np.prod(out)) * int(np.prod(weight[1:]))
    return total or None
