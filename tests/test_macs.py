"""MACs do not depend on the attention kernel: count_macs equals the MACs read off the exported ONNX graph
(MatMul/Gemm/Conv shapes after shape inference) for dense, pruned and low-rank models, and DeiT-S/DeiT-B give
their closed-form figures with fused attention on or off."""
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper, shape_inference

from conftest import tiny_vit
from vitdeploy.compression.decompose import decompose_model
from vitdeploy.compression.plan import apply_plan
from vitdeploy.compression.recipe import DecomposeCfg, PruneCfg
from vitdeploy.compression.vtp import magnitude_plan
from vitdeploy.deploy.onnx_export import export_onnx
from vitdeploy.models import count_macs
from vitdeploy.models.stats import attention_kernel, sdpa_macs

SIZE = (3, 32, 32)


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Every tensor's static shape in a shape-inferred graph (initializers included)."""
    g = model.graph
    shapes = {t.name: list(t.dims) for t in g.initializer}
    for vi in [*g.input, *g.value_info, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    for node in g.node:  # Constant nodes carry their tensor as an attribute
        if node.op_type == "Constant":
            shapes[node.output[0]] = list(numpy_helper.to_array(node.attribute[0].t).shape)
    return shapes


def onnx_macs(path) -> int:
    """Sum over MatMul, Gemm and Conv nodes of output elements × reduction length, from inferred shapes (with data
    propagation, so shapes computed by Shape/Expand chains are known too)."""
    model = shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=True, data_prop=True)
    shapes = _shapes(model)
    total = 0
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        a, b, out = shapes[node.input[0]], shapes[node.input[1]], shapes[node.output[0]]
        attrs = {at.name: onnx.helper.get_attribute_value(at) for at in node.attribute}
        if node.op_type == "MatMul":
            k = a[-1]
        elif node.op_type == "Gemm":
            k = a[0] if attrs.get("transA", 0) else a[1]
        else:  # Conv: weight [Cout, Cin / group, kh, kw]
            k = math.prod(b[1:])
        total += math.prod(out) * k
    return total


def _pruned(cfg: PruneCfg, **kw):
    model = tiny_vit(**kw)
    return apply_plan(model, magnitude_plan(model, cfg)).eval()


def _factored():
    model = _pruned(PruneCfg(rate=0.4))
    decompose_model(model, DecomposeCfg(method="svd", layers=["qkv", "fc1"], rank_rule="ratio", ratio=0.25))
    return model.eval()


MODELS = {
    "dense": lambda: tiny_vit(),
    "dense-registers-avgpool": lambda: tiny_vit(reg_tokens=2, class_token=False, global_pool="avg"),
    "pruned-vtp40": lambda: _pruned(PruneCfg(rate=0.4)),
    "pruned-heads-qk": lambda: _pruned(PruneCfg(rate=0.4, sites=["attn_in", "attn_qk", "attn_out", "mlp_in",
                                                                  "mlp_hidden"], remove_heads=True)),
    "pruned-low-rank": _factored,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_count_macs_matches_the_onnx_graph(tmp_path, name):
    model = MODELS[name]()
    path = export_onnx(model, tmp_path / "m.onnx", SIZE, static_batch=1)
    assert count_macs(model, SIZE) == onnx_macs(path)


class _HiddenMatmulAttention(torch.nn.Module):
    """Attention whose fused path multiplies without a matmul op, so no counter can see it: a stand-in for a kernel
    the counter misses. Counting it must fail loudly rather than report the smaller figure."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.fused_attn = True

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # B, N, D each
        if self.fused_attn:
            attn = (q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1).softmax(-1)  # B, N, N
            return (attn.unsqueeze(-1) * v.unsqueeze(-3)).sum(-2)
        return (q @ k.transpose(-2, -1)).softmax(-1) @ v


class _Tokens(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = _HiddenMatmulAttention()

    def forward(self, x):  # x: B, 1, N, D
        return self.attn(x[:, 0])


def test_a_kernel_the_counter_misses_is_an_internal_error():
    model = _Tokens()
    with pytest.raises(RuntimeError, match="internal error"):
        count_macs(model, (1, 5, 16))
    assert model.attn.fused_attn is True  # switch restored after the failure


def test_attention_switches_are_restored():
    model = tiny_vit()
    model.blocks[0].attn.fused_attn = False
    with attention_kernel(model, fused=True) as n:
        assert n == len(model.blocks) and all(b.attn.fused_attn for b in model.blocks)
    count_macs(model, SIZE)
    assert [b.attn.fused_attn for b in model.blocks] == [False, True]


def test_sdpa_macs_from_shapes():
    # 2 batch x 3 heads, L=5 queries, S=7 keys, E=8, Ev=4; grouped keys/values (1 head) cost the same per q head
    assert sdpa_macs((2, 3, 5, 8), (2, 3, 7, 8), (2, 3, 7, 4)) == 2 * 3 * 5 * 7 * (8 + 4)
    assert sdpa_macs((2, 3, 5, 8), (2, 1, 7, 8), (2, 1, 7, 4)) == 2 * 3 * 5 * 7 * (8 + 4)


def _closed_form(depth: int, dim: int, patch: int, side: int, classes: int = 1000, mlp_ratio: int = 4) -> int:
    n = (side // patch) ** 2 + 1
    linear = n * dim * (3 * dim + dim + 2 * mlp_ratio * dim)
    attention = 2 * n * n * dim
    return depth * (linear + attention) + (n - 1) * 3 * patch * patch * dim + dim * classes


@pytest.mark.slow
@pytest.mark.parametrize("name,depth,dim", [("deit_small_patch16_224", 12, 384), ("deit_base_patch16_224", 12, 768)])
def test_deit_macs_closed_form(name, depth, dim):
    import timm

    model = timm.create_model(name, pretrained=False).eval()
    expected = _closed_form(depth, dim, 16, 224)  # DeiT-S: 4.599 G, DeiT-B: 17.56 G
    assert count_macs(model, (3, 224, 224)) == expected
    with attention_kernel(model, fused=True):
        assert count_macs(model, (3, 224, 224)) == expected
    assert np.isclose(expected / 1e9, {384: 4.6, 768: 17.6}[dim], atol=0.05)
