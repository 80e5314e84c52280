"""`vitdeploy export`: from a model to a deploy dir.

    model ─trace─▶ raw FP32 ONNX ─cleanup passes (parity after each)─▶ clean FP32 ─┬─▶ model.fp32.onnx
                                                                                  ├─▶ model.fp16.onnx (+ sensitivity)
                                                                                  └─▶ model.int8.onnx (calibrated Q/DQ,
                                                                     or planned under a budget: + int8_sensitivity.*)
    then, with a target: TensorRT engines where possible, build_engines.sh, triton/ — and export.json.

Everything is built in a staging folder that is moved into place only when complete, so a failure at any step
leaves nothing behind. The raw export is an intermediate and never lands in the deploy dir.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import onnx
import torch

from vitdeploy.data import calibration_subset, load_dataset, splits_of
from vitdeploy.deploy.fp16 import IO_DTYPES, build_fp16
from vitdeploy.deploy.graph import clean_graph
from vitdeploy.deploy.int8 import DEFAULT_CALIB_IMAGES, Int8Config, qdq_problems, quantize_int8
from vitdeploy.deploy.onnx_export import export_onnx, onnx_summary, scratch_graph, write_onnx
from vitdeploy.errors import DataError, VitDeployError
from vitdeploy.io import atomic_write_json, seal, sha256_file, staged_dir
from vitdeploy.models import LoadedModel
from vitdeploy.models.modeldir import json_ready
from vitdeploy.precision import PRECISIONS, parse_precisions  # noqa: F401 (parse_precisions: part of this module's API)
from vitdeploy.progress import make_progress
from vitdeploy.provenance import provenance
from vitdeploy.runtime.compare import compare_logits, infer_in_range

PARITY_IMAGES = 64
PASS_CHECK_IMAGES = 16  # parity after each cleanup pass: enough to catch a pass that changes the function


@dataclass
class ExportConfig:
    """Everything `vitdeploy export` takes besides the model and the output folder."""

    precisions: Optional[list[str]] = None  # None: the target's precisions, else fp32
    data: Optional[str] = None  # parity inputs (default: the model's training data)
    opset: int = 17
    static_batch: Optional[int] = None
    io_dtype: str = "fp32"  # FP16 graph input/output type
    calib_data: Optional[str] = None  # INT8 calibration data (default: the model's training data)
    calib_images: int = DEFAULT_CALIB_IMAGES
    int8: Int8Config = field(default_factory=Int8Config)
    target: Optional[str] = None  # a packaged target name or a YAML path
    # Free the PyTorch weights once the graph is traced and the reference logits are computed: the CLI, which has
    # no further use for the model, sets it so that a large model's weights are not held beside its graphs.
    release_model: bool = False

    def __post_init__(self) -> None:
        if self.io_dtype not in IO_DTYPES:
            raise VitDeployError(f"unknown --io-dtype {self.io_dtype!r}; use one of: {', '.join(IO_DTYPES)}")
        if int(self.calib_images) < 1:
            raise VitDeployError(f"--calib-images must be >= 1, got {self.calib_images}")
        if self.precisions is not None:
            self.precisions = parse_precisions(",".join(self.precisions))


# -------------------------------------------------------------------------------------------- inputs
def parity_inputs(loaded: LoadedModel, data: Optional[str], n: int = PARITY_IMAGES) -> tuple[np.ndarray, str]:
    """Real images from `data` (the model's own training data by default); seeded noise only when there is none."""
    data = data or _training_data(loaded)
    if data:
        ds = load_dataset(data, "val", loaded.data_config)
        x = torch.stack([ds[i][0] for i in range(min(n, len(ds)))])
        return x.numpy(), f"{data} val images ({len(x)})"
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, *loaded.input_size, generator=g).numpy(), "seeded random normal (no data given)"


def calibration_images(loaded: LoadedModel, spec: Optional[str], n: int, seed: int = 0) -> tuple[np.ndarray, dict]:
    """`n` train-split images of `spec` (all of them when the split is smaller), drawn with a fixed seed."""
    spec = spec or _training_data(loaded)
    if not spec:
        raise DataError("int8 needs calibration images: pass --calib-data SPEC (this model records no training data)")
    ds = calibration_subset(load_dataset(spec, "train", loaded.data_config), int(n), seed=seed)
    x = torch.stack([ds[i][0] for i in range(len(ds))]).numpy()
    return x, {"data": spec, "split": "train", "images": len(ds), "of": len(ds.dataset), "seed": seed}


def held_out_images(loaded: LoadedModel, spec: Optional[str], n: int, calib_images: int,
                    seed: int = 1) -> tuple[np.ndarray, np.ndarray, dict]:
    """`n` labelled images an INT8 plan is measured on, never from the split evaluation scores on: the val split
    where the dataset has an official test set (fashion-mnist: 5,000 held out of the training file), else train
    images that are not among the calibration images."""
    from torch.utils.data import Subset

    spec = spec or _training_data(loaded)
    if not spec:
        raise DataError("an INT8 plan needs held-out images: pass --calib-data SPEC")
    if "test" in splits_of(spec):
        split, ds = "val", load_dataset(spec, "val", loaded.data_config)
        pool = list(range(len(ds)))
    else:
        split, ds = "train", load_dataset(spec, "train", loaded.data_config)
        used = set(calibration_subset(ds, int(calib_images), seed=0).indices)
        pool = [i for i in range(len(ds)) if i not in used]
        if not pool:
            raise DataError(f"no train images of {spec} are left for the INT8 plan's held-out split after "
                            f"{calib_images} calibration images: lower --calib-images")
    g = torch.Generator().manual_seed(int(seed))
    pick = sorted(pool[i] for i in torch.randperm(len(pool), generator=g)[:int(n)].tolist())
    sub = Subset(ds, pick)
    items = [sub[i] for i in range(len(sub))]
    x = torch.stack([it[0] for it in items]).numpy()
    y = np.array([int(it[1]) for it in items])
    info = {"data": spec, "split": split, "images": len(pick), "of": len(pool), "seed": seed,
            "excludes_calibration_images": split == "train"}
    return x, y, info


def _training_data(loaded: LoadedModel) -> Optional[str]:
    return (loaded.meta.get("provenance") or {}).get("data")


DEFAULT_TARGET = "gpu"


def resolve_target(name: Optional[str]) -> Any:
    """The deployment target: `name`, or the generic `gpu` target, so that every deploy dir carries
    build_engines.sh and a Triton repository."""
    from vitdeploy.deploy.targets import load_target

    return load_target(name or DEFAULT_TARGET)


def model_name(loaded: LoadedModel) -> str:
    """The timm name, or the stem of the file or folder the model came from (resolved, so `export .` names the
    folder it runs in, not '')."""
    src = loaded.source
    return str(src.get("name") or Path(src.get("path", "model")).resolve().stem or "model")


# ---------------------------------------------------------------------------------------- reference
class Reference:
    """PyTorch FP32 logits on the parity inputs, computed once; every graph is measured against them on ORT CPU."""

    def __init__(self, model: torch.nn.Module, x: np.ndarray, scratch: Path) -> None:
        from vitdeploy.runtime.torch import TorchRunner
        from vitdeploy.deploy.onnx_export import cpu_fp32_model

        self.x, self.scratch = np.ascontiguousarray(x, dtype=np.float32), scratch
        with cpu_fp32_model(model) as m, TorchRunner(m) as tr:
            self.logits = infer_in_range(tr, self.x, 32)

    def logits_of(self, path: Path, n: Optional[int] = None) -> np.ndarray:
        from vitdeploy.runtime.onnxrt import OrtRunner

        x = self.x[:n] if n else self.x
        with OrtRunner(path, provider="cpu") as r:
            return infer_in_range(r, x, 32)

    def parity(self, path: Path, n: Optional[int] = None) -> dict:
        got = self.logits_of(path, n)
        return compare_logits(got, self.logits[:len(got)])

    def parity_of_model(self, model: onnx.ModelProto, n: Optional[int] = None) -> dict:
        """Parity of an in-memory graph (written to the scratch folder while it runs)."""
        with scratch_graph(model, self.scratch, "check.onnx") as path:
            return self.parity(path, n)


def _agreement(ref_logits: np.ndarray, reference: Reference) -> Callable[[onnx.ModelProto], dict]:
    """compare(model): how well a graph agrees with the clean FP32 graph's logits (the FP16 sensitivity target)."""
    def compare(model: onnx.ModelProto) -> dict:
        with scratch_graph(model, reference.scratch, "candidate.onnx") as path:
            return compare_logits(reference.logits_of(path), ref_logits)

    return compare


# ------------------------------------------------------------------------------------------- export
def _artifact(stage: Path, files: list[Path], precision: str, parity: dict, **extra: Any) -> dict:
    path = files[0]
    s = onnx_summary(path)
    return {
        "file": path.name, "precision": precision, "bytes": sum(f.stat().st_size for f in files),
        "sha256": sha256_file(path), "external_data": [f.name for f in files[1:]], "opset": s["opset"],
        "nodes": s["nodes"], "ops": s["ops"], "batch_symbolic": s["batch_symbolic"], "inputs": s["inputs"],
        "outputs": s["outputs"], **extra, "parity": parity,
    }


def _file_manifest(stage: Path) -> list[dict]:
    """Every file in the deploy dir (but export.json itself) with its size and sha256."""
    return [{"file": str(p.relative_to(stage)), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(stage.rglob("*")) if p.is_file() and p.name != "export.json"]


def _step_bar() -> Any:
    """A transient bar over the export steps. It stays off where stderr is not a terminal: rich ends a bar there
    with a blank line, and a failed export must print exactly one line."""
    bar = make_progress(transient=True)
    bar.disable = not bar.console.is_terminal
    return bar


def _steps(precisions: list[str]) -> int:
    return 2 + 2 * len(precisions) + 2


def run_export(loaded: LoadedModel, out: Path, cfg: ExportConfig) -> dict:
    """Export `loaded` to the deploy dir `out` as `cfg` says; returns what is written to export.json."""
    target = resolve_target(cfg.target)
    precisions = cfg.precisions or (list(target.precisions) if cfg.target else ["fp32"])
    calib = calibration_images(loaded, cfg.calib_data, cfg.calib_images) if "int8" in precisions else None
    held = held_out_images(loaded, cfg.calib_data, cfg.int8.plan_images, cfg.calib_images) \
        if calib is not None and cfg.int8.planned else None
    x, described = parity_inputs(loaded, cfg.data)
    report: dict[str, Any] = {
        "model": loaded.source, "input_size": list(loaded.input_size), "data_config": json_ready(loaded.data_config),
        "classes": loaded.meta.get("classes"), "opset": cfg.opset, "precisions": precisions,
        "batch": "dynamic" if cfg.static_batch is None else cfg.static_batch, "parity_inputs": described,
        "artifacts": [],
    }
    with staged_dir(out) as stage, _step_bar() as bar:
        task = bar.add_task("export", total=_steps(precisions), info="")

        def step(what: str) -> None:
            bar.update(task, advance=1, description=what)

        def note(what: str) -> None:
            bar.update(task, description=what)

        work = stage / ".work"
        work.mkdir()
        bar.update(task, description="trace FP32")
        raw = export_onnx(loaded.model, work / "raw.onnx", loaded.input_size, opset=cfg.opset,
                          static_batch=cfg.static_batch)
        ref = Reference(loaded.model, x, work)
        if cfg.release_model:
            loaded.model.to_empty(device="meta")  # every parameter and buffer: no storage left
        step("cleanup passes")
        clean, passes = clean_graph(onnx.load(str(raw)), lambda m: ref.parity_of_model(m, PASS_CHECK_IMAGES))
        report["cleanup"] = {"passes": passes, "parity_images": min(PASS_CHECK_IMAGES, len(x))}
        step("clean FP32")
        graphs = _write_graphs(stage, clean, precisions, cfg, ref, calib, report, step,
                               planning=(held, target, note))
        extras = _deploy_extras(stage, graphs, target, loaded)
        report["target"] = target.to_dict()
        report.update({k: v for k, v in extras.items() if k != "target"})
        step("deploy extras")
        shutil.rmtree(work)
        report["files"] = _file_manifest(stage)
        report["provenance"] = provenance(source=loaded.source)
        atomic_write_json(stage / "export.json", seal(report))  # the seal covers data_config, input_size, ...
        step("done")
    return report


def _write_graphs(stage: Path, clean: onnx.ModelProto, precisions: list[str], cfg: ExportConfig, ref: Reference,
                  calib: Optional[tuple[np.ndarray, dict]], report: dict, step: Callable[[str], None],
                  planning: tuple = (None, None, None)) -> list[dict]:
    """Build, write and measure each requested graph; fills report["artifacts"], ["fp16"], ["int8"]."""
    graphs: list[dict] = []
    fp32_logits: Optional[np.ndarray] = None
    for precision in PRECISIONS:
        if precision not in precisions:
            continue
        extra: dict[str, Any] = {}
        if precision == "fp32":
            model = clean
        elif precision == "fp16":
            if fp32_logits is None:
                fp32_logits = _agreement_base(clean, ref)
            model, report["fp16"] = build_fp16(clean, _agreement(fp32_logits, ref), cfg.io_dtype)
            extra["io_dtype"] = cfg.io_dtype
        elif cfg.int8.planned:
            assert calib is not None and planning[0] is not None
            model, report["int8"] = planned_int8(stage, clean, calib, *planning, cfg, ref.scratch)
        else:
            assert calib is not None
            model, settings = quantize_int8(clean, calib[0], cfg.int8)
            report["int8"] = {"calibration": calib[1], **settings}
        step(f"write {precision}")
        name = f"model.{precision}.onnx"
        files = write_onnx(model, stage / name)
        report["artifacts"].append(_artifact(stage, files, precision, ref.parity(files[0]), **extra))
        graphs.append({"file": name, "precision": precision})
        step(f"parity {precision}")
    return graphs


SENSITIVITY_TABLE, SENSITIVITY_PLOT = "int8_sensitivity.csv", "int8_sensitivity.png"


def planned_int8(stage: Path, clean: onnx.ModelProto, calib: tuple[np.ndarray, dict],
                 held: tuple[np.ndarray, np.ndarray, dict], target: Any, note: Callable[[str], None],
                 cfg: ExportConfig, scratch: Path) -> tuple[onnx.ModelProto, dict]:
    """The INT8 graph planned under the budget of `cfg.int8`, its record, and the sensitivity table and plot in
    `stage`. Layers returned by the plan run FP32 on a CPU target and FP16 on a GPU one."""
    from vitdeploy.deploy.int8 import excluded_nodes
    from vitdeploy.deploy.int8_plan import end_to_end, plan_int8, sensitivity_csv, with_fp16_rest
    from vitdeploy.deploy.qdq import quantized_nodes
    from vitdeploy.io import atomic_write_text
    from vitdeploy.runtime.host import physical_cores
    from vitdeploy.viz.plots import plot_int8_sensitivity

    batch = int(cfg.static_batch or target.serving_profile["opt"])
    threads = physical_cores()
    excluded = excluded_nodes(clean, cfg.int8.exclude)
    plan = plan_int8(clean, calib[0], held[0], held[1], cfg.int8.plan_config(batch, threads), scratch,
                     set(excluded), step=note)
    rest = "fp32" if target.device == "cpu" else "fp16"
    model, record = plan.model, plan.record
    if rest == "fp16":
        note("int8 plan: FP16 for the rest")
        model = with_fp16_rest(plan.model, cfg.io_dtype)
        s = plan.held.score(model)
        record["planned_with_fp16_rest"] = {**s, "drop_points": round(100 * (record["fp32"]["top1"] - s["top1"]), 3)}
    else:
        note("int8 plan: end-to-end timing")
        x = held[0][:batch]
        x = np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)]) if len(x) < batch else x
        record["speed"] = end_to_end({"fp32": clean, "full": plan.full_model(), "planned": plan.model}, x, scratch,
                                     threads)
    atomic_write_text(stage / SENSITIVITY_TABLE, sensitivity_csv(plan.rows))
    plot_int8_sensitivity(plan.rows, stage / SENSITIVITY_PLOT,
                          f"INT8 sensitivity ({held[2]['images']} held-out {held[2]['split']} images)")
    problems = qdq_problems(model)
    if problems:
        raise VitDeployError(f"planned INT8 graph breaks the Q/DQ placement rules: {problems[0]}")
    nodes = quantized_nodes(model)
    settings = {
        "mode": "planned", "method": cfg.int8.method, "rest": rest, "exclude": list(cfg.int8.exclude),
        "excluded_nodes": excluded, "images": int(len(calib[0])), "activations": "int8 symmetric per-tensor",
        "weights": "int8 symmetric per-channel", "quantized_nodes": len(nodes),
        "quantized_layers": [r["layer"] for r in plan.rows if r["int8"]],
        "table": SENSITIVITY_TABLE, "plot": SENSITIVITY_PLOT,
    }
    return model, {"calibration": calib[1], "held_out": held[2], **settings, "plan": record}


def _agreement_base(clean: onnx.ModelProto, ref: Reference) -> np.ndarray:
    """Logits of the clean FP32 graph on ORT: what the FP16 graph must agree with."""
    with scratch_graph(clean, ref.scratch, "fp32.onnx") as path:
        return ref.logits_of(path)


def _deploy_extras(stage: Path, graphs: list[dict], target: Any, loaded: LoadedModel) -> dict:
    """Engines (where TensorRT can build for the target here), build_engines.sh and triton/."""
    from vitdeploy.deploy.serving import write_deploy_extras

    return write_deploy_extras(stage, graphs, target, tuple(loaded.input_size), loaded.num_classes, model_name(loaded))
