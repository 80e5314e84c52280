"""What every compression method works with and returns: the typed context (`CompressContext`), the typed result
(`MethodResult`, whose docstring is the written contract), and `run_method`, which dispatches through the method
table and holds every method to that contract."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from vitdeploy import distributed
from vitdeploy.compression.checkpoint import PhaseCheckpoint, RunCheckpoints
from vitdeploy.compression.methods import get_method
from vitdeploy.compression.recipe import Recipe, TrainCfg
from vitdeploy.compression.train import evaluate_top1, seed_everything
from vitdeploy.data import calibration_subset, dataset_data_config, load_dataset, make_loader
from vitdeploy.errors import DataError, VitDeployError
from vitdeploy.models import LoadedModel, count_macs, count_params


def data_config_for(loaded: LoadedModel, data: Optional[str]) -> dict:
    """The preprocessing the model sees: datasets that carry their own normalisation (digits, fashion-mnist) give
    it; image folders use timm's config."""
    own = dataset_data_config(data, tuple(loaded.data_config["input_size"])) if data is not None else None
    return dict(own) if own is not None else dict(loaded.data_config)


def is_fresh(loaded: LoadedModel) -> bool:
    """A timm name built with random weights: nothing trained to lose when its head is replaced."""
    return loaded.source.get("kind") == "timm" and not loaded.source.get("pretrained")


def match_classes(loaded: LoadedModel, num_classes: int, data: str = "the data", new_head: bool = False) -> bool:
    """Give the model a head for the data's classes when it has another number of them. True if it changed.

    A fresh model gets one without asking; a trained one (model dir, checkpoint, pretrained weights) only with
    `new_head`, since its head's classes are what its accuracy means."""
    if loaded.model.num_classes == num_classes:
        return False
    if not (new_head or is_fresh(loaded)):
        raise DataError(f"the model scores {loaded.model.num_classes} classes but {data} has {num_classes}: pass "
                        f"--new-head to train a fresh head for this data")
    loaded.model.reset_classifier(num_classes)
    loaded.arch.kwargs["num_classes"] = num_classes
    return True


TRAIN_SUBSET_SEED = 0  # a shortened schedule trains every seed and every method on the same images


def make_loaders(data: str, data_config: dict, batch_size: int, seed: int, augment: bool,
                 train_images: Optional[int] = None, skip_bad_images: bool = False):
    """Train and val loaders; with `train_images`, the train split is a fixed subset of that many images."""
    train = load_dataset(data, "train", data_config, augment=augment, seed=seed, skip_bad_images=skip_bad_images)
    if train_images is not None and train_images < len(train):
        train = calibration_subset(train, train_images, TRAIN_SUBSET_SEED)
    val = load_dataset(data, "val", data_config, skip_bad_images=skip_bad_images)
    return (make_loader(train, batch_size, shuffle=True, seed=seed, drop_last=len(train) > batch_size, shard=True),
            make_loader(val, 256, shard=True), train, val)


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
    latency: Any = None  # a budget.LatencyOracle where a latency budget is planned (the API passes one in)

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
        return make_loaders(self.data, self.data_config, cfg.batch_size, self.recipe.seed, cfg.augment,
                            self.recipe.train_images)[0]

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
                 resume: bool = False, latency: Any = None) -> CompressContext:
    """Seeds, loaders (when there is data), checkpoints (when there is an output) and the dense stage row."""
    seed_everything(recipe.seed)
    data_config = data_config_for(loaded, data)
    ctx = CompressContext(loaded, recipe, data, data_config, loaded.model.to(distributed.device()).eval(),
                          latency=latency)
    if out is not None:
        ctx.checkpoints = RunCheckpoints(out, {"command": "compress", "model": loaded.source, "data": data,
                                               "recipe": recipe.to_dict()}, resume, recipe.checkpoint_every)
    if data is not None:
        ctx.train_loader, ctx.val_loader, ctx.train_set, _ = make_loaders(data, data_config, recipe.finetune.batch_size,
                                                                      recipe.seed, recipe.finetune.augment,
                                                                      recipe.train_images)
        if ctx.train_set.num_classes != ctx.dense.num_classes:
            raise VitDeployError(f"the model has {ctx.dense.num_classes} classes but data '{data}' has "
                                 f"{ctx.train_set.num_classes}: train it on this data first (vitdeploy train)")
    ctx.add_stage("dense", ctx.dense)
    return ctx


@dataclass
class MethodResult:
    """What a compression method's `run(ctx)` returns: the contract every method keeps.

    - `model`: the compressed model, on `ctx`'s device, physically smaller (removed dims gone, not masked). The
      pipeline adds the "pruned" stage row for it (params, MACs, top-1), then optionally factors and fine-tunes it.
      `ctx.dense` must be left untouched (it is the distillation teacher and the report's baseline).
    - `reduction`: what the method removed, at least {"rate": float}; the pipeline adds the params and MACs cut.
    - `equivalence`: how the compressed model was checked against its masked reference, at least
      {"max_abs_diff": float, "reference": str (what it was compared with), "inputs": str (which inputs)}.
    - `details`: method-specific fields for compress.json (e.g. "plan"); keys may not clash with the pipeline's.
    - `stage`: extra fields for the "pruned" stage row (e.g. recovery epochs spent).

    A method may add stages before "pruned" through `ctx.add_stage` (VTP adds "sparsity"); it must not add
    "pruned", "factored" or "finetuned" itself. Training phases checkpoint through `ctx.checkpoint(phase)`.
    """

    model: torch.nn.Module
    reduction: dict
    equivalence: dict
    details: dict = field(default_factory=dict)
    stage: dict = field(default_factory=dict)


RESERVED_KEYS = frozenset({"recipe", "recipe_source", "model", "data", "params", "macs", "top1", "stages", "reduction",
                           "equivalence", "kept", "dense_blocks", "finetune", "provenance", "plot", "decompose"})
PIPELINE_STAGES = ("pruned", "factored", "finetuned")


def check_result(name: str, result: Any, ctx: CompressContext) -> MethodResult:
    """Raise an internal error naming the method and the broken clause when `result` breaks the contract."""
    def broken(what: str) -> RuntimeError:  # a bug in the method, not a user error: the internal-error path
        return RuntimeError(f"compression method {name!r} broke its contract: {what}")

    if not isinstance(result, MethodResult):
        raise broken(f"run() returned {type(result).__name__}, not a MethodResult")
    if not isinstance(result.model, torch.nn.Module):
        raise broken("MethodResult.model is not an nn.Module")
    if not isinstance(result.reduction.get("rate"), (int, float)):
        raise broken("MethodResult.reduction has no numeric 'rate'")
    missing = [k for k in ("max_abs_diff", "reference", "inputs") if k not in result.equivalence]
    if missing:
        raise broken(f"MethodResult.equivalence lacks {missing[0]!r}")
    clash = sorted(RESERVED_KEYS & set(result.details))
    if clash:
        raise broken(f"MethodResult.details uses the pipeline's key {clash[0]!r}")
    if any(s["stage"] in PIPELINE_STAGES for s in ctx.stages):
        raise broken("it added a 'pruned', 'factored' or 'finetuned' stage itself")
    return result


def run_method(ctx: CompressContext) -> MethodResult:
    """The recipe's method on `ctx`, held to the contract, with the "pruned" stage row added."""
    name = ctx.recipe.method
    result = check_result(name, get_method(name).load()(ctx), ctx)
    ctx.add_stage("pruned", result.model, **result.stage)
    return result
