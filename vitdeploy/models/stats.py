"""Params and MACs. MACs come from torch's FlopCounterMode (FLOPs / 2) on one image, so the attention matmuls
(q·kᵀ and attn·v, counted inside scaled_dot_product_attention) are included alongside every Linear and the patch
embedding; LayerNorm, softmax and activations are not counted, as is the convention (DeiT-S: 4.6 G)."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        x = torch.randn(1, *input_size, dtype=p.dtype, device=p.device)
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)


def block_table(arch) -> list[dict]:
    """One row per block with the dims a user cares about (for `info` and reports)."""
    rows = []
    for i, b in enumerate(arch.blocks):
        rows.append({
            "block": i,
            "heads": b.attn.num_heads,
            "qk_head_dim": b.attn.qk_head_dim,
            "v_head_dim": b.attn.v_head_dim,
            "attn_in": b.attn.in_dim,
            "mlp_in": b.mlp.in_dim,
            "mlp_hidden": b.mlp.hidden,
            "ranks": {k: v for k, v in (("qkv", b.attn.qkv_rank), ("proj", b.attn.proj_rank),
                                         ("fc1", b.mlp.fc1_rank), ("fc2", b.mlp.fc2_rank)) if v is not None},
        })
    return rows
