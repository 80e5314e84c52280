"""A pruning plan: per block, which dims survive at each site. Applying it slices the model physically;
`masked_copy` zeroes the same dims in a dense copy, and the two must compute the same function."""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch
import torch.nn as nn

from vitdeploy.models.surgery import attention_dims, slice_attention, slice_mlp


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
    """Slice every block in place as the plan says."""
    width = model.embed_dim
    for blk, bp in zip(model.blocks, plan):
        if bp.touches_attention():
            blk.attn = slice_attention(
                blk.attn, width, bp.heads,
                None if bp.qk_idx is None else torch.tensor(bp.qk_idx),
                None if bp.v_idx is None else torch.tensor(bp.v_idx), bp.attn_in,
            )
        if bp.touches_mlp():
            blk.mlp = slice_mlp(blk.mlp, width, bp.mlp_hidden, bp.mlp_in)
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
