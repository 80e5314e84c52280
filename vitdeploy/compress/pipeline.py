"""The train and compress stages end to end: data, model, work, measurements, and an atomically written model dir."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import torch

from vitdeploy.bench.plots import plot_kept_dims
from vitdeploy.compress.gates import attach_gates, detach_gates
from vitdeploy.compress.plan import plan_to_dict
from vitdeploy.compress.recipe import Recipe, TrainCfg
from vitdeploy.compress.train import evaluate_top1, fit, seed_everything
from vitdeploy.compress.vtp import magnitude_scores, plan_from_scores, prune_with_reference
from vitdeploy.data import digits_data_config, load_dataset, make_loader, parse_data_spec
from vitdeploy.errors import VitDeployError
from vitdeploy.io import atomic_write_json, staged_dir
from vitdeploy.models import LoadedModel, block_table, count_macs, count_params, describe, save_model_dir
from vitdeploy.provenance import provenance


def data_config_for(loaded: LoadedModel, data: Optional[str]) -> dict:
    """The preprocessing the model sees: digits carries its own normalisation; image folders use timm's config."""
    if data is not None and parse_data_spec(data).kind == "digits":
        return digits_data_config(tuple(loaded.data_config["input_size"]))
    return dict(loaded.data_config)


def match_classes(loaded: LoadedModel, num_classes: int) -> bool:
    """Give the model a fresh head when the data has a different number of classes. True if it changed."""
    if loaded.model.num_classes == num_classes:
        return False
    loaded.model.reset_classifier(num_classes)
    loaded.arch.kwargs["num_classes"] = num_classes
    return True


def _loaders(data: str, data_config: dict, batch_size: int, seed: int, augment: bool):
    train = load_dataset(data, "train", data_config, augment=augment, seed=seed)
    val = load_dataset(data, "val", data_config)
    return (make_loader(train, batch_size, shuffle=True, seed=seed, drop_last=len(train) > batch_size),
            make_loader(val, 256), train, val)


def run_train(loaded: LoadedModel, data: str, cfg: TrainCfg, out: Path, seed: int = 0) -> dict:
    seed_everything(seed)
    data_config = data_config_for(loaded, data)
    train_loader, val_loader, train_ds, _ = _loaders(data, data_config, cfg.batch_size, seed, cfg.augment)
    reset = match_classes(loaded, train_ds.num_classes)
    model = loaded.model
    history = fit(model, train_loader, val_loader, cfg, desc="train")
    arch = describe(model, loaded.arch.base, loaded.arch.kwargs)
    summary = {
        "data": data, "classes": list(train_ds.classes), "head_reset": reset,
        "params": count_params(model), "macs": count_macs(model, tuple(data_config["input_size"])),
        "top1": history["val_top1"], "history": history["epochs"], "train_config": vars(cfg) | {"seed": seed},
    }
    with staged_dir(out) as stage:
        save_model_dir(stage, model, arch, data_config, classes=list(train_ds.classes),
                       provenance=provenance(source=loaded.source, data=data), train=summary)
    return summary


@torch.no_grad()
def _max_diff(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    return (a.eval()(x) - b.eval()(x)).abs().max().item()


def _stage(name: str, model: torch.nn.Module, input_size: tuple, top1: Optional[float]) -> dict:
    return {"stage": name, "params": count_params(model), "macs": count_macs(model, input_size), "top1": top1}


def run_compress(loaded: LoadedModel, recipe: Recipe, data: Optional[str], out: Path, recipe_source: str) -> dict:
    """VTP end to end: gates, sparsity training (learned importance) or weight magnitudes, a global-threshold
    plan, fold + slice (checked against the masked gated model), fine-tuning, and a model dir with compress.json."""
    seed_everything(recipe.seed)
    cfg = recipe.prune
    data_config = data_config_for(loaded, data)
    input_size = tuple(data_config["input_size"])
    dense = loaded.model.eval()
    if cfg.importance == "learned" and data is None:
        raise VitDeployError("prune.importance 'learned' trains importance scores and needs --data "
                             "(or use --set prune.importance=magnitude for a training-free plan)")
    train_loader = val_loader = None
    if data is not None:
        train_loader, val_loader, train_ds, _ = _loaders(data, data_config, recipe.finetune.batch_size, recipe.seed,
                                                         recipe.finetune.augment)
        if train_ds.num_classes != dense.num_classes:
            raise VitDeployError(f"the model has {dense.num_classes} classes but data '{data}' has {train_ds.num_classes}: "
                                 "train it on this data first (vitdeploy train)")
    top1 = (lambda m: evaluate_top1(m, val_loader, recipe.eval_batches)) if val_loader is not None else (lambda m: None)
    stages = [_stage("dense", dense, input_size, top1(dense))]

    # 1. importance: VTP gates trained with the L1 term (the weights train too), or weight magnitudes
    base = copy.deepcopy(dense)
    sparsity_history: list = []
    if cfg.importance == "learned":
        gates = attach_gates(base, cfg.sites)
        sp = recipe.sparsity
        sp_loader = train_loader if sp.batch_size == recipe.finetune.batch_size else _loaders(
            data, data_config, sp.batch_size, recipe.seed, sp.augment)[0]
        sparsity_history = fit(base, sp_loader, val_loader, sp, desc="sparsity", gates=gates)["epochs"]
        stages.append(_stage("sparsity", base, input_size, top1(base)) | {"scores": gates.numel()})
        detach_gates(base)
        scores = {(b, s): a.detach().clone() for b, s, a in gates.items()}
        gate_values = scores
    else:  # magnitudes rank the dims; the gates stay 1, so folding them changes nothing
        scores = magnitude_scores(base, list(cfg.sites))
        gate_values = {k: torch.ones_like(v) for k, v in scores.items()}

    # 2. plan; the masked reference (gated, dropped scores zeroed); the pruned model (scores folded, then sliced)
    plan, keep = plan_from_scores(base, scores, cfg)
    pruned, masked = prune_with_reference(base, list(cfg.sites), gate_values, plan, keep)
    x = next(iter(val_loader))[0][:32] if val_loader is not None else torch.randn(8, *input_size, generator=torch.Generator().manual_seed(0))
    max_diff = _max_diff(pruned, masked, x)
    del masked, base
    stages.append(_stage("pruned", pruned, input_size, top1(pruned)))

    # 3. fine-tuning without the L1 term, optionally distilled from the dense model
    history = {"epochs": []}
    if train_loader is not None and recipe.finetune.epochs > 0:
        history = fit(pruned, train_loader, val_loader, recipe.finetune, teacher=dense, distill=recipe.distill, desc="fine-tune")
        stages.append(_stage("finetuned", pruned, input_size, top1(pruned)))

    first, last = stages[0], stages[-1]
    report = {
        "recipe": recipe.to_dict(), "recipe_source": recipe_source, "model": loaded.source, "data": data,
        "params": {"before": first["params"], "after": last["params"]},
        "macs": {"before": first["macs"], "after": last["macs"]},
        "top1": {"before": first["top1"], "pruned": next(s["top1"] for s in stages if s["stage"] == "pruned"),
                 "after": last["top1"] if last["stage"] == "finetuned" else None},
        "stages": stages,
        "reduction": {"rate": cfg.rate, "params": 1 - last["params"] / first["params"],
                      "macs": 1 - last["macs"] / first["macs"],
                      "scored_dims": sum(v.numel() for v in scores.values()),
                      "kept_dims": sum(len(k) for k in keep.values())},
        "equivalence": {"max_abs_diff": max_diff, "reference": "gated model with the dropped scores zeroed",
                        "inputs": "val images" if val_loader is not None else "seeded random"},
    }
    for key in ("params", "macs"):
        report[key]["ratio"] = report[key]["after"] / report[key]["before"]
    arch = describe(pruned, loaded.arch.base, loaded.arch.kwargs)
    report["kept"] = block_table(arch)
    report["dense_blocks"] = block_table(describe(dense, loaded.arch.base, loaded.arch.kwargs))
    report["plan"] = plan_to_dict(plan)
    report["sparsity"] = sparsity_history
    report["finetune"] = history["epochs"]
    report["provenance"] = provenance(source=loaded.source, data=data, recipe=recipe.name)
    with staged_dir(out) as stage:
        save_model_dir(stage, pruned, arch, data_config, classes=loaded.meta.get("classes"),
                       provenance=report["provenance"], compress={k: report[k] for k in ("recipe", "params", "macs", "top1")})
        report["plot"] = plot_kept_dims(report["kept"], report["dense_blocks"], stage / "kept_dims.png",
                                        f"{recipe.name}: kept dims per block").name
        atomic_write_json(stage / "compress.json", report)
    return report

