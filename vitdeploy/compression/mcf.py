"""MCF (Bai et al. 2023): FFN compression from the class token's contributions, made structured.

FIS (FFN Irregular Sparsity): over calibration images, the FFN input token t (the class token, or the mean patch
token for models without one) is multiplied element-wise with fc1's weights, P[j, c] = t[c]·W1[j, c]; a product is
marked when it is NOT negligible against the output it sums into, |P[j, c]| >= τ·|y[j]| with y = W1·t + b1. Summing
the marks over images gives the importance matrix I1 (hidden × in). fc2 is scored the same way with its own input,
the hidden activations h = act(y): I2[o, j] from h[j]·W2[o, j] against z[o] (out × hidden).
CRS (Convert to Regular Sparsity): an input dim's importance is the fraction of (image, hidden unit) pairs where it
contributes (column sums of I1), a hidden dim's the fraction of (image, output) pairs (column sums of I2); the
least important dims are cut physically (fc1 columns through the index-select after LayerNorm-2; fc1 rows and fc2
columns), with the VTP planner's alignment and minimum-keep rules.
X-Transformation: with `input_rule: uniform` every FFN keeps the same input dims and the residual stream is
permuted once, folded into every weight that reads or writes it, so the kept dims are a prefix and each select is a
contiguous slice instead of a gather. With `input_rule: embed` those shared dims become the residual width itself:
the other dims are removed from the whole model (attention included), before the FFN schedule starts.
Schedule: FFNs are compressed one at a time from the last block to the first (importance recomputed on the current
model), each followed by recovery epochs; the pipeline then fine-tunes (optionally distilled)."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
from timm.layers import LayerScale
from torch.utils.data import DataLoader

from vitdeploy.compression.context import CompressContext, MethodResult
from vitdeploy.compression.plan import BlockPlan, Plan, align_count, apply_plan, masked_copy, plan_to_dict
from vitdeploy.compression.recipe import McfCfg, PruneCfg
from vitdeploy.compression.train import fit
from vitdeploy.compression.vtp import magnitude_scores, top_groups, top_indices
from vitdeploy.errors import VitDeployError
from vitdeploy.models import count_macs, count_params
from vitdeploy.models.surgery import (TOKENS, IndexSelect, LowRankLinear, dense_weight, residual_heads, residual_norms,
                                     slice_mlp)

SiteScores = dict[str, torch.Tensor]  # "mlp_in" / "mlp_hidden" -> one score per current dim
Scorer = Callable[[nn.Module, list[int]], dict[int, SiteScores]]


# ------------------------------------------------------------------------------------------------------ FIS
@dataclass
class FisResult:
    """One FFN's importance: I1 (hidden × in) and I2 (out × hidden) mark counts over `images`, the per-dim scores
    (mark fractions, ties broken by contribution magnitude) and the fraction of products found negligible."""
    i1: torch.Tensor
    i2: torch.Tensor
    images: int
    in_score: torch.Tensor
    hidden_score: torch.Tensor
    negligible_fc1: float
    negligible_fc2: float


class _Stop(Exception):
    """Raised by the last hook so calibration does not run the blocks after the deepest one it scores."""


def _token(x: torch.Tensor, model: nn.Module, token: str) -> torch.Tensor:
    """B, N, D -> B, D: the class token (position 0), or the mean of the patch tokens (after any prefix tokens)."""
    if token == "auto":
        token = "cls" if getattr(model, "cls_token", None) is not None else "mean"
    if token == "cls":
        if getattr(model, "cls_token", None) is None:
            raise VitDeployError("mcf.token 'cls' needs a model with a class token (use token: mean or auto)")
        return x[:, 0]
    return x[:, getattr(model, "num_prefix_tokens", 0):].mean(1)


def _marks(inp: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], tau: float, chunk: int):
    """For a Linear y = W·inp + b over a batch: the mark counts Σ_b [|inp[c]·W[j, c]| >= τ·|y[j]|] (out × in), the
    outputs y (B × out), and per input dim the contribution magnitude Σ_b |inp[c]|·Σ_j |W[j, c]| (tie-break)."""
    y = inp @ w.T + (0 if b is None else b)  # B, out
    counts = torch.zeros_like(w, dtype=torch.float64)
    wa = w.abs()
    for s in range(0, inp.shape[0], chunk):
        prod = inp[s:s + chunk, None, :].abs() * wa[None]  # b, out, in
        counts += (prod >= tau * y[s:s + chunk, :, None].abs()).sum(0)
    return counts, y, inp.abs().sum(0).double() * wa.sum(0).double()


@torch.no_grad()
def fis_importance(model: nn.Module, images: Iterable[torch.Tensor], blocks: list[int], cfg: McfCfg) -> dict[int, FisResult]:
    """FIS for the FFNs of `blocks` of `model` (dense or already partly sliced), from the batches in `images`."""
    was = model.training
    model.eval()
    tau1, tau2 = cfg.threshold, cfg.hidden_threshold or cfg.threshold
    acc: dict[int, list] = {}
    last = max(blocks)

    def hook(b: int):
        def fn(mlp: nn.Module, args: tuple) -> None:
            t = _token(args[0], model, cfg.token)  # B, D (LayerNorm-2 output)
            if isinstance(getattr(mlp, "in_select", None), IndexSelect):
                t = mlp.in_select(t)  # B, D_in
            w1, b1 = dense_weight(mlp.fc1), mlp.fc1.bias
            w2, b2 = dense_weight(mlp.fc2), mlp.fc2.bias
            chunk = max(1, 2 ** 24 // w1.numel())
            c1, y, m1 = _marks(t, w1, b1, tau1, chunk)
            h = mlp.norm(mlp.act(y))  # B, hidden
            c2, _, m2 = _marks(h, w2, b2, tau2, chunk)
            parts = [c1, c2, m1, m2, t.shape[0]]
            acc[b] = parts if b not in acc else [a + p for a, p in zip(acc[b], parts)]
            if b == last:
                raise _Stop
        return fn

    handles = [model.blocks[b].mlp.register_forward_pre_hook(hook(b)) for b in blocks]
    try:
        device = next(model.parameters()).device
        for x in images:
            try:
                model(x.to(device))
            except _Stop:
                pass
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    out = {}
    for b in blocks:
        c1, c2, m1, m2, n = acc[b]
        out[b] = FisResult(
            i1=c1.float(), i2=c2.float(), images=n,
            in_score=_score(c1.sum(0), n * c1.shape[0], m1), hidden_score=_score(c2.sum(0), n * c2.shape[0], m2),
            negligible_fc1=1 - c1.sum().item() / (n * c1.numel()), negligible_fc2=1 - c2.sum().item() / (n * c2.numel()),
        )
    return out


def _score(count: torch.Tensor, total: int, magnitude: torch.Tensor) -> torch.Tensor:
    """Mark fraction in [0, 1]; the magnitude only orders dims with equal counts (it adds less than one mark)."""
    return (count + 0.5 * magnitude / magnitude.max().clamp_min(1e-30)) / total


# ------------------------------------------------------------------------------------ X-Transformation
def _perm_vec(t: Optional[torch.Tensor], perm: torch.Tensor) -> None:
    if t is not None:
        t.copy_(t[..., perm])


def _perm_norm(norm: nn.Module, perm: torch.Tensor) -> None:
    for name in ("weight", "bias"):
        p = getattr(norm, name, None)
        if isinstance(p, torch.Tensor) and p.ndim == 1:
            _perm_vec(p, perm)


def _perm_reader(module: nn.Module, layer: nn.Module, perm: torch.Tensor, inv: torch.Tensor) -> None:
    """A layer that reads the residual: its columns follow the permutation, or its index-select is remapped."""
    sel = getattr(module, "in_select", None)
    if isinstance(sel, IndexSelect):
        sel.set_index(inv[sel.index])
        return
    lin = layer.down if isinstance(layer, LowRankLinear) else layer
    lin.weight.copy_(lin.weight[:, perm])


def _perm_writer(layer: nn.Module, perm: torch.Tensor) -> None:
    lin = layer.up if isinstance(layer, LowRankLinear) else layer
    lin.weight.copy_(lin.weight[perm])
    if lin.bias is not None:
        _perm_vec(lin.bias, perm)


@torch.no_grad()
def permute_residual(model: nn.Module, perm: torch.Tensor) -> nn.Module:
    """Reorder the residual stream's channels in place (new channel i = old channel perm[i]) without changing the
    function: folded into the patch embedding, class/register/distillation tokens, position embedding, every
    LayerNorm (its statistics do not depend on the order), layer scale, every Linear that reads or writes the
    residual, and the head."""
    if getattr(model, "attn_pool", None) is not None or not isinstance(model.patch_embed.proj, nn.Conv2d):
        raise VitDeployError("the X-Transformation supports class-token and average-pool ViTs with a conv patch "
                             "embedding (use mcf.input_rule: per_layer)")
    perm = torch.as_tensor(perm, dtype=torch.long, device=model.patch_embed.proj.weight.device)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    _perm_writer(model.patch_embed.proj, perm)
    for name in TOKENS:
        _perm_vec(getattr(model, name, None), perm)
    for owner, name in residual_norms(model):
        _perm_norm(getattr(owner, name), perm)
    for blk in model.blocks:
        _perm_reader(blk.attn, blk.attn.qkv, perm, inv)
        _perm_writer(blk.attn.proj, perm)
        _perm_reader(blk.mlp, blk.mlp.fc1, perm, inv)
        _perm_writer(blk.mlp.fc2, perm)
        for ls in (blk.ls1, blk.ls2):
            if isinstance(ls, LayerScale):
                _perm_vec(ls.gamma, perm)
    for head in residual_heads(model):
        head.weight.copy_(head.weight[:, perm])
    return model


# ------------------------------------------------------------------------------------------------ planning
def _rates(prune: PruneCfg, cfg: McfCfg) -> dict[str, float]:
    """Removal rate per site listed in prune.sites: mcf.in_rate (or prune.rate) for inputs, prune.rate for hidden."""
    rate = {"mlp_in": prune.rate if cfg.in_rate is None else cfg.in_rate, "mlp_hidden": prune.rate}
    return {s: rate[s] for s in prune.sites}


def plan_counts(scores: dict[int, SiteScores], prune: PruneCfg, cfg: McfCfg) -> dict[int, dict[str, int]]:
    """Kept count per block and site. uniform scope: the site's rate in every block; global: one threshold per site
    over all blocks (the FIS scores are mark fractions, comparable across blocks). The uniform input rule keeps one
    count for every FFN. Counts are aligned and floored like the VTP planner's."""
    counts: dict[int, dict[str, int]] = {b: {} for b in scores}
    for site, rate in _rates(prune, cfg).items():
        if prune.scope == "uniform" or (site == "mlp_in" and cfg.input_rule == "uniform"):
            alive = {b: (1.0 - rate) * s[site].numel() for b, s in scores.items()}
        else:
            flat = torch.cat([s[site] for s in scores.values()])
            m = int(round(rate * flat.numel()))
            cut = flat.sort().values[m - 1] if m > 0 else -float("inf")
            alive = {b: float((s[site] > cut).sum()) for b, s in scores.items()}
        for b, s in scores.items():
            counts[b][site] = align_count(alive[b], s[site].numel(), prune.alignment, prune.min_keep)
    return counts


def uniform_inputs(scores: dict[int, SiteScores], k: int) -> torch.Tensor:
    """The input dims every FFN keeps under the uniform rule: the k best by their importance summed over blocks."""
    total = sum(s["mlp_in"] for s in scores.values())
    return torch.tensor(top_indices(total, k))


def _pick(score: torch.Tensor, k: int, site: str, prune: PruneCfg) -> list[int]:
    """Kept dims: hidden dims by plain top-k (they are sliced out of the weights); per-layer input dims in aligned
    runs, so their gather moves blocks (see IndexSelect)."""
    return top_indices(score, k) if site == "mlp_hidden" else top_groups(score, k, prune.alignment)


# ------------------------------------------------------------------------------------------------ scorers
def fis_scorer(images: Callable[[], Iterable[torch.Tensor]], cfg: McfCfg) -> Scorer:
    def score(model: nn.Module, blocks: list[int]) -> dict[int, SiteScores]:
        res = fis_importance(model, images(), blocks, cfg)
        return {b: {"mlp_in": r.in_score, "mlp_hidden": r.hidden_score, "fis": r} for b, r in res.items()}
    return score


def magnitude_scorer(model: nn.Module, blocks: list[int]) -> dict[int, SiteScores]:
    """Direct (weight-magnitude) importance of the same dims: the baseline MCF is compared against."""
    s = magnitude_scores(model, ["mlp_in", "mlp_hidden"])
    return {b: {"mlp_in": s[(b, "mlp_in")].double(), "mlp_hidden": s[(b, "mlp_hidden")].double()} for b in blocks}


# ------------------------------------------------------------------------------------------------ schedule
@dataclass
class Step:
    """One FFN cut: the block, what it kept, and how the model fared."""
    block: int
    kept_in: int
    kept_hidden: int
    params: int
    macs: int
    top1_cut: Optional[float]
    top1_recovered: Optional[float]
    max_abs_diff: float
    negligible_fc1: Optional[float] = None
    negligible_fc2: Optional[float] = None


def one_shot(model: nn.Module, scorer: Scorer, prune: PruneCfg, cfg: McfCfg,
             counts: Optional[dict[int, dict[str, int]]] = None) -> tuple[nn.Module, list[BlockPlan]]:
    """Every FFN cut at once from the scores of `model` (no schedule, no recovery): the importance alone. `counts`
    pins the kept counts (to compare importances at the same dims)."""
    model = copy.deepcopy(model)
    blocks = list(range(len(model.blocks)))
    scores = scorer(model, blocks)
    counts = counts or plan_counts(scores, prune, cfg)
    plan = [BlockPlan(**{s: _pick(scores[b][s], counts[b][s], s, prune) for s in counts[b]}) for b in blocks]
    if "mlp_in" in prune.sites and cfg.input_rule == "uniform":  # the same set everywhere (no permutation needed)
        shared = uniform_inputs(scores, counts[0]["mlp_in"]).tolist()
        for bp in plan:
            bp.mlp_in = shared
    for blk, bp in zip(model.blocks, plan):
        blk.mlp = slice_mlp(blk.mlp, model.embed_dim, bp.mlp_hidden, bp.mlp_in).to(next(blk.mlp.parameters()).device)
    return model, plan


def back_to_front(model: nn.Module, scorer: Scorer, prune: PruneCfg, cfg: McfCfg, *, sample: torch.Tensor,
                  measure: Callable[[nn.Module], tuple[int, int, Optional[float]]],
                  recover: Callable[[nn.Module, int], None]) -> tuple[nn.Module, list[BlockPlan], list[Step], dict]:
    """MCF's schedule on a copy of `model`: counts (and, for the uniform input rule, the shared input dims and the
    residual permutation) from the scores of the starting model; then from the last block to the first, the block's
    scores on the current model pick its dims, the FFN is sliced (checked against the masked reference), and
    `recover(model, block)` trains it. Returns the model, the plan (permuted coordinates), the steps and the
    X-Transformation record."""
    model = copy.deepcopy(model).eval()
    width, blocks = model.embed_dim, list(range(len(model.blocks)))
    first = scorer(model, blocks)
    counts = plan_counts(first, prune, cfg)
    xt: dict = {"rule": cfg.input_rule if "mlp_in" in prune.sites else "none"}
    fixed_in: Optional[list[int]] = None
    if xt["rule"] == "embed":  # the shared input dims become the model's residual width: cut everywhere, once
        keep = uniform_inputs(first, counts[0]["mlp_in"]).sort().values.tolist()
        cut = Plan([BlockPlan() for _ in blocks], embed=keep)
        masked = masked_copy(model, cut)
        model = apply_plan(model, cut).to(next(masked.parameters()).device)
        with torch.no_grad():
            xt |= {"kept_inputs": len(keep), "embed": keep,
                   "embed_max_abs_diff": (model(sample) - masked(sample)).abs().max().item()}
        del masked
        width = model.embed_dim
        for c in counts.values():
            c.pop("mlp_in")
    elif xt["rule"] == "uniform":
        k = counts[0]["mlp_in"]
        kept = uniform_inputs(first, k)
        rest = torch.tensor([c for c in range(width) if c not in set(kept.tolist())], dtype=torch.long)
        perm = torch.cat([kept.sort().values, rest])
        with torch.no_grad():
            before = model(sample)
            permute_residual(model, perm)
            xt |= {"kept_inputs": k, "permutation": perm.tolist(),
                   "permuted_max_abs_diff": (model(sample) - before).abs().max().item()}
        fixed_in = list(range(k))
    plan = [BlockPlan() for _ in blocks]
    steps = []
    for b in reversed(blocks):
        # the last block's hidden scores are those of the starting model (a permutation does not change them)
        scores = first[b] if b == blocks[-1] else scorer(model, [b])[b]
        bp = plan[b]
        for site in counts[b]:
            setattr(bp, site, fixed_in if site == "mlp_in" and fixed_in is not None
                    else _pick(scores[site], counts[b][site], site, prune))
        masked = masked_copy(model, [bp if i == b else BlockPlan() for i in blocks])
        device = next(model.parameters()).device  # sliced modules are built on the CPU
        model.blocks[b].mlp = slice_mlp(model.blocks[b].mlp, width, bp.mlp_hidden, bp.mlp_in).to(device)
        with torch.no_grad():
            diff = (model.eval()(sample) - masked.eval()(sample)).abs().max().item()
        del masked
        params, macs, top1_cut = measure(model)
        recover(model, b)
        top1_rec = measure(model)[2]
        fis = scores.get("fis")
        steps.append(Step(b, model.blocks[b].mlp.fc1.in_features, model.blocks[b].mlp.fc1.out_features, params, macs,
                          top1_cut, top1_rec, diff, fis.negligible_fc1 if fis else None,
                          fis.negligible_fc2 if fis else None))
    return model.eval(), plan, steps, xt


def calibration_batches(ctx: CompressContext, cfg: McfCfg) -> Callable[[], Iterable[torch.Tensor]]:
    """min(calib_images, train split) images of the train split without augmentation, drawn with the recipe seed."""
    from vitdeploy.data import calibration_subset, load_dataset

    subset = calibration_subset(load_dataset(ctx.data, "train", ctx.data_config), cfg.calib_images, ctx.recipe.seed)
    loader = DataLoader(subset, batch_size=64, shuffle=False)
    return lambda: (x for x, _ in loader)


def schedule_hooks(ctx: CompressContext) -> dict:
    """`measure` (params, MACs, top-1) and `recover` (recovery epochs with the finetune settings, distilled from the
    dense model when the recipe distils) for `back_to_front`, from a CompressContext."""
    recipe = ctx.recipe
    rec_cfg = dataclasses.replace(recipe.finetune, epochs=recipe.mcf.recovery_epochs)

    def measure(model: nn.Module) -> tuple[int, int, Optional[float]]:
        return count_params(model), count_macs(model, ctx.input_size), ctx.top1(model)

    def recover(model: nn.Module, block: int) -> None:
        if rec_cfg.epochs > 0 and ctx.train_loader is not None:
            fit(model, ctx.train_loader, None, rec_cfg, teacher=ctx.dense, distill=recipe.distill,
                desc=f"recover FFN {block}", checkpoint=ctx.checkpoint(f"mcf-recovery-{block}"))

    return {"measure": measure, "recover": recover}


def run(ctx: CompressContext) -> MethodResult:
    """The MCF method (entry point in the method table), on ctx.dense (left untouched): FIS importance from
    calibration images, the back-to-front structured cuts with recovery epochs, and the details for compress.json."""
    recipe = ctx.recipe
    cfg, prune = recipe.mcf, recipe.prune
    if ctx.data is None:
        raise VitDeployError("method 'mcf' scores the FFN dims on calibration images and needs --data "
                             "(e.g. --data digits or --data imagefolder:PATH)")
    scorer = fis_scorer(calibration_batches(ctx, cfg), cfg)
    x, inputs = ctx.sample()
    pruned, plan, steps, xt = back_to_front(ctx.dense, scorer, prune, cfg, sample=x, **schedule_hooks(ctx))
    scored = sum(n for blk in ctx.dense.blocks for s, n in (("mlp_in", blk.mlp.fc1.in_features),
                                                             ("mlp_hidden", blk.mlp.fc1.out_features)) if s in prune.sites)
    kept = sum(len(getattr(bp, s)) for bp in plan for s in prune.sites if getattr(bp, s) is not None)
    return MethodResult(
        model=pruned,
        reduction={"rate": prune.rate, "in_rate": _rates(prune, cfg).get("mlp_in"), "scored_dims": scored,
                   "kept_dims": kept},
        equivalence={"max_abs_diff": max([s.max_abs_diff for s in steps] + [xt.get("embed_max_abs_diff", 0.0)]),
                     "reference": "each FFN cut vs the same model with that FFN's dropped dims zeroed"
                                  + (" (the residual cut vs the model whose LayerNorms normalise over the kept dims)"
                                     if xt["rule"] == "embed" else ""), "inputs": inputs},
        details={"plan": plan_to_dict(plan), "mcf": [dataclasses.asdict(s) for s in steps], "x_transform": xt,
                 "calibration": {"images": min(cfg.calib_images, len(ctx.train_set)), "token": cfg.token}},
        stage={"recovery_epochs": cfg.recovery_epochs * len(steps)},
    )
