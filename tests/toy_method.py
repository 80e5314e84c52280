"""A compression method added from outside the package, as CONTRIBUTING.md describes: one module (this one) with
one entry point, plus one recipe (toy-uniform-mlp.yaml). It removes the same fraction of MLP hidden dims in every
block by weight magnitude (‖fc1 row‖ · ‖fc2 column‖), rounded to the recipe's alignment."""
from __future__ import annotations

import copy

import torch

from vitdeploy.compression.context import CompressContext, MethodResult, max_abs_diff
from vitdeploy.compression.methods import register_method
from vitdeploy.compression.plan import BlockPlan, aligned_keep, apply_plan, masked_copy, plan_to_dict

NAME = "toy-uniform-mlp"


def run(ctx: CompressContext) -> MethodResult:
    cfg = ctx.recipe.prune
    plan = []
    with torch.no_grad():
        for blk in ctx.dense.blocks:
            w1, w2 = blk.mlp.fc1.weight, blk.mlp.fc2.weight
            score = w1.norm(dim=1) * w2.norm(dim=0)
            k = aligned_keep(len(score), cfg.rate, cfg.alignment, cfg.min_keep)
            plan.append(BlockPlan(mlp_hidden=sorted(score.topk(k).indices.tolist())))
    masked = masked_copy(ctx.dense, plan)
    pruned = apply_plan(copy.deepcopy(ctx.dense), plan)
    x, inputs = ctx.sample()
    return MethodResult(
        model=pruned,
        reduction={"rate": cfg.rate, "kept_dims": sum(len(p.mlp_hidden) for p in plan)},
        equivalence={"max_abs_diff": max_abs_diff(pruned, masked, x), "reference": "the dense model with the "
                     "removed hidden dims zeroed", "inputs": inputs},
        details={"plan": plan_to_dict(plan)},
    )


def register() -> None:
    register_method(NAME, run, "uniform MLP-hidden magnitude pruning (a test of the method table)",
                    sites=("mlp_hidden",), replace=True)
