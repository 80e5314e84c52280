"""MCF accuracy on digits: train vit_digits (40 epochs, as bench_vtp_digits) or take --model-dir, then the `mcf`
recipe through the same library call as `vitdeploy compress` (FIS on 1024 calibration images, FFNs cut from the last
block to the first with one recovery epoch each, distilled fine-tuning). Against it, at the SAME kept dims per block:
  one-shot      every FFN cut at once from the dense model's scores, no training: FIS vs weight magnitude (the
                paper's "direct pruning")
  scheduled     back to front with the same recovery epochs: FIS (the recipe's `pruned` stage) vs magnitude
  fine-tuned    both scheduled models after the recipe's distilled fine-tuning
and the per-layer input rule (each FFN its own inputs, gathers) against the uniform one, scheduled.
Targets (issue 7): MACs cut >= 30 % with top-1 within 1.5 points of dense; MCF beats magnitude pruning to the same
dims by a clear margin before fine-tuning. Writes results/mcf_digits.json."""
import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch

from vitdeploy.compression.mcf import back_to_front, calibration_batches, fis_scorer, magnitude_scorer, one_shot, schedule_hooks
from vitdeploy.compression.pipeline import make_context, run_compress, run_train
from vitdeploy.compression.recipe import TrainCfg, load_recipe, locate_recipe
from vitdeploy.compression.train import fit, seed_everything
from vitdeploy.models import load_model

from common import write_result

THREADS = 2
torch.set_num_threads(THREADS)
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model-dir", help="a trained vit_digits model dir (default: train one, 40 epochs)")
args = parser.parse_args()


def pct(v):
    return None if v is None else round(100 * v, 2)


with tempfile.TemporaryDirectory() as tmp:
    dense_dir = Path(args.model_dir) if args.model_dir else Path(tmp) / "dense"
    if not args.model_dir:
        seed_everything(0)
        run_train(load_model("vit_digits"), "digits", TrainCfg(epochs=40, lr=2e-3, warmup_epochs=2), dense_dir)
    recipe = load_recipe("mcf")
    seed_everything(recipe.seed)
    r = run_compress(load_model(str(dense_dir)), recipe, "digits", Path(tmp) / "mcf", locate_recipe("mcf")[1])

    # the baselines, on the same data, seed and recovery/fine-tune settings
    seed_everything(recipe.seed)
    ctx = make_context(load_model(str(dense_dir)), recipe, "digits")
    cfg, prune = recipe.mcf, recipe.prune
    fis = fis_scorer(calibration_batches(ctx, cfg), cfg)
    x, _ = ctx.sample()
    counts = {b: {"mlp_in": row["mlp_in"], "mlp_hidden": row["mlp_hidden"]} for b, row in enumerate(r["kept"])}
    oneshot = {name: ctx.top1(one_shot(ctx.dense, scorer, prune, cfg, counts=counts)[0])
               for name, scorer in (("fis", fis), ("magnitude", magnitude_scorer))}
    seed_everything(recipe.seed)
    mag, _, mag_steps, _ = back_to_front(ctx.dense, magnitude_scorer, prune, cfg, sample=x, **schedule_hooks(ctx))
    mag_scheduled = ctx.top1(mag)
    assert [(b.mlp.fc1.in_features, b.mlp.fc1.out_features) for b in mag.blocks] == \
        [(c["mlp_in"], c["mlp_hidden"]) for c in counts.values()]
    seed_everything(recipe.seed)
    fit(mag, ctx.train_loader, ctx.val_loader, recipe.finetune, teacher=ctx.dense, distill=recipe.distill,
        desc="fine-tune magnitude")
    mag_finetuned = ctx.top1(mag)
    seed_everything(recipe.seed)
    per_layer_cfg = dataclasses.replace(cfg, input_rule="per_layer")
    per_layer = back_to_front(ctx.dense, fis_scorer(calibration_batches(ctx, per_layer_cfg), per_layer_cfg), prune,
                              per_layer_cfg, sample=x, **schedule_hooks(ctx))[0]
    per_layer_scheduled = ctx.top1(per_layer)

stages = {s["stage"]: s for s in r["stages"]}
dense_top1, final = stages["dense"]["top1"], stages["finetuned"]["top1"]
macs_cut = 1 - stages["finetuned"]["macs"] / stages["dense"]["macs"]
write_result("mcf_digits", {
    "model": "vit_digits", "data": "digits (1437 train / 360 val)", "recipe": "mcf",
    "recipe_fields": {"prune": dataclasses.asdict(prune), "mcf": dataclasses.asdict(cfg)},
    "stages": r["stages"], "per_block": r["mcf"], "kept": [{k: b[k] for k in ("block", "mlp_in", "mlp_hidden")} for b in r["kept"]],
    "reduction": r["reduction"], "equivalence_max_abs_diff": r["equivalence"]["max_abs_diff"],
    "x_transform": {k: v for k, v in r["x_transform"].items() if k != "permutation"},
    "top1_pct": {
        "dense": pct(dense_top1),
        "one_shot": {"mcf_fis": pct(oneshot["fis"]), "magnitude": pct(oneshot["magnitude"])},
        "scheduled_before_finetune": {"mcf_fis": pct(stages["pruned"]["top1"]), "magnitude": pct(mag_scheduled),
                                      "mcf_fis_per_layer_inputs": pct(per_layer_scheduled)},
        "finetuned": {"mcf_fis": pct(final), "magnitude": pct(mag_finetuned)},
    },
    "magnitude_per_block": [dataclasses.asdict(s) for s in mag_steps],
    "macs_cut_pct": round(100 * macs_cut, 2), "params_cut_pct": round(100 * r["reduction"]["params"], 2),
    "top1_drop_points": round(100 * (dense_top1 - final), 2),
    "targets": {"macs_cut_pct >= 30": macs_cut >= 0.30, "top1_drop_points <= 1.5": 100 * (dense_top1 - final) <= 1.5,
                "mcf beats magnitude before fine-tuning (one-shot and scheduled)":
                    oneshot["fis"] > oneshot["magnitude"] and stages["pruned"]["top1"] > mag_scheduled},
}, threads=THREADS)
