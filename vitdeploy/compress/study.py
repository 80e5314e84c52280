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
from typing import Optional, Sequence

import torch.nn as nn

from vitdeploy.compress.decompose import METHODS, decompose_model, summarize
from vitdeploy.compress.gates import attach_gates, detach_gates, fold_gates
from vitdeploy.compress.pipeline import CompressContext, make_context, max_abs_diff, vtp_stage
from vitdeploy.compress.plan import apply_plan
from vitdeploy.compress.recipe import Recipe, TrainCfg
from vitdeploy.compress.train import fit
from vitdeploy.compress.vtp import Scores, plan_from_scores
from vitdeploy.errors import VitDeployError
from vitdeploy.io import atomic_write_json, atomic_write_text, staged_dir
from vitdeploy.models import LoadedModel, count_macs, count_params
from vitdeploy.provenance import provenance

LABELS = {"vtp": "VTP", "svd": "VTP+SVD", "qr-full": "VTP+QR (full)", "qr-reduced": "VTP+QR (reduced)",
          "qr-pivoted": "VTP+QR (column pivoting)", "cod": "VTP+QR (complete orthogonal)", "lu": "VTP+LU"}
SHORT = {"vtp": "VTP", "svd": "+SVD", "qr-full": "+QR full", "qr-reduced": "+QR reduced", "qr-pivoted": "+QR pivoted",
         "cod": "+COD", "lu": "+LU"}


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
    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise VitDeployError(f"unknown decomposition method {unknown[0]!r}; known: {', '.join(METHODS)}")
    ft = _finetune_cfg(recipe, finetune_epochs)
    ctx = make_context(loaded, recipe, data)
    pruned, details = vtp_stage(ctx)
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
    factored = [r for r in rows if r["method"] in METHODS]
    result = {
        "study": "decomposition", "model": loaded.source, "data": data, "recipe": recipe.to_dict(),
        "finetune_epochs": ft.epochs, "rank_rule": dataclasses.asdict(recipe.decompose) | {"method": "(each)"},
        "equal_params": len({(r["params"], r["macs"]) for r in factored}) <= 1,
        "rows": rows, "layers": layers, "stages": ctx.stages, "plan": details["plan"],
        "provenance": provenance(source=loaded.source, data=data, recipe=recipe.name),
    }
    with staged_dir(out) as stage:
        atomic_write_text(stage / "study.md", _study_markdown(result))
        result["plot"] = plot_study(rows, stage / "study.png", f"{recipe.name}: VTP + decomposition at equal ranks").name
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


def plot_study(rows: list[dict], path: Path, title: str) -> Path:
    """Top-1 before and after the fine-tune, one pair of bars per method, params under each name; the axis starts
    a little below the lowest bar so differences of a point stay visible."""
    from vitdeploy.bench.plots import _save, plt

    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(rows) + 2), 4.2))
    xs = range(len(rows))
    vals_all = []
    for off, key, label, color in ((-0.2, "top1_before_finetune", "before fine-tune", "0.7"),
                                   (0.2, "top1_after_finetune", "after fine-tune", "tab:blue")):
        vals = [100 * (r[key] or 0.0) for r in rows]
        vals_all += vals
        bars = ax.bar([x + off for x in xs], vals, 0.38, color=color, label=label, zorder=2)
        for b, v in zip(bars, vals):
            ax.text(b.get_x() + b.get_width() / 2, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(xs), [f"{SHORT.get(r['method'], r['label'])}\n{r['params'] / 1e6:.3f} M" for r in rows], fontsize=8)
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(max(0.0, math.floor(min(vals_all)) - 3), min(100.0, max(vals_all)) + 1.5)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    return _save(fig, path)


# -------------------------------------------------------------------------------------------- hybrid sweep
def learned_scores(ctx: CompressContext, recipe: Recipe, desc: str) -> tuple[nn.Module, Scores]:
    """An ungated copy of the dense model and the scores of `recipe`'s sparsity phase at its prune sites."""
    base = copy.deepcopy(ctx.dense)
    gates = attach_gates(base, recipe.prune.sites)
    fit(base, ctx.train_loader_for(recipe.sparsity), ctx.val_loader, recipe.sparsity, desc=desc, gates=gates)
    detach_gates(base)
    return base.eval(), {(b, s): a.detach().clone() for b, s, a in gates.items()}


def prune_at(base: nn.Module, scores: Scores, recipe: Recipe, rate: float) -> nn.Module:
    """`base` with the scores folded in and the plan at `rate` sliced out (what vtp_stage builds at that rate)."""
    cfg = dataclasses.replace(recipe.prune, rate=rate)
    plan, _ = plan_from_scores(base, scores, cfg)
    model = copy.deepcopy(base)
    attach_gates(model, cfg.sites, scores)
    fold_gates(model)
    return apply_plan(model, plan).eval()


def rate_for_params(base: nn.Module, scores: Scores, recipe: Recipe, target: int, steps: int = 14) -> float:
    """The pruning rate whose plan leaves the params closest to `target` (bisection; params fall with the rate)."""
    lo, hi, best = 0.0, 0.98, (math.inf, 0.0)
    for _ in range(steps):
        mid = (lo + hi) / 2
        p = count_params(prune_at(base, scores, recipe, mid))
        best = min(best, (abs(p - target), mid))
        lo, hi = (mid, hi) if p > target else (lo, mid)
    return round(best[1], 4)


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
    for rate in rates:
        pruned = prune_at(base_h, scores_h, recipe, rate)
        for ratio in ranks:
            model = copy.deepcopy(pruned)
            s = summarize(decompose_model(model, dataclasses.replace(recipe.decompose, rank_rule="ratio", ratio=ratio)))
            row = {"series": "hybrid", "rank_ratio": ratio, "mlp_rate": rate, **_measure(ctx, model),
                   "rank": {k: s[k] for k in ("rank_min", "rank_max", "factored_layers")},
                   "top1_before_finetune": ctx.top1(model)}
            row["top1_after_finetune"] = _finetune(ctx, model, ft, f"fine-tune hybrid r{ratio:g} m{rate:g}")
            rows.append(row)
    hybrids = [r for r in rows if r["series"] == "hybrid"]
    vtp_rows: dict[float, dict] = {}
    for h in hybrids:
        rate = rate_for_params(base_v, scores_v, vtp_recipe, h["params"])
        if rate not in vtp_rows:
            model = prune_at(base_v, scores_v, vtp_recipe, rate)
            vtp_rows[rate] = {"series": "vtp", "rate": rate, **_measure(ctx, model), "top1_before_finetune": ctx.top1(model),
                              "top1_after_finetune": _finetune(ctx, model, ft, f"fine-tune vtp {rate:g}")}
        h["matched_vtp_rate"] = rate
    rows += list(vtp_rows.values())
    for r in rows:
        r["params_reduction"] = 1 - r["params"] / dense["params"]
    pairs = [{"rank_ratio": h["rank_ratio"], "mlp_rate": h["mlp_rate"], "vtp_rate": h["matched_vtp_rate"],
              "hybrid_params": h["params"], "vtp_params": vtp_rows[h["matched_vtp_rate"]]["params"],
              "hybrid_top1": h["top1_after_finetune"], "vtp_top1": vtp_rows[h["matched_vtp_rate"]]["top1_after_finetune"]}
             for h in hybrids]
    for p in pairs:
        p["hybrid_minus_vtp_points"] = round(100 * (p["hybrid_top1"] - p["vtp_top1"]), 2)
    result = {
        "study": "hybrid-sweep", "model": loaded.source, "data": data, "recipe": recipe.to_dict(),
        "vtp_recipe": vtp_recipe.to_dict(), "ranks": list(ranks), "rates": list(rates), "finetune_epochs": ft.epochs,
        "val_images": len(ctx.val_loader.dataset), "rows": rows, "pairs": pairs,
        "provenance": provenance(source=loaded.source, data=data, recipe=recipe.name),
    }
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


def plot_frontier(rows: list[dict], n_eval: int, path: Path, title: str) -> Path:
    """Top-1 after fine-tuning against params: hybrid and VTP points with their 95 % intervals, each series' frontier
    (the best top-1 at or below each params count) as a staircase, and the dense model. Labels: r<rank ratio>/m<MLP rate>."""
    from vitdeploy.bench.pareto import pareto_front
    from vitdeploy.bench.plots import _save, plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {"hybrid": ("tab:orange", "o"), "vtp": ("tab:blue", "s"), "dense": ("black", "*")}
    right = max(r["params"] for r in rows if r["series"] != "dense") / 1e6
    for series, (color, marker) in styles.items():
        pts = [r for r in rows if r["series"] == series]
        if not pts:
            continue
        xs = [r["params"] / 1e6 for r in pts]
        ys = [100 * r["top1_after_finetune"] for r in pts]
        err = [100 * 1.96 * math.sqrt(max(r["top1_after_finetune"] * (1 - r["top1_after_finetune"]), 1e-12) / n_eval)
               for r in pts]
        ax.errorbar(xs, ys, yerr=err, fmt="none", ecolor=color, alpha=0.35, capsize=3, zorder=1)
        ax.scatter(xs, ys, s=140 if series == "dense" else 50, color=color, marker=marker, edgecolor="black",
                   linewidth=0.6, zorder=3, label={"hybrid": "hybrid (low-rank attention + MLP pruning)",
                                                  "vtp": "VTP alone", "dense": "dense"}[series])
        if series != "dense":
            front = pareto_front(list(zip(xs, ys)))  # the best top-1 at or below each params count
            fy = [ys[i] for i in front]
            ax.step([xs[i] for i in front] + [right], fy + fy[-1:], where="post", color=color, linestyle="--",
                    linewidth=1, zorder=2)
        for k, (r, x, y) in enumerate(sorted(zip(pts, xs, ys), key=lambda t: t[1])):
            if series == "hybrid":  # alternate above/below so neighbours at equal params stay readable
                ax.annotate(f"r{r['rank_ratio']:g}/m{r['mlp_rate']:g}", (x, y), fontsize=7,
                            xytext=(4, 5 if k % 2 == 0 else -11), textcoords="offset points")
    ax.set_xlabel("params (M)")
    ax.set_ylabel("top-1 after fine-tuning (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
