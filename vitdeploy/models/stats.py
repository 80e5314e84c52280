"""Params and MACs of one image. Every Linear, the patch embedding and the attention matmuls (q·kᵀ and attn·v) are
counted; LayerNorm, softmax and activations are not, as is the convention (DeiT-S: 4.6 G).

MACs must not depend on which attention kernel torch picks: torch's FlopCounterMode counts some fused
scaled_dot_product_attention kernels and not others (the CPU flash kernel of recent releases is invisible to it).
So the model is counted twice and the two counts must agree:
  1. with every attention module's `fused_attn` switched off, so q·kᵀ and attn·v run as plain matmuls the counter
     sees (the switches are restored afterwards);
  2. with `fused_attn` switched on, the counter's figure for everything outside scaled_dot_product_attention
     (whatever kernel torch picked, and whatever the counter made of it, is set aside), plus that op's MACs counted
     from its q/k/v shapes.
In both, any scaled_dot_product_attention call that no switch controls is counted from its shapes. A disagreement
is a bug in vitdeploy (a module the counter cannot see), not a user error, so it raises RuntimeError.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sdpa_macs(q_shape: tuple[int, ...], k_shape: tuple[int, ...], v_shape: tuple[int, ...]) -> int:
    """MACs of scaled_dot_product_attention from its shapes: q·kᵀ is L×S×E and attn·v is L×S×Ev, per batch·head
    of q (q [..., L, E], k [..., S, E], v [..., S, Ev]; k/v heads may be fewer than q's, as in grouped attention)."""
    lead = math.prod(q_shape[:-2])
    length, e = q_shape[-2], q_shape[-1]
    s, ev = k_shape[-2], v_shape[-1]
    return int(lead * length * s * (e + ev))


class _SdpaShapes(TorchFunctionMode):
    """Counts every scaled_dot_product_attention call from its argument shapes, and notes what `counter` saw inside
    the call (nothing for a kernel it does not know, the full matmuls where torch falls back to the math kernel)."""

    def __init__(self, counter: FlopCounterMode) -> None:
        super().__init__()
        self.counter = counter
        self.macs = 0  # from shapes
        self.counter_flops = 0  # what the counter recorded inside the calls

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        q = args[0] if len(args) > 0 else kwargs["query"]
        k = args[1] if len(args) > 1 else kwargs["key"]
        v = args[2] if len(args) > 2 else kwargs["value"]
        self.macs += sdpa_macs(tuple(q.shape), tuple(k.shape), tuple(v.shape))
        before = self.counter.get_total_flops()
        out = func(*args, **kwargs)
        self.counter_flops += self.counter.get_total_flops() - before
        return out


@contextlib.contextmanager
def attention_kernel(model: nn.Module, fused: bool) -> Iterator[int]:
    """Set the `fused_attn` switch of every module that has one (timm's Attention, AttentionPoolLatent, vitdeploy's
    PrunedAttention, ...) to `fused`, restoring each afterwards. Yields how many switches were set."""
    switched = [(m, m.fused_attn) for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)]
    try:
        for m, _ in switched:
            m.fused_attn = fused
        yield len(switched)
    finally:
        for m, old in switched:
            m.fused_attn = old


def _count(model: nn.Module, x: torch.Tensor, fused: bool) -> int:
    """The counter's MACs outside scaled_dot_product_attention, plus that op's MACs from its shapes."""
    counter = FlopCounterMode(display=False)
    shapes = _SdpaShapes(counter)
    with attention_kernel(model, fused), counter, shapes:
        model(x)
    return int((counter.get_total_flops() - shapes.counter_flops) // 2) + shapes.macs


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """MACs of one image of `input_size` (C, H, W); the same on every torch version and attention kernel."""
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        x = torch.randn(1, *input_size, dtype=p.dtype, device=p.device)
        eager = _count(model, x, fused=False)
        fused = _count(model, x, fused=True)
    finally:
        model.train(was_training)
    if eager != fused:
        raise RuntimeError(
            f"internal error: MACs counted with eager attention ({eager}) and with fused attention counted from "
            f"shapes ({fused}) disagree for {type(model).__name__}"
        )
    return eager


def block_table(arch, width: int | None = None) -> list[dict]:
    """One row per block with the dims a user cares about (for `info` and reports); `width` is the residual width
    of the model described (the architecture records it only where pruning cut it)."""
    rows = []
    for i, b in enumerate(arch.blocks):
        rows.append({
            "block": i,
            "width": arch.embed_dim or width,
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
