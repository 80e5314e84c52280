"""VTP: the method's entry point `run`, and its planning: from importance scores (learned gates or weight magnitudes) at each (block, site) to a plan that
deploys well — a global threshold at the pruning rate, kept counts rounded to the alignment, a minimum kept
fraction per site, and attention kept uniform across heads (q/k and v dims decided separately, whole heads
optionally removed)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from vitdeploy import distributed
from vitdeploy.compression.context import CompressContext, MethodResult, max_abs_diff
from vitdeploy.compression.gates import attach_gates, detach_gates, fold_gates, site_sizes, zero_pruned
from vitdeploy.compression.plan import BlockPlan, align_count, apply_plan, plan_to_dict
from vitdeploy.compression.recipe import PruneCfg
from vitdeploy.compression.train import fit
from vitdeploy.errors import RecipeError, VitDeployError
from vitdeploy.models.surgery import attention_dims

Scores = dict[tuple[int, str], torch.Tensor]


# ------------------------------------------------------------------------------------------ magnitude scores
def _weight(layer: nn.Module) -> torch.Tensor:
    if not isinstance(layer, nn.Linear):
        raise RecipeError(f"magnitude importance needs dense Linear layers, found {type(layer).__name__}")
    return layer.weight.detach()


def _norm_weight(norm: nn.Module, n: int, select: nn.Module) -> torch.Tensor:
    """|γ| of the LayerNorm feeding a site (restricted to the index-selected dims), or ones without an affine."""
    w = getattr(norm, "weight", None)
    if w is None:
        return torch.ones(n)
    w = w.detach().abs()
    index = getattr(select, "index", None)
    return w[index] if index is not None else w


@torch.no_grad()
def magnitude_scores(model: nn.Module, sites: list[str]) -> Scores:
    """Training-free importance per dim: how much it can read in times how much it can write out. Each
    (block, site) is scaled to mean 1 so one global threshold can compare sites of different magnitude."""
    scores: Scores = {}
    for b, blk in enumerate(model.blocks):
        attn, mlp = blk.attn, blk.mlp
        d = attention_dims(attn)
        H, Dqk, Dv = d["num_heads"], d["qk_head_dim"], d["v_head_dim"]
        w_qkv, w_proj = _weight(attn.qkv), _weight(attn.proj)
        w1, w2 = _weight(mlp.fc1), _weight(mlp.fc2)
        raw = {
            "attn_in": w_qkv.norm(dim=0) * _norm_weight(blk.norm1, w_qkv.shape[1], getattr(attn, "in_select", None)),
            "attn_qk": w_qkv[: H * Dqk].norm(dim=1) * w_qkv[H * Dqk: 2 * H * Dqk].norm(dim=1),
            "attn_out": w_qkv[2 * H * Dqk: 2 * H * Dqk + H * Dv].norm(dim=1) * w_proj.norm(dim=0),
            "mlp_in": w1.norm(dim=0) * _norm_weight(blk.norm2, w1.shape[1], getattr(mlp, "in_select", None)),
            "mlp_hidden": w1.norm(dim=1) * w2.norm(dim=0),
        }
        for s in sites:
            scores[(b, s)] = raw[s] / raw[s].mean().clamp_min(1e-12)
    return scores


# ---------------------------------------------------------------------------------------------- planning
def _survivors(scores: Scores, cfg: PruneCfg) -> dict[tuple[int, str], torch.Tensor]:
    """Which dims of each (block, site) survive before alignment: a global threshold over all |scores| (the
    lowest `rate` of them go, ties broken by position), or the same rate in every site when `scope` is uniform."""
    if cfg.scope == "uniform":
        out = {}
        for k, v in scores.items():
            mask = torch.zeros(v.numel(), dtype=torch.bool)
            mask[v.abs().topk(int(round((1.0 - cfg.rate) * v.numel()))).indices] = True
            out[k] = mask
        return out
    keys = list(scores)
    flat = torch.cat([scores[k].abs().flatten() for k in keys])
    mask = torch.ones(flat.numel(), dtype=torch.bool)
    mask[flat.argsort(stable=True)[: int(round(cfg.rate * flat.numel()))]] = False
    return dict(zip(keys, mask.split([scores[k].numel() for k in keys])))


def top_indices(score: torch.Tensor, k: int) -> list[int]:
    return sorted(score.abs().topk(k).indices.tolist())


def top_groups(score: torch.Tensor, k: int, g: int) -> list[int]:
    """The k best dims taken as whole aligned runs of g (ranked by their summed |score|), so the index-select that
    applies them moves blocks instead of single floats (see IndexSelect); plain top-k where g does not divide."""
    n = score.numel()
    if k == n or n % g or k % g:
        return top_indices(score, k)
    groups = score.abs().view(-1, g).sum(1).topk(k // g).indices.sort().values
    return (groups[:, None] * g + torch.arange(g)).flatten().tolist()


def _per_head(score: torch.Tensor, heads: list[int], dim: int, surviving: int, cfg: PruneCfg) -> list[list[int]]:
    """The same number of dims in every kept head (the surviving count of those heads spread evenly, aligned),
    each head keeping its own best dims."""
    per = score.abs().view(-1, dim)
    k = align_count(surviving / len(heads), dim, cfg.alignment, cfg.min_keep)
    return [top_indices(per[h], k) for h in heads]


def plan_from_scores(model: nn.Module, scores: Scores, cfg: PruneCfg) -> tuple[list[BlockPlan], dict]:
    """The plan, and per (block, site) the kept indices in score coordinates (to zero the others for the masked
    reference)."""
    alive = _survivors(scores, cfg)
    plan, keep = [], {}
    for b, blk in enumerate(model.blocks):
        d = attention_dims(blk.attn)
        H, Dqk, Dv = d["num_heads"], d["qk_head_dim"], d["v_head_dim"]
        sizes = site_sizes(blk)
        bp = BlockPlan()
        for site in ("attn_in", "mlp_in", "mlp_hidden"):
            if (b, site) in scores:
                k = align_count(int(alive[(b, site)].sum()), sizes[site], cfg.alignment, cfg.min_keep)
                pick = top_indices if site == "mlp_hidden" else (lambda v, k: top_groups(v, k, cfg.alignment))
                setattr(bp, site, pick(scores[(b, site)], k))
                keep[(b, site)] = torch.tensor(getattr(bp, site))
        heads = list(range(H))
        if (b, "attn_out") in scores:
            per_head = alive[(b, "attn_out")].view(H, Dv).sum(1)
            if cfg.remove_heads:
                heads = _surviving_heads(per_head, scores[(b, "attn_out")].abs().view(H, Dv), cfg)
            bp.v_idx = _per_head(scores[(b, "attn_out")], heads, Dv, int(per_head[heads].sum()), cfg)
            keep[(b, "attn_out")] = torch.tensor([h * Dv + j for h, idx in zip(heads, bp.v_idx) for j in idx])
        if (b, "attn_qk") in scores:
            per_head = alive[(b, "attn_qk")].view(H, Dqk).sum(1)
            bp.qk_idx = _per_head(scores[(b, "attn_qk")], heads, Dqk, int(per_head[heads].sum()), cfg)
            keep[(b, "attn_qk")] = torch.tensor([h * Dqk + j for h, idx in zip(heads, bp.qk_idx) for j in idx])
        if len(heads) < H:
            bp.heads = heads
            if bp.qk_idx is None:
                bp.qk_idx = [list(range(Dqk)) for _ in heads]
        plan.append(bp)
    return plan, keep


def _surviving_heads(per_head: torch.Tensor, v: torch.Tensor, cfg: PruneCfg) -> list[int]:
    """Heads that keep at least half an alignment unit of surviving v dims (at least one: the strongest). A head
    whose v dims are all gone outputs nothing, so removing it whole is exact."""
    kept = [h for h in range(len(per_head)) if per_head[h] >= min(cfg.alignment, v.shape[1]) / 2]
    return kept or [int(v.sum(1).argmax())]


def magnitude_plan(model: nn.Module, cfg: PruneCfg) -> list[BlockPlan]:
    """A plan from weight magnitudes alone, in seconds, for any model (structure-only benchmarks, quick looks)."""
    return plan_from_scores(model, magnitude_scores(model, list(cfg.sites)), cfg)[0]


def prune_with_reference(base: nn.Module, sites: list[str], gate_values: Scores, plan: list[BlockPlan],
                         keep: dict) -> tuple[nn.Module, nn.Module]:
    """The pruned model (scores folded into the weights, then the plan sliced out) and the reference it must
    equal: the gated model with every dropped score zeroed. `base` (ungated) is left untouched."""
    masked = copy.deepcopy(base)
    zero_pruned(attach_gates(masked, sites, gate_values), keep)
    pruned = copy.deepcopy(base)
    attach_gates(pruned, sites, gate_values)
    fold_gates(pruned)
    apply_plan(pruned, plan)
    return pruned, masked


# ------------------------------------------------------------------------------------------------ the method
def run(ctx: CompressContext) -> MethodResult:
    """The VTP method (entry point in the method table): gates trained with the L1 term (learned importance) or
    weight magnitudes, a global-threshold plan, fold + slice checked against the masked gated model."""
    cfg, recipe = ctx.recipe.prune, ctx.recipe
    if cfg.importance == "learned" and ctx.data is None:
        raise VitDeployError("prune.importance 'learned' trains importance scores and needs --data "
                             "(or use --set prune.importance=magnitude for a training-free plan)")
    base = copy.deepcopy(ctx.dense)
    sparsity_history: list = []
    if cfg.importance == "learned":
        gates = attach_gates(base, cfg.sites)
        sp = recipe.sparsity
        sparsity_history = fit(base, ctx.train_loader_for(sp), ctx.val_loader, sp, desc="sparsity", gates=gates,
                               checkpoint=ctx.checkpoint("sparsity"))["epochs"]
        ctx.add_stage("sparsity", base, scores=gates.numel())
        detach_gates(base)
        scores = {(b, s): a.detach().clone() for b, s, a in gates.items()}
        gate_values = scores
    else:  # magnitudes rank the dims; the gates stay 1, so folding them changes nothing
        scores = magnitude_scores(base, list(cfg.sites))
        gate_values = {k: torch.ones_like(v) for k, v in scores.items()}

    # the plan; the masked reference (gated, dropped scores zeroed); the pruned model (scores folded, then sliced)
    plan, keep = plan_from_scores(base, scores, cfg)
    pruned, masked = prune_with_reference(base, list(cfg.sites), gate_values, plan, keep)
    pruned = pruned.to(distributed.device())  # sliced modules are built on the CPU
    x, inputs = ctx.sample()
    max_diff = max_abs_diff(pruned, masked, x)
    del masked, base
    return MethodResult(
        model=pruned,
        reduction={"rate": cfg.rate, "scored_dims": sum(v.numel() for v in scores.values()),
                   "kept_dims": sum(len(k) for k in keep.values())},
        equivalence={"max_abs_diff": max_diff, "reference": "gated model with the dropped scores zeroed",
                     "inputs": inputs},
        details={"plan": plan_to_dict(plan), "sparsity": sparsity_history},
    )
