"""The train and compress stages end to end: data, model, the method's work through the method table, optional
low-rank factoring and fine-tuning, measurements, and an atomically written model dir."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import torch

from vitdeploy import distributed
from vitdeploy.compression.checkpoint import RunCheckpoints
from vitdeploy.compression.context import (CompressContext, MethodResult, data_config_for, make_context, make_loaders,
                                        match_classes, max_abs_diff, run_method)
from vitdeploy.compression.recipe import Recipe, TrainCfg
from vitdeploy.compression.train import fit, seed_everything
from vitdeploy.io import atomic_write_json, staged_dir
from vitdeploy.models import LoadedModel, block_table, count_macs, count_params, describe, save_model_dir
from vitdeploy.provenance import provenance


def run_train(loaded: LoadedModel, data: str, cfg: TrainCfg, out: Path, seed: int = 0, resume: bool = False,
              checkpoint_every: int = 0, new_head: bool = False, skip_bad_images: bool = False) -> dict:
    """Train and write a model dir. Checkpoints go to OUT.ckpt/ (see compress.checkpoint); `resume` continues them.
    A trained model whose classes differ from the data's gets a new head only with `new_head`."""
    seed_everything(seed)
    data_config = data_config_for(loaded, data)
    train_loader, val_loader, train_ds, val_ds = make_loaders(data, data_config, cfg.batch_size, seed, cfg.augment,
                                                              skip_bad_images=skip_bad_images)
    reset = match_classes(loaded, train_ds.num_classes, data, new_head)
    model = loaded.model.to(distributed.device())
    ckpts = RunCheckpoints(out, {"command": "train", "model": loaded.source, "data": data, "seed": seed, "train": vars(cfg)},
                           resume, checkpoint_every)
    history = fit(model, train_loader, val_loader, cfg, desc="train", checkpoint=ckpts.phase("train"))
    model = model.cpu()
    arch = describe(model, loaded.arch.base, loaded.arch.kwargs)
    summary = {
        "data": data, "classes": list(train_ds.classes), "head_reset": reset,
        "params": count_params(model), "macs": count_macs(model, tuple(data_config["input_size"])),
        "top1": history["val_top1"], "history": history["epochs"], "train_config": vars(cfg) | {"seed": seed},
    }
    # one folder can serve both splits: a file is counted once
    skipped = list(dict.fromkeys([*getattr(train_ds, "skipped", []), *getattr(val_ds, "skipped", [])]))
    if skip_bad_images:
        summary["skipped_images"] = skipped
    if distributed.is_main():
        with staged_dir(out) as stage:
            save_model_dir(stage, model, arch, data_config, classes=list(train_ds.classes),
                           provenance=provenance(source=loaded.source, data=data), train=summary)
    ckpts.finish()
    return summary


def decompose_stage(ctx: CompressContext, model: torch.nn.Module) -> dict:
    """Low-rank factoring of the chosen layers in place; per-layer ranks and errors, and the output drift."""
    from vitdeploy.compression.decompose import decompose_model

    before = copy.deepcopy(model)
    layers = decompose_model(model, ctx.recipe.decompose)
    model.to(distributed.device())
    x, inputs = ctx.sample()
    ctx.add_stage("factored", model)
    return {"layers": layers, "output_max_abs_diff": max_abs_diff(before, model, x), "inputs": inputs}


def run_compress(loaded: LoadedModel, recipe: Recipe, data: Optional[str], out: Path, recipe_source: str,
                 resume: bool = False, latency=None) -> dict:
    """Compression end to end: the recipe's method (from the method table), optional low-rank factoring, fine-tuning
    (optionally distilled from the dense model), and a model dir with compress.json and the kept-dims plot.
    `latency` is the measuring backend of a latency budget (a budget.LatencyOracle)."""
    ctx = make_context(loaded, recipe, data, out, resume, latency)
    result = run_method(ctx)
    pruned = result.model
    details = dict(result.details)
    if recipe.decompose.enabled:
        details["decompose"] = decompose_stage(ctx, pruned)

    history = {"epochs": []}
    if ctx.train_loader is not None and recipe.finetune.epochs > 0:
        history = fit(pruned, ctx.train_loader, ctx.val_loader, recipe.finetune, teacher=ctx.dense, distill=recipe.distill,
                      desc="fine-tune", checkpoint=ctx.checkpoint("finetune"))
        ctx.add_stage("finetuned", pruned)
    return _write(ctx, result, details, history["epochs"], out, recipe_source)


def _write(ctx: CompressContext, result: MethodResult, details: dict, finetune: list, out: Path,
           recipe_source: str) -> dict:
    recipe, loaded, stages, model = ctx.recipe, ctx.loaded, ctx.stages, result.model
    first, last = stages[0], stages[-1]
    compressed = next(s for s in stages if s["stage"] == "pruned")
    reduction = result.reduction
    report = {
        "recipe": recipe.to_dict(), "recipe_source": recipe_source, "model": loaded.source, "data": ctx.data,
        "params": {"before": first["params"], "after": last["params"]},
        "macs": {"before": first["macs"], "after": last["macs"]},
        "top1": {"before": first["top1"], "pruned": compressed["top1"],
                 "after": last["top1"] if last["stage"] == "finetuned" else None},
        "stages": stages,
        "reduction": reduction | {"params": 1 - last["params"] / first["params"], "macs": 1 - last["macs"] / first["macs"]},
    }
    for key in ("params", "macs"):
        report[key]["ratio"] = report[key]["after"] / report[key]["before"]
    model = model.cpu()
    arch = describe(model, loaded.arch.base, loaded.arch.kwargs)
    report["kept"] = block_table(arch, model.embed_dim)
    report["dense_blocks"] = block_table(describe(ctx.dense, loaded.arch.base, loaded.arch.kwargs), ctx.dense.embed_dim)
    report["equivalence"] = result.equivalence
    report |= details
    report["finetune"] = finetune
    report["provenance"] = provenance(source=loaded.source, data=ctx.data, recipe=recipe.name)
    if distributed.is_main():
        _save(out, model, arch, ctx, report)
    if ctx.checkpoints is not None:
        ctx.checkpoints.finish()
    return report


def _save(out: Path, model: torch.nn.Module, arch, ctx: CompressContext, report: dict) -> None:
    recipe, loaded = ctx.recipe, ctx.loaded
    from vitdeploy.viz.plots import plot_budget, plot_kept_dims  # here: importing compress loads no matplotlib

    with staged_dir(out) as stage:  # compress.json and the plots first, so the model dir's manifest covers them
        report["plot"] = plot_kept_dims(report["kept"], report["dense_blocks"], stage / "kept_dims.png",
                                        f"{recipe.name}: kept dims per block").name
        plots = [report["plot"]]
        budget = report.get("budget") or {}
        if budget.get("measured_ms") is not None:
            report["budget_plot"] = plot_budget(budget, stage / "latency_budget.png",
                                                f"{recipe.name}: latency budget on {budget['backend']}").name
            plots.append(report["budget_plot"])
        atomic_write_json(stage / "compress.json", report)
        save_model_dir(stage, model, arch, ctx.data_config, manifest=("compress.json", *plots),
                       classes=loaded.meta.get("classes"), provenance=report["provenance"],
                       compress={k: report[k] for k in ("recipe", "params", "macs", "top1")})
