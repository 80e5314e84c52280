"""Surgery modules compute exactly what the dense module computes with the dropped dims zeroed."""
import copy

import pytest
import timm
import torch

from vitdeploy.models.surgery import LowRankLinear, PrunedAttention, PrunedMlp, slice_attention, slice_mlp

VARIANTS = {
    "cls_token": dict(),
    "avg_pool": dict(class_token=False, global_pool="avg"),
    "layer_scale_no_qkv_bias": dict(init_values=0.1, qkv_bias=False),
    "registers": dict(reg_tokens=4),
    "gelu_tanh": dict(act_layer="gelu_tanh"),
}


def tiny_vit(**kw):
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, num_classes=10, embed_dim=64, depth=2, num_heads=2)
    return timm.create_model("vit_tiny_patch16_224", **{**args, **kw}).eval()


def mask_attention(attn, heads, qk_idx, v_idx, in_idx):
    """Zero, in a dense timm Attention, everything the slice drops."""
    H, D = attn.num_heads, attn.head_dim
    W, b = attn.qkv.weight, attn.qkv.bias
    with torch.no_grad():
        for h in range(H):
            keep_qk = set(qk_idx[heads.index(h)].tolist()) if h in heads else set()
            keep_v = set(v_idx[heads.index(h)].tolist()) if h in heads else set()
            for d in range(D):
                if d not in keep_qk:
                    W[h * D + d] = 0  # q row: its product with k vanishes
                    if b is not None:
                        b[h * D + d] = 0
                if d not in keep_v:
                    W[2 * H * D + h * D + d] = 0
                    if b is not None:
                        b[2 * H * D + h * D + d] = 0
        drop_in = [i for i in range(W.shape[1]) if i not in set(in_idx)]
        W[:, drop_in] = 0


def mask_mlp(mlp, hidden_idx, in_idx):
    with torch.no_grad():
        drop_h = [i for i in range(mlp.fc1.out_features) if i not in set(hidden_idx)]
        mlp.fc1.weight[drop_h] = 0
        mlp.fc1.bias[drop_h] = 0
        mlp.fc1.weight[:, [i for i in range(mlp.fc1.in_features) if i not in set(in_idx)]] = 0


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_sliced_equals_masked(variant):
    model = tiny_vit(**VARIANTS[variant])
    masked = copy.deepcopy(model)
    x = torch.randn(3, 3, 32, 32)
    g = torch.Generator().manual_seed(1)
    heads = [1]  # drop head 0 entirely in block 0
    qk_idx = torch.stack([torch.randperm(32, generator=g)[:24]])
    v_idx = torch.stack([torch.randperm(32, generator=g)[:16]])
    in_idx = torch.randperm(64, generator=g)[:48].tolist()
    hid_idx = torch.randperm(256, generator=g)[:136].tolist()
    mlp_in = torch.randperm(64, generator=g)[:56].tolist()

    mask_attention(masked.blocks[0].attn, heads, qk_idx, v_idx, in_idx)
    mask_mlp(masked.blocks[1].mlp, hid_idx, mlp_in)
    model.blocks[0].attn = slice_attention(model.blocks[0].attn, 64, heads, qk_idx, v_idx, in_idx)
    model.blocks[1].mlp = slice_mlp(model.blocks[1].mlp, 64, hid_idx, mlp_in)

    a = model.blocks[0].attn
    assert (a.num_heads, a.qk_head_dim, a.v_head_dim, a.attn_dim) == (1, 24, 16, 16)
    assert a.scale == pytest.approx(32 ** -0.5)  # the original head dim's scale survives
    assert a.qkv.weight.shape == (1 * (24 + 24 + 16), 48) and a.proj.weight.shape == (64, 16)
    assert model.blocks[1].mlp.fc1.weight.shape == (136, 56)
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked(x), atol=1e-5, rtol=1e-5)


def test_full_keep_is_identity_and_slices_compose():
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    blk = model.blocks[0]
    blk.attn = slice_attention(blk.attn, 64)
    blk.mlp = slice_mlp(blk.mlp, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=1e-6, rtol=1e-6)
    # slicing a sliced module: indices refer to the current kept dims, the stored index to the full width
    blk.mlp = slice_mlp(blk.mlp, 64, list(range(0, 256, 2)), list(range(8, 64)))
    blk.mlp = slice_mlp(blk.mlp, 64, list(range(0, 128, 2)), list(range(0, 56, 2)))
    assert blk.mlp.in_select.index.tolist() == list(range(8, 64, 2))
    assert blk.mlp.fc1.weight.shape == (64, 28)


def test_fused_and_manual_attention_agree():
    model = tiny_vit()
    attn = slice_attention(model.blocks[0].attn, 64, [0, 1], torch.arange(16).expand(2, 16), torch.arange(8).expand(2, 8))
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        fused = attn(x)
        attn.fused_attn = False
        manual = attn(x)
    torch.testing.assert_close(fused, manual, atol=1e-5, rtol=1e-5)


def test_low_rank_linear_full_rank_is_exact():
    torch.manual_seed(0)
    dense = torch.nn.Linear(48, 32)
    lr = LowRankLinear(48, 32, 32)
    U, S, Vh = torch.linalg.svd(dense.weight.detach(), full_matrices=False)
    with torch.no_grad():
        lr.down.weight.copy_(S.sqrt()[:, None] * Vh)
        lr.up.weight.copy_(U * S.sqrt())
        lr.up.bias.copy_(dense.bias)
        x = torch.randn(5, 48)
        torch.testing.assert_close(lr(x), dense(x), atol=1e-5, rtol=1e-5)
    assert lr.bias is lr.up.bias


def test_bad_slices_are_refused():
    model = tiny_vit()
    with pytest.raises(ValueError):
        slice_mlp(model.blocks[0].mlp, 64, [])  # zero hidden dims
    with pytest.raises(ValueError):
        slice_mlp(model.blocks[0].mlp, 64, [0, 0, 1])  # duplicates
    with pytest.raises(ValueError):
        slice_attention(model.blocks[0].attn, 64, [5])  # head out of range
    qknorm = tiny_vit(qk_norm=True)
    with pytest.raises(ValueError, match="qk_norm"):
        slice_attention(qknorm.blocks[0].attn, 64, [0, 1], torch.arange(16).expand(2, 16))
    assert isinstance(slice_attention(qknorm.blocks[0].attn, 64), PrunedAttention)
    assert isinstance(slice_mlp(model.blocks[0].mlp, 64), PrunedMlp)
