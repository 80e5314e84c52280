"""Compression recipes: YAML validated against a dataclass schema (the machinery is `vitdeploy.schema`). Unknown
keys, wrong types and out-of-range values are errors that name the key; `--set a.b=value` overrides any field
before validation. The `method` and `decompose.method` choices come from the tables in `compression/methods.py`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from vitdeploy import schema
from vitdeploy.compression.methods import decomposition_names, get_method, method_names
from vitdeploy.errors import RecipeError
from vitdeploy.schema import Style, spec


@dataclass
class TrainCfg:
    """One training phase (used by `vitdeploy train` and by fine-tuning after compression)."""
    epochs: int = spec(5, lo=0, doc="passes over the training split")
    lr: float = spec(5e-4, lo=0, lo_open=True, doc="peak AdamW learning rate (cosine decay)")
    weight_decay: float = spec(0.05, lo=0, doc="AdamW weight decay")
    warmup_epochs: float = spec(0.0, lo=0, doc="linear warm-up before the cosine decay")
    batch_size: int = spec(64, lo=1, doc="images per step")
    label_smoothing: float = spec(0.1, lo=0, hi=1, hi_open=True, doc="cross-entropy label smoothing")
    augment: bool = spec(False, doc="training-time augmentation of the data spec")


@dataclass
class DistillCfg:
    """Logit distillation from the dense model during fine-tuning: (1-α)·CE + α·T²·KL."""
    enabled: bool = spec(False, doc="distil from the dense model")
    temperature: float = spec(4.0, lo=0, lo_open=True, doc="softmax temperature T")
    alpha: float = spec(0.5, lo=0, hi=1, doc="weight α of the distillation term")


@dataclass
class SparsityCfg(TrainCfg):
    """VTP's sparsity phase: the task loss plus λ·Σ|a| over every importance score, scores trained with the model."""
    epochs: int = spec(10, lo=0, doc="passes over the training split with the L1 term (0: no sparsity phase)")
    l1: float = spec(1e-4, lo=0, doc="λ, weight of the L1 term (the sum of absolute scores) in the objective")
    score_lr: Optional[float] = spec(None, lo=0, lo_open=True, doc="AdamW learning rate of the scores (None: lr)")


SITE_CHOICES = ("embed", "attn_in", "attn_qk", "attn_out", "mlp_in", "mlp_hidden")
BUDGET_KINDS = ("latency_ms", "latency_ratio", "macs_ratio", "params_ratio")
BUDGET_SITES = ("embed", "attn_qk", "attn_out", "mlp_hidden")  # the sites a budget plan chooses widths for


@dataclass
class BudgetCfg:
    """Plan the kept widths to a budget instead of a rate: the most importance whose cost fits (one kind at most)."""
    latency_ms: Optional[float] = spec(None, lo=0, lo_open=True,
                                       doc="absolute latency per call (ms) on `backend` at `batch`")
    latency_ratio: Optional[float] = spec(None, lo=0, hi=1, lo_open=True,
                                          doc="fraction of the dense model's latency, measured on `backend` at `batch`")
    macs_ratio: Optional[float] = spec(None, lo=0, hi=1, lo_open=True, doc="fraction of the dense MACs (for comparison)")
    params_ratio: Optional[float] = spec(None, lo=0, hi=1, lo_open=True,
                                         doc="fraction of the dense params (for comparison)")
    backend: str = spec("ort-cpu", choices=("ort-cpu", "torch-cpu", "torch-cuda", "trt"),
                        doc="where the latency is measured and planned (trt: from a table built on the device)")
    batch: int = spec(8, lo=1, doc="batch size the latency is planned for")
    threads: Optional[int] = spec(None, lo=1, doc="intra-op threads on CPU backends (None: the physical cores)")
    table: Optional[str] = spec(None, doc="a latency table JSON to plan with (vitdeploy latency-table, or the device "
                                          "script for trt); None: measured here first")
    verify: bool = spec(True, doc="measure the pruned model against the dense one and replan on a miss")
    tolerance: float = spec(0.05, lo=0, lo_open=True, hi=1, doc="largest relative miss accepted without replanning")
    replans: int = spec(2, lo=0, hi=5, doc="corrected replans at most after a miss")
    measure_seconds: float = spec(12.0, lo=0, lo_open=True,
                                  doc="seconds each whole model is timed per verification (interleaved, 20 rounds)")

    def kind(self) -> tuple[Optional[str], Optional[float]]:
        """(kind, value) of the one budget set, or (None, None)."""
        given = [(k, getattr(self, k)) for k in BUDGET_KINDS if getattr(self, k) is not None]
        return given[0] if given else (None, None)

    @property
    def active(self) -> bool:
        return self.kind()[0] is not None

    @property
    def measured(self) -> bool:
        """A latency budget: planned from a table and verified on a backend (MACs and params are counted)."""
        return self.kind()[0] in ("latency_ms", "latency_ratio")


@dataclass
class PruneCfg:
    """Which dims to remove and how the plan is shaped."""
    importance: str = spec("learned", choices=("learned", "magnitude", "taylor"),
                           doc="learned: VTP scores from the sparsity phase; magnitude: training-free weight norms "
                               "(each site scaled to mean 1); taylor: the loss change of removing each dim "
                               "(Fisher estimate on taylor_images train images), one scale for every site")
    rate: float = spec(0.3, lo=0, hi=1, hi_open=True, doc="fraction of the scored dims to remove")
    sites: list = spec(["attn_in", "attn_out", "mlp_in", "mlp_hidden"], choices=SITE_CHOICES,
                       doc="where dims are scored and removed (embed: the residual width, one for the whole "
                           "model; attn_out: each head's v dims; attn_qk: its q/k dims)")
    scope: str = spec("global", choices=("global", "uniform"),
                      doc="global: one threshold over all scores; uniform: the same rate in every block and site")
    alignment: int = spec(8, choices=(8, 16, 32, 64), doc="kept counts are multiples of this")
    min_keep: float = spec(0.1, lo=0, hi=1, lo_open=True, doc="minimum kept fraction per site and block")
    remove_heads: bool = spec(False, doc="remove whole heads whose v dims fall below the threshold (needs attn_out)")
    cost: str = spec("dims", choices=("dims", "macs"),
                     doc="global threshold over dims: the scores as they are; macs: each score divided by the MACs "
                         "its dim costs (a residual dim costs every layer), so the plan keeps the most importance "
                         "per MAC")
    taylor_images: int = spec(1024, lo=1, doc="train images the taylor importance is measured on (batches of 32)")
    budget: BudgetCfg = field(default_factory=BudgetCfg)


LAYER_CHOICES = ("qkv", "proj", "fc1", "fc2")


@dataclass
class DecomposeCfg:
    """Low-rank factoring after pruning: each chosen Linear W (out × in) becomes two thin layers of rank r."""
    enabled: bool = spec(False, doc="factor layers after pruning, before fine-tuning")
    method: str = spec("svd", choices=decomposition_names,
                       doc="svd (balanced U√Σ · √ΣVᵀ), qr-full, qr-reduced, qr-pivoted (rank-revealing), cod "
                           "(complete orthogonal), lu (complete pivoting); all with nested, least-squares-optimal factors")
    layers: list = spec(["qkv", "proj"], choices=LAYER_CHOICES, doc="which Linear layers of every block to factor")
    rank_rule: str = spec("ratio", choices=("energy", "ratio", "budget"),
                          doc="energy: keep a fraction of Σσ²; ratio: r = ratio·min(out, in); budget: params/MACs kept")
    energy: float = spec(0.95, lo=0, hi=1, lo_open=True, doc="energy rule: smallest r whose σ² sum reaches this fraction")
    ratio: float = spec(0.5, lo=0, hi=1, lo_open=True, doc="ratio rule: r = ratio · min(out, in)")
    budget: float = spec(0.5, lo=0, hi=1, lo_open=True,
                         doc="budget rule: the factored layers keep at most this fraction of their params (and MACs)")
    alignment: int = spec(8, choices=(8, 16, 32, 64),
                         doc="ranks are multiples of this (rounded up by energy and ratio, down by budget)")


@dataclass
class McfCfg:
    """MCF: FFN importance from the class token's contributions (FIS), cut as structured dims (CRS), back to front."""
    calib_images: int = spec(1024, lo=1, doc="calibration images for the importance (the whole train split if fewer)")
    token: str = spec("auto", choices=("auto", "cls", "mean"),
                      doc="token whose contributions are scored (auto: the class token, else the mean patch token)")
    threshold: float = spec(0.01, lo=0, lo_open=True,
                            doc="a product x_c·W1[j, c] is negligible when below this fraction of the output it sums into")
    hidden_threshold: Optional[float] = spec(None, lo=0, lo_open=True,
                                             doc="the same for fc2's products h_j·W2[o, j], which score the hidden dims "
                                                 "(None: threshold)")
    in_rate: Optional[float] = spec(None, lo=0, hi=1, hi_open=True,
                                    doc="fraction of fc1 input dims to remove (None: prune.rate, which sets the hidden dims)")
    input_rule: str = spec("uniform", choices=("uniform", "per_layer", "embed"),
                           doc="uniform: every FFN keeps the same input dims, the residual is permuted once so each "
                               "select is a slice (X-Transformation); per_layer: each FFN its own dims (a gather each); "
                               "embed: the shared input dims become the residual width, cut from the whole model")
    recovery_epochs: int = spec(1, lo=0, doc="training epochs (finetune settings) after each FFN is compressed")


@dataclass
class Recipe:
    name: str = spec("", doc="recipe name (default: the YAML file name)")
    method: str = spec("vtp", choices=method_names,
                       doc="vtp: learned or magnitude importance over the chosen sites; mcf: FFN compression; "
                           "more can be registered (compression/methods.py)")
    description: str = spec("", doc="one line for reports")
    seed: int = spec(0, doc="seed for data order and sampling")
    prune: PruneCfg = field(default_factory=PruneCfg)
    sparsity: SparsityCfg = field(default_factory=SparsityCfg)
    finetune: TrainCfg = field(default_factory=TrainCfg)
    distill: DistillCfg = field(default_factory=DistillCfg)
    decompose: DecomposeCfg = field(default_factory=DecomposeCfg)
    mcf: McfCfg = field(default_factory=McfCfg)
    eval_batches: Optional[int] = spec(None, lo=1, doc="limit evaluation to this many val batches (None: all)")
    train_images: Optional[int] = spec(None, lo=1,
                                       doc="train every phase on a fixed subset of this many train images, the same "
                                           "whatever the seed (None: the whole split); for shortened schedules")
    checkpoint_every: int = spec(0, lo=0, doc="checkpoint every N optimiser steps as well as at epoch ends (0: epoch ends)")

    def check(self) -> "Recipe":
        """Rules that span fields; each failure names the keys."""
        if len(set(self.prune.sites)) != len(self.prune.sites):
            raise RecipeError("recipe field 'prune.sites' lists a site twice")
        get_method(self.method).check_recipe(self)
        if self.decompose.enabled and len(set(self.decompose.layers)) != len(self.decompose.layers):
            raise RecipeError("recipe field 'decompose.layers' lists a layer twice")
        b = self.prune.budget
        given = [k for k in BUDGET_KINDS if getattr(b, k) is not None]
        if len(given) > 1:
            raise RecipeError(f"prune.budget sets both {given[0]} and {given[1]}: give one budget")
        if b.active:
            if self.method != "vtp":
                raise RecipeError(f"prune.budget plans VTP's widths: method '{self.method}' has no budget planner")
            other = [s for s in self.prune.sites if s not in BUDGET_SITES]
            if other:
                raise RecipeError(f"prune.budget chooses widths for the sites {', '.join(BUDGET_SITES)}; remove {other[0]} "
                                  "from prune.sites")
            if self.prune.remove_heads:
                raise RecipeError("prune.budget keeps every head (the table times head-uniform widths): set "
                                  "prune.remove_heads=false")
            if self.prune.scope != "global":
                raise RecipeError("prune.budget replaces the rate: prune.scope 'uniform' does not apply to it")
            if self.decompose.enabled:
                raise RecipeError("prune.budget plans the pruned widths, and low-rank factoring after it would change "
                                  "the latency it planned: use one or the other")
            if b.backend == "trt" and b.measured and b.table is None:
                raise RecipeError("prune.budget.backend 'trt' plans from a table measured on the device: set "
                                  "prune.budget.table (see vitdeploy latency-table --backend trt)")
        if self.prune.remove_heads and "attn_out" not in self.prune.sites:
            raise RecipeError("prune.remove_heads needs 'attn_out' in prune.sites (a head is removed when its v dims are)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------------
STYLE = Style(RecipeError, "recipe")
PACKAGE = "vitdeploy.recipes"


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`key.sub=value` strings (value parsed as YAML) written into the raw recipe mapping."""
    return schema.apply_overrides(data, overrides, STYLE)


def available_recipes() -> list[str]:
    return schema.packaged(PACKAGE)


def locate_recipe(name_or_path: str) -> tuple[Any, str]:
    """The file behind a packaged recipe name or a YAML path, and a label for where it came from."""
    return schema.locate(name_or_path, PACKAGE, STYLE)


def recipe_from_dict(data: dict, overrides: Optional[list[str]] = None) -> Recipe:
    """Validate a raw mapping (with `--set` overrides applied first) into a checked Recipe."""
    return schema.build(STYLE, Recipe, apply_overrides(data, list(overrides or []))).check()


def load_recipe(name_or_path: str, overrides: Optional[list[str]] = None) -> Recipe:
    data, _, name = schema.load(name_or_path, PACKAGE, STYLE)
    data.setdefault("name", name)
    return recipe_from_dict(data, overrides)


def schema_rows(cls: type = Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every leaf field: the recipe reference in docs/ is generated from this."""
    return schema.rows(cls, prefix)
