"""Planning to a budget: the widths that keep the most importance under a latency (or MACs, or params) budget.

A ViT's blocks all have one shape, so its cost is a sum of a few per-unit functions of the widths: the fixed part
(patch embedding, tokens, final norm, head) of the residual width W, each block's attention unit (norm1, qkv,
attention, proj, residual add) of (W, q/k dims per head, v dims per head), and each MLP unit (norm2, fc1, GELU,
fc2, residual add) of (W, hidden dims). A `CostModel` gives those three functions: a measured `LatencyTable`
(interpolated between the widths it timed), or counted MACs or params.

The planner is a multiple-choice knapsack. For each residual width W (an outer loop over every aligned candidate,
since W changes every unit's cost), each block's attention and MLP units pick one option (aligned, head-uniform
widths at or above the floors) so that the summed retained importance is largest and the summed cost fits the
budget. It solves the Lagrangian relaxation by bisection on the price λ, then spends the remaining slack greedily
on the upgrades with the most importance per ms. The Lagrangian dual gives an upper bound on the optimum, so every
plan carries its optimality gap (`gap`: the bound minus what the plan keeps, as a fraction of it).

Measuring lives outside the compression stage: a `LatencyOracle` (built by the API from the bench layer) times the
tables and the pruned models; `plan_within_budget` only plans, verifies and replans through it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Protocol

import numpy as np
import torch
import torch.nn as nn

from vitdeploy.compression.gates import MODEL
from vitdeploy.compression.plan import BlockPlan, Plan
from vitdeploy.compression.recipe import BUDGET_SITES as SITES
from vitdeploy.errors import RecipeError, VitDeployError
from vitdeploy.runtime.latency_table import Dims, LatencyTable, candidates, dense_dims, shape_of_block



# ------------------------------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class Shape:
    """One model's widths: the residual width and, per block, (q/k per head, v per head, hidden)."""
    embed: int
    blocks: tuple[tuple[int, int, int], ...]


def uniform_shape(embed: int, qk: int, v: int, hidden: int, depth: int) -> Shape:
    """Every block at the same widths (the dense model's shape, from its Dims or a table's dims)."""
    return Shape(int(embed), tuple((int(qk), int(v), int(hidden)) for _ in range(int(depth))))


def dense_shape(dims: Dims) -> Shape:
    return uniform_shape(dims.embed, dims.qk, dims.v, dims.hidden, dims.depth)


def shape_of(model: nn.Module) -> Shape:
    """The widths of a (pruned or dense) model, refusing what a budget's cost model cannot price: index-selected
    inputs, low-rank layers, removed heads."""
    for i, blk in enumerate(model.blocks):
        if getattr(getattr(blk.attn, "in_select", None), "index", None) is not None or \
                getattr(getattr(blk.mlp, "in_select", None), "index", None) is not None:
            raise VitDeployError(f"block {i} index-selects its inputs (attn_in/mlp_in): a budget's cost model "
                                 "prices the sites embed, attn_qk, attn_out and mlp_hidden only")
        for name in ("qkv", "proj"):
            if not isinstance(getattr(blk.attn, name), nn.Linear):
                raise VitDeployError(f"block {i} has a factored {name}: a budget's cost model prices dense layers only")
    return Shape(int(model.embed_dim), tuple(shape_of_block(b) for b in model.blocks))


def shape_of_plan(dims: Dims, plan: Plan) -> Shape:
    blocks = []
    for bp in plan:
        qk = dims.qk if bp.qk_idx is None else len(bp.qk_idx[0])
        v = dims.v if bp.v_idx is None else len(bp.v_idx[0])
        blocks.append((qk, v, dims.hidden if bp.mlp_hidden is None else len(bp.mlp_hidden)))
    return Shape(dims.embed if plan.embed is None else len(plan.embed), tuple(blocks))


# --------------------------------------------------------------------------------------------- cost models
class CostModel(Protocol):
    unit: str

    def fixed(self, w: int) -> float: ...

    def attn(self, w: int, qk: int, v: int) -> float: ...

    def mlp(self, w: int, hidden: int) -> float: ...


def predict(cost: CostModel, shape: Shape) -> float:
    """The cost of a whole model: the fixed part plus every block's two units."""
    w = shape.embed
    return cost.fixed(w) + sum(cost.attn(w, qk, v) + cost.mlp(w, h) for qk, v, h in shape.blocks)


@dataclass
class CountedCost:
    """MACs or params per image, counted from the widths (the matmuls and the weights; norms and biases in params)."""
    dims: Dims
    unit: str = "macs"  # or "params"

    def fixed(self, w: int) -> float:
        d = self.dims
        if self.unit == "macs":
            return float(d.patch * w * d.patches + d.classes * w)
        return float((d.patch + 1) * w + d.tokens * w + 2 * w + (w + 1) * d.classes)

    def attn(self, w: int, qk: int, v: int) -> float:
        n, h = self.dims.tokens, self.dims.heads
        if self.unit == "macs":
            return float(n * w * h * (2 * qk + v) + n * n * h * (qk + v) + n * h * v * w)
        return float((w + 1) * h * (2 * qk + v) + (h * v + 1) * w + 2 * w)

    def mlp(self, w: int, hidden: int) -> float:
        n = self.dims.tokens
        if self.unit == "macs":
            return float(2 * n * w * hidden)
        return float((w + 1) * hidden + (hidden + 1) * w + 2 * w)


# ------------------------------------------------------------------------------------------------ options
def _prefix(sorted_desc: torch.Tensor, counts: list[int]) -> np.ndarray:
    c = torch.cat([torch.zeros(1, dtype=torch.float64), sorted_desc.double().cumsum(0)])
    return np.asarray([float(c[k]) for k in counts])


def _per_head_prefix(score: torch.Tensor, heads: int, counts: list[int]) -> np.ndarray:
    """Importance kept when every head keeps its k best dims, for each k in counts."""
    per = score.abs().view(heads, -1).sort(dim=1, descending=True).values
    c = torch.cat([torch.zeros(heads, 1, dtype=torch.float64), per.double().cumsum(1)], dim=1)
    return np.asarray([float(c[:, k].sum()) for k in counts])


@dataclass
class _Group:
    """One unit of one block: its options' (importance, cost) and what each option keeps."""
    imp: np.ndarray
    cost: np.ndarray
    options: list


def _pick(groups: list[_Group], lam: float) -> list[int]:
    return [int(np.argmax(g.imp - lam * g.cost - 1e-12 * g.cost)) for g in groups]


def _solve(groups: list[_Group], budget: float) -> Optional[tuple[list[int], float]]:
    """Options per group with Σcost ≤ budget and Σimportance near the largest, and the Lagrangian upper bound on that
    largest; None when even the cheapest options do not fit."""
    cheapest = [int(np.argmin(g.cost)) for g in groups]
    if sum(g.cost[i] for g, i in zip(groups, cheapest)) > budget + 1e-9:
        return None
    cost = lambda picks: sum(g.cost[i] for g, i in zip(groups, picks))  # noqa: E731
    lo, hi = 0.0, 1.0
    if cost(_pick(groups, 0.0)) <= budget:
        picks = _pick(groups, 0.0)
        return picks, float(sum(g.imp[i] for g, i in zip(groups, picks)))
    while cost(_pick(groups, hi)) > budget and hi < 1e12:
        hi *= 4
    for _ in range(60):
        mid = (lo + hi) / 2
        if cost(_pick(groups, mid)) > budget:
            lo = mid
        else:
            hi = mid
    picks = _pick(groups, hi)
    bound = min(sum(float(np.max(g.imp - lam * g.cost)) for g in groups) + lam * budget for lam in (lo, hi))
    # greedy: spend the slack on the upgrades with the most importance per unit of cost
    spent = cost(picks)
    while True:
        best, gain = None, 0.0
        for gi, g in enumerate(groups):
            extra = g.cost - g.cost[picks[gi]]
            more = g.imp - g.imp[picks[gi]]
            ok = (more > 1e-12) & (extra <= budget - spent + 1e-12)
            for oi in np.flatnonzero(ok):
                rate = more[oi] / max(extra[oi], 1e-12)
                if rate > gain:
                    best, gain = (gi, int(oi)), rate
        if best is None:
            break
        gi, oi = best
        spent += groups[gi].cost[oi] - groups[gi].cost[picks[gi]]
        picks[gi] = oi
    return picks, bound


@dataclass
class BudgetPlan:
    plan: Plan
    keep: dict
    shape: Shape
    predicted: float  # the cost model's figure for the plan
    retained: float  # importance kept (sum of the kept |scores|)
    total: float  # importance of the dense model
    gap: float  # optimality gap bound: (upper bound - retained) / upper bound
    budget: float


def plan_to_budget(model: nn.Module, scores: dict, cost: CostModel, budget: float, alignment: int,
                   min_keep: float) -> BudgetPlan:
    """The plan that keeps the most importance with `predict(cost, shape) <= budget` (see the module doc)."""
    dims = dense_dims(model)
    sites = {s for _, s in scores}
    other = sorted(sites - set(SITES))
    if other:
        raise RecipeError(f"prune.budget chooses widths for the sites {', '.join(SITES)}; remove {other[0]} from "
                          "prune.sites")
    L, H = dims.depth, dims.heads
    widths = candidates(dims.embed, alignment, min_keep) if "embed" in sites else [dims.embed]
    qks = candidates(dims.qk, alignment, min_keep) if "attn_qk" in sites else [dims.qk]
    vs = candidates(dims.v, alignment, min_keep) if "attn_out" in sites else [dims.v]
    hids = candidates(dims.hidden, alignment, min_keep) if "mlp_hidden" in sites else [dims.hidden]
    pairs = [(q, v) for q in qks for v in vs]

    def imp(site: str, b: int, counts: list[int], per_head: bool) -> np.ndarray:
        key = (MODEL if site == "embed" else b, site)
        if key not in scores:
            return np.zeros(len(counts))
        s = scores[key].detach().abs().flatten().cpu()
        return _per_head_prefix(s, H, counts) if per_head else _prefix(s.sort(descending=True).values, counts)

    attn_imp = [imp("attn_qk", b, [q for q, _ in pairs], True) + imp("attn_out", b, [v for _, v in pairs], True)
                for b in range(L)]
    mlp_imp = [imp("mlp_hidden", b, hids, False) for b in range(L)]
    embed_imp = imp("embed", 0, widths, False)
    total = float(sum(v.detach().abs().sum() for v in scores.values()))

    best, bound_all = None, 0.0
    for wi, w in enumerate(widths):
        a_cost = np.asarray([cost.attn(w, q, v) for q, v in pairs])
        m_cost = np.asarray([cost.mlp(w, h) for h in hids])
        groups = [_Group(attn_imp[b], a_cost, pairs) for b in range(L)] + \
                 [_Group(mlp_imp[b], m_cost, hids) for b in range(L)]
        solved = _solve(groups, budget - cost.fixed(w))
        if solved is None:
            continue
        picks, bound = solved
        kept = float(embed_imp[wi] + sum(g.imp[i] for g, i in zip(groups, picks)))
        bound_all = max(bound_all, float(embed_imp[wi] + bound))
        if best is None or kept > best[0]:
            best = (kept, w, [pairs[i] for i in picks[:L]], [hids[i] for i in picks[L:]])
    if best is None:
        cheapest = uniform_shape(widths[0], qks[0], vs[0], hids[0], L)
        raise VitDeployError(f"the budget of {budget:.4g} {cost.unit} is below the smallest plan the floors allow "
                             f"({predict(cost, cheapest):.4g} {cost.unit} at prune.min_keep {min_keep}); raise the "
                             "budget or lower prune.min_keep")
    kept, w, attn_pick, mlp_pick = best
    plan, keep = _build(model, scores, dims, w, attn_pick, mlp_pick)
    shape = Shape(w, tuple((q, v, h) for (q, v), h in zip(attn_pick, mlp_pick)))
    return BudgetPlan(plan, keep, shape, predict(cost, shape), kept, total,
                      max(0.0, (bound_all - kept) / bound_all) if bound_all > 0 else 0.0, budget)


def _top(score: torch.Tensor, k: int) -> list[int]:
    return sorted(score.abs().topk(k).indices.tolist())


def _build(model: nn.Module, scores: dict, dims: Dims, w: int, attn_pick: list, mlp_pick: list) -> tuple[Plan, dict]:
    """The Plan (and kept score indices, for the masked reference) of the chosen widths: the best dims of each."""
    plan, keep = Plan(), {}
    if (MODEL, "embed") in scores:
        embed = _top(scores[(MODEL, "embed")], w)
        keep[(MODEL, "embed")] = torch.tensor(embed)
        plan.embed = embed if w < dims.embed else None
    for b, ((q, v), h) in enumerate(zip(attn_pick, mlp_pick)):
        bp = BlockPlan()
        for site, k, dim, attr in (("attn_qk", q, dims.qk, "qk_idx"), ("attn_out", v, dims.v, "v_idx")):
            if (b, site) in scores:
                per = scores[(b, site)].abs().view(dims.heads, dim)
                idx = [_top(per[hh], k) for hh in range(dims.heads)]
                setattr(bp, attr, idx)
                keep[(b, site)] = torch.tensor([hh * dim + j for hh, ids in enumerate(idx) for j in ids])
        if (b, "mlp_hidden") in scores:
            bp.mlp_hidden = _top(scores[(b, "mlp_hidden")], h)
            keep[(b, "mlp_hidden")] = torch.tensor(bp.mlp_hidden)
        plan.append(bp)
    return plan, keep


def retained(scores: dict, keep: dict) -> float:
    """Importance a plan keeps: the sum of its kept |scores| (sites it does not cut count whole)."""
    total = 0.0
    for k, v in scores.items():
        a = v.detach().abs().flatten().cpu()
        total += float(a[keep[k]].sum()) if k in keep else float(a.sum())
    return total


# ------------------------------------------------------------------------------------- verify and replan
class LatencyOracle(Protocol):
    """What the planner needs from a measuring backend (the bench layer provides one; the API passes it in)."""
    backend: str
    batch: int

    def table(self, model: nn.Module) -> LatencyTable: ...

    def measure(self, models: dict[str, nn.Module]) -> dict[str, dict]:
        """Per label: {"ms": p50, "speedup": vs the first label, "ci95": [lo, hi]}, all timed interleaved."""
        ...


def plan_within_budget(model: nn.Module, scores: dict, cfg, oracle: Optional[LatencyOracle],
                       slicer: Callable[[Plan, dict], nn.Module], rate_plan: Callable[[float], tuple[Plan, dict]],
                       log: Callable[[str], Any] = lambda s: None) -> tuple[BudgetPlan, dict]:
    """Plan to `cfg.budget`; for a latency budget, measure the pruned model against the dense one on the planning
    backend (interleaved), and where the miss is over `budget.tolerance`, correct the budget the table is held to
    by the miss and plan again (at most `budget.replans` times). Then a rate-based plan (`rate_plan(rate)`) is
    searched to the same predicted latency and measured in the same run: the side-by-side of the report.
    `slicer(plan, keep)` makes the pruned model of a plan. Returns the plan and the record for compress.json."""
    b = cfg.budget
    dims = dense_dims(model)
    kind, value = b.kind()
    if kind in ("macs_ratio", "params_ratio"):
        cost = CountedCost(dims, "macs" if kind == "macs_ratio" else "params")
        dense_cost = predict(cost, dense_shape(dims))
        bp = plan_to_budget(model, scores, cost, value * dense_cost, cfg.alignment, cfg.min_keep)
        return bp, {"kind": kind, "value": value, "cost_model": cost.unit, "dense": dense_cost,
                    "predicted": bp.predicted, "predicted_ratio": bp.predicted / dense_cost,
                    "retained_importance": bp.retained, "total_importance": bp.total, "gap": bp.gap,
                    "shape": asdict(bp.shape)}
    if oracle is None:
        raise VitDeployError("a latency budget needs a backend to measure on: run it through vitdeploy compress "
                             "or vitdeploy.api.compress")
    table = oracle.table(model)
    table.check_model(dims)
    dense_pred = predict(table, dense_shape(dims))
    target = value if kind == "latency_ms" else value * dense_pred
    held_to, rounds = target, []
    for attempt in range(b.replans + 1):
        bp = plan_to_budget(model, scores, table, held_to, cfg.alignment, cfg.min_keep)
        if not b.verify:
            rounds.append({"held_to_ms": held_to, "predicted_ms": bp.predicted, "measured": None})
            break
        m = oracle.measure({"dense": model, "pruned": slicer(bp.plan, bp.keep)})
        want = value if kind == "latency_ms" else value * m["dense"]["ms"]
        # a ratio budget is held by the paired ratio (drift cancels), an absolute one by the pruned model's p50
        got = m["pruned"]["ms"] if kind == "latency_ms" else m["dense"]["ms"] / m["pruned"]["speedup"]
        miss = got / want - 1.0
        measured_ratio = 1.0 / m["pruned"]["speedup"]
        rounds.append({"held_to_ms": held_to, "predicted_ms": bp.predicted, "dense_predicted_ms": dense_pred,
                       "measured_ms": m["pruned"]["ms"], "dense_measured_ms": m["dense"]["ms"],
                       "measured_ratio": measured_ratio, "ratio_ci95": _inverse_ci(m["pruned"]),
                       # the table's figure for this plan against the measurement, free of drift: both as a
                       # fraction of the dense model (the table's own dense figure, and dense timed in this run)
                       "predicted_ratio": bp.predicted / dense_pred,
                       "ratio_prediction_error": bp.predicted / dense_pred / measured_ratio - 1.0,
                       "target_ms": want, "miss": miss})
        log(f"plan {attempt + 1}: predicted {bp.predicted:.2f} ms, measured {got:.2f} ms against {want:.2f} ms "
            f"({100 * miss:+.1f} %)")
        if abs(miss) <= b.tolerance or attempt == b.replans:
            break
        held_to = _next_hold(rounds, held_to, want / got)
    record = {"kind": kind, "value": value, "backend": table.backend, "batch": table.batch, "threads": table.threads,
              "table": {"source": table.source, "host": table.host, "model": table.model, "checks": table.checks,
                        "grid": {k: getattr(table, k) for k in ("widths", "qk", "v", "hidden")},
                        "dense_predicted_ms": dense_pred, "anchor": table.anchor, "probe": table.probe,
                        "scale": table.scale},
              "predicted_ms": bp.predicted, "rounds": rounds, "retained_importance": bp.retained,
              "total_importance": bp.total, "gap": bp.gap, "shape": asdict(bp.shape),
              "correction": held_to / target, "tolerance": b.tolerance}
    last = rounds[-1]
    if last.get("measured_ms") is not None:
        record |= {"measured_ms": last["measured_ms"], "dense_measured_ms": last["dense_measured_ms"],
                   "measured_ratio": last["measured_ratio"], "miss": last["miss"],
                   "prediction_error": last["predicted_ms"] / last["measured_ms"] - 1.0,
                   "ratio_prediction_error": rounds[0]["ratio_prediction_error"],
                   "drift": last["dense_measured_ms"] / dense_pred - 1.0,
                   "within_tolerance": abs(last["miss"]) <= b.tolerance}
        record["rate_based"] = _rate_side(model, scores, table, bp, dims, oracle, slicer, rate_plan)
    return bp, record


def _next_hold(rounds: list[dict], held_to: float, factor: float) -> float:
    """The budget to hold the table to next. After one miss: corrected by the miss (the table was off by that
    much). Once plans have missed on both sides: the table's error depends on the plan's shape, so a global factor
    can overshoot; the measured (held-to, miss) points nearest the target on either side are interpolated instead
    (regula falsi)."""
    pts = sorted((r["held_to_ms"], r["miss"]) for r in rounds)
    below = [p for p in pts if p[1] < 0]
    above = [p for p in pts if p[1] > 0]
    if not (below and above):  # not bracketed yet (or noise put two misses out of order): correct by the miss
        return held_to * factor
    (h0, m0), (h1, m1) = max(below), min(above)
    if h1 <= h0:  # a larger budget measured faster: noise; fall back to the miss
        return held_to * factor
    return h0 + (0.0 - m0) * (h1 - h0) / (m1 - m0)


def _inverse_ci(row: dict) -> Optional[list]:
    ci = row.get("ci95")
    return None if not ci else [1.0 / ci[1], 1.0 / ci[0]]


def _rate_side(model, scores, table, bp: BudgetPlan, dims: Dims, oracle, slicer, rate_plan) -> dict:
    """The rate-based plan whose predicted latency equals the budget plan's, both measured in one run with the
    dense model: the importance each keeps at (nearly) equal measured latency."""
    def rate_at(target: float) -> float:
        lo, hi = 0.0, 0.95
        for _ in range(20):  # predicted latency falls as the rate rises
            mid = (lo + hi) / 2
            if predict(table, shape_of_plan(dims, rate_plan(mid)[0])) > target:
                lo = mid
            else:
                hi = mid
        return hi

    target, tries = bp.predicted, []
    for _ in range(3):  # to the budget plan's predicted latency; again, corrected, while measured over 3 % apart
        rate = rate_at(target)
        plan, keep = rate_plan(rate)
        m = oracle.measure({"dense": model, "budget": slicer(bp.plan, bp.keep), "rate": slicer(plan, keep)})
        apart = m["budget"]["speedup"] / m["rate"]["speedup"]  # rate plan's latency over the budget plan's
        tries.append({"rate": rate, "predicted_ms": predict(table, shape_of_plan(dims, plan)),
                      "measured_ms": m["rate"]["ms"], "retained_importance": retained(scores, keep),
                      "budget_plan_measured_ms": m["budget"]["ms"], "dense_measured_ms": m["dense"]["ms"],
                      "latency_ratio_rate_over_budget": apart, "shape": asdict(shape_of_plan(dims, plan))})
        if abs(apart - 1.0) <= 0.03:
            break
        target = tries[-1]["predicted_ms"] / apart
    best = min(tries, key=lambda t: abs(t["latency_ratio_rate_over_budget"] - 1.0))
    return best | {"tries": len(tries), "same_latency_within_3pct": abs(best["latency_ratio_rate_over_budget"] - 1) <= 0.03}

