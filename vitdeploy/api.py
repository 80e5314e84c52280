"""The Python API: the CLI's commands as functions that take and return plain objects.

A model is given as a timm name, a checkpoint file, a vitdeploy model dir (str or Path), a `LoadedModel`, or a
timm `VisionTransformer` (`nn.Module`); artifacts (deploy dirs, .onnx files, engines, model dirs) as paths. Every
function returns a small dataclass with the paths it wrote and the numbers it measured; `.record` holds the whole
JSON record the CLI writes. Errors are `vitdeploy.errors.VitDeployError` with a one-line message.

    import vitdeploy
    dense = vitdeploy.train("vit_digits", data="digits", out="runs/py/dense", epochs=20)
    small = vitdeploy.compress(dense.path, "vtp-40", "runs/py/vtp-40", data="digits")
    deploy = vitdeploy.export(small.path, "runs/py/vtp-40/deploy", precisions=["fp32", "int8"], calib_data="digits")
    timing = vitdeploy.profile([deploy.path], batch=[1, 8])
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch.nn as nn

from vitdeploy.errors import ModelError, VitDeployError
from vitdeploy.models import LoadedModel

ModelLike = Union[str, Path, LoadedModel, nn.Module]
PathLike = Union[str, Path]


# ------------------------------------------------------------------------------------------------ models
def load_model(model: ModelLike, checkpoint: Optional[str] = None, arch: Optional[str] = None,
               pretrained: bool = False) -> LoadedModel:
    """A model ready for every stage: a timm name (optionally with `checkpoint` weights or timm's `pretrained`
    ones), a checkpoint file (`arch` names the timm architecture of a bare one), a model dir, a LoadedModel (as
    is), or a timm VisionTransformer module (copied: the caller's module is never changed)."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        if checkpoint or arch or pretrained:
            raise ModelError("checkpoint/arch/pretrained apply to a timm name or a file, not to a live module")
        return from_module(model)
    if not isinstance(model, (str, Path)):
        raise ModelError(f"a model is a timm name, a file or model dir path, or an nn.Module; got {type(model).__name__}")
    from vitdeploy.models import load_model as _load

    return _load(str(model), checkpoint=checkpoint, arch=arch, pretrained=pretrained)


def from_module(module: nn.Module, name: Optional[str] = None) -> LoadedModel:
    """A LoadedModel for a live timm VisionTransformer (dense or already pruned by vitdeploy's surgery modules).

    The architecture is described from the module itself and rebuilt, and the module's weights are loaded into
    the rebuilt model strictly, so what every stage works on is exactly the module given, and the module itself
    is left alone."""
    from timm.models.vision_transformer import VisionTransformer

    from vitdeploy.models.arch import build, describe
    from vitdeploy.models.load import default_data_config

    if not isinstance(module, VisionTransformer):
        raise ModelError(f"vitdeploy works on timm VisionTransformer models; got {type(module).__name__}")
    base = name or (getattr(module, "pretrained_cfg", None) or {}).get("architecture")
    if not base:
        raise ModelError("the module does not say which timm architecture it is (pretrained_cfg['architecture']); "
                         "pass name=...")
    kwargs = skeleton_kwargs(module)
    arch = describe(module, base, kwargs)
    rebuilt = build(arch)
    try:
        rebuilt.load_state_dict(copy.deepcopy(module.state_dict()), strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = lines[1] if len(lines) > 1 else (lines[0] if lines else type(e).__name__)  # the first mismatch
        raise ModelError(f"the module does not match timm's '{base}' with {kwargs} once rebuilt "
                         f"({why}); save it as a checkpoint and pass arch=...") from None
    return LoadedModel(model=rebuilt.eval(), arch=arch, data_config=default_data_config(rebuilt),
                       source={"kind": "module", "name": base})


def skeleton_kwargs(module: nn.Module) -> dict[str, Any]:
    """The timm keyword arguments that rebuild `module`'s skeleton: classes, input size, patch size, channels, width
    and depth, plus heads and MLP ratio read off the first block still in timm's own form (pruned blocks are
    described one by one by `describe`, so they need nothing here)."""
    from timm.layers import Mlp
    from timm.models.vision_transformer import Attention

    from vitdeploy.models.stem import input_channels

    pe = module.patch_embed
    kwargs: dict[str, Any] = {
        "num_classes": int(module.num_classes), "img_size": tuple(int(s) for s in pe.img_size),
        "patch_size": tuple(int(s) for s in pe.patch_size), "in_chans": input_channels(module),
        "embed_dim": int(module.embed_dim), "depth": len(module.blocks),
    }
    heads = next((b.attn.num_heads for b in module.blocks if type(b.attn) is Attention), None)
    if heads is not None:
        kwargs["num_heads"] = int(heads)
    hidden = next((b.mlp.fc1.out_features for b in module.blocks if type(b.mlp) is Mlp), None)
    if hidden is not None:
        kwargs["mlp_ratio"] = hidden / module.embed_dim
    return kwargs


def info(model: ModelLike, **load: Any) -> dict:
    """Params, MACs (attention matmuls included), input size, classes and per-block dims of a model."""
    from vitdeploy.models import block_table, count_macs, count_params

    loaded = load_model(model, **load)
    size = loaded.input_size
    return {"model": loaded.source, "base": loaded.arch.base, "input_size": list(size),
            "num_classes": loaded.num_classes, "params": count_params(loaded.model),
            "macs": count_macs(loaded.model, size), "blocks": block_table(loaded.arch, loaded.model.embed_dim)}


def _guard_out(out: PathLike, *, paths: Sequence[Any] = (), data: Sequence[Optional[str]] = ()) -> None:
    """Refuse an `out` whose writing would replace or delete an input: a model dir, deploy dir, checkpoint, recipe,
    target or profile file in `paths` (strings that are not paths, like timm names, are skipped), or the folder of
    a data spec in `data` (inside which nothing may be written); and one that cannot be written at all."""
    from vitdeploy.data import parse_data_spec
    from vitdeploy.io import check_writable, guard_output

    inputs = [(p, "input") for p in paths if isinstance(p, (str, Path))]
    for spec in data:
        if spec is not None:
            inputs.append((parse_data_spec(spec).path, "data"))
    guard_output(out, inputs)
    from vitdeploy import distributed

    if distributed.is_main():  # only rank 0 writes; probing from every rank would race on the parent folders
        check_writable(out)  # a read-only target fails before the work, not after it


# ------------------------------------------------------------------------------------------------- train
@dataclass
class TrainResult:
    path: Path  # the model dir written
    top1: float  # val top-1 (fraction) after the last epoch
    params: int
    macs: int
    record: dict = field(repr=False)  # the `train` summary stored in the model dir


def train(model: ModelLike, data: str, out: PathLike, *, epochs: Optional[int] = None, lr: Optional[float] = None,
          batch_size: Optional[int] = None, weight_decay: Optional[float] = None,
          warmup_epochs: Optional[float] = None, label_smoothing: Optional[float] = None,
          augment: Optional[bool] = None, seed: int = 0, resume: bool = False, checkpoint_every: int = 0,
          new_head: bool = False, skip_bad_images: bool = False, **load: Any) -> TrainResult:
    """Train on a data spec (AdamW, cosine schedule, label smoothing) and write a model dir at `out`. A fresh model
    gets a head for the data's classes; a trained one (model dir, checkpoint, pretrained) whose classes differ is
    refused unless `new_head`. Checkpoints go to OUT.ckpt/ until OUT is written.

    A setting left at None takes the model's own training default where vitdeploy defines one (`vit_fashion`),
    else the general one (`vitdeploy.models.registry.train_defaults`)."""
    from vitdeploy.compression.pipeline import run_train
    from vitdeploy.compression.recipe import TrainCfg
    from vitdeploy.compression.train import seed_everything
    from vitdeploy.data import parse_data_spec
    from vitdeploy.models.registry import train_defaults

    parse_data_spec(data)
    _guard_out(out, paths=[model, load.get("checkpoint")], data=[data])
    seed_everything(seed)  # before the model exists, so a fresh model's initial weights are reproducible too
    loaded = load_model(model, **load)
    given = dict(epochs=epochs, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs, batch_size=batch_size,
                 label_smoothing=label_smoothing, augment=augment)
    cfg = TrainCfg(**{**train_defaults(loaded.arch.base), **{k: v for k, v in given.items() if v is not None}})
    s = run_train(loaded, data, cfg, Path(out), seed=seed, resume=resume, checkpoint_every=checkpoint_every,
                  new_head=new_head, skip_bad_images=skip_bad_images)
    return TrainResult(Path(out), s["top1"], s["params"], s["macs"], s)


# ---------------------------------------------------------------------------------------------- compress
@dataclass
class CompressResult:
    path: Path  # the model dir written (with compress.json and kept_dims.png)
    record: dict = field(repr=False)  # compress.json

    @property
    def params_ratio(self) -> float:
        """Dense params / compressed params (2.0: half the params)."""
        return 1.0 / self.record["params"]["ratio"]

    @property
    def macs_ratio(self) -> float:
        """Dense MACs / compressed MACs."""
        return 1.0 / self.record["macs"]["ratio"]

    @property
    def macs_removed(self) -> float:
        return self.record["reduction"]["macs"]

    @property
    def params_removed(self) -> float:
        return self.record["reduction"]["params"]

    @property
    def top1(self) -> Optional[float]:
        """Val top-1 of the final model (None without data)."""
        return self.record["stages"][-1]["top1"]

    @property
    def max_abs_diff(self) -> float:
        """How far the compressed model is from its masked reference (pruned == masked)."""
        return self.record["equivalence"]["max_abs_diff"]


def compress(model: ModelLike, recipe: str, out: PathLike, *, data: Optional[str] = None,
             overrides: Union[Sequence[str], dict, None] = None, calib_images: Optional[int] = None,
             resume: bool = False, latency_table: Optional[PathLike] = None, **load: Any) -> CompressResult:
    """Compress with a packaged recipe name or a YAML path and write a model dir at `out`. `overrides` are
    `--set` items ("prune.rate=0.5") or a mapping ({"prune.rate": 0.5}); without `data` only training-free plans
    run (e.g. {"prune.importance": "magnitude"}). `latency_table` plans a latency budget (latency-50) with a table
    from `latency_table()` or a device kit instead of measuring one first."""
    from vitdeploy.compression.pipeline import run_compress
    from vitdeploy.compression.recipe import load_recipe, locate_recipe
    from vitdeploy.compression.train import seed_everything
    from vitdeploy.data import parse_data_spec

    items = _override_items(overrides) + ([f"mcf.calib_images={calib_images}"] if calib_images is not None else []) \
        + ([f"prune.budget.table={latency_table}"] if latency_table is not None else [])
    rec = load_recipe(recipe, items)
    source = locate_recipe(recipe)[1]
    if data is not None:
        parse_data_spec(data)
    budget = rec.prune.budget
    if latency_table is not None and not budget.measured:
        raise VitDeployError("--latency-table plans a latency budget, and this recipe sets none (prune.budget."
                             "latency_ms or latency_ratio)")
    _guard_out(out, paths=[model, load.get("checkpoint"), recipe, budget.table], data=[data])
    seed_everything(rec.seed)
    loaded = load_model(model, **load)
    oracle = None
    if budget.measured:
        from vitdeploy.bench.latency_oracle import Oracle

        if budget.table is None:
            from vitdeploy.runtime import check_backend_available

            check_backend_available(budget.backend)
        oracle = Oracle(budget.backend, budget.batch, budget.threads, tuple(loaded.data_config["input_size"]),
                        table_path=budget.table, name=str(model), seconds=budget.measure_seconds,
                        alignment=rec.prune.alignment, min_keep=rec.prune.min_keep)
    return CompressResult(Path(out), run_compress(loaded, rec, data, Path(out), source, resume=resume, latency=oracle))


def latency_table(model: Optional[ModelLike], out: PathLike, *, backend: str = "ort-cpu", batch: int = 8,
                  threads: Optional[int] = None, from_trtexec: Optional[PathLike] = None, **load: Any) -> str:
    """Measure the latency table of `model` on `backend` at `batch` and write it to `out` (JSON); with backend
    'trt', write a device kit to the folder `out` instead; with `from_trtexec`, read a kit that has run on the device
    and write its table to `out`. Returns one line saying what was written."""
    from vitdeploy.runtime import latency_table as lt

    if from_trtexec is not None:
        if model is not None:
            raise VitDeployError("--from-trtexec reads the model's shape from the kit: give no MODEL with it")
        _guard_out(out, paths=[from_trtexec])
        table = lt.table_from_trtexec(Path(from_trtexec))
        table.save(out)
        return f"wrote {out}: {table.source}, batch {table.batch}; {_anchor_text(table)}"
    if model is None:
        raise VitDeployError("give MODEL (a model dir, timm name or checkpoint), or --from-trtexec DIR")
    _guard_out(out, paths=[model, load.get("checkpoint")])
    loaded = load_model(model, **load)
    size = tuple(loaded.data_config["input_size"])
    if backend == "trt":
        from vitdeploy.io import staged_dir

        with staged_dir(Path(out)) as stage:
            lt.write_device_kit(loaded.model.eval(), stage, batch, size, name=str(model))
        kit = Path(out)
        return f"wrote {kit}: unit graphs and time_units.sh; run it on the device, then vitdeploy latency-table " \
               f"--from-trtexec {kit} --out table.json"
    table = lt.build_table(loaded.model.eval(), backend, batch, threads, size, name=str(model))
    table.save(out)
    worst = max((abs(c["error"]) for c in table.checks if c.get("error") is not None), default=0.0)
    return f"wrote {out}: {backend} batch {batch}; {_anchor_text(table)}; interpolation off the grid within " \
           f"{100 * worst:.0f} % at {len(table.checks)} checked widths"


def _anchor_text(table) -> str:
    from vitdeploy.runtime.latency_table import probe_text

    a = table.anchor
    if not a:
        return f"dense model predicted at {table.dense_ms():.3f} ms (no whole-model anchor in this kit)"
    return f"the dense model timed whole at {a['measured_ms']:.3f} ms, its units sum to {a['predicted_ms']:.3f} ms " \
           f"({100 * a['error']:+.1f} %; units scaled by {table.scale:.3f})" + probe_text(table.probe)


def _override_items(overrides: Union[Sequence[str], dict, None]) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, dict):
        import json

        return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in overrides.items()]
    if isinstance(overrides, str):
        raise VitDeployError("overrides is a list of 'key=value' strings or a mapping, not one string")
    return list(overrides)


# ------------------------------------------------------------------------------------------------ export
@dataclass
class ExportResult:
    path: Path  # the deploy dir written
    record: dict = field(repr=False)  # export.json

    @property
    def graphs(self) -> dict[str, Path]:
        """precision -> ONNX file."""
        return {a["precision"]: self.path / a["file"] for a in self.record["artifacts"]}

    @property
    def parity(self) -> dict[str, dict]:
        """precision -> the graph's agreement with PyTorch (max_abs_diff, cosine, top1_agreement, n)."""
        return {a["precision"]: a["parity"] for a in self.record["artifacts"]}


def export(model: ModelLike, out: PathLike, *, precisions: Optional[Sequence[str]] = None, data: Optional[str] = None,
           opset: int = 17, static_batch: Optional[int] = None, io_dtype: str = "fp32",
           calib_data: Optional[str] = None, calib_images: int = 256, calib_method: Optional[str] = None,
           int8_attention: bool = False, exclude: Sequence[str] = (), target: Optional[str] = None,
           int8_max_drop: Optional[float] = None, int8_min_agreement: Optional[float] = None,
           int8_plan_images: int = 1000, release_model: bool = False, **load: Any) -> ExportResult:
    """Export to clean FP32/FP16/INT8 ONNX graphs checked against PyTorch, plus build_engines.sh, triton/ and
    (where TensorRT and the target's GPU are here) engines; writes a deploy dir with export.json at `out`.
    `int8_max_drop` (top-1 points) and/or `int8_min_agreement` (fraction) plan the INT8 placement per layer under
    that budget, measured on `int8_plan_images` held-out images (never the test split); `calib_method` is then
    "auto" (chosen per tensor) unless given. `release_model` frees the model's weights after tracing (the CLI does;
    a caller keeping the model does not)."""
    from vitdeploy.data import parse_data_spec
    from vitdeploy.deploy.int8 import Int8Config
    from vitdeploy.deploy.pipeline import ExportConfig, resolve_target, run_export
    from vitdeploy.precision import parse_precisions

    for spec in (data, calib_data):
        if spec is not None:
            parse_data_spec(spec)
    names = parse_precisions(",".join(precisions) if not isinstance(precisions, str) else precisions) \
        if precisions is not None else None
    cfg = ExportConfig(precisions=names, data=data, opset=opset, static_batch=static_batch, io_dtype=io_dtype,
                       calib_data=calib_data, calib_images=calib_images, target=target, release_model=release_model,
                       int8=Int8Config(method=calib_method, attention=int8_attention, exclude=tuple(exclude),
                                       max_drop=_opt_float(int8_max_drop, "--int8-max-drop"),
                                       min_agreement=_opt_float(int8_min_agreement, "--int8-min-agreement"),
                                       plan_images=int8_plan_images))
    wanted = cfg.precisions or (list(resolve_target(target).precisions) if target else ["fp32"])
    if cfg.int8.planned and "int8" not in wanted:
        raise VitDeployError("--int8-max-drop/--int8-min-agreement plan the INT8 graph: add int8 to --precision")
    resolve_target(target)  # a bad target fails before the model is loaded
    _guard_out(out, paths=[model, load.get("checkpoint"), target], data=[data, calib_data])
    loaded = load_model(model, **load)
    if release_model and not isinstance(model, (str, Path)):
        loaded = copy.copy(loaded)
        loaded.model = copy.deepcopy(loaded.model)  # never empty the caller's module
    return ExportResult(Path(out), run_export(loaded, Path(out), cfg))


def _opt_float(v: Any, what: str) -> Optional[float]:
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        raise VitDeployError(f"{what} must be a number, got {v!r}") from None


# -------------------------------------------------------------------------------------------------- eval
@dataclass
class EvalResult:
    artifact: str
    backend: str
    precision: str
    n: int
    top1: float
    top5: float
    agreement: Optional[float]  # top-1 agreement with the reference, when one was given
    path: Optional[Path]  # where the record was written (with `out`)
    record: dict = field(repr=False)


@dataclass
class EvalRun:
    results: list[EvalResult]
    notes: list[str]  # artifacts left out, and why
    reference: Optional[str]  # the reference artifact's label


def evaluate(artifact: PathLike, data: str, *, split: Optional[str] = None, reference: Optional[PathLike] = None,
             backend: Optional[str] = None, batch_size: int = 64, arch: Optional[str] = None, out: Optional[str] = None,
             show_progress: bool = True, skip_bad_images: bool = False) -> EvalRun:
    """Top-1/top-5 of an artifact (every graph of a deploy dir) on a split of `data` (default: the official test set
    where the dataset has one, as fashion-mnist does, else val; training never sees either), with agreement and
    cosine against `reference` (a deploy dir gives its fp32 graph). With `out`, each record is written as JSON:
    for several graphs put {precision} (and {backend}, {variant}) in it, e.g. "RUN/eval.{precision}.json". An image
    folder with a corrupt image is refused unless `skip_bad_images`, which leaves such files out and lists them in
    each record's `skipped_images`."""
    from vitdeploy.bench.accuracy import eval_out_paths, evaluate_artifacts
    from vitdeploy.bench.artifacts import pair_backends, reference_artifact, resolve_artifacts
    from vitdeploy.data import parse_data_spec, splits_of
    from vitdeploy.data.specs import check_split
    from vitdeploy.io import atomic_write_json
    from vitdeploy.runtime.registry import check_backend_available, parse_backends

    parse_data_spec(data)
    if split is not None:
        check_split(split, splits_of(data))
    backends = parse_backends(backend) if backend else None
    for b in backends or []:
        check_backend_available(b)
    jobs, notes = pair_backends([resolve_artifacts(str(artifact), arch)], backends)
    paths = eval_out_paths(out, jobs)  # a clash between output names fails before anything runs
    for path in paths:
        if path is not None:
            _guard_out(path, paths=[artifact, reference], data=[data])
    ref = reference_artifact(resolve_artifacts(str(reference), arch)) if reference else None
    records = evaluate_artifacts(jobs, data, reference=ref, batch_size=batch_size, show_progress=show_progress,
                                 split=split, skip_bad_images=skip_bad_images)
    results = []
    for r, path in zip(records, paths):
        if path is not None:
            atomic_write_json(path, r)
        results.append(EvalResult(r["artifact"], r["backend"], r["precision"], r["n"], r["top1"], r["top5"],
                                  r.get("top1_agreement"), path, r))
    return EvalRun(results, notes, ref.label if ref else None)


# ----------------------------------------------------------------------------------------------- profile
@dataclass
class ProfileResult:
    rows: list[dict]  # one per artifact × backend × batch: artifact, backend, precision, batch, p50_ms, p90_ms,
    #                   p99_ms, mean_ms, throughput_ips
    notes: list[str]  # artifacts or batches skipped, and why
    record: dict = field(repr=False)  # profile.json: every percentile, the host and the settings

    def p50_ms(self, artifact: str, batch: int) -> float:
        """The median latency of the row whose artifact label ends with `artifact` at `batch`."""
        for r in self.rows:
            if str(r["artifact"]).endswith(str(artifact)) and r["batch"] == batch:
                return r["p50_ms"]
        raise KeyError(f"no profile row for {artifact!r} at batch {batch}")


def _profile_row(r: dict) -> dict:
    lat = r["latency_ms"]
    s = r.get("speedup") or {}
    return {"artifact": r["artifact"], "backend": r["backend"], "precision": r.get("precision"), "batch": r["batch"],
            **{f"{k}_ms": lat[k] for k in ("p50", "p90", "p99", "mean")}, "throughput_ips": r["throughput_ips"],
            "speedup": s.get("speedup"), "speedup_ci95": s.get("ci95"), "verdict": s.get("verdict"),
            "peak_share": (r.get("roofline") or {}).get("share")}


def _reference_label(reference: PathLike, specs: list, groups: list) -> str:
    """The label of the artifact `reference` names: one of the ARTIFACT arguments (a deploy dir means its FP32
    graph) or a graph or engine inside one of them; anything else is one line."""
    from vitdeploy.bench.artifacts import reference_artifact

    def same(a: Any, b: Any) -> bool:
        try:
            return str(a) == str(b) or Path(str(a)).resolve() == Path(str(b)).resolve()
        except OSError:
            return False

    for spec, group in zip(specs, groups):
        if same(reference, spec):
            return reference_artifact(group).label
    for group in groups:
        for a in group:
            if same(reference, a.label):
                return a.label
    given = ", ".join(str(s) for s in specs)
    raise VitDeployError(f"--reference '{reference}' is not one of the artifacts given ({given[:300]}) nor a graph "
                         "inside one of them")


def profile(artifacts: Sequence[PathLike], *, backend: str = "ort-cpu", batch: Sequence[int] = (1, 8),
            warmup: int = 10, iters: int = 50, duration: Optional[float] = None, threads: Optional[int] = None,
            op_profile: int = 0, leak_runs: int = 0, arch: Optional[str] = None, show_progress: bool = True,
            sequential: bool = False, rounds: Optional[int] = None, reference: Optional[PathLike] = None,
            roofline: bool = True) -> ProfileResult:
    """Latency percentiles and throughput of each artifact per backend and batch, with the host recorded.

    Artifacts are timed interleaved (rounds of a short block each, the order rotating) unless `sequential`; each one
    is compared with the reference (`reference`, one of `artifacts` or a graph inside one of them, else the first)
    as a paired speedup with a 95 % interval and a verdict. `roofline` measures the backend's GEMM peak in the same
    run and gives each artifact's achieved MAC rate as a share of it."""
    from vitdeploy.bench.artifacts import pair_backends, resolve_artifacts
    from vitdeploy.bench.latency import Extras, ProfileItem, profile_artifacts
    from vitdeploy.runtime.registry import check_backend_available, parse_backends

    if isinstance(artifacts, (str, Path)):
        artifacts = [artifacts]
    if not artifacts:
        raise VitDeployError("profile needs at least one artifact")
    batches = [int(b) for b in batch]
    if not batches or any(b < 1 for b in batches):
        raise VitDeployError(f"batch sizes must be integers >= 1, got {list(batch)}")
    backends = parse_backends(backend)
    for b in backends:
        check_backend_available(b)
    if sequential and rounds is not None:
        raise VitDeployError("--rounds sets the rounds of interleaved timing; drop it, or drop --sequential")
    if rounds is not None and (rounds < 2 or (duration is None and rounds > iters)):
        raise VitDeployError(f"--rounds must be from 2 to --iters ({iters}), got {rounds}: every round times each "
                             "artifact at least once, and an interval needs two rounds" if duration is None else
                             f"--rounds must be >= 2, got {rounds}")
    groups = [resolve_artifacts(str(spec), arch) for spec in artifacts]
    ref_label = _reference_label(reference, list(artifacts), groups) if reference is not None else None
    pairs, notes = pair_backends(groups, backends)
    sizes = {a.input_size for a, _ in pairs}
    if len(sizes) > 1:
        raise VitDeployError(f"artifacts take different input sizes {sorted(sizes)}: profile them separately")
    if ref_label is not None and ref_label not in {a.label for a, _ in pairs}:
        raise VitDeployError(f"--reference '{reference}' runs on none of the backends given ({backend})")
    items = [ProfileItem(a.label, (lambda a=a, b=b: a.runner(b, threads, spin=sequential)),
                         {**a.describe(), "precision": a.precision_on(b), "macs": a.macs}) for a, b in pairs]
    result = profile_artifacts(items, batches, warmup=warmup, iters=iters, duration=duration,
                               input_size=pairs[0][0].input_size, threads=threads, show_progress=show_progress,
                               extras=Extras(op_profile_top=op_profile, leak_runs=leak_runs),
                               interleaved=not sequential, rounds=rounds, reference=ref_label, roofline=roofline,
                               peak_backends=sorted({b for a, b in pairs if a.macs}))
    notes = notes + [f"skipped {s['artifact']} [{s['backend']}] batch {s['batch']}: {s['reason']}"
                     for s in result["skipped"]]
    return ProfileResult([_profile_row(r) for r in result["results"]], notes, result)


# ------------------------------------------------------------------------------------------------ report
@dataclass
class ReportResult:
    path: Path  # the folder with report.md, report.json and the plots
    plots: list[str]
    record: dict = field(repr=False)  # report.json


def report(runs: Sequence[PathLike], out: PathLike, *, profiles: Sequence[PathLike] = (),
           backend: Optional[str] = None, batch: Optional[int] = None) -> ReportResult:
    """Every variant in `runs` (model dirs) side by side, the one to ship per latency budget, and plots."""
    from vitdeploy.bench.report import build_report

    if isinstance(runs, (str, Path)):
        runs = [runs]
    _guard_out(out, paths=[*runs, *profiles])
    rep = build_report([Path(r) for r in runs], [Path(p) for p in profiles], Path(out), backend=backend, batch=batch)
    plots = [rep["plots"].get("accuracy_latency"), rep["plots"].get("latency_batch"), *rep["plots"]["kept_dims"].values()]
    return ReportResult(Path(out), [p for p in plots if p], rep)


# ------------------------------------------------------------------------------------------------- study
def study_decomposition(model: ModelLike, data: str, out: PathLike, *, recipe: str = "vtp-svd",
                        methods: Optional[Sequence[str]] = None, finetune_epochs: int = 2,
                        overrides: Union[Sequence[str], dict, None] = None, **load: Any) -> dict:
    """VTP, then VTP + each decomposition at equal ranks, before and after a short fine-tune (study.json)."""
    from vitdeploy.compression.study import decomposition_study

    rec, loaded = _study_setup(model, recipe, data, overrides, load, out)
    return decomposition_study(loaded, rec, data, Path(out), None if methods is None else list(methods),
                               finetune_epochs)


def study_hybrid(model: ModelLike, data: str, out: PathLike, *, ranks: Sequence[float] = (0.25, 0.5),
                 rates: Sequence[float] = (0.1, 0.2, 0.3), recipe: str = "hybrid", vtp_recipe: str = "vtp-40",
                 finetune_epochs: Optional[int] = None, overrides: Union[Sequence[str], dict, None] = None,
                 **load: Any) -> dict:
    """The hybrid recipe swept over attention ranks × MLP rates, against VTP alone at matched params (sweep.json)."""
    from vitdeploy.compression.recipe import load_recipe
    from vitdeploy.compression.study import hybrid_sweep

    if not ranks or not rates:
        raise VitDeployError("the hybrid sweep needs at least one rank and one rate")
    baseline = load_recipe(vtp_recipe)
    rec, loaded = _study_setup(model, recipe, data, overrides, load, out)
    return hybrid_sweep(loaded, rec, baseline, data, Path(out), list(ranks), list(rates), finetune_epochs)


def _study_setup(model: ModelLike, recipe: str, data: str, overrides: Any, load: dict,
                 out: PathLike) -> tuple[Any, LoadedModel]:
    from vitdeploy.compression.recipe import load_recipe
    from vitdeploy.compression.train import seed_everything
    from vitdeploy.data import parse_data_spec

    rec = load_recipe(recipe, _override_items(overrides))
    parse_data_spec(data)
    _guard_out(out, paths=[model, load.get("checkpoint"), recipe], data=[data])
    seed_everything(rec.seed)
    return rec, load_model(model, **load)
