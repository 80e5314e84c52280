"""A pruning plan: per block, which dims survive at each site. Applying it slices the model physically;
`masked_copy` zeroes the same dims in a dense copy, and the two must compute the same function."""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn

from vitdeploy.models.surgery import (attention_dims, residual_heads, residual_norms, slice_attention, slice_embed,
                                     slice_mlp)


@dataclass
class BlockPlan:
    """Kept indices per site; None keeps everything. Attention indices are per kept head, uniform counts."""
    heads: Optional[list[int]] = None
    qk_idx: Optional[list[list[int]]] = None
    v_idx: Optional[list[list[int]]] = None
    attn_in: Optional[list[int]] = None
    mlp_in: Optional[list[int]] = None
    mlp_hidden: Optional[list[int]] = None

    def touches_attention(self) -> bool:
        return any(v is not None for v in (self.heads, self.qk_idx, self.v_idx, self.attn_in))

    def touches_mlp(self) -> bool:
        return self.mlp_in is not None or self.mlp_hidden is not None


class Plan(list):
    """The per-block plans (a list of BlockPlan, block order) and the model-level choice: `embed`, the kept
    residual dims (None keeps the whole width)."""

    def __init__(self, blocks=(), embed: Optional[list[int]] = None) -> None:
        super().__init__(blocks)
        self.embed = embed


def align_count(raw: float, total: int, alignment: int, min_keep: float) -> int:
    """A kept count near `raw`: a multiple of `alignment` (or all `total`), never below the minimum kept
    fraction (itself rounded up to the alignment), never zero."""
    if total <= alignment:
        return total
    want = round(raw / alignment) * alignment
    floor = math.ceil(min_keep * total / alignment) * alignment
    return int(min(total, max(want, floor, alignment)))


def aligned_keep(n: int, rate: float, alignment: int, min_keep: float) -> int:
    """How many of n dims to keep at a pruning rate (see align_count)."""
    return align_count((1.0 - rate) * n, n, alignment, min_keep)


def apply_plan(model: nn.Module, plan: list[BlockPlan]) -> nn.Module:
    """Slice every block in place as the plan says, then cut the residual width if the plan keeps less of it."""
    width = model.embed_dim
    embed = getattr(plan, "embed", None)
    for blk, bp in zip(model.blocks, plan):
        if bp.touches_attention():
            blk.attn = slice_attention(
                blk.attn, width, bp.heads,
                None if bp.qk_idx is None else torch.tensor(bp.qk_idx),
                None if bp.v_idx is None else torch.tensor(bp.v_idx), bp.attn_in,
            )
        if bp.touches_mlp():
            blk.mlp = slice_mlp(blk.mlp, width, bp.mlp_hidden, bp.mlp_in)
    if embed is not None and len(embed) < width:
        slice_embed(model, embed)
    return model


class KeptStatsLayerNorm(nn.LayerNorm):
    """A LayerNorm whose mean and variance run over the kept residual dims only, with the cut dims' outputs zeroed:
    in a dense-width model, exactly what the LayerNorm of the cut model computes on the kept dims. It shares the
    wrapped norm's parameters and is a LayerNorm, so gates attach to it as to the norm it replaces."""

    def __init__(self, norm: nn.LayerNorm, keep: torch.Tensor) -> None:
        super().__init__(norm.normalized_shape, eps=norm.eps, elementwise_affine=norm.elementwise_affine,
                         bias=norm.bias is not None)
        if norm.elementwise_affine:
            self.weight = norm.weight
            self.bias = norm.bias
        device = norm.weight.device if norm.elementwise_affine else None
        self.register_buffer("keep", torch.as_tensor(keep, dtype=torch.long, device=device))
        mask = torch.zeros(norm.normalized_shape[0], device=device)
        mask[self.keep] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = x.index_select(-1, self.keep)
        mean = kept.mean(-1, keepdim=True)
        var = kept.var(-1, unbiased=False, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.elementwise_affine:
            y = y * self.weight + (self.bias if self.bias is not None else 0)
        return y * self.mask


def kept_stats_norms(model: nn.Module, keep: Optional[list[int]]) -> nn.Module:
    """Every LayerNorm on the residual stream of `model` (in place) normalising over the kept dims only: the dense
    reference for a residual cut (with the cut dims also unread: zeroed gates or columns)."""
    if keep is None:
        return model
    keep_t = torch.as_tensor(keep, dtype=torch.long)
    for owner, name in residual_norms(model):
        norm = getattr(owner, name)
        if isinstance(norm, nn.LayerNorm):
            setattr(owner, name, KeptStatsLayerNorm(norm, keep_t))
    return model


@torch.no_grad()
def masked_copy(model: nn.Module, plan: list[BlockPlan]) -> nn.Module:
    """A dense copy with every dim the plan drops zeroed (the reference that the sliced model must match)."""
    masked = copy.deepcopy(model)
    for blk, bp in zip(masked.blocks, plan):
        if bp.touches_attention():
            _mask_attention(blk.attn, bp)
        if bp.touches_mlp():
            _mask_mlp(blk.mlp, bp)
    embed = getattr(plan, "embed", None)
    if embed is not None:  # the norms zero the cut dims they output; a head read without a norm loses its columns
        if all(isinstance(m, nn.Identity) for m in (masked.norm, masked.fc_norm)):
            for head in residual_heads(masked):
                head.weight[:, _complement(masked.embed_dim, embed)] = 0
        kept_stats_norms(masked, embed)
    return masked


def _zero_rows(layer: nn.Linear, rows: torch.Tensor) -> None:
    layer.weight[rows] = 0
    if layer.bias is not None:
        layer.bias[rows] = 0


def _complement(n: int, keep: Optional[list[int]]) -> torch.Tensor:
    mask = torch.ones(n, dtype=torch.bool)
    if keep is not None:
        mask[torch.as_tensor(keep, dtype=torch.long)] = False
    else:
        mask[:] = False
    return mask.nonzero().flatten()


def _mask_attention(attn: nn.Module, bp: BlockPlan) -> None:
    d = attention_dims(attn)
    H, Dqk, Dv = d["num_heads"], d["qk_head_dim"], d["v_head_dim"]
    heads = list(range(H)) if bp.heads is None else list(bp.heads)
    for h in range(H):
        if h in heads:
            j = heads.index(h)
            drop_qk = _complement(Dqk, None if bp.qk_idx is None else bp.qk_idx[j])
            drop_v = _complement(Dv, None if bp.v_idx is None else bp.v_idx[j])
        else:
            drop_qk, drop_v = torch.arange(Dqk), torch.arange(Dv)
        _zero_rows(attn.qkv, h * Dqk + drop_qk)  # q rows: their products with k vanish
        _zero_rows(attn.qkv, 2 * H * Dqk + h * Dv + drop_v)  # v rows: the head's output dims vanish
    attn.qkv.weight[:, _complement(attn.qkv.in_features, bp.attn_in)] = 0


def _mask_mlp(mlp: nn.Module, bp: BlockPlan) -> None:
    _zero_rows(mlp.fc1, _complement(mlp.fc1.out_features, bp.mlp_hidden))
    mlp.fc1.weight[:, _complement(mlp.fc1.in_features, bp.mlp_in)] = 0


def plan_to_dict(plan: list[BlockPlan]) -> list[dict]:
    return [asdict(bp) for bp in plan]

