"""What a deploy dir needs beyond the ONNX graphs: TensorRT engines where TensorRT runs here, `build_engines.sh` for
the device, and a Triton model repository. The export pipeline calls `write_deploy_extras` on its staging folder.

An engine only loads on the TensorRT version and runs on the GPU model it was built with, so engines are built here
only when this machine is the target (TensorRT major version and GPU name match); otherwise the reason is recorded
in one line, and the script builds the same engines on the device.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import onnx

from vitdeploy import __version__
from vitdeploy.deploy.onnx_export import value_dims
from vitdeploy.deploy.targets import Target
from vitdeploy.precision import PRECISIONS
from vitdeploy.deploy.tensorrt_build import (MISSING_HINT, build_engine, dla_core_for, gpu_matches, import_tensorrt,
                                             local_gpu, timing_cache_name, trt_major)
from vitdeploy.deploy.trtexec import EngineJob, engine_jobs, render_script
from vitdeploy.deploy.triton import TritonModel, render_config, safe_model_name, write_model
from vitdeploy.errors import BackendError, VitDeployError
from vitdeploy.io import atomic_write_text

BUILD_SCRIPT = "build_engines.sh"
TRITON_DIR = "triton"
_PLAIN = re.compile(r"^[A-Za-z0-9_.-]+$")  # names that go into shell commands and file names unquoted
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "fp32", onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16",
                onnx.TensorProto.INT8: "int8", onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT64: "int64"}


@dataclass(frozen=True)
class GraphIO:
    """The one input and one output of an exported classifier graph, as Triton and trtexec need them."""
    input_name: str
    input_dtype: str
    output_name: str
    output_dtype: str
    static_batch: Optional[int]  # None: the batch dim is symbolic


def read_graph_io(path: Path, chw: tuple[int, int, int], num_classes: int) -> GraphIO:
    """Names, dtypes and batch of `path`, checked against the model's input size and class count."""
    proto = onnx.load(str(path), load_external_data=False)
    weights = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in weights]
    outputs = list(proto.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise VitDeployError(f"{path.name}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
    (inp,), (out,) = inputs, outputs
    in_dims, out_dims = value_dims(inp), value_dims(out)
    if len(in_dims) != 4 or in_dims[1:] != list(chw):
        raise VitDeployError(f"{path.name}: input '{inp.name}' has shape {in_dims}, "
                             f"expected [batch, {', '.join(map(str, chw))}]")
    if len(out_dims) != 2 or (isinstance(out_dims[1], int) and out_dims[1] != num_classes):
        raise VitDeployError(f"{path.name}: output '{out.name}' has shape {out_dims}, expected [batch, {num_classes}]")
    for v in (inp, out):
        if not _PLAIN.match(v.name):
            raise VitDeployError(f"{path.name}: tensor name {v.name!r} must be letters, digits, '_', '.' or '-'")
    dtypes = []
    for v in (inp, out):
        elem = v.type.tensor_type.elem_type
        if elem not in _ONNX_DTYPES:
            kind = onnx.TensorProto.DataType.Name(elem)
            raise VitDeployError(f"{path.name}: tensor '{v.name}' has ONNX type {kind}, which Triton configs here "
                                 f"do not cover")
        dtypes.append(_ONNX_DTYPES[elem])
    batch = in_dims[0] if isinstance(in_dims[0], int) else None
    return GraphIO(inp.name, dtypes[0], out.name, dtypes[1], batch)


# ------------------------------------------------------------------------------------------- TensorRT
def tensorrt_here() -> dict[str, Any]:
    """{"available", "version", "reason"}: whether `tensorrt` imports here, and the one line why not."""
    try:
        trt = import_tensorrt()
    except BackendError as e:
        return {"available": False, "version": None, "reason": str(e)}
    return {"available": True, "version": str(trt.__version__), "reason": None}


def why_not_build_here(status: dict, target: Target, gpu_name: Optional[str]) -> Optional[str]:
    """None when engines for `target` can be built on this machine, else one line saying why not."""
    if not target.tensorrt:
        return f"target '{target.name}' runs no TensorRT (device: {target.device})"
    if not status["available"]:
        return status["reason"]
    version = status["version"]
    if str(trt_major(version)) not in target.tensorrt:
        return (f"TensorRT {version} is installed here, but target '{target.name}' runs TensorRT "
                f"{' or '.join(target.tensorrt)} and an engine only loads on the version it was built with; "
                f"{MISSING_HINT}")
    if gpu_name is None:
        return f"TensorRT {version} is installed here, but no CUDA GPU is visible; {MISSING_HINT}"
    if not gpu_matches(target, gpu_name):
        return (f"this machine's GPU is '{gpu_name}', target '{target.name}' is for {', '.join(target.gpu_names)}, and "
                f"an engine only runs on the GPU model it was built for; {MISSING_HINT}")
    return None


def timing_cache_dir() -> Path:
    """Where timing caches persist between exports ($VITDEPLOY_CACHE_DIR/tensorrt, else ~/.cache/vitdeploy/tensorrt)."""
    root = os.environ.get("VITDEPLOY_CACHE_DIR") or Path.home() / ".cache" / "vitdeploy"
    return Path(root) / "tensorrt"


def _build_here(stage: Path, jobs: list[EngineJob], target: Target, chw: tuple[int, int, int], io: GraphIO,
                version: str, gpu: tuple[Optional[str], Optional[tuple[int, int]]]) -> list[dict]:
    """Build every job; a failed build is recorded with its one-line error and the others go on."""
    name = timing_cache_name(gpu[0], gpu[1], version)
    cache = timing_cache_dir() / name
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: keep the cache with the deploy dir, where build_engines.sh keeps its own
        cache = stage / "timing_cache" / name
        cache.parent.mkdir(exist_ok=True)
    records = []
    for job in jobs:
        try:
            records.append(build_engine(stage / job.onnx, stage / job.engine, job.precision, job.profile, target, chw,
                                        io.input_name, io.static_batch, cache, stage / job.layer_info))
        except Exception as e:  # BackendError, or whatever the TensorRT bindings raise: the other engines go on
            error = str(e) if isinstance(e, BackendError) else f"building {job.engine} failed: {type(e).__name__}: {e}"
            records.append({"file": job.engine, "precision": job.precision, "profile": job.profile,
                            "error": error.strip().splitlines()[0] if error.strip() else type(e).__name__})
    return records


# --------------------------------------------------------------------------------------------- Triton
def _triton_model(name: str, platform: str, io: GraphIO, chw: tuple[int, int, int], num_classes: int,
                  target: Target, profile: Optional[dict], dla_core: Optional[int]) -> TritonModel:
    """Batching follows what the model accepts: an engine its profile, an ONNX graph with a symbolic batch the
    target's largest batch; a static batch (graph or profile) turns Triton's batching off and shows it in the dims."""
    fixed = io.static_batch or (profile["max"] if profile and profile["min"] == profile["max"] else None)
    if fixed:
        max_batch, preferred, lead = 0, [], [fixed]
    else:
        max_batch = profile["max"] if profile else target.max_batch_size
        preferred = sorted({p["opt"] for p in target.profiles if 1 < p["opt"] <= max_batch})
        lead = []
    return TritonModel(name=name, platform=platform, max_batch_size=max_batch,
                       input_name=io.input_name, input_dtype=io.input_dtype, input_dims=[*lead, *chw],
                       output_name=io.output_name, output_dtype=io.output_dtype, output_dims=[*lead, num_classes],
                       preferred_batch_sizes=preferred, dla_core=dla_core,
                       instance_kind="KIND_CPU" if target.device == "cpu" else "KIND_GPU")


# ---------------------------------------------------------------------------------------------- entry
def _check_graphs(stage: Path, graphs: list[dict], chw: tuple[int, int, int], num_classes: int) -> list[GraphIO]:
    seen = set()
    ios = []
    for g in graphs:
        file, precision = g.get("file"), g.get("precision")
        if precision not in PRECISIONS or precision in seen:
            raise VitDeployError(f"graph {file!r}: precision {precision!r} is unknown or repeated (one graph per "
                                 f"precision: {', '.join(PRECISIONS)})")
        if not isinstance(file, str) or not _PLAIN.match(file) or not (stage / file).is_file():
            raise VitDeployError(f"graph file {file!r} is not a plain file name in {stage}")
        seen.add(precision)
        ios.append(read_graph_io(stage / file, chw, num_classes))
    if not ios:
        raise VitDeployError("no ONNX graphs to deploy")
    if len({(io.input_name, io.static_batch) for io in ios}) > 1:
        raise VitDeployError("the graphs disagree on their input name or static batch; export them together")
    return ios


def _triton_repository(stage: Path, graphs: list[dict], ios: list[GraphIO], jobs: list[EngineJob], built: dict,
                       target: Target, chw: tuple[int, int, int], num_classes: int,
                       model_name: str) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """triton/ in `stage`: one model per graph, served from its engine where it was built here, else from the ONNX
    graph on onnxruntime. Returns the models' records and, for build_engines.sh, (engine, model folder, the
    tensorrt_plan config that replaces the ONNX one once the engine is built on the device)."""
    base = safe_model_name(model_name)
    serve_profile = target.serving_profile if ios[0].static_batch is None else None
    models, plans = [], []
    for g, gio in zip(graphs, ios):
        name, precision = f"{base}_{g['precision']}", g["precision"]
        job = next((j for j in jobs if j.onnx == g["file"] and (serve_profile is None or j.profile == serve_profile)),
                   None)
        plan = _triton_model(name, "tensorrt_plan", gio, chw, num_classes, target,
                             job.profile if job else None, dla_core_for(precision, target))
        note = f"vitdeploy {__version__}: {model_name} {precision} for target '{target.name}'"
        if job is not None:
            plans.append((job.engine, f"{TRITON_DIR}/{name}", render_config(plan, f"{note}, engine {job.engine}")))
        if job is not None and job.engine in built:
            model, source = plan, job.engine
        else:
            model = _triton_model(name, "onnxruntime_onnx", gio, chw, num_classes, target, None, None)
            source = g["file"]
        write_model(stage / TRITON_DIR, model, stage / source, f"{note}, from {source}")
        models.append({"name": name, "precision": precision, "platform": model.platform, "source": source,
                       "max_batch_size": model.max_batch_size, "config": f"{TRITON_DIR}/{name}/config.pbtxt"})
    return models, plans


def write_deploy_extras(stage: Path, graphs: list[dict], target: Target, input_size: tuple[int, int, int],
                        num_classes: int, model_name: str) -> dict:
    """Engines (where possible here), build_engines.sh and triton/ in `stage`, for the graphs already written there.

    `graphs`: [{"file": "model.fp16.onnx", "precision": "fp16"}, ...]. Returns the record for export.json.
    """
    stage, chw = Path(stage), tuple(int(d) for d in input_size)
    ios = _check_graphs(stage, graphs, chw, num_classes)  # type: ignore[arg-type]
    io = ios[0]
    jobs = engine_jobs(graphs, target, io.static_batch)

    status = tensorrt_here()
    gpu = local_gpu() if status["available"] else (None, None)
    reason = why_not_build_here(status, target, gpu[0])
    engines = _build_here(stage, jobs, target, chw, io, status["version"], gpu) if reason is None else []
    built = {e["file"]: e for e in engines if "error" not in e}
    if reason is None and not built:
        reason = "every TensorRT build failed; see engines[].error"

    models, plans = _triton_repository(stage, graphs, ios, jobs, built, target, chw, num_classes, model_name)

    header = (f"Written by vitdeploy {__version__} for {model_name}, target '{target.name}': {target.description}\n"
              "Builds TensorRT engines from the ONNX graphs beside it, on the device that will run them:\n"
              "an engine only runs on the GPU model and TensorRT version it was built with.")
    script = render_script(jobs, target, chw, io.input_name, io.static_batch, plans, header)
    atomic_write_text(stage / BUILD_SCRIPT, script).chmod(0o755)
    return {
        "target": target.name,
        "tensorrt": {**status, "reason": reason},
        "engines": engines,
        "build_script": BUILD_SCRIPT,
        "triton": {"repository": TRITON_DIR, "models": models},
    }
