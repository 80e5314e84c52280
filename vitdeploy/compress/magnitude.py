"""Training-free magnitude importance: a hidden unit of an MLP is worth ||fc1 row||₂ · ||fc2 column||₂ (how much
it can read in times how much it can write out). Each block keeps its top units at the recipe's rate."""
from __future__ import annotations

import torch
import torch.nn as nn

from vitdeploy.compress.plan import BlockPlan, aligned_keep
from vitdeploy.compress.recipe import PruneCfg


@torch.no_grad()
def mlp_hidden_scores(mlp: nn.Module) -> torch.Tensor:
    return mlp.fc1.weight.norm(dim=1) * mlp.fc2.weight.norm(dim=0)


@torch.no_grad()
def magnitude_plan(model: nn.Module, cfg: PruneCfg) -> list[BlockPlan]:
    plan = []
    for blk in model.blocks:
        bp = BlockPlan()
        if "mlp_hidden" in cfg.sites:
            scores = mlp_hidden_scores(blk.mlp)
            k = aligned_keep(scores.numel(), cfg.rate, cfg.alignment, cfg.min_keep)
            bp.mlp_hidden = sorted(scores.topk(k).indices.tolist())
        plan.append(bp)
    return plan
