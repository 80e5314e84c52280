"""Low-rank factoring of the Linear layers of a dense or pruned ViT: W (out × in) ≈ up · down, with down: in → r
(no bias) and up: r → out (carrying the bias), so one Linear becomes a LowRankLinear of two thin ones.

Every method builds nested approximations: the rank-r factors use the method's first r basis vectors of the
output space, and the second factor is the best one for that basis (orthogonal projection / least squares). So each
method is exact at full rank (r = min(out, in)) and its error never grows with r.

    svd         W = U Σ Vᵀ;             up = U_r √Σ_r,        down = √Σ_r V_rᵀ   (balanced; Eckart–Young optimal)
    qr-full     W = Q R, Q out × out;   up = Q_r,             down = R_r         (first r rows of R)
    qr-reduced  W = Q R, Q out × k;     up = Q_r,             down = R_r
    qr-pivoted  W Π = Q R (greedy column pivoting, rank-revealing); up = Q_r, down = R_r Πᵀ
    cod         W Π = Q R, then the kept rows R_r = L Zᵀ (LQ); up = Q_r L, down = Zᵀ Πᵀ   (orthonormal rows)
    lu          P W Π = L U (complete pivoting), B = Pᵀ L_r;  up = B,  down = argmin_D ‖W − B D‖ = B⁺ W

Full and reduced QR give the same rank-r factors (the complete Q's extra columns only meet zero rows of R), and
the COD's rank-r product equals the pivoted QR's (the LQ step only rotates the kept rows); they differ in the split.
Plain truncation of LU (L_r U_r, the error is the Schur complement) can get worse as r grows, hence the
least-squares second factor. Pivoting is complete (rows and columns): with partial (row) pivoting, span(P L_r) is the
span of W's first r columns, so LU + least squares would be unpivoted QR again; complete pivoting lets LU pick its
own columns (the largest remaining entry), which rank-reveals differently from QR's largest remaining column norm.
Ranks come from the singular values whatever the method, so every method factors a model at the same ranks, with
the same params and MACs.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
from timm.layers import Mlp
from timm.layers.attention import Attention

from vitdeploy.compression.methods import DECOMPOSITIONS
from vitdeploy.compression.recipe import DecomposeCfg
from vitdeploy.errors import RecipeError
from vitdeploy.models.surgery import LowRankLinear, slice_attention, slice_mlp

Factors = tuple[torch.Tensor, torch.Tensor]  # up (out × r), down (r × in)

ATTN_LAYERS, MLP_LAYERS = ("qkv", "proj"), ("fc1", "fc2")
DENSE_NO_SAVING = "kept dense: factoring saves no MACs"


# ------------------------------------------------------------------------------------------------- methods
def _svd(w: torch.Tensor, r: int) -> Factors:
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:r].sqrt()
    return u[:, :r] * root, root[:, None] * vh[:r]


def _qr(mode: str) -> Callable[[torch.Tensor, int], Factors]:
    def factor(w: torch.Tensor, r: int) -> Factors:
        q, rr = torch.linalg.qr(w, mode=mode)  # complete: q out × out, rr out × in; reduced: q out × k, rr k × in
        return q[:, :r], rr[:r]
    return factor


def _pivoted_qr(w: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W[:, piv] = Q R with |diag R| non-increasing (LAPACK geqp3)."""
    q, rr, piv = scipy.linalg.qr(w.cpu().numpy(), mode="economic", pivoting=True)
    return q, rr, piv


def _unpermute(rows: np.ndarray, piv: np.ndarray) -> np.ndarray:
    """(X Πᵀ): put the columns of X, which are in pivoted order, back in the layer's input order."""
    out = np.empty_like(rows)
    out[:, piv] = rows
    return out


def _qr_pivoted(w: torch.Tensor, r: int) -> Factors:
    q, rr, piv = _pivoted_qr(w)
    return torch.from_numpy(q[:, :r].copy()), torch.from_numpy(_unpermute(rr[:r], piv))


def _cod(w: torch.Tensor, r: int) -> Factors:
    q, rr, piv = _pivoted_qr(w)
    z, t = np.linalg.qr(rr[:r].T)  # R_rᵀ = Z T  ⇒  R_r = Tᵀ Zᵀ = L Zᵀ, L lower-triangular r × r
    return torch.from_numpy(q[:, :r] @ t.T), torch.from_numpy(_unpermute(np.ascontiguousarray(z.T), piv))


def _lu(w: torch.Tensor, r: int) -> Factors:
    """Gaussian elimination with complete pivoting, r steps: P W Π = L U. The basis is L's first r columns in the
    layer's row order (they span the r pivot columns of W); the second factor is the least-squares one."""
    a = w.numpy().copy()  # the Schur complement lives in a[j:, j:]
    m, n = a.shape
    rows, cols = np.arange(m), np.arange(n)
    low = np.zeros((m, r))
    tiny = 1e-14 * max(np.abs(a).max(), 1e-300)
    for j in range(r):
        i, c = np.unravel_index(np.abs(a[j:, j:]).argmax(), (m - j, n - j))
        i, c = i + j, c + j
        a[[j, i]], rows[[j, i]] = a[[i, j]], rows[[i, j]]
        low[[j, i]] = low[[i, j]]
        a[:, [j, c]], cols[[j, c]] = a[:, [c, j]], cols[[c, j]]
        low[j, j] = 1.0
        if abs(a[j, j]) > tiny:  # else W is exhausted: a unit column keeps the basis nested and full rank
            low[j + 1:, j] = a[j + 1:, j] / a[j, j]
            a[j + 1:, j + 1:] -= np.outer(low[j + 1:, j], a[j, j + 1:])
    basis = np.empty_like(low)
    basis[rows] = low  # back to the layer's output order: out × r
    basis = torch.from_numpy(basis)
    qb, rb = torch.linalg.qr(basis)
    down = torch.linalg.solve_triangular(rb, qb.T @ w, upper=True)  # least squares: B⁺ W
    return basis, down


# the factor function of each row of the DECOMPOSITIONS table (compression/methods.py), in its order
_FACTORS: dict[str, Callable[[torch.Tensor, int], Factors]] = {
    "svd": _svd, "qr-full": _qr("complete"), "qr-reduced": _qr("reduced"), "qr-pivoted": _qr_pivoted,
    "cod": _cod, "lu": _lu,
}
METHODS: dict[str, Callable[[torch.Tensor, int], Factors]] = {name: _FACTORS[name] for name in DECOMPOSITIONS}


def factor(weight: torch.Tensor, rank: int, method: str = "svd") -> Factors:
    """Rank-`rank` factors (up: out × r, down: r × in) of a weight matrix, computed in float64 and returned in the
    weight's dtype and device."""
    if method not in METHODS:
        raise RecipeError(f"unknown decomposition method {method!r}; known: {', '.join(METHODS)}")
    out_f, in_f = weight.shape
    if not 1 <= rank <= min(out_f, in_f):
        raise ValueError(f"rank must be in [1, {min(out_f, in_f)}] for a {out_f} × {in_f} weight, got {rank}")
    up, down = METHODS[method](weight.detach().to(torch.float64).cpu(), rank)
    return (up.to(weight.dtype).to(weight.device).contiguous(), down.to(weight.dtype).to(weight.device).contiguous())


def relative_error(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> float:
    """‖W − up·down‖_F / ‖W‖_F."""
    w = weight.detach().double()
    return float((w - up.double() @ down.double()).norm() / w.norm().clamp_min(1e-30))


# ---------------------------------------------------------------------------------------------- rank rules
def _align(r: float, alignment: int, up: bool) -> int:
    return int(math.ceil(r / alignment) if up else math.floor(r / alignment)) * alignment


def choose_rank(weight: torch.Tensor, cfg: DecomposeCfg) -> tuple[Optional[int], Optional[str]]:
    """(rank, None), or (None, why the layer stays dense). energy: the smallest r whose σ² sum reaches the fraction;
    ratio: ratio · min(out, in); both rounded up to the alignment. budget: the largest aligned r with
    r · (out + in) <= budget · out · in (rounded down, so the budget holds). A layer stays dense where
    r · (out + in) >= out · in: two thin layers would cost at least the MACs of the one they replace."""
    m, n = weight.shape
    k = min(m, n)
    if cfg.rank_rule == "energy":
        s2 = torch.linalg.svdvals(weight.detach().double()).square()
        frac = s2.cumsum(0) / s2.sum().clamp_min(1e-30)
        r = _align(int((frac < cfg.energy - 1e-12).sum()) + 1, cfg.alignment, up=True)
    elif cfg.rank_rule == "ratio":
        r = _align(cfg.ratio * k, cfg.alignment, up=True)
    else:
        r = _align(cfg.budget * m * n / (m + n), cfg.alignment, up=False)
        if r < 1:
            return None, f"kept dense: a budget of {cfg.budget:g} allows no rank that is a multiple of {cfg.alignment}"
    r = min(r, k)
    if r * (m + n) >= m * n:
        return None, DENSE_NO_SAVING
    return r, None


# ------------------------------------------------------------------------------------------------- models
def low_rank_linear(layer: nn.Linear, rank: int, method: str) -> tuple[LowRankLinear, float]:
    """A LowRankLinear replacing `layer` (same dtype/device/mode) and its relative reconstruction error."""
    w = layer.weight.detach()
    up, down = factor(w, rank, method)
    new = LowRankLinear(layer.in_features, layer.out_features, rank, bias=layer.bias is not None).to(w.device, w.dtype)
    with torch.no_grad():
        new.down.weight.copy_(down)
        new.up.weight.copy_(up)
        if layer.bias is not None:
            new.up.bias.copy_(layer.bias.detach())
    return new.train(layer.training), relative_error(w, up, down)


def _surgery_module(blk: nn.Module, part: str, width: int) -> nn.Module:
    """The block's attention or MLP as a PrunedAttention / PrunedMlp (an exact copy when it is still timm's), so the
    factored model is made of the modules a model dir rebuilds."""
    mod = getattr(blk, part)
    if part == "attn" and type(mod) is Attention:
        setattr(blk, part, slice_attention(mod, width))
    elif part == "mlp" and type(mod) is Mlp:
        setattr(blk, part, slice_mlp(mod, width))
    return getattr(blk, part)


def decompose_model(model: nn.Module, cfg: DecomposeCfg) -> list[dict]:
    """Factor `cfg.layers` of every block in place with `cfg.method` at the ranks `cfg.rank_rule` chooses. One row
    per (block, layer): shape, rank (None and a reason when it stays dense), params before/after, relative error."""
    if cfg.method not in METHODS:
        raise RecipeError(f"unknown decomposition method {cfg.method!r}; known: {', '.join(METHODS)}")
    width = model.embed_dim
    rows: list[dict] = []
    for b, blk in enumerate(model.blocks):
        for name in cfg.layers:
            part = "attn" if name in ATTN_LAYERS else "mlp"
            layer = getattr(getattr(blk, part), name)
            row = {"block": b, "layer": name}
            if isinstance(layer, LowRankLinear):
                rows.append(row | {"shape": [layer.out_features, layer.in_features], "rank": layer.rank,
                                   "params_before": _params(layer), "params_after": _params(layer),
                                   "rel_error": 0.0, "reason": "already low-rank"})
                continue
            rank, reason = choose_rank(layer.weight, cfg)
            row |= {"shape": list(layer.weight.shape), "rank": rank, "params_before": _params(layer)}
            if rank is None:
                rows.append(row | {"params_after": _params(layer), "rel_error": 0.0, "reason": reason})
                continue
            parent = _surgery_module(blk, part, width)
            new, err = low_rank_linear(getattr(parent, name), rank, cfg.method)
            setattr(parent, name, new)
            rows.append(row | {"params_after": _params(new), "rel_error": err})
    return rows


def _params(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def summarize(rows: list[dict]) -> dict:
    """Ranks and errors of a decompose_model table in a few numbers (for study rows and reports)."""
    done = [r for r in rows if r["rank"] is not None and "reason" not in r]
    ranks = [r["rank"] for r in done]
    return {
        "factored_layers": len(done), "dense_layers": len(rows) - len(done),
        "rank_min": min(ranks, default=None), "rank_max": max(ranks, default=None),
        "rank_mean": round(sum(ranks) / len(ranks), 1) if ranks else None,
        "rel_error_mean": sum(r["rel_error"] for r in done) / len(done) if done else 0.0,
        "ranks": {f"{r['block']}.{r['layer']}": r["rank"] for r in done},
    }
