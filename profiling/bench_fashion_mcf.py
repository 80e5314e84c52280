"""MCF against direct magnitude pruning on Fashion-MNIST, to the same kept dims (issue 13, comparison 2).

The `mcf` recipe's importance (FIS: the class token's contributions on 1,024 calibration images) against the weight
magnitudes of the same FFN dims, at the SAME kept counts per block, at three points:
  one-shot     every FFN cut at once from the dense model's scores, no training (the paper's "direct pruning");
  scheduled    MCF's schedule, last FFN to first, each cut followed by the same recovery epoch;
  fine-tuned   both scheduled models after the same distilled fine-tune.
Per seed (calibration draw, data order), scored on the 10,000 test images and paired per image. The schedule is
shortened equally for both sides (see fashion.py). The paper reports 79.3 vs 70.2 % on ImageNet (DeiT).

Target (issue 13): mcf within 1.0 point of dense at >= 30 % fewer MACs. Writes results/fashion_mcf.json and .png.

    python profiling/bench_fashion_mcf.py [--seeds 0,1] [--threads 2]
"""
from __future__ import annotations

import time

import torch

from vitdeploy.compression.mcf import back_to_front, calibration_batches, fis_scorer, magnitude_scorer, one_shot, schedule_hooks
from vitdeploy.models import count_macs, count_params

import fashion as F
from common import RESULTS, write_result

RECIPE = "mcf"
TARGET_MACS_CUT, TARGET_DROP_POINTS = 0.30, 1.0


def kept_counts(model: torch.nn.Module) -> dict:
    return {b: {"mlp_in": blk.mlp.fc1.in_features, "mlp_hidden": blk.mlp.fc1.out_features}
            for b, blk in enumerate(model.blocks)}


def scheduled_and_finetuned(cache: F.Cache, tests: F.TestSet, ctx, scorer, name: str) -> dict:
    """MCF's schedule with `scorer`, then the fine-tune: both sides measured, cached together (one model)."""
    def make() -> dict:
        t = time.perf_counter()
        F.reseed(ctx, ctx.train_loader)
        x, _ = ctx.sample()
        r = ctx.recipe
        model, _, steps, _ = back_to_front(ctx.dense, scorer, r.prune, r.mcf, sample=x, **schedule_hooks(ctx))
        scheduled = {"correct": tests.correct(model),
                     "counts": kept_counts(model), "seconds": round(time.perf_counter() - t, 1),
                     "steps": [{"block": s.block, "top1_cut_val": s.top1_cut, "top1_recovered_val": s.top1_recovered}
                               for s in steps]}
        t = time.perf_counter()
        model, extra = F.finetune(ctx, model, f"fine-tune {name} s{r.seed}")
        finetuned = {"correct": tests.correct(model), "seconds": round(time.perf_counter() - t, 1), **extra}
        measures = {"params": count_params(model), "macs": count_macs(model, ctx.input_size)}
        return {"scheduled": scheduled | measures, "finetuned": finetuned | measures}
    return cache.get(f"mcf-{name}-scheduled-seed{ctx.recipe.seed}", make)


def run_seed(cache: F.Cache, tests: F.TestSet, seed: int) -> dict:
    r = F.recipe(RECIPE, seed)
    ctx = F.context(r)
    fis = fis_scorer(calibration_batches(ctx, r.mcf), r.mcf)
    out = {}
    s_fis = scheduled_and_finetuned(cache, tests, ctx, fis, "fis")
    counts = s_fis["scheduled"]["counts"]
    s_mag = scheduled_and_finetuned(cache, tests, ctx, magnitude_scorer, "magnitude")
    assert s_mag["scheduled"]["counts"] == counts, "magnitude and FIS schedules kept different dims"
    for scorer, name in ((fis, "fis"), (magnitude_scorer, "magnitude")):
        out[f"{name}_one_shot"] = F.side(cache, f"mcf-{name}-oneshot-seed{seed}", tests,
                                         lambda scorer=scorer: one_shot(ctx.dense, scorer, r.prune, r.mcf, counts=counts)[0])
    out |= {"fis_scheduled": s_fis["scheduled"], "fis_finetuned": s_fis["finetuned"],
            "magnitude_scheduled": s_mag["scheduled"], "magnitude_finetuned": s_mag["finetuned"]}
    return out


CURVE_RATES = (0.5, 0.625, 0.75, 0.875)  # hidden dims removed; fc1 inputs: the recipe's in_rate/rate ratio of it


def curve(cache: F.Cache, tests: F.TestSet, seeds: list[int]) -> list[dict]:
    """One-shot (no training at all) at rates where cutting starts to hurt: FIS against magnitude at the same kept
    dims. The importance is all that differs."""
    import dataclasses

    points = {rate: {"rate": rate, "fis": [], "magnitude": []} for rate in CURVE_RATES}
    for seed in seeds:
        r = F.recipe(RECIPE, seed)
        ctx = F.context(r)
        ratio = r.mcf.in_rate / r.prune.rate
        for rate in CURVE_RATES:
            prune = dataclasses.replace(r.prune, rate=rate)
            cfg = dataclasses.replace(r.mcf, in_rate=round(rate * ratio, 4))
            fis = fis_scorer(calibration_batches(ctx, cfg), cfg)

            def fis_model():
                model = one_shot(ctx.dense, fis, prune, cfg)[0]
                return model, {"counts": kept_counts(model)}

            f = F.side(cache, f"mcf-fis-oneshot-rate{rate}-seed{seed}", tests, fis_model, rate=rate, in_rate=cfg.in_rate)
            counts = f["counts"]
            m = F.side(cache, f"mcf-magnitude-oneshot-rate{rate}-seed{seed}", tests,
                       lambda: one_shot(ctx.dense, magnitude_scorer, prune, cfg, counts=counts)[0], rate=rate,
                       in_rate=cfg.in_rate)
            points[rate]["fis"].append(f)
            points[rate]["magnitude"].append(m)
            points[rate]["macs"] = f["macs"]
    return F.curve_rows(list(points.values()), "fis", "magnitude")


def main() -> None:
    run = F.start(__doc__.splitlines()[0], RECIPE)
    args, seeds, cache, tests, dense, t0 = run.args, run.seeds, run.cache, run.tests, run.dense, run.t0
    runs = {s: run_seed(cache, tests, s) for s in seeds}
    names = ("fis_one_shot", "magnitude_one_shot", "fis_scheduled", "magnitude_scheduled", "fis_finetuned",
             "magnitude_finetuned")
    sides = {n: [runs[s][n] for s in seeds] for n in names}

    def corr(n):
        return [x["correct"] for x in sides[n]]

    comparisons = {stage: F.across_seeds(corr(f"fis_{stage}"), corr(f"magnitude_{stage}"))
                   for stage in ("one_shot", "scheduled", "finetuned")}
    comparisons["mcf_finetuned_vs_dense"] = F.across_seeds(corr("fis_finetuned"), [dense["correct"]] * len(seeds))
    macs_cut = 1 - sides["fis_finetuned"][0]["macs"] / dense["macs"]
    drop = -100 * comparisons["mcf_finetuned_vs_dense"]["mean_difference"]
    rows = [F.record(dense) | {"label": "dense", "stage": "dense"}]
    for n in names:
        scorer, stage = n.split("_", 1)
        rows.append({"label": "MCF (FIS)" if scorer == "fis" else "magnitude", "color": 1 if scorer == "fis" else 2,
                     "stage": {"one_shot": "one-shot", "scheduled": "scheduled", "finetuned": "after fine-tune"}[stage],
                     "macs": sides[n][0]["macs"], "params": sides[n][0]["params"], **F.mean_top1(sides[n])})
    curve_rows = curve(cache, tests, seeds)
    F.plot_curve(curve_rows, {"fis": "MCF (FIS), one-shot", "magnitude": "magnitude at the same kept dims, one-shot"},
                 RESULTS / "fashion_mcf_curve.png", "One-shot FFN cuts, no training: top-1 against MACs (Fashion-MNIST test)")
    F.plot_sides(rows, RESULTS / "fashion_mcf.png", "MCF (FIS) vs magnitude at the same kept dims, Fashion-MNIST test")
    strip = ("correct", "counts")
    write_result("fashion_mcf", {
        "comparison": "MCF (class-token FIS) vs direct magnitude pruning at the same kept dims per block",
        "data": f"{F.DATA} test (10,000 images)", "dense_model": str(F.DENSE.relative_to(F.ROOT)), "recipe": RECIPE,
        "schedule": F.SCHEDULE, "schedule_text": F.schedule_text(F.SCHEDULE), "seeds": seeds,
        "kept_counts": sides["fis_scheduled"][0]["counts"],
        "dense": F.record(dense),
        "sides": {n: [{k: v for k, v in F.record(x).items() if k not in strip} | {"seed": s}
                      for s, x in zip(seeds, sides[n])] for n in names},
        "mean_over_seeds": {n: F.mean_top1(sides[n]) for n in names},
        "mcf_minus_magnitude": comparisons,
        "verdicts": {k: F.verdict(comparisons[k], "MCF (FIS)", "magnitude") for k in ("one_shot", "scheduled", "finetuned")},
        "targets": {"macs_cut >= 0.30": round(macs_cut, 4), "top1 drop <= 1.0 point": round(drop, 2),
                    "met": macs_cut >= TARGET_MACS_CUT and drop <= TARGET_DROP_POINTS},
        "curve_one_shot": [{k: v for k, v in row.items()} for row in curve_rows], "plot": "fashion_mcf.png",
        "curve_plot": "fashion_mcf_curve.png", "wall_s": F.elapsed(t0),
    }, threads=args.threads)


if __name__ == "__main__":
    main()
