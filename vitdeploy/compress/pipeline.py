"""The train and compress stages end to end: data, model, work, measurements, and an atomically written model dir."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset

from vitdeploy import distributed
from vitdeploy.bench.plots import plot_kept_dims
from vitdeploy.compress.checkpoint import PhaseCheckpoint, RunCheckpoints
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
    return (make_loader(train, batch_size, shuffle=True, seed=seed, drop_last=len(train) > batch_size, shard=True),
            make_loader(val, 256, shard=True), train, val)


def run_train(loaded: LoadedModel, data: str, cfg: TrainCfg, out: Path, seed: int = 0, resume: bool = False,
              checkpoint_every: int = 0) -> dict:
    """Train and write a model dir. Checkpoints go to OUT.ckpt/ (see compress.checkpoint); `resume` continues them."""
    seed_everything(seed)
    data_config = data_config_for(loaded, data)
    train_loader, val_loader, train_ds, _ = _loaders(data, data_config, cfg.batch_size, seed, cfg.augment)
    reset = match_classes(loaded, train_ds.num_classes)
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
    if distributed.is_main():
        with staged_dir(out) as stage:
            save_model_dir(stage, model, arch, data_config, classes=list(train_ds.classes),
                           provenance=provenance(source=loaded.source, data=data), train=summary)
    ckpts.finish()
    return summary


@torch.no_grad()
def max_abs_diff(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    return (a.eval()(x) - b.eval()(x)).abs().max().item()


@dataclass
class CompressContext:
    """What every compression method works with: the dense model, the data, the accuracy probe and the stage
    table that ends up in compress.json. Methods add stages through `add_stage`."""

    loaded: LoadedModel
    recipe: Recipe
    data: Optional[str]
    data_config: dict
    dense: torch.nn.Module
    train_loader: Optional[DataLoader] = None
    val_loader: Optional[DataLoader] = None
    train_set: Optional[Dataset] = None
    stages: list = field(default_factory=list)
    checkpoints: Optional[RunCheckpoints] = None

    @property
    def input_size(self) -> tuple:
        return tuple(self.data_config["input_size"])

    def top1(self, model: torch.nn.Module) -> Optional[float]:
        return evaluate_top1(model, self.val_loader, self.recipe.eval_batches) if self.val_loader is not None else None

    def add_stage(self, name: str, model: torch.nn.Module, **extra) -> dict:
        row = {"stage": name, "params": count_params(model), "macs": count_macs(model, self.input_size),
               "top1": self.top1(model)} | extra
        self.stages.append(row)
        return row

    def train_loader_for(self, cfg: TrainCfg) -> DataLoader:
        """The fine-tuning loader, or a fresh one when a phase uses another batch size or augmentation."""
        ft = self.recipe.finetune
        if cfg.batch_size == ft.batch_size and cfg.augment == ft.augment:
            return self.train_loader
        return _loaders(self.data, self.data_config, cfg.batch_size, self.recipe.seed, cfg.augment)[0]

    def checkpoint(self, phase: str) -> Optional[PhaseCheckpoint]:
        """Where a training phase of this run saves and resumes (None when the run keeps no checkpoints)."""
        return self.checkpoints.phase(phase) if self.checkpoints is not None else None

    def sample(self, n: int = 32) -> tuple[torch.Tensor, str]:
        """Inputs for equivalence checks: val images where there is data, seeded noise otherwise."""
        if self.val_loader is not None:
            return next(iter(self.val_loader))[0][:n].to(distributed.device()), "val images"
        x = torch.randn(min(n, 8), *self.input_size, generator=torch.Generator().manual_seed(0))
        return x.to(distributed.device()), "seeded random"


def make_context(loaded: LoadedModel, recipe: Recipe, data: Optional[str], out: Optional[Path] = None,
                 resume: bool = False) -> CompressContext:
    """Seeds, loaders (when there is data), checkpoints (when there is an output) and the dense stage row."""
    seed_everything(recipe.seed)
    data_config = data_config_for(loaded, data)
    ctx = CompressContext(loaded, recipe, data, data_config, loaded.model.to(distributed.device()).eval())
    if out is not None:
        ctx.checkpoints = RunCheckpoints(out, {"command": "compress", "model": loaded.source, "data": data,
                                               "recipe": recipe.to_dict()}, resume, recipe.checkpoint_every)
    if data is not None:
        ctx.train_loader, ctx.val_loader, ctx.train_set, _ = _loaders(data, data_config, recipe.finetune.batch_size,
                                                                      recipe.seed, recipe.finetune.augment)
        if ctx.train_set.num_classes != ctx.dense.num_classes:
            raise VitDeployError(f"the model has {ctx.dense.num_classes} classes but data '{data}' has "
                                 f"{ctx.train_set.num_classes}: train it on this data first (vitdeploy train)")
    ctx.add_stage("dense", ctx.dense)
    return ctx


def vtp_stage(ctx: CompressContext) -> tuple[torch.nn.Module, dict]:
    """VTP: gates trained with the L1 term (learned importance) or weight magnitudes, a global-threshold plan,
    fold + slice checked against the masked gated model."""
    cfg, recipe = ctx.recipe.prune, ctx.recipe
    if cfg.importance == "learned" and ctx.data is None:
        raise VitDeployError("prune.importance 'learned' trains importance scores and needs --data "
                             "(or use --set prune.importance=magnitude for a training-free plan)")
    base = copy.deepcopy(ctx.dense)
    sparsity_history: list = []
    if cfg.importance == "learned":
        gates = attach_gates(base, cfg.sites)
        sp = recipe.sparsity
        sparsity_history = fit(base, ctx.train_loader_for(sp), ctx.val_loader, sp, desc="sparsity", gates=gates,
                               checkpoint=ctx.checkpoint("sparsity"))["epochs"]
        ctx.add_stage("sparsity", base, scores=gates.numel())
        detach_gates(base)
        scores = {(b, s): a.detach().clone() for b, s, a in gates.items()}
        gate_values = scores
    else:  # magnitudes rank the dims; the gates stay 1, so folding them changes nothing
        scores = magnitude_scores(base, list(cfg.sites))
        gate_values = {k: torch.ones_like(v) for k, v in scores.items()}

    # the plan; the masked reference (gated, dropped scores zeroed); the pruned model (scores folded, then sliced)
    plan, keep = plan_from_scores(base, scores, cfg)
    pruned, masked = prune_with_reference(base, list(cfg.sites), gate_values, plan, keep)
    pruned = pruned.to(distributed.device())  # sliced modules are built on the CPU
    x, inputs = ctx.sample()
    max_diff = max_abs_diff(pruned, masked, x)
    del masked, base
    ctx.add_stage("pruned", pruned)
    return pruned, {
        "plan": plan_to_dict(plan), "sparsity": sparsity_history,
        "reduction": {"rate": cfg.rate, "scored_dims": sum(v.numel() for v in scores.values()),
                      "kept_dims": sum(len(k) for k in keep.values())},
        "equivalence": {"max_abs_diff": max_diff, "reference": "gated model with the dropped scores zeroed",
                        "inputs": inputs},
    }


def decompose_stage(ctx: CompressContext, model: torch.nn.Module) -> dict:
    """Low-rank factoring of the chosen layers in place; per-layer ranks and errors, and the output drift."""
    from vitdeploy.compress.decompose import decompose_model

    before = copy.deepcopy(model)
    layers = decompose_model(model, ctx.recipe.decompose)
    model.to(distributed.device())
    x, inputs = ctx.sample()
    ctx.add_stage("factored", model)
    return {"layers": layers, "output_max_abs_diff": max_abs_diff(before, model, x), "inputs": inputs}


def run_compress(loaded: LoadedModel, recipe: Recipe, data: Optional[str], out: Path, recipe_source: str,
                 resume: bool = False) -> dict:
    """Compression end to end: the method's pruning stage (VTP or MCF), optional low-rank factoring, fine-tuning
    (optionally distilled from the dense model), and a model dir with compress.json and the kept-dims plot."""
    ctx = make_context(loaded, recipe, data, out, resume)

    if recipe.method == "mcf":
        from vitdeploy.compress.mcf import run_mcf

        pruned, details = run_mcf(ctx)
    else:
        pruned, details = vtp_stage(ctx)
    if recipe.decompose.enabled:
        details["decompose"] = decompose_stage(ctx, pruned)

    history = {"epochs": []}
    if ctx.train_loader is not None and recipe.finetune.epochs > 0:
        history = fit(pruned, ctx.train_loader, ctx.val_loader, recipe.finetune, teacher=ctx.dense, distill=recipe.distill,
                      desc="fine-tune", checkpoint=ctx.checkpoint("finetune"))
        ctx.add_stage("finetuned", pruned)
    return _write(ctx, pruned, details, history["epochs"], out, recipe_source)


def _write(ctx: CompressContext, model: torch.nn.Module, details: dict, finetune: list, out: Path,
           recipe_source: str) -> dict:
    recipe, loaded, stages = ctx.recipe, ctx.loaded, ctx.stages
    first, last = stages[0], stages[-1]
    compressed = next(s for s in stages if s["stage"] == "pruned")
    reduction = details.pop("reduction", {})
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
    report["kept"] = block_table(arch)
    report["dense_blocks"] = block_table(describe(ctx.dense, loaded.arch.base, loaded.arch.kwargs))
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
    with staged_dir(out) as stage:  # compress.json and the plot first, so the model dir's manifest covers them
        report["plot"] = plot_kept_dims(report["kept"], report["dense_blocks"], stage / "kept_dims.png",
                                        f"{recipe.name}: kept dims per block").name
        atomic_write_json(stage / "compress.json", report)
        save_model_dir(stage, model, arch, ctx.data_config, manifest=("compress.json", report["plot"]),
                       classes=loaded.meta.get("classes"), provenance=report["provenance"],
                       compress={k: report[k] for k in ("recipe", "params", "macs", "top1")})
