"""Compression recipes: YAML validated against a dataclass schema. Unknown keys, wrong types and out-of-range
values are errors that name the key; `--set a.b=value` overrides any field before validation."""
from __future__ import annotations

import dataclasses
import importlib.resources
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from vitdeploy.errors import RecipeError


def spec(default: Any = dataclasses.MISSING, *, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, hi_open: bool = False, choices: tuple | None = None, doc: str = "", **kw: Any) -> Any:
    """A schema field: bounds (closed unless *_open), allowed choices, and a one-line doc for the README."""
    meta = dict(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, choices=choices, doc=doc)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


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


SITE_CHOICES = ("attn_in", "attn_qk", "attn_out", "mlp_in", "mlp_hidden")


@dataclass
class PruneCfg:
    """Which dims to remove and how the plan is shaped."""
    importance: str = spec("learned", choices=("learned", "magnitude"),
                           doc="learned: VTP scores from the sparsity phase; magnitude: training-free weight norms")
    rate: float = spec(0.3, lo=0, hi=1, hi_open=True, doc="fraction of the scored dims to remove")
    sites: list = spec(["attn_in", "attn_out", "mlp_in", "mlp_hidden"], choices=SITE_CHOICES,
                       doc="where dims are scored and removed (attn_out: each head's v dims; attn_qk: its q/k dims)")
    scope: str = spec("global", choices=("global", "uniform"),
                      doc="global: one threshold over all scores; uniform: the same rate in every block and site")
    alignment: int = spec(8, choices=(8, 16, 32, 64), doc="kept counts are multiples of this")
    min_keep: float = spec(0.1, lo=0, hi=1, lo_open=True, doc="minimum kept fraction per site and block")
    remove_heads: bool = spec(False, doc="remove whole heads whose v dims fall below the threshold (needs attn_out)")


DECOMPOSE_METHODS = ("svd", "qr-full", "qr-reduced", "qr-pivoted", "cod", "lu")
LAYER_CHOICES = ("qkv", "proj", "fc1", "fc2")


@dataclass
class DecomposeCfg:
    """Low-rank factoring after pruning: each chosen Linear W (out × in) becomes two thin layers of rank r."""
    enabled: bool = spec(False, doc="factor layers after pruning, before fine-tuning")
    method: str = spec("svd", choices=DECOMPOSE_METHODS,
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
    input_rule: str = spec("uniform", choices=("uniform", "per_layer"),
                           doc="uniform: every FFN keeps the same input dims, the residual is permuted once so each "
                               "select is a slice (X-Transformation); per_layer: each FFN its own dims (a gather each)")
    recovery_epochs: int = spec(1, lo=0, doc="training epochs (finetune settings) after each FFN is compressed")


@dataclass
class Recipe:
    name: str = spec("", doc="recipe name (default: the YAML file name)")
    method: str = spec("vtp", choices=("vtp", "mcf"),
                       doc="vtp: learned or magnitude importance over the chosen sites; mcf: FFN compression")
    description: str = spec("", doc="one line for reports")
    seed: int = spec(0, doc="seed for data order and sampling")
    prune: PruneCfg = field(default_factory=PruneCfg)
    sparsity: SparsityCfg = field(default_factory=SparsityCfg)
    finetune: TrainCfg = field(default_factory=TrainCfg)
    distill: DistillCfg = field(default_factory=DistillCfg)
    decompose: DecomposeCfg = field(default_factory=DecomposeCfg)
    mcf: McfCfg = field(default_factory=McfCfg)
    eval_batches: Optional[int] = spec(None, lo=1, doc="limit evaluation to this many val batches (None: all)")
    checkpoint_every: int = spec(0, lo=0, doc="checkpoint every N optimiser steps as well as at epoch ends (0: epoch ends)")

    def check(self) -> "Recipe":
        """Rules that span fields; each failure names the keys."""
        if len(set(self.prune.sites)) != len(self.prune.sites):
            raise RecipeError("recipe field 'prune.sites' lists a site twice")
        if self.method == "mcf":
            other = [s for s in self.prune.sites if s not in ("mlp_in", "mlp_hidden")]
            if other:
                raise RecipeError(f"method 'mcf' compresses the FFN only: prune.sites may list mlp_in and mlp_hidden, "
                                  f"not {other[0]}")
        elif self.prune.importance == "learned" and self.sparsity.epochs == 0:
            raise RecipeError("prune.importance 'learned' needs sparsity.epochs >= 1 (or use importance: magnitude)")
        if self.decompose.enabled and len(set(self.decompose.layers)) != len(self.decompose.layers):
            raise RecipeError("recipe field 'decompose.layers' lists a layer twice")
        if self.prune.remove_heads and "attn_out" not in self.prune.sites:
            raise RecipeError("prune.remove_heads needs 'attn_out' in prune.sites (a head is removed when its v dims are)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}.get(tp, str(tp))


def _check_value(key: str, value: Any, tp: Any, meta: dict) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        tp = args[0]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, tp) and not (tp in (int, float) and isinstance(value, bool))
    if ok and tp is float and not math.isfinite(value):
        raise RecipeError(f"recipe field '{key}' must be a finite number, got {value!r}")
    if not ok:
        raise RecipeError(f"recipe field '{key}' must be {_type_name(tp)}, got {value!r}")
    choices = meta.get("choices")
    if choices:
        for v in (value if isinstance(value, list) else [value]):
            if v not in choices:
                raise RecipeError(f"recipe field '{key}' must be one of {', '.join(map(str, choices))}; got {v!r}")
        if isinstance(value, list) and not value:
            raise RecipeError(f"recipe field '{key}' must list at least one of {', '.join(map(str, choices))}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        raise RecipeError(f"recipe field '{key}' must be {'>' if meta.get('lo_open') else '>='} {lo}, got {value}")
    if hi is not None and (value > hi or (meta.get("hi_open") and value == hi)):
        raise RecipeError(f"recipe field '{key}' must be {'<' if meta.get('hi_open') else '<='} {hi}, got {value}")
    return value


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise RecipeError(f"recipe section '{prefix or 'top level'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise RecipeError(f"unknown recipe key '{where}' (known here: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = _check_value(key, data[name], hints[name], dict(f.metadata))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise RecipeError(f"recipe is missing required key '{key}'")
    return cls(**kwargs)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`key.sub=value` strings (value parsed as YAML) written into the raw recipe mapping."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise RecipeError(f"--set {key}: '{p}' is not a section")
        node[parts[-1]] = value
    return data


def available_recipes() -> list[str]:
    root = importlib.resources.files("vitdeploy.recipes")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def locate_recipe(name_or_path: str) -> tuple[Any, str]:
    """The file behind a packaged recipe name or a YAML path, and a label for where it came from."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():  # a folder named like a packaged recipe does not shadow it
        if not path.is_file():
            raise RecipeError(f"recipe file '{path}' does not exist")
        return path, str(path)
    res = importlib.resources.files("vitdeploy.recipes") / f"{name_or_path}.yaml"
    if not res.is_file():
        raise RecipeError(f"unknown recipe '{name_or_path}' (packaged: {', '.join(available_recipes())}; or pass a YAML path)")
    return res, f"packaged:{name_or_path}"


def read_recipe_source(name_or_path: str) -> tuple[dict, str]:
    """The raw mapping of a packaged recipe name or a YAML path, and where it came from."""
    source, origin = locate_recipe(name_or_path)
    text = source.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"recipe '{name_or_path}' is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"recipe '{name_or_path}' must be a YAML mapping at the top level")
    return data, origin


def load_recipe(name_or_path: str, overrides: Optional[list[str]] = None) -> Recipe:
    data, origin = read_recipe_source(name_or_path)
    data.setdefault("name", Path(name_or_path).stem)
    return _build(Recipe, apply_overrides(data, list(overrides or []))).check()


def schema_rows(cls: type = Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every leaf field: the README's recipe reference is generated from this."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += schema_rows(tp, key)
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")  # type: ignore[misc]
        rows.append((key, repr(default), f.metadata.get("doc", "")))
    return rows
