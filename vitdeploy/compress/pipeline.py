"""The train and compress stages end to end: data, model, work, measurements, and an atomically written model dir."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import torch

from vitdeploy.compress.magnitude import magnitude_plan
from vitdeploy.compress.plan import apply_plan, masked_copy, plan_to_dict
from vitdeploy.compress.recipe import Recipe, TrainCfg
from vitdeploy.compress.train import evaluate_top1, fit, seed_everything
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
def _equivalence(pruned: torch.nn.Module, masked: torch.nn.Module, x: torch.Tensor) -> float:
    return (pruned.eval()(x) - masked.eval()(x)).abs().max().item()


def run_compress(loaded: LoadedModel, recipe: Recipe, data: Optional[str], out: Path, recipe_source: str) -> dict:
    seed_everything(recipe.seed)
    data_config = data_config_for(loaded, data)
    input_size = tuple(data_config["input_size"])
    dense = loaded.model.eval()
    train_loader = val_loader = None
    if data is not None:
        train_loader, val_loader, train_ds, _ = _loaders(data, data_config, recipe.finetune.batch_size, recipe.seed,
                                                         recipe.finetune.augment)
        if train_ds.num_classes != dense.num_classes:
            raise VitDeployError(f"the model has {dense.num_classes} classes but data '{data}' has {train_ds.num_classes}: "
                                 "train it on this data first (vitdeploy train)")
    top1 = (lambda m: evaluate_top1(m, val_loader, recipe.eval_batches)) if val_loader is not None else (lambda m: None)

    plan = magnitude_plan(dense, recipe.prune)
    pruned = apply_plan(copy.deepcopy(dense), plan)
    x = next(iter(val_loader))[0][:32] if val_loader is not None else torch.randn(8, *input_size, generator=torch.Generator().manual_seed(0))
    max_diff = _equivalence(pruned, masked_copy(dense, plan), x)

    report = {
        "recipe": recipe.to_dict(), "recipe_source": recipe_source, "model": loaded.source, "data": data,
        "params": {"before": count_params(dense), "after": count_params(pruned)},
        "macs": {"before": count_macs(dense, input_size), "after": count_macs(pruned, input_size)},
        "top1": {"before": top1(dense), "pruned": top1(pruned), "after": None},
        "equivalence": {"max_abs_diff": max_diff, "inputs": "val images" if val_loader is not None else "seeded random"},
    }
    history = {"epochs": []}
    if train_loader is not None and recipe.finetune.epochs > 0:
        history = fit(pruned, train_loader, val_loader, recipe.finetune, teacher=dense, distill=recipe.distill, desc="fine-tune")
    report["top1"]["after"] = top1(pruned) if val_loader is not None else None
    for key in ("params", "macs"):
        report[key]["ratio"] = report[key]["after"] / report[key]["before"]
    arch = describe(pruned, loaded.arch.base, loaded.arch.kwargs)
    report["kept"] = block_table(arch)
    report["plan"] = plan_to_dict(plan)
    report["finetune"] = history["epochs"]
    report["provenance"] = provenance(source=loaded.source, data=data, recipe=recipe.name)
    with staged_dir(out) as stage:
        save_model_dir(stage, pruned, arch, data_config, classes=loaded.meta.get("classes"),
                       provenance=report["provenance"], compress={k: report[k] for k in ("recipe", "params", "macs", "top1")})
        atomic_write_json(stage / "compress.json", report)
    return report
