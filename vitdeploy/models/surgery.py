"""Surgery modules: drop-in replacements for timm's Attention, Mlp and Linear that keep timm's attribute names
(`qkv`, `proj`, `fc1`, `fc2`) so code that walks a timm model still works, and whose shapes can differ from
the dense model's. They are constructed from dims alone (so a model dir can rebuild them before loading weights)
and filled by the `slice_*` functions, which cut kept rows/columns out of a dense or already-sliced module."""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from timm.layers.attention import Attention

Index = Optional[Sequence[int] | torch.Tensor]


GROUP_SIZES = (64, 32, 16, 8)


def block_groups(index: Sequence[int], in_features: int) -> Optional[tuple[int, list[int]]]:
    """(g, groups) when `index` is made of whole aligned runs of g dims (the largest such g of 64/32/16/8), else None."""
    idx = list(index)
    for g in GROUP_SIZES:
        if in_features % g or len(idx) % g:
            continue
        starts = idx[::g]
        if all(s % g == 0 and idx[i * g:(i + 1) * g] == list(range(s, s + g)) for i, s in enumerate(starts)):
            return g, [s // g for s in starts]
    return None


class IndexSelect(nn.Module):
    """Keep a subset of the last dim: y = x[..., index]. When the kept dims form aligned runs of g (VTP plans
    keep input dims in groups of the alignment), the select moves whole runs: in ONNX, Reshape → Gather of g-wide
    blocks → Reshape, which onnxruntime copies ~6x faster than a Gather of single elements on the last axis."""

    def __init__(self, in_features: int, num_kept: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.register_buffer("index", torch.arange(num_kept, dtype=torch.long))
        self.register_buffer("group_index", torch.zeros(0, dtype=torch.long), persistent=False)
        self.group = 0
        self.start = -1
        self._refresh()
        self.register_load_state_dict_post_hook(lambda module, _: module._refresh())

    def set_index(self, index: torch.Tensor) -> None:
        self.index.copy_(index)
        self._refresh()

    @torch.no_grad()
    def _refresh(self) -> None:
        idx = self.index.tolist()
        # one contiguous run [start, start + n) is a plain slice (ONNX Slice, no gather): MCF's X-Transformation
        # permutes the residual so every FFN's kept inputs are such a prefix
        self.start = idx[0] if idx and idx == list(range(idx[0], idx[0] + len(idx))) else -1
        found = block_groups(idx, self.in_features)
        self.group = found[0] if found else 0
        self.group_index = torch.tensor(found[1] if found else [], dtype=torch.long, device=self.index.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.start >= 0:
            return x[..., self.start:self.start + self.index.numel()]
        if self.group:
            g = self.group
            lead = x.shape[:-1]
            blocks = x.reshape(*lead, self.in_features // g, g).index_select(-2, self.group_index)
            return blocks.reshape(*lead, self.group_index.numel() * g)
        return x.index_select(-1, self.index)

    def extra_repr(self) -> str:
        if self.start >= 0:
            return f"{self.in_features} -> {self.index.numel()} as slice [{self.start}, {self.start + self.index.numel()})"
        return f"{self.in_features} -> {self.index.numel()}" + (f" in blocks of {self.group}" if self.group else "")


class LowRankLinear(nn.Module):
    """y = up(down(x)): a Linear of rank `rank` as two thin layers; the bias sits on the second."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.up.bias


def _linear(in_features: int, out_features: int, bias: bool, rank: Optional[int]) -> nn.Module:
    if rank is None:
        return nn.Linear(in_features, out_features, bias=bias)
    return LowRankLinear(in_features, out_features, rank, bias=bias)


def _select(in_features: int, in_dim: int) -> nn.Module:
    return IndexSelect(in_features, in_dim) if in_dim < in_features else nn.Identity()


class PrunedAttention(nn.Module):
    """Multi-head self-attention with its own head count and separate q/k and v head dims.

    The softmax scale is a stored number (the original model's head_dim ** -0.5), never recomputed from the
    pruned head dim. Inputs may be index-selected (kept input dims of qkv) before the qkv projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_head_dim: int,
        v_head_dim: int,
        scale: float,
        in_dim: Optional[int] = None,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qkv_rank: Optional[int] = None,
        proj_rank: Optional[int] = None,
        q_norm: Optional[nn.Module] = None,
        k_norm: Optional[nn.Module] = None,
        norm: Optional[nn.Module] = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        assert num_heads >= 1 and qk_head_dim >= 1 and v_head_dim >= 1, "attention needs at least one head and dim"
        in_dim = dim if in_dim is None else in_dim
        self.dim = dim
        self.num_heads = num_heads
        self.qk_head_dim = qk_head_dim
        self.v_head_dim = v_head_dim
        self.head_dim = qk_head_dim  # timm's name, kept for code that reads it
        self.attn_dim = num_heads * v_head_dim  # width entering proj, as in timm
        self.scale = float(scale)
        self.fused_attn = True
        self.in_select = _select(dim, in_dim)
        self.qkv = _linear(in_dim, num_heads * (2 * qk_head_dim + v_head_dim), qkv_bias, qkv_rank)
        self.q_norm = q_norm if q_norm is not None else nn.Identity()
        self.k_norm = k_norm if k_norm is not None else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = norm if norm is not None else nn.Identity()
        self.proj = _linear(self.attn_dim, dim, proj_bias, proj_rank)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        x = self.in_select(x)
        B, N, _ = x.shape
        H, Dqk, Dv = self.num_heads, self.qk_head_dim, self.v_head_dim
        q, k, v = self.qkv(x).split([H * Dqk, H * Dqk, H * Dv], dim=-1)
        q = q.reshape(B, N, H, Dqk).transpose(1, 2)  # B, H, N, Dqk
        k = k.reshape(B, N, H, Dqk).transpose(1, 2)
        v = v.reshape(B, N, H, Dv).transpose(1, 2)  # B, H, N, Dv
        q, k = self.q_norm(q), self.k_norm(k)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0,
                is_causal=is_causal, scale=self.scale,
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # B, H, N, N
            if attn_mask is not None:
                attn = attn + attn_mask
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = x.transpose(1, 2).reshape(B, N, H * Dv)
        return self.proj_drop(self.proj(self.norm(x)))


class PrunedMlp(nn.Module):
    """timm's Mlp with any hidden size and optionally index-selected inputs."""

    def __init__(
        self,
        dim: int,
        hidden: int,
        act: nn.Module,
        in_dim: Optional[int] = None,
        out_features: Optional[int] = None,
        bias: tuple[bool, bool] = (True, True),
        fc1_rank: Optional[int] = None,
        fc2_rank: Optional[int] = None,
        norm: Optional[nn.Module] = None,
        drop: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        super().__init__()
        assert hidden >= 1, "an MLP needs at least one hidden dim"
        in_dim = dim if in_dim is None else in_dim
        self.in_select = _select(dim, in_dim)
        self.fc1 = _linear(in_dim, hidden, bias[0], fc1_rank)
        self.act = act
        self.drop1 = nn.Dropout(drop[0])
        self.norm = norm if norm is not None else nn.Identity()
        self.fc2 = _linear(hidden, out_features or dim, bias[1], fc2_rank)
        self.drop2 = nn.Dropout(drop[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.act(self.fc1(self.in_select(x))))
        return self.drop2(self.fc2(self.norm(x)))


# ---------------------------------------------------------------------------------------------------------------
# Slicing: build a smaller module that keeps chosen dims of an existing one, weights copied exactly.


def dense_weight(layer: nn.Module) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return layer.weight.detach()
    if isinstance(layer, LowRankLinear):
        return (layer.up.weight @ layer.down.weight).detach()
    raise TypeError(f"expected a Linear, got {type(layer).__name__}")


def _bias(layer: nn.Module) -> Optional[torch.Tensor]:
    b = layer.bias
    return None if b is None else b.detach()


def _copy_linear(dst: nn.Linear, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    with torch.no_grad():
        dst.weight.copy_(weight)
        if dst.bias is not None:
            dst.bias.copy_(bias)


def _as_index(idx: Index, n: int) -> torch.Tensor:
    if idx is None:
        return torch.arange(n, dtype=torch.long)
    t = torch.as_tensor(idx, dtype=torch.long).flatten()
    if t.numel() == 0 or t.min() < 0 or t.max() >= n or t.unique().numel() != t.numel():
        raise ValueError(f"kept indices must be unique, non-empty and within [0, {n})")
    return t.sort().values


def _input_index(module: nn.Module) -> Optional[torch.Tensor]:
    sel = getattr(module, "in_select", None)
    return sel.index if isinstance(sel, IndexSelect) else None


def _compose_in(module: nn.Module, in_idx: Index, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept positions within the module's current inputs, and those positions in the full residual width."""
    cur = _input_index(module)
    n_cur = width if cur is None else cur.numel()
    local = _as_index(in_idx, n_cur)
    full = local if cur is None else cur[local]
    return local, full


def attention_dims(attn: nn.Module) -> dict:
    """num_heads, qk/v head dims, input width and scale of a timm Attention or a PrunedAttention."""
    if isinstance(attn, PrunedAttention):
        return dict(num_heads=attn.num_heads, qk_head_dim=attn.qk_head_dim, v_head_dim=attn.v_head_dim, scale=attn.scale)
    if isinstance(attn, Attention):
        return dict(num_heads=attn.num_heads, qk_head_dim=attn.head_dim, v_head_dim=attn.head_dim, scale=float(attn.scale))
    raise TypeError(f"unsupported attention module {type(attn).__name__}")


def slice_attention(
    attn: nn.Module,
    dim: int,
    heads: Index = None,
    qk_idx: Optional[torch.Tensor] = None,
    v_idx: Optional[torch.Tensor] = None,
    in_idx: Index = None,
) -> PrunedAttention:
    """A PrunedAttention that keeps `heads` (indices of the current heads), per kept head the q/k dims `qk_idx[h]`
    and v dims `v_idx[h]` (2-D tensors, same count for every head), and input dims `in_idx`.
    It computes exactly what `attn` computes with the dropped dims zeroed. Low-rank layers are densified."""
    d = attention_dims(attn)
    H, Dqk, Dv = d["num_heads"], d["qk_head_dim"], d["v_head_dim"]
    heads_t = _as_index(heads, H)
    qk = torch.arange(Dqk).expand(len(heads_t), Dqk) if qk_idx is None else torch.as_tensor(qk_idx, dtype=torch.long)
    vv = torch.arange(Dv).expand(len(heads_t), Dv) if v_idx is None else torch.as_tensor(v_idx, dtype=torch.long)
    if qk.shape[0] != len(heads_t) or vv.shape[0] != len(heads_t):
        raise ValueError("qk_idx and v_idx need one row per kept head")
    qk, vv = qk.sort(dim=1).values, vv.sort(dim=1).values
    # rows of qkv: [q heads | k heads | v heads], each head a contiguous block
    q_rows = (heads_t[:, None] * Dqk + qk).flatten()
    k_rows = H * Dqk + q_rows
    v_rows = 2 * H * Dqk + (heads_t[:, None] * Dv + vv).flatten()
    rows = torch.cat([q_rows, k_rows, v_rows])
    local_in, _ = _compose_in(attn, in_idx, dim)

    w_qkv, b_qkv = dense_weight(attn.qkv), _bias(attn.qkv)
    w_proj, b_proj = dense_weight(attn.proj), _bias(attn.proj)
    new = PrunedAttention(
        dim, len(heads_t), qk.shape[1], vv.shape[1], d["scale"], in_dim=len(local_in),
        qkv_bias=b_qkv is not None, proj_bias=b_proj is not None,
        q_norm=_sliced_head_norm(attn.q_norm, qk), k_norm=_sliced_head_norm(attn.k_norm, qk),
        norm=_sliced_norm(attn.norm, v_rows - 2 * H * Dqk),
        attn_drop=attn.attn_drop.p, proj_drop=attn.proj_drop.p,
    )
    _, full_in = _compose_in(attn, in_idx, dim)
    if isinstance(new.in_select, IndexSelect):
        new.in_select.set_index(full_in)
    _copy_linear(new.qkv, w_qkv[rows][:, local_in], None if b_qkv is None else b_qkv[rows])
    _copy_linear(new.proj, w_proj[:, v_rows - 2 * H * Dqk], b_proj)
    new.fused_attn = getattr(attn, "fused_attn", True)
    return new.train(attn.training)


def _sliced_head_norm(norm: nn.Module, kept: torch.Tensor) -> nn.Module:
    """q/k norm over the head dim: only removable when nothing is cut from the head dim."""
    if isinstance(norm, nn.Identity):
        return nn.Identity()
    if kept.shape[1] != getattr(norm, "normalized_shape", (kept.shape[1],))[0]:
        raise ValueError("cannot prune q/k head dims of a model with qk_norm (the norm spans the whole head)")
    return norm


def _sliced_norm(norm: nn.Module, kept: torch.Tensor) -> nn.Module:
    if isinstance(norm, nn.Identity):
        return nn.Identity()
    if kept.numel() != getattr(norm, "normalized_shape", (kept.numel(),))[0]:
        raise ValueError("cannot prune dims that a scale norm spans (scale_attn_norm / scale_mlp_norm)")
    return norm


def slice_mlp(mlp: nn.Module, dim: int, hidden_idx: Index = None, in_idx: Index = None) -> PrunedMlp:
    """A PrunedMlp keeping hidden dims `hidden_idx` (fc1 rows, fc2 columns) and input dims `in_idx`."""
    if not isinstance(mlp, (Mlp, PrunedMlp)):
        raise TypeError(f"unsupported MLP module {type(mlp).__name__}")
    w1, b1 = dense_weight(mlp.fc1), _bias(mlp.fc1)
    w2, b2 = dense_weight(mlp.fc2), _bias(mlp.fc2)
    hid = _as_index(hidden_idx, w1.shape[0])
    local_in, full_in = _compose_in(mlp, in_idx, dim)
    new = PrunedMlp(
        dim, len(hid), copy.deepcopy(mlp.act), in_dim=len(local_in), out_features=w2.shape[0],
        bias=(b1 is not None, b2 is not None), norm=_sliced_norm(mlp.norm, hid),
        drop=(mlp.drop1.p, mlp.drop2.p),
    )
    if isinstance(new.in_select, IndexSelect):
        new.in_select.set_index(full_in)
    _copy_linear(new.fc1, w1[hid][:, local_in], None if b1 is None else b1[hid])
    _copy_linear(new.fc2, w2[:, hid], b2)
    return new.train(mlp.training)


# ---------------------------------------------------------------------------------------------------------------
# The residual width: one set of kept dims of the residual stream, removed from every module that reads or writes it.

TOKENS = ("cls_token", "reg_token", "dist_token", "pos_embed")


def residual_norms(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(owner, attribute) of every norm applied to the residual stream: the patch-embed norm, norm_pre, each block's
    norm1 and norm2, the final norm and fc_norm (Identity ones included; callers skip them)."""
    found = [(model.patch_embed, "norm")] if hasattr(model.patch_embed, "norm") else []
    found.append((model, "norm_pre"))
    for blk in model.blocks:
        found += [(blk, "norm1"), (blk, "norm2")]
    return found + [(model, "norm"), (model, "fc_norm")]


def residual_heads(model: nn.Module) -> list[nn.Module]:
    """The classifier Linear layers that read the pooled residual stream (head, and head_dist of distilled DeiT)."""
    return [m for m in (getattr(model, "head", None), getattr(model, "head_dist", None)) if isinstance(m, nn.Linear)]


def check_embed_prunable(model: nn.Module) -> None:
    """Raise ValueError (with the reason) for models whose residual width vitdeploy cannot cut."""
    if getattr(model, "attn_pool", None) is not None:
        raise ValueError("the residual width cannot be pruned under an attention-pool head (global_pool='map')")
    if not isinstance(getattr(model.patch_embed, "proj", None), nn.Conv2d):
        raise ValueError("the residual width needs a patch embedding that ends in a Conv2d 'proj'")
    for owner, name in residual_norms(model):
        norm = getattr(owner, name)
        if not isinstance(norm, (nn.Identity, nn.LayerNorm)):
            raise ValueError(f"the residual width can be pruned through LayerNorm only, found {type(norm).__name__}")
    for blk in model.blocks:
        for layer in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
            if not isinstance(layer, nn.Linear):
                raise ValueError("prune the residual width before factoring layers (found a low-rank layer)")
    if type(model.head) not in (nn.Linear, nn.Identity):
        raise ValueError(f"the residual width cannot be pruned into a {type(model.head).__name__} head")


def _sliced_layernorm(norm: nn.Module, keep: torch.Tensor) -> nn.Module:
    if isinstance(norm, nn.Identity):
        return norm
    new = nn.LayerNorm(len(keep), eps=norm.eps, elementwise_affine=norm.elementwise_affine,
                       bias=norm.bias is not None)
    if norm.elementwise_affine:
        with torch.no_grad():
            new.weight.copy_(norm.weight[keep])
            if norm.bias is not None:
                new.bias.copy_(norm.bias[keep])
    return new.train(norm.training)


def _local_inputs(module: nn.Module, width: int, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a module that reads the residual (maybe through an index-select): which of its current inputs survive,
    and where those inputs sit in the cut residual stream. `pos[d]` is d's new position, -1 when d is cut."""
    cur = _input_index(module)
    full = torch.arange(width) if cur is None else cur
    local = (pos[full] >= 0).nonzero().flatten()
    if local.numel() == 0:
        raise ValueError("the residual cut removes every input dim of a block; keep more of the residual width")
    return local, pos[full[local]]


def _attention_at_width(attn: nn.Module, width: int, keep: torch.Tensor, pos: torch.Tensor) -> PrunedAttention:
    d = attention_dims(attn)
    local, new_full = _local_inputs(attn, width, pos)
    new = PrunedAttention(
        len(keep), d["num_heads"], d["qk_head_dim"], d["v_head_dim"], d["scale"], in_dim=len(local),
        qkv_bias=attn.qkv.bias is not None, proj_bias=attn.proj.bias is not None,
        q_norm=attn.q_norm, k_norm=attn.k_norm, norm=attn.norm,  # Identity where absent, as the constructor's default
        attn_drop=attn.attn_drop.p, proj_drop=attn.proj_drop.p,
    )
    if isinstance(new.in_select, IndexSelect):
        new.in_select.set_index(new_full)
    _copy_linear(new.qkv, attn.qkv.weight.detach()[:, local], _bias(attn.qkv))
    b = _bias(attn.proj)
    _copy_linear(new.proj, attn.proj.weight.detach()[keep], None if b is None else b[keep])
    new.fused_attn = getattr(attn, "fused_attn", True)
    return new.train(attn.training)


def _mlp_at_width(mlp: nn.Module, width: int, keep: torch.Tensor, pos: torch.Tensor) -> PrunedMlp:
    local, new_full = _local_inputs(mlp, width, pos)
    b1, b2 = _bias(mlp.fc1), _bias(mlp.fc2)
    new = PrunedMlp(len(keep), mlp.fc1.out_features, copy.deepcopy(mlp.act), in_dim=len(local),
                    out_features=len(keep), bias=(b1 is not None, b2 is not None),
                    norm=mlp.norm, drop=(mlp.drop1.p, mlp.drop2.p))
    if isinstance(new.in_select, IndexSelect):
        new.in_select.set_index(new_full)
    _copy_linear(new.fc1, mlp.fc1.weight.detach()[:, local], b1)
    _copy_linear(new.fc2, mlp.fc2.weight.detach()[keep], None if b2 is None else b2[keep])
    return new.train(mlp.training)


def _sliced_conv_out(conv: nn.Conv2d, keep: torch.Tensor) -> nn.Conv2d:
    new = nn.Conv2d(conv.in_channels, len(keep), conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(conv.weight[keep])
        if conv.bias is not None:
            new.bias.copy_(conv.bias[keep])
    return new.train(conv.training)


@torch.no_grad()
def slice_embed(model: nn.Module, keep: Index) -> nn.Module:
    """Keep only the residual dims `keep` (indices into the current width), in place, everywhere the residual
    stream is read or written: patch-embed out channels, class/register/distillation tokens, position embedding,
    every LayerNorm on the stream, qkv and fc1 input columns (through any index-select), proj and fc2 output rows,
    layer scales, the final norms and the classifier's input columns. Blocks become PrunedAttention/PrunedMlp at
    the new width. LayerNorms then normalise over the kept dims only, which is a different function from the dense
    model with those dims zeroed: plan.kept_stats_norms builds the dense reference that equals it."""
    check_embed_prunable(model)
    width = model.embed_dim
    keep_t = _as_index(keep, width)
    pos = torch.full((width,), -1, dtype=torch.long)
    pos[keep_t] = torch.arange(len(keep_t))
    pe = model.patch_embed
    pe.proj = _sliced_conv_out(pe.proj, keep_t)
    for name in TOKENS:
        p = getattr(model, name, None)
        if isinstance(p, nn.Parameter):
            setattr(model, name, nn.Parameter(p.detach()[..., keep_t].clone(), requires_grad=p.requires_grad))
    for owner, name in residual_norms(model):
        setattr(owner, name, _sliced_layernorm(getattr(owner, name), keep_t))
    for blk in model.blocks:
        blk.attn = _attention_at_width(blk.attn, width, keep_t, pos)
        blk.mlp = _mlp_at_width(blk.mlp, width, keep_t, pos)
        for ls in (blk.ls1, blk.ls2):
            if hasattr(ls, "gamma"):
                ls.gamma = nn.Parameter(ls.gamma.detach()[keep_t].clone())
    for attr in ("head", "head_dist"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Linear):
            new = nn.Linear(len(keep_t), head.out_features, bias=head.bias is not None)
            _copy_linear(new, head.weight.detach()[:, keep_t], _bias(head))
            setattr(model, attr, new.train(head.training))
    model.base_embed_dim = getattr(model, "base_embed_dim", width)
    model.embed_dim = model.num_features = len(keep_t)
    if hasattr(model, "head_hidden_size"):
        model.head_hidden_size = len(keep_t)
    return model


# ------------------------------------------------------------------------------------------------ deploy form
def _deploy_attention(attn: nn.Module) -> Optional[PrunedAttention]:
    """The same attention as `attn` in the form the exporter traces (None where there is nothing to change: neither a
    timm Attention with a plain qkv Linear nor a PrunedAttention with a scale to fold): q, k and v split off the qkv output first, each reshaped and
    transposed on its own (no 5-D transpose of the whole qkv output, so a QuantizeLinear after a head-split
    moves up through the transpose and the transpose moves int8), and the softmax scale folded into the q rows
    of qkv (its last factor when low-rank) where no q/k norm sits between, so the graph has no scale Mul in front
    of the attention matmuls. New tensors only: `attn` is not changed."""
    foldable = isinstance(getattr(attn, "q_norm", None), nn.Identity) and float(getattr(attn, "scale", 1.0)) != 1.0
    if isinstance(attn, Attention) and isinstance(attn.qkv, nn.Linear):
        new = slice_attention(attn, attn.qkv.in_features)
    elif isinstance(attn, PrunedAttention) and foldable:  # already split first: a copy only to fold the scale
        new = copy.deepcopy(attn)
    else:
        return None
    if foldable:
        last = new.qkv.up if isinstance(new.qkv, LowRankLinear) else new.qkv
        rows = new.num_heads * new.qk_head_dim
        with torch.no_grad():
            last.weight[:rows] *= new.scale
            if last.bias is not None:
                last.bias[:rows] *= new.scale
        new.scale = 1.0
    return new.train(attn.training)


def deploy_form(model: nn.Module) -> tuple[nn.Module, list[tuple[nn.Module, str, nn.Module]]]:
    """Swap every attention module of `model` (or `model` itself, if it is one) for its deploy form (see
    `_deploy_attention`); returns the module to trace and the (parent, name, original) swaps for `restore_form`.
    The function is the same up to float rounding; the exporter's parity check holds it to that."""
    if (root := _deploy_attention(model)) is not None:
        return root, []
    swaps = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (new := _deploy_attention(child)) is not None:
                swaps.append((parent, name, child))
                setattr(parent, name, new)
    return model, swaps


def restore_form(swaps: list[tuple[nn.Module, str, nn.Module]]) -> None:
    """Put back the modules `deploy_form` swapped out."""
    for parent, name, child in reversed(swaps):
        setattr(parent, name, child)
