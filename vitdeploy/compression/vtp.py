"""VTP: the method's entry point `run`, and its planning: from importance scores at each (block, site) to a plan that
deploys well — a global threshold at the pruning rate (over the scores, or over score per MAC with `prune.cost:
macs`), kept counts rounded to the alignment, a minimum kept fraction per site, attention kept uniform across heads
(q/k and v dims decided separately, whole heads optionally removed), and one residual width for the whole model when
`embed` is a site. The scores are VTP's learned gates, weight magnitudes, or the taylor saliency (the loss change of
removing each dim, one scale for every site)."""
from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.nn as nn

from vitdeploy import distributed
from vitdeploy.compression.context import CompressContext, MethodResult, max_abs_diff
from vitdeploy.compression.gates import MODEL, attach_gates, detach_gates, fold_gates, site_sizes, zero_pruned
from vitdeploy.compression.plan import BlockPlan, Plan, align_count, apply_plan, kept_stats_norms, plan_to_dict
from vitdeploy.compression.recipe import PruneCfg
from vitdeploy.compression.train import fit
from vitdeploy.errors import RecipeError, VitDeployError
from vitdeploy.models.surgery import attention_dims, residual_heads

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
            if s != "embed":
                scores[(b, s)] = raw[s] / raw[s].mean().clamp_min(1e-12)
    if "embed" in sites:
        raw = embed_magnitude(model)
        scores[(MODEL, "embed")] = raw / raw.mean().clamp_min(1e-12)
    return scores


def _columns(layer: nn.Module, owner: nn.Module, width: int) -> torch.Tensor:
    """‖W[:, d]‖ of a residual reader for every residual dim d (0 where an index-select skips d)."""
    norms = _weight(layer).norm(dim=0).cpu()
    index = getattr(getattr(owner, "in_select", None), "index", None)
    full = torch.zeros(width)
    full[torch.arange(width) if index is None else index.cpu()] = norms
    return full


def _scale(module: nn.Module, width: int) -> torch.Tensor:
    w = getattr(module, "weight", None)
    if w is None:
        w = getattr(module, "gamma", None)
    return torch.ones(width) if w is None else w.detach().abs().cpu()


@torch.no_grad()
def embed_magnitude(model: nn.Module) -> torch.Tensor:
    """Training-free importance of each residual dim: how much every reader takes from it (|γ| of the norm before
    the reader times the reader's column norm, summed over qkv, fc1 and the head) times how much is written into it
    (the patch embedding's filter norm plus every proj and fc2 row norm, through the layer scales)."""
    width = model.embed_dim
    read, write = torch.zeros(width), model.patch_embed.proj.weight.detach().flatten(1).norm(dim=1).cpu()
    for blk in model.blocks:
        read += _scale(blk.norm1, width) * _columns(blk.attn.qkv, blk.attn, width)
        read += _scale(blk.norm2, width) * _columns(blk.mlp.fc1, blk.mlp, width)
        write = write + _scale(blk.ls1, width) * _weight(blk.attn.proj).norm(dim=1).cpu()
        write = write + _scale(blk.ls2, width) * _weight(blk.mlp.fc2).norm(dim=1).cpu()
    final = [m for m in (model.norm, model.fc_norm) if not isinstance(m, nn.Identity)]
    for head in residual_heads(model):
        read += (_scale(final[-1], width) if final else 1.0) * head.weight.detach().norm(dim=0).cpu()
    return read * write


def taylor_scores(model: nn.Module, sites: list[str], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Scores:
    """One saliency for every structure: the loss change from removing each dim, ½·Σ_batches (a·∂L/∂a)² at a = 1
    (second-order Taylor with the Fisher estimate of the Hessian; the first-order term vanishes on average at a
    trained model), from gates put at `sites` of a copy of `model`. In units of the loss whatever the site, so one
    global threshold compares heads, hidden dims and residual dims on one scale (no per-site rescaling)."""
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    gates = attach_gates(work, sites)
    device = next(work.parameters()).device
    acc = {(b, s): torch.zeros_like(p) for b, s, p in gates.items()}
    seen = 0
    for x, y in batches:
        work.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(work(x.to(device)), y.to(device)).backward()
        for b, s, p in gates.items():
            acc[(b, s)] += 0.5 * p.grad.detach() ** 2
        seen += 1
    if seen == 0:
        raise VitDeployError("taylor importance needs at least one calibration batch")
    return {k: v.cpu() for k, v in acc.items()}


# ---------------------------------------------------------------------------------------------- planning
def tokens(model: nn.Module) -> int:
    """Tokens per image entering the blocks (patches plus class, distillation and register tokens)."""
    return int(model.patch_embed.num_patches) + int(getattr(model, "num_prefix_tokens", 0))


def dim_costs(model: nn.Module, sites: Iterable[str]) -> dict[tuple[int, str], float]:
    """MACs per image that removing one dim of each (block, site) saves, at the model's current shape: what
    `prune.cost: macs` divides the scores by, so the global threshold keeps the most importance per MAC."""
    n, costs = tokens(model), {}
    for b, blk in enumerate(model.blocks):
        qkv, proj, fc1, fc2 = blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2
        each = {"attn_in": n * qkv.out_features, "attn_qk": 2 * n * qkv.in_features + n * n,
                "attn_out": n * (qkv.in_features + proj.out_features) + n * n, "mlp_in": n * fc1.out_features,
                "mlp_hidden": n * (fc1.in_features + fc2.out_features)}
        costs.update({(b, s): float(each[s]) for s in sites if s != "embed"})
    if "embed" in sites:
        per_token = sum(blk.attn.qkv.out_features + blk.attn.proj.in_features + blk.mlp.fc1.out_features
                        + blk.mlp.fc2.in_features for blk in model.blocks)
        patch = model.patch_embed.proj.weight[0].numel() * int(model.patch_embed.num_patches)
        heads = sum(h.out_features for h in residual_heads(model))
        costs[(MODEL, "embed")] = float(n * per_token + patch + heads)
    return costs


def _survivors(scores: Scores, cfg: PruneCfg, costs: dict | None = None) -> dict[tuple[int, str], torch.Tensor]:
    """Which dims of each (block, site) survive before alignment: a global threshold over all |scores| (the
    lowest `rate` of them go, ties broken by position), or the same rate in every site when `scope` is uniform.
    With `costs`, the global threshold runs over |score| per MAC instead."""
    if cfg.scope == "uniform":
        out = {}
        for k, v in scores.items():
            mask = torch.zeros(v.numel(), dtype=torch.bool)
            mask[v.abs().topk(int(round((1.0 - cfg.rate) * v.numel()))).indices] = True
            out[k] = mask
        return out
    keys = list(scores)
    flat = torch.cat([scores[k].abs().flatten() / (costs[k] if costs else 1.0) for k in keys])
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
    alive = _survivors(scores, cfg, dim_costs(model, {s for _, s in scores}) if cfg.cost == "macs" else None)
    plan, keep = Plan(), {}
    if (MODEL, "embed") in scores:  # one residual width for the whole model, decided first
        width = model.embed_dim
        k = align_count(int(alive[(MODEL, "embed")].sum()), width, cfg.alignment, cfg.min_keep)
        embed = top_indices(scores[(MODEL, "embed")], k)
        keep[(MODEL, "embed")] = torch.tensor(embed)
        plan.embed = embed if k < width else None
    for b, blk in enumerate(model.blocks):
        d = attention_dims(blk.attn)
        H, Dqk, Dv = d["num_heads"], d["qk_head_dim"], d["v_head_dim"]
        sizes = site_sizes(blk)
        bp = BlockPlan()
        for site in ("attn_in", "mlp_in", "mlp_hidden"):
            if (b, site) in scores:
                k = align_count(int(alive[(b, site)].sum()), sizes[site], cfg.alignment, cfg.min_keep)
                if site != "mlp_hidden" and plan.embed is not None:
                    owner = blk.attn if site == "attn_in" else blk.mlp
                    picked = _within_residual(scores[(b, site)], k, owner, plan.embed)
                else:
                    pick = top_indices if site == "mlp_hidden" else (lambda v, k: top_groups(v, k, cfg.alignment))
                    picked = pick(scores[(b, site)], k)
                setattr(bp, site, picked)
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


def _within_residual(score: torch.Tensor, k: int, owner: nn.Module, embed: list[int]) -> list[int]:
    """The k best input dims of a block's reader among those the residual cut keeps (at most all of them)."""
    index = getattr(getattr(owner, "in_select", None), "index", None)
    full = torch.arange(score.numel()) if index is None else index
    allowed = torch.isin(full, torch.as_tensor(embed))
    ranked = torch.where(allowed, score.abs(), torch.full_like(score, -1.0))
    return sorted(ranked.topk(min(k, int(allowed.sum()))).indices.tolist())


def _surviving_heads(per_head: torch.Tensor, v: torch.Tensor, cfg: PruneCfg) -> list[int]:
    """Heads that keep at least half an alignment unit of surviving v dims (at least one: the strongest). A head
    whose v dims are all gone outputs nothing, so removing it whole is exact."""
    kept = [h for h in range(len(per_head)) if per_head[h] >= min(cfg.alignment, v.shape[1]) / 2]
    return kept or [int(v.sum(1).argmax())]


def magnitude_plan(model: nn.Module, cfg: PruneCfg) -> list[BlockPlan]:
    """A plan from weight magnitudes alone, in seconds, for any model (structure-only benchmarks, quick looks)."""
    return plan_from_scores(model, magnitude_scores(model, list(cfg.sites)), cfg)[0]


def gated_reference(base: nn.Module, sites: list[str], gate_values: Scores, keep: dict,
                    embed: list[int] | None = None) -> nn.Module:
    """A copy of `base` gated with `gate_values`, every dropped score zeroed; with `embed`, its residual LayerNorms
    normalise over those kept dims (replaced before the gates attach, so the embed gate hooks the new norms)."""
    masked = kept_stats_norms(copy.deepcopy(base), embed)
    zero_pruned(attach_gates(masked, sites, gate_values), keep)
    return masked


def prune_with_reference(base: nn.Module, sites: list[str], gate_values: Scores, plan: list[BlockPlan],
                         keep: dict) -> tuple[nn.Module, nn.Module]:
    """The pruned model (scores folded into the weights, then the plan sliced out) and the reference it must
    equal: the gated model with every dropped score zeroed, and, where the plan cuts the residual width, every
    LayerNorm on the residual stream normalising over the kept dims. `base` (ungated) is left untouched."""
    masked = gated_reference(base, sites, gate_values, keep, getattr(plan, "embed", None))
    return sliced(base, sites, gate_values, plan), masked


def sliced(base: nn.Module, sites: list[str], gate_values: Scores, plan: list[BlockPlan]) -> nn.Module:
    """A copy of `base` with `gate_values` folded into its weights and the plan sliced out."""
    pruned = copy.deepcopy(base)
    attach_gates(pruned, sites, gate_values)
    fold_gates(pruned)
    return apply_plan(pruned, plan)


# ------------------------------------------------------------------------------------------------ the method
TAYLOR_BATCH = 32


def taylor_batches(ctx: CompressContext) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """prune.taylor_images images of the train split (of the fixed subset with train_images), no augmentation,
    drawn with the recipe seed, in batches of TAYLOR_BATCH."""
    from torch.utils.data import DataLoader

    from vitdeploy.data import calibration_subset

    subset = calibration_subset(ctx.train_set, ctx.recipe.prune.taylor_images, ctx.recipe.seed)
    return DataLoader(subset, batch_size=TAYLOR_BATCH, shuffle=False)


def run(ctx: CompressContext) -> MethodResult:
    """The VTP method (entry point in the method table): gates trained with the L1 term (learned importance) or
    weight magnitudes, a global-threshold plan, fold + slice checked against the masked gated model."""
    cfg, recipe = ctx.recipe.prune, ctx.recipe
    if cfg.importance in ("learned", "taylor") and ctx.data is None:
        what = "trains importance scores" if cfg.importance == "learned" else "measures the loss on training images"
        raise VitDeployError(f"prune.importance '{cfg.importance}' {what} and needs --data "
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
    else:  # magnitudes or saliencies rank the dims; the gates stay 1, so folding them changes nothing
        scores = taylor_scores(base, list(cfg.sites), taylor_batches(ctx)) if cfg.importance == "taylor" \
            else magnitude_scores(base, list(cfg.sites))
        gate_values = {k: torch.ones_like(v) for k, v in scores.items()}

    # the plan; the masked reference (gated, dropped scores zeroed); the pruned model (scores folded, then sliced)
    budget = None
    if cfg.budget.active:  # widths chosen to a budget (measured latency, MACs or params) instead of a rate
        plan, keep, budget = _budget_plan(ctx, base, scores, gate_values)
    else:
        plan, keep = plan_from_scores(base, scores, cfg)
    pruned, masked = prune_with_reference(base, list(cfg.sites), gate_values, plan, keep)
    pruned = pruned.to(distributed.device())  # sliced modules are built on the CPU
    x, inputs = ctx.sample()
    max_diff = max_abs_diff(pruned, masked, x)
    equivalence = {"max_abs_diff": max_diff, "inputs": inputs,
                   "reference": "gated model with the dropped scores zeroed"}
    if plan.embed is not None:  # LayerNorm over fewer dims is another function: say so, and by how much
        unnormed = gated_reference(base, list(cfg.sites), gate_values, keep)
        equivalence["reference"] += (f", every LayerNorm on the residual stream normalising over the {len(plan.embed)} "
                                     f"kept of {ctx.dense.embed_dim} residual dims")
        equivalence["renormalisation_max_abs_diff"] = max_abs_diff(pruned, unnormed, x)
    del masked, base
    return MethodResult(
        model=pruned,
        reduction={"rate": cfg.rate, "scored_dims": sum(v.numel() for v in scores.values()),
                   "kept_dims": sum(len(k) for k in keep.values())},
        equivalence=equivalence,
        details={"plan": plan_to_dict(plan), "embed": plan.embed, "importance": cfg.importance,
                 "sparsity": sparsity_history} | ({"budget": budget} if budget is not None else {}),
    )


def _budget_plan(ctx: CompressContext, base: nn.Module, scores: Scores, gate_values: Scores) -> tuple[Plan, dict, dict]:
    """The plan of prune.budget (see compression/budget.py), measured through the context's latency oracle."""
    import dataclasses

    from vitdeploy.compression.budget import plan_within_budget
    from vitdeploy.progress import console

    cfg = ctx.recipe.prune

    def slicer(plan: Plan, keep: dict) -> nn.Module:
        return sliced(base, list(cfg.sites), gate_values, plan).cpu().eval()

    def rate_plan(rate: float) -> tuple[Plan, dict]:
        return plan_from_scores(base, scores, dataclasses.replace(cfg, rate=rate))

    bp, record = plan_within_budget(base, scores, cfg, ctx.latency, slicer, rate_plan,
                                    log=lambda line: console.print(f"budget: {line}") if distributed.is_main() else None)
    return bp.plan, bp.keep, record
