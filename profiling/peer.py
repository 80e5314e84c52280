"""Torch-Pruning's documented timm-ViT recipe, as a benchmark-only peer (shared by bench_fashion_peer,
bench_prune_structures and bench_fashion_structures; the package never imports it).

The recipe as its ViT example runs it: `MetaPruner` with one pruning ratio for every layer (not global), the
attention heads declared (`num_heads`, head dims pruned, every head kept), the classifier ignored. Without further
ignored layers the residual width is one dependency group and is pruned with the rest; the bottleneck variant also
ignores every fc2, so only the internal widths (qkv outputs, MLP hidden) shrink. Importance: L2 magnitude, or
first-order Taylor from gradients accumulated over calibration batches. Widths are rounded to `round_to` (8 here,
vitdeploy's alignment, so that alignment does not decide the speed comparison). `keep_stem` leaves a convolutional
stem's inner channels alone (vitdeploy never prunes them), so that a comparison measures the transformer's structure. Afterwards each attention's
head_dim/attn_dim are rebuilt and the original softmax scale kept (fused attention off: the scale is the stored one).
`pip install -e '.[bench]'` installs it."""
from __future__ import annotations

import copy
from typing import Iterable, Optional

import torch

from vitdeploy.models import count_macs


def available() -> bool:
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        return False
    return True


def require() -> None:
    if not available():
        raise SystemExit("this benchmark needs the peer: pip install -e '.[bench]'")


def version() -> str:
    return __import__("torch_pruning").__version__


def prune(dense: torch.nn.Module, ratio: float, size: tuple, bottleneck: bool = False, importance: str = "l2",
          batches: Optional[Iterable] = None, round_to: Optional[int] = 8, keep_stem: bool = False) -> torch.nn.Module:
    """The peer's model at one pruning ratio (see the module docstring)."""
    import torch_pruning as tp

    model = copy.deepcopy(dense).cpu().eval()
    for blk in model.blocks:
        blk.attn.fused_attn = False
    grads = getattr(dense, "taylor_grads", None)  # from with_grads: the dense model's gradients, computed once
    imp = tp.importance.GroupTaylorImportance() if importance == "taylor" else \
        tp.importance.GroupMagnitudeImportance(p=2)
    ignored = [model.head] + ([blk.mlp.fc2 for blk in model.blocks] if bottleneck else [])
    stem = getattr(model.patch_embed, "stem", None)
    if keep_stem and stem is not None:  # a convolutional stem's inner channels, which vitdeploy never prunes
        ignored += [m for m in stem.modules() if isinstance(m, torch.nn.Conv2d)]
    pruner = tp.pruner.MetaPruner(
        model, torch.randn(1, *size), importance=imp, pruning_ratio=ratio, ignored_layers=ignored,
        num_heads={blk.attn.qkv: blk.attn.num_heads for blk in model.blocks}, prune_head_dims=True,
        prune_num_heads=False, global_pruning=False, round_to=round_to)
    if importance == "taylor" and grads is not None:
        for name, p in model.named_parameters():
            p.grad = grads[name].clone() if name in grads else None
    elif importance == "taylor":
        model.zero_grad()
        for x, y in batches:
            torch.nn.functional.cross_entropy(model(x), y).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    for blk in model.blocks:
        a = blk.attn
        a.num_heads = pruner.num_heads[a.qkv]
        a.head_dim = a.qkv.out_features // (3 * a.num_heads)
        a.attn_dim = a.num_heads * a.head_dim
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval()


def with_grads(dense: torch.nn.Module, batches: Iterable) -> torch.nn.Module:
    """A copy of `dense` carrying the gradients the peer's Taylor importance reads (summed over `batches`), so a
    ratio search does not run the backward pass at every step; `prune` restores them on each copy it cuts."""
    model = copy.deepcopy(dense).cpu().eval()
    for blk in model.blocks:
        blk.attn.fused_attn = False
    model.zero_grad()
    for x, y in batches:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    model.taylor_grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return model


def at_macs(dense: torch.nn.Module, target: int, size: tuple, steps: int = 12, at_most: bool = False,
            **kw) -> tuple[torch.nn.Module, float]:
    """The peer at the ratio whose MACs come closest to `target` (or, `at_most`, the largest-MACs ratio that stays at
    or under it), by bisection: MACs fall with the ratio."""
    if kw.get("importance") == "taylor" and not hasattr(dense, "taylor_grads"):
        dense = with_grads(dense, kw["batches"])
    lo, hi, best = 0.0, 0.9, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        macs = count_macs(prune(dense, mid, size, **kw), size)
        if best is None or abs(macs - target) < best[0]:
            best = (abs(macs - target), mid)
        lo, hi = (mid, hi) if macs > target else (lo, mid)
    ratio = hi if at_most else best[1]
    return prune(dense, ratio, size, **kw), round(ratio, 4)
