"""Kumar's hybrid against VTP alone on Fashion-MNIST, at matched params (issue 13, comparison 4).

The `hybrid` recipe (VTP scores on the MLP sites only, pruned at 0.35; qkv and proj of every block factored by SVD
at a third of their rank) against VTP alone (vtp-40's sites and learned scores, the same sparsity phase as
bench_fashion_vtp) at the rate whose params come closest to the hybrid's. Both are scored before and after the same
distilled fine-tune, per seed, on the 10,000 test images, paired per image. The paper reports the relative increase
in error at each compression: 50 % compression at +14 % relative error for the hybrid, 44 % at +20 % for VTP; both
figures are computed here too. The schedule is shortened equally for both sides (see fashion.py).

Target (issue 13): hybrid within 1.5 points of dense at >= 40 % fewer params. Writes results/fashion_hybrid.json
and .png.

    python profiling/bench_fashion_hybrid.py [--seeds 0,1] [--threads 2]
"""
from __future__ import annotations

import copy

import numpy as np

from vitdeploy.compression.decompose import decompose_model, summarize
from vitdeploy.compression.study import prune_at, rate_for
from vitdeploy.models import count_params

import fashion as F
from common import RESULTS, write_result

RECIPE, VTP_RECIPE = "hybrid", "vtp-40"
TARGET_PARAMS_CUT, TARGET_DROP_POINTS = 0.40, 1.5


def run_seed(cache: F.Cache, tests: F.TestSet, seed: int) -> dict:
    rh, rv = F.recipe(RECIPE, seed), F.recipe(VTP_RECIPE, seed)
    ctx_h, ctx_v = F.context(rh), F.context(rv)
    base_h, scores_h = cache.vtp_scores(ctx_h, rh, "hybrid")
    hybrid = prune_at(base_h, scores_h, rh, rh.prune.rate)
    ranks = summarize(decompose_model(hybrid, rh.decompose))
    out = {"hybrid_before": F.side(cache, f"hybrid-before-seed{seed}", tests, lambda: hybrid,
                                   ranks={k: ranks[k] for k in ("rank_min", "rank_max", "factored_layers")}),
           "hybrid_after": F.side(cache, f"hybrid-after-seed{seed}", tests,
                                  lambda: F.finetune(ctx_h, copy.deepcopy(hybrid), f"fine-tune hybrid s{seed}"))}
    base_v, scores_v = cache.vtp_scores(ctx_v, rv, "vtp")
    rate = rate_for(base_v, scores_v, rv, out["hybrid_before"]["params"], count_params)
    vtp = prune_at(base_v, scores_v, rv, rate)
    out["vtp_before"] = F.side(cache, f"vtp-{rate}-pruned-seed{seed}", tests, lambda: vtp, rate=rate)
    out["vtp_after"] = F.side(cache, f"vtp-{rate}-finetuned-seed{seed}", tests,
                              lambda: F.finetune(ctx_v, copy.deepcopy(vtp), f"fine-tune vtp {rate} s{seed}"), rate=rate)
    return out


def relative_error_increase(side: dict, dense: dict) -> float:
    """(error - dense error) / dense error, the paper's measure."""
    e, e0 = 1 - float(side["correct"].mean()), 1 - float(dense["correct"].mean())
    return (e - e0) / e0


def main() -> None:
    run = F.start(__doc__.splitlines()[0], RECIPE)
    args, seeds, cache, tests, dense, t0 = run.args, run.seeds, run.cache, run.tests, run.dense, run.t0
    runs = {s: run_seed(cache, tests, s) for s in seeds}
    names = ("hybrid_before", "hybrid_after", "vtp_before", "vtp_after")
    sides = {n: [runs[s][n] for s in seeds] for n in names}

    def corr(n):
        return [x["correct"] for x in sides[n]]

    comparisons = {"before_finetune": F.across_seeds(corr("hybrid_before"), corr("vtp_before")),
                   "after_finetune": F.across_seeds(corr("hybrid_after"), corr("vtp_after")),
                   "hybrid_after_vs_dense": F.across_seeds(corr("hybrid_after"), [dense["correct"]] * len(seeds))}
    params_cut = 1 - max(x["params"] for x in sides["hybrid_after"]) / dense["params"]
    drop = -100 * comparisons["hybrid_after_vs_dense"]["mean_difference"]
    paper = {n: {"params_cut": round(float(np.mean([1 - x["params"] / dense["params"] for x in sides[n]])), 4),
                 "relative_error_increase": round(float(np.mean([relative_error_increase(x, dense) for x in sides[n]])), 4)}
             for n in ("hybrid_after", "vtp_after")}
    rows = [F.record(dense) | {"label": "dense", "stage": "dense"}]
    for n, label, stage, color in (("hybrid_before", "hybrid", "before fine-tune", 1),
                                   ("hybrid_after", "hybrid", "after fine-tune", 1),
                                   ("vtp_before", "VTP at matched params", "before fine-tune", 2),
                                   ("vtp_after", "VTP at matched params", "after fine-tune", 2)):
        rows.append({"label": label, "stage": stage, "color": color, "macs": sides[n][0]["macs"],
                     "params": sides[n][0]["params"], **F.mean_top1(sides[n])})
    F.plot_sides(rows, RESULTS / "fashion_hybrid.png", "hybrid vs VTP at matched params, Fashion-MNIST test (mean over seeds)",
                 x="params")
    write_result("fashion_hybrid", {
        "comparison": "hybrid (VTP on the MLP + SVD of qkv/proj) vs VTP alone at matched params",
        "data": f"{F.DATA} test (10,000 images)", "dense_model": str(F.DENSE.relative_to(F.ROOT)),
        "recipes": [RECIPE, VTP_RECIPE], "schedule": F.SCHEDULE, "schedule_text": F.schedule_text(F.SCHEDULE),
        "seeds": seeds, "dense": F.record(dense),
        "sides": {n: [F.record(x) | {"seed": s} for s, x in zip(seeds, sides[n])] for n in names},
        "mean_over_seeds": {n: F.mean_top1(sides[n]) for n in names},
        "hybrid_minus_vtp": comparisons,
        "verdicts": {k: F.verdict(comparisons[k], "hybrid", "VTP") for k in ("before_finetune", "after_finetune")},
        "paper_measures": paper,
        "targets": {"params_cut >= 0.40": round(params_cut, 4), "top1 drop <= 1.5 points": round(drop, 2),
                    "met": params_cut >= TARGET_PARAMS_CUT and drop <= TARGET_DROP_POINTS},
        "plot": "fashion_hybrid.png", "wall_s": F.elapsed(t0),
    }, threads=args.threads)


if __name__ == "__main__":
    main()
