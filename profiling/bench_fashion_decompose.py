"""Sun's Table 2 on Fashion-MNIST: after VTP, SVD against the four QR variants and LU at equal ranks (issue 13,
comparison 3).

VTP at the `vtp-svd` recipe's rate (0.2; its sparsity phase is vtp-40's, so the same learned scores serve both
benchmarks), then qkv, proj, fc1 and fc2 of every block factored at the same ranks (the recipe's rule: 90 % of the
singular-value energy, multiples of 8) by every method in the decomposition table. Every variant, and VTP alone, is
scored before and after the same distilled fine-tune, per seed, on the 10,000 test images; each method is paired
per image against SVD. The fine-tune is one epoch here (the other comparisons use two), the same for every variant.
Where two methods give bit-identical factors (full and reduced QR do), one fine-tune serves
both, and the result says so. The schedule is shortened equally for every side (see fashion.py).

Writes results/fashion_decompose.json and .png.

    python profiling/bench_fashion_decompose.py [--seeds 0,1] [--threads 2]
"""
from __future__ import annotations

import copy
import dataclasses

import torch

from vitdeploy.compression.decompose import decompose_model, summarize
from vitdeploy.compression.methods import DECOMPOSITIONS
from vitdeploy.compression.study import prune_at

import fashion as F
from common import RESULTS, write_result

RECIPE, SCORES_RECIPE = "vtp-svd", "vtp-40"
# the shared schedule with one fine-tune epoch: seven variants per seed are fine-tuned here (Sun's "short
# fine-tune"); the sparsity phase is the shared one, so its scores come from the shared cache
SCHEDULE = dict(F.SCHEDULE, **{"finetune.epochs": 1})


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def run_seed(cache: F.Cache, scores_cache: F.Cache, tests: F.TestSet, seed: int) -> tuple[dict, dict]:
    r, rs = F.recipe(RECIPE, seed, SCHEDULE), F.recipe(SCORES_RECIPE, seed, SCHEDULE)
    assert r.sparsity == rs.sparsity and r.prune.sites == rs.prune.sites, "vtp-svd no longer shares vtp-40's sparsity"
    ctx = F.context(r)
    base, scores = scores_cache.vtp_scores(ctx, rs, "vtp")
    rate = r.prune.rate
    pruned = prune_at(base, scores, r, rate)
    out = {"vtp_before": F.side(cache, f"vtp-{rate}-pruned-seed{seed}", tests, lambda: pruned, rate=rate),
           "vtp_after": F.side(cache, f"vtp-{rate}-finetuned-seed{seed}", tests,
                               lambda: F.finetune(ctx, copy.deepcopy(pruned), f"fine-tune vtp {rate} s{seed}"), rate=rate)}
    ranks, factored = {}, {}
    for method in DECOMPOSITIONS:
        model = copy.deepcopy(pruned)
        s = summarize(decompose_model(model, dataclasses.replace(r.decompose, method=method)))
        ranks[method] = {k: s[k] for k in ("rank_min", "rank_max", "rank_mean", "factored_layers", "ranks",
                                           "rel_error_mean")}
        twin = next((m for m, other in factored.items() if same_weights(model, other)), None)
        factored[method] = model
        out[f"{method}_before"] = F.side(cache, f"vtp-{rate}-{method}-before-seed{seed}", tests, lambda: model,
                                         rate=rate, method=method)
        if twin is not None:  # bit-identical factors: the same fine-tune, run once
            out[f"{method}_after"] = dict(out[f"{twin}_after"], method=method, same_factors_as=twin)
        else:
            out[f"{method}_after"] = F.side(cache, f"vtp-{rate}-{method}-after-seed{seed}", tests,
                                            lambda: F.finetune(ctx, copy.deepcopy(model), f"fine-tune {method} s{seed}"),
                                            rate=rate, method=method)
    return out, ranks


def main() -> None:
    run = F.start(__doc__.splitlines()[0], RECIPE, SCHEDULE)
    args, seeds, cache, tests, dense, t0 = run.args, run.seeds, run.cache, run.tests, run.dense, run.t0
    scores_cache = F.Cache(F.SCHEDULE)
    got = {s: run_seed(cache, scores_cache, tests, s) for s in seeds}
    runs, ranks = {s: g[0] for s, g in got.items()}, got[seeds[0]][1]
    variants = ["vtp", *DECOMPOSITIONS]
    names = [f"{v}_{when}" for v in variants for when in ("before", "after")]
    sides = {n: [runs[s][n] for s in seeds] for n in names}
    equal = len({(sides[f"{m}_before"][0]["params"], sides[f"{m}_before"][0]["macs"]) for m in DECOMPOSITIONS}) == 1

    def corr(n):
        return [x["correct"] for x in sides[n]]

    vs_svd = {f"{m}_{when}": F.across_seeds(corr(f"{m}_{when}"), corr(f"svd_{when}"))
              for m in variants if m != "svd" for when in ("before", "after")}
    svd_vs_dense = F.across_seeds(corr("svd_after"), [dense["correct"]] * len(seeds))
    rows = [F.record(dense) | {"label": "dense", "stage": "dense"}]
    for i, v in enumerate(variants):
        for when, stage in (("before", "before fine-tune"), ("after", "after fine-tune")):
            n = f"{v}_{when}"
            rows.append({"label": DECOMPOSITIONS[v].short if v in DECOMPOSITIONS else "VTP", "stage": stage,
                         "color": i + 1, "macs": sides[n][0]["macs"], "params": sides[n][0]["params"],
                         **F.mean_top1(sides[n])})
    F.plot_sides(rows, RESULTS / "fashion_decompose.png",
                 "VTP (rate 0.2) + decomposition at equal ranks, Fashion-MNIST test (mean over seeds)", x="params")
    table = {n: {"params": sides[n][0]["params"], "macs": sides[n][0]["macs"], **F.mean_top1(sides[n]),
                 **({"same_factors_as": sides[n][0]["same_factors_as"]} if "same_factors_as" in sides[n][0] else {})}
             for n in names}
    write_result("fashion_decompose", {
        "comparison": "after VTP, SVD vs QR (full, reduced, pivoted), COD and LU at equal ranks, before and after "
                      "the same short fine-tune",
        "data": f"{F.DATA} test (10,000 images)", "dense_model": str(F.DENSE.relative_to(F.ROOT)), "recipe": RECIPE,
        "decompose": dataclasses.asdict(F.recipe(RECIPE, seeds[0], SCHEDULE).decompose) | {"method": "(each)"},
        "schedule": SCHEDULE, "schedule_text": F.schedule_text(SCHEDULE), "seeds": seeds,
        "equal_ranks": equal, "ranks": ranks, "dense": F.record(dense),
        "mean_over_seeds": table,
        "sides": {n: [F.record(x) | {"seed": s} for s, x in zip(seeds, sides[n])] for n in names},
        "minus_svd": vs_svd, "svd_after_minus_dense": svd_vs_dense,
        "verdicts": {n: F.verdict(d, n.replace("_", " "), f"svd {n.rsplit('_', 1)[1]}") for n, d in vs_svd.items()},
        "plot": "fashion_decompose.png", "wall_s": F.elapsed(t0),
    }, threads=args.threads)


if __name__ == "__main__":
    main()
