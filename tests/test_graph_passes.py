"""Cleanup passes on exported ViTs: parity after every pass, shape arithmetic and Identity nodes gone, batch still
dynamic; dense, pruned and other timm variants; each pass on a hand-built graph where it must (and must not) act."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from conftest import tiny_vit
from test_onnx_export import INPUT_SIZE, realistic_images
from vitdeploy.deploy import export_onnx
from vitdeploy.deploy.graph import (CLEANUP_PASSES, clean_graph, remove_identities, remove_noop_arithmetic, to_graph,
                                    to_model)
from vitdeploy.errors import VitDeployError
from vitdeploy.models.surgery import slice_attention, slice_mlp

SHAPE_OPS = {"Gather", "Unsqueeze", "ConstantOfShape", "Equal", "Where", "Identity", "Slice", "Cast", "Sqrt"}


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def pruned_vit() -> torch.nn.Module:
    """A tiny ViT with a head and q/k/v dims removed in block 0 and MLP hidden and input dims in block 1."""
    model = tiny_vit()
    g = torch.Generator().manual_seed(1)
    qk = torch.stack([torch.randperm(32, generator=g)[:24]])
    v = torch.stack([torch.randperm(32, generator=g)[:16]])
    model.blocks[0].attn = slice_attention(model.blocks[0].attn, 64, [1], qk, v, torch.randperm(64, generator=g)[:48].tolist())
    model.blocks[1].mlp = slice_mlp(model.blocks[1].mlp, 64, torch.randperm(256, generator=g)[:136].tolist(),
                                    torch.randperm(64, generator=g)[:56].tolist())
    return model.eval()


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Non-zero biases, as after training (timm initialises them to zero, which the no-op pass would remove)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return model


MODELS = {
    "dense": lambda: tiny_vit(),
    "trained-biases": lambda: trained_like(tiny_vit()),
    "pruned": pruned_vit,
    "avg-pool-no-cls": lambda: tiny_vit(class_token=False, global_pool="avg"),
    "registers": lambda: tiny_vit(reg_tokens=2, no_embed_class=True),
    "no-qkv-bias-layerscale": lambda: tiny_vit(qkv_bias=False, init_values=0.1),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def cleaned(request, tmp_path_factory):
    model = MODELS[request.param]()
    raw = export_onnx(model, tmp_path_factory.mktemp("raw") / "raw.onnx", INPUT_SIZE)
    x = realistic_images(6)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    check = lambda m: {"max_abs_diff": float(np.abs(run(m, x) - ref).max())}  # noqa: E731
    clean, records = clean_graph(onnx.load(str(raw)), check)
    return request.param, model, onnx.load(str(raw)), clean, records


def test_parity_is_measured_after_every_pass(cleaned):
    _, _, raw, clean, records = cleaned
    assert [r["pass"] for r in records] == ["raw", *[name for name, _ in CLEANUP_PASSES]]
    assert all(r["max_abs_diff"] < 1e-4 for r in records)
    assert records[0]["nodes"] == len(raw.graph.node) and records[-1]["nodes"] == len(clean.graph.node)
    assert records[-1]["nodes"] < records[0]["nodes"] / 2


def test_shape_subgraphs_and_identities_are_gone(cleaned):
    name, model, raw, clean, _ = cleaned
    onnx.checker.check_model(clean, full_check=True)
    ops = collections.Counter(n.op_type for n in clean.graph.node)
    assert "Identity" not in ops and "Pow" not in ops and "Constant" not in ops
    assert ops["LayerNormalization"] == sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    producers = {o: n for n in clean.graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in clean.graph.initializer}
    for n in clean.graph.node:
        if n.op_type == "Reshape":  # every target is a constant, the batch encoded as 0 (copy) or -1
            target = inits[n.input[1]]
            assert (target >= -1).all() and ((target == 0) | (target == -1)).sum() >= 1, target
        if n.op_type == "Shape":  # at most a direct read of the input's batch, for the class token Expand
            assert n.input[0] == "input" and {a.name: a.i for a in n.attribute} == {"start": 0, "end": 1}
        if n.op_type in SHAPE_OPS and n.op_type != "Gather":
            pytest.fail(f"shape arithmetic left: {n.op_type} {n.name}")
        if n.op_type == "Gather":
            assert producers.get(n.input[0]) is None or producers[n.input[0]].op_type != "Shape"
    assert ops["Shape"] <= 1
    raw_ops = collections.Counter(n.op_type for n in raw.graph.node)
    assert raw_ops["Shape"] > ops["Shape"] and raw_ops["Concat"] > ops["Concat"]


@pytest.mark.parametrize("batch", [1, 5])
def test_clean_graph_keeps_a_dynamic_batch(cleaned, batch):
    _, model, _, clean, _ = cleaned
    dims = [d.dim_param or d.dim_value for d in clean.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", *INPUT_SIZE]
    assert [d.dim_param or d.dim_value for d in clean.graph.output[0].type.tensor_type.shape.dim] == ["batch", 10]
    x = realistic_images(batch, seed=10 + batch)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(run(clean, x) - ref).max() < 1e-4


def test_zero_biases_are_removed_but_real_ones_stay(cleaned):
    name, _, _, clean, _ = cleaned
    inits = {t.name: numpy_helper.to_array(t) for t in clean.graph.initializer}
    bias_adds = [n for n in clean.graph.node if n.op_type == "Add" and any(i in inits and inits[i].ndim == 1 for i in n.input)]
    assert not [n.name for n in bias_adds if all(np.all(inits[i] == 0) for i in n.input if i in inits)]
    if name == "trained-biases":
        assert len(bias_adds) >= 4 * 2  # qkv, proj, fc1, fc2 in both blocks


def test_a_pass_that_changes_the_function_is_named(tmp_path):
    model = tiny_vit()
    raw = onnx.load(str(export_onnx(model, tmp_path / "raw.onnx", INPUT_SIZE)))
    x = realistic_images(4)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()

    def drop_first_layernorm(graph):  # a "cleanup" that is wrong: it skips a LayerNorm
        ln = next(n for n in graph.nodes if n.op == "LayerNormalization")
        for consumer in list(ln.outputs[0].outputs):
            consumer.inputs[consumer.inputs.index(ln.outputs[0])] = ln.inputs[0]
        graph.cleanup().toposort()
        return graph

    check = lambda m: {"max_abs_diff": float(np.abs(run(m, x) - ref).max())}  # noqa: E731
    with pytest.raises(VitDeployError, match="cleanup pass 'drop_first_layernorm' changed"):
        clean_graph(raw, check, passes=(*CLEANUP_PASSES[:2], ("drop_first_layernorm", drop_first_layernorm)))


# ----------------------------------------------------------------------------- passes on hand-built graphs
def _graph(nodes, inits, out_shape=(1, 4)) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))


def test_identity_removal_keeps_the_output_name():
    m = _graph([helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
                helper.make_node("Identity", ["b"], ["y"])], {})
    clean = to_model(remove_identities(to_graph(m)), like=m)
    assert [n.op_type for n in clean.graph.node] == ["Relu"] and clean.graph.output[0].name == "y"
    x = np.array([[-1, 2, -3, 4]], dtype=np.float32)
    np.testing.assert_array_equal(run(clean, x), np.maximum(x, 0))


def test_noop_arithmetic_only_goes_where_shapes_do_not_change():
    zeros_row = np.zeros((1, 4), np.float32)
    zeros_grid = np.zeros((3, 4), np.float32)  # x + zeros[3, 4] broadcasts [1, 4] to [3, 4]: not a no-op
    m = _graph([helper.make_node("Add", ["x", "z1"], ["a"]), helper.make_node("Mul", ["a", "one"], ["b"]),
                helper.make_node("Relu", ["b"], ["c"]), helper.make_node("Add", ["c", "z3"], ["y"])],
               {"z1": zeros_row, "one": np.ones((), np.float32), "z3": zeros_grid}, out_shape=(3, 4))
    clean = to_model(remove_noop_arithmetic(to_graph(m)), like=m)
    assert [n.op_type for n in clean.graph.node] == ["Relu", "Add"]
    x = np.array([[-1, 2, -3, 4]], dtype=np.float32)
    assert run(clean, x).shape == (3, 4)


def test_shape_inference_leaves_large_weights_out_of_the_copy_it_serializes(monkeypatch, tmp_path):
    """Models over protobuf's 2 GiB limit: shape inference sees large weights as typed inputs, with the same result."""
    from vitdeploy.deploy import graph

    raw = onnx.load(str(export_onnx(tiny_vit(), tmp_path / "raw.onnx", INPUT_SIZE)))
    normal = graph.infer_model_shapes(raw)
    monkeypatch.setattr(graph, "_SHAPE_INFERENCE_INLINE_BYTES", 0)  # every weight counts as large
    light = graph.infer_model_shapes(raw)
    assert len(light.graph.initializer) == len(raw.graph.initializer)  # the weights themselves are untouched
    shapes = lambda m: {v.name: str(v.type) for v in m.graph.value_info}  # noqa: E731
    assert shapes(light) == shapes(normal) and len(shapes(normal)) > 50
