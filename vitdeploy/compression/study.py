"""Method comparisons that the papers report as tables and curves, reproducible from one command.

- `decomposition_study` (Sun, Table 2): VTP once (sparsity, plan, prune), then copies of the pruned model factored
  by every method at the same ranks (so the same params and MACs), each measured before and after the same short
  fine-tune; VTP alone gets the same fine-tune. Writes study.json, study.md and study.png.
- `hybrid_sweep` (Kumar): low-rank attention × MLP pruning rate, against VTP alone at matched params. The learned
  scores do not depend on the rate, so each sparsity phase (MLP sites for the hybrid, the VTP recipe's sites for VTP)
  runs once and every rate is planned from the same scores. Writes sweep.json, sweep.md and sweep.png.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch.nn as nn

from vitdeploy.compression.context import CompressContext, make_context, max_abs_diff, run_method
from vitdeploy.compression.decompose import decompose_model, summarize
from vitdeploy.compression.methods import DECOMPOSITIONS
from vitdeploy.compression.gates import attach_gates, detach_gates, fold_gates
from vitdeploy.compression.plan import apply_plan
from vitdeploy.compression.recipe import Recipe, TrainCfg
from vitdeploy.compression.train import fit
from vitdeploy.compression.vtp import Scores, plan_from_scores
from vitdeploy.errors import VitDeployError
from vitdeploy.io import atomic_write_json, atomic_write_text, staged_dir
from vitdeploy.models import LoadedModel, count_macs, count_params
from vitdeploy.provenance import provenance

LABELS = {"vtp": "VTP"} | {d.name: d.label for d in DECOMPOSITIONS.values()}
SHORT = {"vtp": "VTP"} | {d.name: d.short for d in DECOMPOSITIONS.values()}


def _need_data(data: Optional[str], what: str) -> str:
    if data is None:
        raise VitDeployError(f"{what} measures accuracy and fine-tunes: it needs --data")
    return data


def _finetune_cfg(recipe: Recipe, epochs: Optional[int]) -> TrainCfg:
    return recipe.finetune if epochs is None else dataclasses.replace(recipe.finetune, epochs=epochs)


def _finetune(ctx: CompressContext, model: nn.Module, cfg: TrainCfg, desc: str) -> Optional[float]:
    """Fine-tune in place (distilled from the dense model as the recipe says); top-1 afterwards."""
    if cfg.epochs > 0:
        fit(model, ctx.train_loader_for(cfg), ctx.val_loader, cfg, teacher=ctx.dense, distill=ctx.recipe.distill, desc=desc)
    return ctx.top1(model)


def _measure(ctx: CompressContext, model: nn.Module) -> dict:
    return {"params": count_params(model), "macs": count_macs(model, ctx.input_size)}


def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


# ------------------------------------------------------------------------------------------ decomposition
def decomposition_study(loaded: LoadedModel, recipe: Recipe, data: str, out: Path,
                        methods: Optional[Sequence[str]] = None, finetune_epochs: Optional[int] = 2) -> dict:
    """The paper's Table 2: VTP, and VTP + each decomposition method at equal ranks, before and after a short
    fine-tune. `recipe` supplies VTP (prune, sparsity), the layers and rank rule (decompose) and the fine-tune
    settings; `finetune_epochs` overrides the fine-tune length (None: the recipe's)."""
    _need_data(data, "the decomposition study")
    methods = list(DECOMPOSITIONS if methods is None else methods)
    if not methods:
        raise VitDeployError(f"no decomposition method given; known: {', '.join(DECOMPOSITIONS)}")
    unknown = [m for m in methods if m not in DECOMPOSITIONS]
    if unknown:
        raise VitDeployError(f"unknown decomposition method {unknown[0]!r}; known: {', '.join(DECOMPOSITIONS)}")
    ft = _finetune_cfg(recipe, finetune_epochs)
    ctx = make_context(loaded, recipe, data)
    vtp_result = run_method(ctx)
    pruned = vtp_result.model
    x, _ = ctx.sample()
    dense = ctx.stages[0]
    rows = [{"method": "dense", "label": "dense", "rank": None, "params": dense["params"], "macs": dense["macs"],
             "top1_before_finetune": dense["top1"], "top1_after_finetune": dense["top1"]}]
    vtp = copy.deepcopy(pruned)
    rows.append({"method": "vtp", "label": LABELS["vtp"], "rank": None, **_measure(ctx, vtp),
                 "top1_before_finetune": ctx.top1(vtp), "top1_after_finetune": _finetune(ctx, vtp, ft, "fine-tune vtp")})
    layers = {}
    for method in methods:
        model = copy.deepcopy(pruned)
        table = decompose_model(model, dataclasses.replace(recipe.decompose, method=method))
        s = summarize(table)
        layers[method] = [{k: r.get(k) for k in ("block", "layer", "shape", "rank", "rel_error", "reason")} for r in table]
        row = {"method": method, "label": LABELS[method],
               "rank": {k: s[k] for k in ("rank_min", "rank_max", "rank_mean", "factored_layers", "dense_layers", "ranks")},
               **_measure(ctx, model), "rel_error_mean": s["rel_error_mean"],
               "output_max_abs_diff": max_abs_diff(pruned, model, x), "top1_before_finetune": ctx.top1(model)}
        row["top1_after_finetune"] = _finetune(ctx, model, ft, f"fine-tune {method}")
        rows.append(row)
    factored = [r for r in rows if r["method"] in DECOMPOSITIONS]
    result = {
        "study": "decomposition", "model": loaded.source, "data": data, "recipe": recipe.to_dict(),
        "finetune_epochs": ft.epochs, "rank_rule": dataclasses.asdict(recipe.decompose) | {"method": "(each)"},
        "equal_params": len({(r["params"], r["macs"]) for r in factored}) <= 1,
        "rows": rows, "layers": layers, "stages": ctx.stages, "plan": vtp_result.details["plan"],
        "provenance": provenance(source=loaded.source, data=data, recipe=recipe.name),
    }
    from vitdeploy.viz.plots import plot_study  # here, not at the top: importing compress loads no matplotlib

    with staged_dir(out) as stage:
        atomic_write_text(stage / "study.md", _study_markdown(result))
        result["plot"] = plot_study(rows, SHORT, stage / "study.png", f"{recipe.name}: VTP + decomposition at equal ranks").name
        atomic_write_json(stage / "study.json", result)
    return result


def _rank_text(rank: Optional[dict]) -> str:
    if rank is None:
        return "–"
    if rank["rank_min"] is None:
        return "none factored"
    span = f"{rank['rank_min']}" if rank["rank_min"] == rank["rank_max"] else f"{rank['rank_min']}–{rank['rank_max']}"
    return f"{span} ({rank['factored_layers']} layers)"


def _study_markdown(r: dict) -> str:
    d = r["rank_rule"]
    rule = f"{d['rank_rule']} {d[d['rank_rule']]:g}"
    lines = [
        f"# VTP + matrix decomposition: {r['recipe']['name']} on {r['data']}", "",
        f"VTP at rate {r['recipe']['prune']['rate']:g}, then layers {', '.join(d['layers'])} factored at the same ranks "
        f"by every method (rank rule: {rule}, multiples of {d['alignment']}); each variant fine-tuned for "
        f"{r['finetune_epochs']} epoch(s).", "",
        "| method | rank | params | MACs | top-1 before fine-tune (%) | top-1 after fine-tune (%) | mean rel. error |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        err = f"{row['rel_error_mean']:.3f}" if "rel_error_mean" in row else "–"
        lines.append(f"| {row['label']} | {_rank_text(row['rank'])} | {row['params'] / 1e6:.3f} M | {row['macs'] / 1e6:.1f} M | "
                     f"{_pct(row['top1_before_finetune'])} | {_pct(row['top1_after_finetune'])} | {err} |")
    lines += ["", "Mean rel. error: ‖W − up·down‖_F / ‖W‖_F averaged over the factored layers. Full and reduced QR "
              "give the same rank-r factors, and the complete orthogonal decomposition the same product as QR with "
              "column pivoting (see the README).", ""]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- hybrid sweep
def learned_scores(ctx: CompressContext, recipe: Recipe, desc: str) -> tuple[nn.Module, Scores]:
    """An ungated copy of the dense model and the scores of `recipe`'s sparsity phase at its prune sites."""
    base = copy.deepcopy(ctx.dense)
    gates = attach_gates(base, recipe.prune.sites)
    fit(base, ctx.train_loader_for(recipe.sparsity), ctx.val_loader, recipe.sparsity, desc=desc, gates=gates)
    detach_gates(base)
    return base.eval(), {(b, s): a.detach().clone() for b, s, a in gates.items()}


def prune_at(base: nn.Module, scores: Scores, recipe: Recipe, rate: float, fold: bool = True) -> nn.Module:
    """`base` with the plan at `rate` sliced out: what the VTP method builds at that rate. With `fold` (learned
    scores) the surviving scores are folded into the weights first; magnitude scores only rank the dims (fold=False)."""
    cfg = dataclasses.replace(recipe.prune, rate=rate)
    plan, _ = plan_from_scores(base, scores, cfg)
    model = copy.deepcopy(base)
    if fold:
        attach_gates(model, cfg.sites, scores)
        fold_gates(model)
    return apply_plan(model, plan).eval()


def rate_for(base: nn.Module, scores: Scores, recipe: Recipe, target: int, measure: Callable[[nn.Module], int],
             fold: bool = True, steps: int = 14) -> float:
    """The pruning rate whose plan leaves `measure` (params, or MACs) closest to `target` (bisection: both fall
    with the rate)."""
    lo, hi, best = 0.0, 0.98, (math.inf, 0.0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        v = measure(prune_at(base, scores, recipe, mid, fold))
        best = min(best, (abs(v - target), mid))
        lo, hi = (mid, hi) if v > target else (lo, mid)
    return round(best[1], 4)


def rate_for_params(base: nn.Module, scores: Scores, recipe: Recipe, target: int, steps: int = 14) -> float:
    """The pruning rate whose plan leaves the params closest to `target`."""
    return rate_for(base, scores, recipe, target, count_params, steps=steps)


def _hybrid_rows(ctx: CompressContext, base: nn.Module, scores: Scores, recipe: Recipe, ranks: Sequence[float],
                 rates: Sequence[float], ft: TrainCfg) -> list[dict]:
    """One fine-tuned point per (MLP rate, attention rank ratio) of the hybrid recipe."""
    rows = []
    for rate in rates:
        pruned = prune_at(base, scores, recipe, rate)
        for ratio in ranks:
            model = copy.deepcopy(pruned)
            s = summarize(decompose_model(model, dataclasses.replace(recipe.decompose, rank_rule="ratio", ratio=ratio)))
            row = {"series": "hybrid", "rank_ratio": ratio, "mlp_rate": rate, **_measure(ctx, model),
                   "rank": {k: s[k] for k in ("rank_min", "rank_max", "factored_layers")},
                   "top1_before_finetune": ctx.top1(model)}
            row["top1_after_finetune"] = _finetune(ctx, model, ft, f"fine-tune hybrid r{ratio:g} m{rate:g}")
            rows.append(row)
    return rows


def _matched_vtp_rows(ctx: CompressContext, base: nn.Module, scores: Scores, vtp_recipe: Recipe, hybrids: list[dict],
                      ft: TrainCfg) -> dict[float, dict]:
    """VTP alone at the rate whose params come closest to each hybrid point (one fine-tuned point per rate);
    each hybrid row records its matched rate."""
    vtp_rows: dict[float, dict] = {}
    for h in hybrids:
        rate = rate_for_params(base, scores, vtp_recipe, h["params"])
        if rate not in vtp_rows:
            model = prune_at(base, scores, vtp_recipe, rate)
            vtp_rows[rate] = {"series": "vtp", "rate": rate, **_measure(ctx, model), "top1_before_finetune": ctx.top1(model),
                              "top1_after_finetune": _finetune(ctx, model, ft, f"fine-tune vtp {rate:g}")}
        h["matched_vtp_rate"] = rate
    return vtp_rows


def _pairs(hybrids: list[dict], vtp_rows: dict[float, dict]) -> list[dict]:
    pairs = []
    for h in hybrids:
        v = vtp_rows[h["matched_vtp_rate"]]
        pairs.append({"rank_ratio": h["rank_ratio"], "mlp_rate": h["mlp_rate"], "vtp_rate": h["matched_vtp_rate"],
                      "hybrid_params": h["params"], "vtp_params": v["params"], "hybrid_top1": h["top1_after_finetune"],
                      "vtp_top1": v["top1_after_finetune"],
                      "hybrid_minus_vtp_points": round(100 * (h["top1_after_finetune"] - v["top1_after_finetune"]), 2)})
    return pairs


def hybrid_sweep(loaded: LoadedModel, recipe: Recipe, vtp_recipe: Recipe, data: str, out: Path,
                 ranks: Sequence[float], rates: Sequence[float], finetune_epochs: Optional[int] = None) -> dict:
    """Hybrid points (attention rank ratio × MLP pruning rate) and VTP-alone points at the params of each hybrid
    point, every one fine-tuned the same way (the hybrid recipe's fine-tune; `finetune_epochs` overrides its length)."""
    _need_data(data, "the hybrid sweep")
    bad = [v for v in ranks if not 0 < v <= 1] + [v for v in rates if not 0 <= v < 1]
    if bad or not ranks or not rates:
        raise VitDeployError(f"--ranks takes ratios in (0, 1] and --rates rates in [0, 1); got {bad[0] if bad else 'none'}")
    ft = _finetune_cfg(recipe, finetune_epochs)
    ctx = make_context(loaded, recipe, data)
    dense = ctx.stages[0]
    base_h, scores_h = learned_scores(ctx, recipe, "sparsity (hybrid sites)")
    base_v, scores_v = learned_scores(ctx, vtp_recipe, "sparsity (VTP sites)")
    rows = [{"series": "dense", "params": dense["params"], "macs": dense["macs"],
             "top1_before_finetune": dense["top1"], "top1_after_finetune": dense["top1"]}]
    hybrids = _hybrid_rows(ctx, base_h, scores_h, recipe, ranks, rates, ft)
    vtp_rows = _matched_vtp_rows(ctx, base_v, scores_v, vtp_recipe, hybrids, ft)
    rows += hybrids + list(vtp_rows.values())
    for r in rows:
        r["params_reduction"] = 1 - r["params"] / dense["params"]
    result = {
        "study": "hybrid-sweep", "model": loaded.source, "data": data, "recipe": recipe.to_dict(),
        "vtp_recipe": vtp_recipe.to_dict(), "ranks": list(ranks), "rates": list(rates), "finetune_epochs": ft.epochs,
        "val_images": len(ctx.val_loader.dataset), "rows": rows, "pairs": _pairs(hybrids, vtp_rows),
        "provenance": provenance(source=loaded.source, data=data, recipe=recipe.name),
    }
    from vitdeploy.viz.plots import plot_frontier  # here, not at the top: importing compress loads no matplotlib

    with staged_dir(out) as stage:
        atomic_write_text(stage / "sweep.md", _sweep_markdown(result))
        result["plot"] = plot_frontier(rows, result["val_images"], stage / "sweep.png",
                                       f"{recipe.name} sweep vs {vtp_recipe.name} at matched params").name
        atomic_write_json(stage / "sweep.json", result)
    return result


def _sweep_markdown(r: dict) -> str:
    lines = [
        f"# Hybrid sweep: {r['recipe']['name']} (attention rank ratio × MLP pruning rate) vs VTP alone on {r['data']}", "",
        f"Every point fine-tuned for {r['finetune_epochs']} epoch(s); VTP points use {r['vtp_recipe']['name']}'s sites "
        f"with the rate whose params come closest to each hybrid point. Val images: {r['val_images']} "
        f"(one image = {100 / r['val_images']:.2f} points).", "",
        "| series | attention rank ratio | MLP rate | VTP rate | params | params cut | MACs | top-1 before fine-tune (%) "
        "| top-1 after fine-tune (%) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        cells = [row["series"], row.get("rank_ratio", "–"), row.get("mlp_rate", "–"), row.get("rate", "–"),
                 f"{row['params'] / 1e6:.3f} M", f"{100 * row['params_reduction']:.1f} %", f"{row['macs'] / 1e6:.1f} M",
                 _pct(row["top1_before_finetune"]), _pct(row["top1_after_finetune"])]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", "| hybrid (rank ratio, MLP rate) | hybrid params | VTP rate | VTP params | hybrid top-1 | VTP top-1 | "
              "hybrid − VTP (points) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for p in r["pairs"]:
        lines.append(f"| {p['rank_ratio']:g}, {p['mlp_rate']:g} | {p['hybrid_params'] / 1e6:.3f} M | {p['vtp_rate']:g} | "
                     f"{p['vtp_params'] / 1e6:.3f} M | {_pct(p['hybrid_top1'])} | {_pct(p['vtp_top1'])} | "
                     f"{p['hybrid_minus_vtp_points']:+.2f} |")
    return "\n".join(lines + [""])


