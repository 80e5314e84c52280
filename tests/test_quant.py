"""FP16 and INT8 graphs of a clean tiny ViT: where the precision lives, how close they stay to FP32, the FP16
sensitivity check finding an overflowing layer, and the INT8 Q/DQ placement rules (and that the rule check fails
on a graph that breaks them)."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from conftest import tiny_vit
from test_onnx_export import INPUT_SIZE, realistic_images
from vitdeploy.runtime.compare import compare_logits
from vitdeploy.deploy import export_onnx
from vitdeploy.deploy.fp16 import build_fp16, convert_fp16, emulate_fp16, fp32_nodes, residual_adds
from vitdeploy.deploy.graph import clean_graph
from vitdeploy.deploy.int8 import Int8Config, attention_nodes, linear_nodes, module_name, qdq_problems, quantize_int8
from vitdeploy.errors import VitDeployError

F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = s.get_inputs()[0]
    return s.run(None, {inp.name: x.astype(np.float16 if "16" in inp.type else np.float32)})[0].astype(np.float32)


def clean_of(model: torch.nn.Module, tmp_path) -> onnx.ModelProto:
    return clean_graph(onnx.load(str(export_onnx(model, tmp_path / "raw.onnx", INPUT_SIZE))))[0]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> onnx.ModelProto:
    g = torch.Generator().manual_seed(3)
    model = tiny_vit(depth=3)
    with torch.no_grad():  # non-zero biases, as after training
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return clean_of(model, tmp_path_factory.mktemp("clean"))


def types_of(model: onnx.ModelProto) -> dict[str, int]:
    t = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    t.update({i.name: i.data_type for i in model.graph.initializer})
    return t


# ------------------------------------------------------------------------------------------------- FP16
def test_residual_adds_are_found_structurally(clean):
    adds = residual_adds(clean)
    assert len(adds) == 2 * 3
    assert sorted(adds) == sorted(f"/blocks/blocks.{b}/{a}" for b in range(3) for a in ("Add", "Add_1"))


@pytest.mark.parametrize("io_dtype", ["fp32", "fp16"])
def test_fp16_graph_keeps_norms_softmax_and_residual_adds_in_fp32(clean, io_dtype):
    fp16 = convert_fp16(clean, io_dtype)
    onnx.checker.check_model(fp16, full_check=True)
    types = types_of(fp16)
    io = F32 if io_dtype == "fp32" else F16
    assert types["input"] == io and types["logits"] == io
    kept = set(fp32_nodes(fp16))
    must = {n.name for n in clean.graph.node if n.op_type in ("LayerNormalization", "Softmax")} | set(residual_adds(clean))
    assert must <= kept
    for n in fp16.graph.node:
        if n.op_type in ("LayerNormalization", "Softmax") or n.name in must:
            assert all(types[i] == F32 for i in n.input if i), n.name  # LayerNorm scale and bias included
        if n.op_type in ("MatMul", "Gemm", "Conv"):
            assert all(types[i] == F16 for i in n.input if i), n.name
    # the residual stream never round-trips through FP16: no Cast reads a Cast that came back to the same type
    producers = {o: n for n in fp16.graph.node for o in n.output}
    for n in fp16.graph.node:
        if n.op_type == "Cast" and n.input[0] in producers and producers[n.input[0]].op_type == "Cast":
            assert types[producers[n.input[0]].input[0]] != n.attribute[0].i, n.name
    outs = [o for n in fp16.graph.node for o in n.output]
    assert len(outs) == len(set(outs))  # one writer per tensor


def test_fp16_agrees_with_fp32(clean):
    x = realistic_images(16)
    ref = run(clean, x)
    for model in (convert_fp16(clean), emulate_fp16(clean, convert_fp16(clean))):
        p = compare_logits(run(model, x), ref)
        assert p["top1_agreement"] == 1.0 and p["cosine"] > 0.9995 and 0 < p["max_abs_diff"] < 0.05


@pytest.mark.parametrize("batch", [1, 5])
def test_fp16_and_int8_run_at_any_batch(clean, batch):
    x = realistic_images(batch, seed=batch)
    q, _ = quantize_int8(clean, realistic_images(32, seed=9), Int8Config())
    for model in (convert_fp16(clean), convert_fp16(clean, "fp16"), q):
        assert run(model, x).shape == (batch, 10)


def test_sensitivity_check_finds_the_layer_that_overflows(tmp_path):
    model = tiny_vit()
    with torch.no_grad():  # q and k of block 1 so large that its attention scores overflow FP16 (> 65504)
        model.blocks[1].attn.qkv.weight[:128] *= 3000
    clean = clean_of(model, tmp_path)
    x = realistic_images(16)
    ref = run(clean, x)
    fp16, rec = build_fp16(clean, lambda m: compare_logits(run(m, x), ref))
    s = rec["sensitivity"]
    assert s["before"]["cosine"] is None or s["before"]["cosine"] < 0.9  # inf scores became NaN probabilities
    assert s["ranking"][0]["node"] == "/blocks/blocks.1/attn/MatMul" and s["kept"][0] == "/blocks/blocks.1/attn/MatMul"
    assert s["met"] and rec["agreement"]["cosine"] > 0.999 and rec["kept_for_accuracy"] == s["kept"]
    assert "/blocks/blocks.1/attn/MatMul" in fp32_nodes(fp16)
    assert compare_logits(run(emulate_fp16(clean, fp16), x), ref)["top1_agreement"] == 1.0


def test_no_sensitivity_search_when_the_target_is_met(clean):
    x = realistic_images(8)
    ref = run(clean, x)
    _, rec = build_fp16(clean, lambda m: compare_logits(run(m, x), ref))
    assert rec["sensitivity"] is None and rec["kept_for_accuracy"] == [] and rec["agreement"]["cosine"] > 0.999


def test_keep_unknown_node_in_fp32_is_an_error(clean):
    with pytest.raises(VitDeployError, match="unknown node"):
        convert_fp16(clean, keep_fp32=["/blocks/blocks.9/attn/MatMul"])
    with pytest.raises(VitDeployError, match="io dtype"):
        convert_fp16(clean, "bf16")


# ------------------------------------------------------------------------------------------------- INT8
def quantized_nodes(model: onnx.ModelProto) -> set[str]:
    """Nodes that read a DequantizeLinear output."""
    dq = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in model.graph.node if any(i in dq for i in n.input)}


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_int8_placement_rules(clean, method):
    q, rec = quantize_int8(clean, realistic_images(48, seed=7), Int8Config(method=method))
    assert qdq_problems(q) == []
    linear = {n.name for n in linear_nodes(clean)}
    assert quantized_nodes(q) == linear and len(linear) == 4 * 3 + 1  # qkv, proj, fc1, fc2 per block + head
    ops = collections.Counter(n.op_type for n in q.graph.node)
    assert ops["DequantizeLinear"] == 2 * len(linear) and ops["QuantizeLinear"] == len(linear)
    inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    readers = collections.defaultdict(list)
    for n in q.graph.node:
        for i in n.input:
            readers[i].append(n.op_type)
    for n in q.graph.node:
        if n.op_type in ("Add", "LayerNormalization", "Softmax"):  # nothing quantized feeds them
            assert not any(i in {d.output[0] for d in q.graph.node if d.op_type == "DequantizeLinear"} for i in n.input)
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:  # a weight: int8, per channel, zero point 0
            w, scale, zp = inits[n.input[0]], inits[n.input[1]], inits[n.input[2]]
            assert w.dtype == np.int8 and scale.size > 1 and zp.dtype == np.int8 and not zp.any()
        if n.op_type == "QuantizeLinear":
            assert set(readers[n.output[0]]) == {"DequantizeLinear"} and not inits[n.input[2]].any()
    assert rec["method"] == method and rec["images"] == 48 and rec["quantized_nodes"] == len(linear)
    x = realistic_images(16)
    p = compare_logits(run(q, x), run(clean, x))
    assert p["cosine"] > 0.99 and p["top1_agreement"] >= 0.9


def test_int8_attention_and_exclusions(clean):
    q, rec = quantize_int8(clean, realistic_images(32, seed=7),
                           Int8Config(attention=True, exclude=("head", "blocks.0.mlp.fc1")))
    assert qdq_problems(q) == []
    got = quantized_nodes(q)
    att = {n.name for n in attention_nodes(clean)}
    assert len(att) == 2 * 3 and att <= got
    assert "/head/Gemm" not in got and "/blocks/blocks.0/mlp/fc1/MatMul" not in got
    assert sorted(rec["excluded_nodes"]) == ["/blocks/blocks.0/mlp/fc1/MatMul", "/head/Gemm"]
    q2, _ = quantize_int8(clean, realistic_images(32, seed=7), Int8Config(exclude=("blocks.1",)))
    assert not any(module_name(n).startswith("blocks.1.") for n in quantized_nodes(q2))
    with pytest.raises(VitDeployError, match="matches no quantized layer"):
        quantize_int8(clean, realistic_images(8), Int8Config(exclude=("blocks.7.mlp",)))


def test_module_names():
    assert module_name("/blocks/blocks.0/attn/qkv/MatMul") == "blocks.0.attn.qkv"
    assert module_name("/head/Gemm") == "head"
    assert module_name("/blocks/blocks.11/mlp/fc2/MatMul") == "blocks.11.mlp.fc2"


def test_placement_check_catches_a_graph_that_breaks_the_rules(clean, tmp_path):
    """onnxruntime's defaults (every op type, asymmetric uint8, per-tensor) quantize the residual adds: flagged."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": realistic_images(8)}])

        def get_next(self):
            return next(self.it, None)

    onnx.save(clean, str(tmp_path / "clean.onnx"))
    quantize_static(str(tmp_path / "clean.onnx"), str(tmp_path / "bad.onnx"), Reader(), activation_type=QuantType.QUInt8)
    problems = qdq_problems(onnx.load(str(tmp_path / "bad.onnx")))
    assert any("Add" in p or "LayerNormalization" in p for p in problems)
    assert any("symmetric" in p for p in problems)
