"""What `profile` and `eval` accept as ARTIFACT: an .onnx file, a TensorRT engine (.plan/.engine), a deploy dir
(export.json: its ONNX graphs and engines), or any MODEL (timm name, checkpoint, model dir). Each resolves to runnable
artifacts with their input size, data config, precision, and the model dir (variant) they belong to."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import onnx

from vitdeploy.runtime.base import Runner
from vitdeploy.runtime.registry import check_backend_available, create_runner
from vitdeploy.runtime.trt import ENGINE_SUFFIXES
from vitdeploy.errors import IntegrityError, VitDeployError
from vitdeploy.io import check_seal, is_staging_path, refuse_staged, member_path, read_json, sha256_file, verify_entry
from vitdeploy.bench.macs import onnx_macs
from vitdeploy.models import LoadedModel, count_macs, load_model
from vitdeploy.models.modeldir import is_model_dir
from vitdeploy.precision import ARTIFACT_PRECISIONS

IMAGENET_CONFIG = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "interpolation": "bicubic",
                   "crop_pct": 0.875, "crop_mode": "center"}
KIND_BACKENDS = {"onnx": "ort-", "torch": "torch-", "engine": "trt"}  # which backend names run each kind
DEFAULT_BACKEND = {"onnx": "ort-cpu", "torch": "torch-cpu", "engine": "trt"}


@dataclass
class Artifact:
    label: str
    kind: str  # "onnx" | "torch" | "engine"
    input_size: tuple[int, int, int]
    data_config: dict
    onnx_path: Optional[Path] = None
    engine_path: Optional[Path] = None
    loaded: Optional[LoadedModel] = None
    precision: str = "fp32"
    sha256: Optional[str] = None
    variant: Optional[str] = None  # name of the model dir this artifact was made from, where known
    macs: Optional[int] = None  # multiply-accumulates of one image (matmuls, convolutions), where countable
    num_classes: Optional[int] = None  # logits per image, where known (checked against the data's classes)

    def runs_on(self, backend: str) -> bool:
        return backend.startswith(KIND_BACKENDS[self.kind])

    def precision_on(self, backend: str) -> str:
        """The precision a backend actually computes in: torch-cuda runs fp32 weights under fp16 autocast."""
        return "fp16-autocast" if backend == "torch-cuda" else self.precision

    def check_runs_on(self, backend: str) -> None:
        """One line saying why `backend` cannot run this artifact, and what can."""
        if not self.runs_on(backend):
            hint = {"onnx": "ONNX graphs run on ort-cpu, ort-cuda or ort-trt",
                    "torch": "export it first (vitdeploy export) or use torch-cpu",
                    "engine": "engines run on backend trt only"}[self.kind]
            raise VitDeployError(f"backend '{backend}' cannot run '{self.label}' ({self.kind}): {hint}")

    def runner(self, backend: str, threads: Optional[int] = None, spin: bool = True) -> Runner:
        """`spin=False` keeps idle onnxruntime threads from spin-waiting (sessions timed interleaved)."""
        self.check_runs_on(backend)
        return create_runner(backend, model=self.loaded.model if self.loaded else None, onnx_path=self.onnx_path,
                             engine_path=self.engine_path, threads=threads, spin=spin)

    def describe(self) -> dict:
        """The fields every profile and eval record carries, so reports can match results to runs and precisions."""
        return {"artifact": self.label, "kind": self.kind, "precision": self.precision, "sha256": self.sha256,
                "variant": self.variant}


def _variant_of(folder: Path) -> Optional[str]:
    """The model dir a file or deploy dir belongs to: the folder itself or one of its two parents."""
    for f in (folder, folder.parent, folder.parent.parent):
        if is_model_dir(f):
            return f.resolve().name
    return None


_VERIFIED: dict[str, tuple] = {}  # deploy dir -> the stat stamp of its files when last verified in this process


def verify_deploy_dir(folder: Path, record: Any) -> dict:
    """Check a deploy dir against export.json before anything in it is used: every file of its sha256 manifest is
    there, whole and unchanged, and every graph, external data file and engine it lists is in the manifest. Raises
    IntegrityError naming the first file that fails; returns the record."""
    folder = Path(folder)
    what = f"deploy dir '{folder}'"
    if is_staging_path(folder):
        raise IntegrityError(f"'{folder}' is the staging folder of an export that did not finish, not a deploy dir")
    if not isinstance(record, dict):
        raise IntegrityError(f"{what}: export.json is not a JSON object")
    check_seal(record, what, "export.json")
    _check_fields(record, what)
    files = record.get("files")
    if not isinstance(files, list) or not all(isinstance(e, dict) for e in files):
        raise IntegrityError(f"{what}: export.json has no sha256 file manifest ('files'); export it again")
    key, stamp = str(folder.resolve()), _stamp(folder, ["export.json", *(e.get("file") for e in files)])
    if _VERIFIED.get(key) == stamp:
        return record
    listed = set()
    for entry in files:
        verify_entry(folder, entry, what)
        listed.add(entry["file"])
    for key_, extra in (("artifacts", "external_data"), ("engines", None)):
        for a in record.get(key_) or []:
            if not isinstance(a, dict) or "error" in a:
                continue  # a failed engine build is recorded without a file
            if a.get("precision") not in ARTIFACT_PRECISIONS:  # it names eval's output files ({precision}): no paths
                raise IntegrityError(f"{what}: export.json gives {a.get('file')!r} the unknown precision "
                                     f"{str(a.get('precision'))[:40]!r}")
            names = [a.get("file"), *((a.get(extra) or []) if extra else [])]
            for name in names:
                member_path(folder, name, what)
                if name not in listed:
                    raise IntegrityError(f"{what}: export.json lists {name!r} under {key_} but its manifest does not")
    _VERIFIED[key] = stamp
    return record


def _check_fields(record: dict, what: str) -> None:
    """The fields of export.json that feed or describe the graphs, by type and range, before any is used."""
    from vitdeploy.validate import class_names, data_config, int_list

    field = f"{what}: export.json"
    if record.get("input_size") is not None:
        int_list(record["input_size"], f"{field} input_size", 3, IntegrityError)
    if record.get("data_config") is not None:
        cfg = data_config(record["data_config"], f"{field} data_config", IntegrityError)
        if record.get("input_size") is not None and list(record["input_size"]) != list(cfg["input_size"]):
            raise IntegrityError(f"{field} input_size {record['input_size']} differs from its data_config's "
                                 f"{cfg['input_size']}")
    class_names(record.get("classes"), f"{field} classes", error=IntegrityError)
    for key in ("artifacts", "engines"):
        entries = record.get(key)
        if entries is not None and (not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries)):
            raise IntegrityError(f"{field} {key} must be a list of objects, got {str(entries)[:60]!r}")


def _stamp(folder: Path, names: list) -> tuple:
    """(name, mtime, size) of each file: a dir verified once is not hashed again in this process until one changes."""
    out = []
    for name in names:
        try:
            st = (folder / str(name)).stat()
            out.append((name, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((name, None, None))
    return tuple(out)


def read_deploy_record(folder: Path) -> Optional[dict]:
    """export.json of `folder`, verified (verify_deploy_dir); None when `folder` is not a deploy dir."""
    record = read_json(Path(folder) / "export.json")
    return None if record is None else verify_deploy_dir(Path(folder), record)


def _deploy_record(path: Path) -> tuple[Optional[dict], Optional[Path]]:
    """export.json of the deploy dir holding `path` (engines sit in deploy/engines/), with that dir, verified."""
    for folder in (path.parent, path.parent.parent):
        record = read_deploy_record(folder)
        if record is not None:
            return record, folder
    return None, None


def _load_proto(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise VitDeployError(f"'{path}' is not a readable ONNX file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _graph_inputs(proto: onnx.ModelProto) -> list:
    """The graph's real inputs (older exporters list initializers among the inputs too)."""
    weights = {t.name for t in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in weights]


def _onnx_input_size(proto: onnx.ModelProto, path: Path) -> tuple[int, int, int]:
    inputs = _graph_inputs(proto)
    if len(inputs) != 1:
        raise VitDeployError(f"'{path}' has {len(inputs)} inputs; an image classifier graph takes one NCHW image batch")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(dims[1:]) or any(d < 0 for d in dims):
        raise VitDeployError(f"'{path}' does not take an NCHW image batch with fixed C, H, W")
    return (dims[1], dims[2], dims[3])


def _onnx_num_classes(proto: onnx.ModelProto, path: Path) -> Optional[int]:
    """C of the graph's one [N, C] logits output (None when C is symbolic)."""
    outputs = list(proto.graph.output)
    if len(outputs) != 1:
        raise VitDeployError(f"'{path}' has {len(outputs)} outputs; an image classifier graph gives one [N, classes] "
                             f"logits output")
    dims = [d.dim_value for d in outputs[0].type.tensor_type.shape.dim]
    if len(dims) != 2:
        raise VitDeployError(f"'{path}' gives a {len(dims)}-D output; an image classifier graph gives [N, classes]")
    return dims[1] or None


def onnx_precision(proto: onnx.ModelProto) -> str:
    """int8 for Q/DQ graphs, fp16 for graphs with half weights or I/O, else fp32 (for files without export.json)."""
    ops = {n.op_type for n in proto.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "MatMulInteger"}:
        return "int8"
    half = onnx.TensorProto.FLOAT16
    if any(t.data_type == half for t in proto.graph.initializer) or any(
            v.type.tensor_type.elem_type == half for v in proto.graph.input):
        return "fp16"
    return "fp32"


def _entry_for(record: Optional[dict], folder: Optional[Path], path: Path, key: str) -> Optional[dict]:
    if record is None or folder is None:
        return None
    for entry in record.get(key) or []:
        if (folder / entry["file"]).resolve() == path.resolve():
            return entry
    return None


def _data_config(record: Optional[dict], size: tuple[int, int, int]) -> dict:
    return (record or {}).get("data_config") or {"input_size": list(size), **IMAGENET_CONFIG}


def onnx_artifact(path: Path) -> Artifact:
    """One ONNX graph; precision from its deploy dir's export.json when it has one, else read from the graph."""
    record, folder = _deploy_record(path)
    proto = _load_proto(path)
    entry = _entry_for(record, folder, path, "artifacts")
    size = _onnx_input_size(proto, path)
    return Artifact(label=str(path), kind="onnx", input_size=size, data_config=_data_config(record, size),
                    onnx_path=path, precision=(entry or {}).get("precision") or onnx_precision(proto),
                    sha256=sha256_file(path), variant=_variant_of(path.parent),
                    num_classes=_onnx_num_classes(proto, path), macs=onnx_macs(proto))


def _engine_precision(path: Path) -> str:
    """From the export naming scheme model.<precision>.b<batch>.plan, else 'unknown'."""
    tokens = path.name.split(".")
    return next((t for t in tokens if t in ARTIFACT_PRECISIONS), "unknown")


def engine_artifact(path: Path, record: Optional[dict] = None, folder: Optional[Path] = None) -> Artifact:
    """A TensorRT engine. Its input size comes from export.json; a bare engine is read with TensorRT itself."""
    if record is None:
        record, folder = _deploy_record(path)
    entry = _entry_for(record, folder, path, "engines")
    if record is not None and record.get("input_size"):
        size = tuple(int(s) for s in record["input_size"])
    else:
        size = _engine_input_size(path)
    return Artifact(label=str(path), kind="engine", input_size=size, data_config=_data_config(record, size),  # type: ignore[arg-type]
                    engine_path=path, precision=(entry or {}).get("precision") or _engine_precision(path),
                    sha256=sha256_file(path) if path.is_file() else None, variant=_variant_of(path.parent),
                    num_classes=len(record["classes"]) if isinstance((record or {}).get("classes"), list) else None)


def _engine_input_size(path: Path) -> tuple[int, int, int]:
    from vitdeploy.runtime.trt import TrtRunner

    check_backend_available("trt")
    with TrtRunner(path) as runner:
        size = tuple(int(s) for s in runner.input_shape)
    if len(size) != 3 or min(size) < 1:
        raise VitDeployError(f"'{path}' does not take an NCHW image batch with fixed C, H, W")
    return size  # type: ignore[return-value]


def resolve_artifacts(spec: str, arch: Optional[str] = None) -> list[Artifact]:
    """`arch` names the timm architecture of a bare checkpoint file (as --arch does for MODEL elsewhere)."""
    path = Path(spec)
    if os.path.exists(path):
        refuse_staged(path)
    if path.suffix in ENGINE_SUFFIXES:
        check_backend_available("trt")  # one line naming what is missing, before anything is read
        if not path.is_file():
            raise VitDeployError(f"engine file not found: {path}")
        return [engine_artifact(path)]
    if path.is_file() and path.suffix == ".onnx":
        return [onnx_artifact(path)]
    if path.is_dir():
        record = read_deploy_record(path)
        if record is not None:
            found = [onnx_artifact(member_path(path, a.get("file"), f"deploy dir '{path}'"))
                     for a in record.get("artifacts") or []]
            found += [engine_artifact(member_path(path, e.get("file"), f"deploy dir '{path}'"), record, path)
                      for e in record.get("engines") or []]
            if not found:
                raise VitDeployError(f"deploy dir '{path}' lists no artifacts in its export.json")
            return found
    loaded = load_model(spec, arch=arch)
    variant = path.resolve().name if is_model_dir(path) else None
    return [Artifact(label=spec, kind="torch", input_size=loaded.input_size, data_config=loaded.data_config,
                     loaded=loaded, variant=variant, num_classes=loaded.num_classes or None,
                     macs=count_macs(loaded.model, loaded.input_size))]


def pair_backends(groups: list[list[Artifact]], backends: Optional[list[str]]) -> tuple[list[tuple[Artifact, str]], list[str]]:
    """Pair each artifact with the backends that run it; `groups` are the artifacts of each ARTIFACT argument.

    Without `backends`, each artifact gets its kind's default (ort-cpu, torch-cpu, trt), except that engines listed
    in a deploy dir are left to an explicit `--backend trt`. An argument none of whose artifacts can run raises one
    line; artifacts of a deploy dir that cannot run are skipped and named in the returned notes.
    """
    pairs: list[tuple[Artifact, str]] = []
    notes: list[str] = []
    for group in groups:
        mine: list[tuple[Artifact, str]] = []
        for a in group:
            if backends is None:
                wanted = [] if (a.kind == "engine" and len(group) > 1) else [DEFAULT_BACKEND[a.kind]]
            else:
                wanted = [b for b in backends if a.runs_on(b)]
            mine += [(a, b) for b in wanted]
            if not wanted:
                notes.append(f"skipped {a.label} ({a.kind}): " + ("engines run with --backend trt" if backends is None
                                                                  else f"none of {', '.join(backends)} runs it"))
        if not mine:
            group[0].check_runs_on((backends or [DEFAULT_BACKEND[group[0].kind]])[0])
            raise VitDeployError(f"'{group[0].label}' and the rest of its deploy dir are TensorRT engines: use --backend trt")
        pairs += mine
    return pairs, notes


def reference_artifact(group: list[Artifact]) -> Artifact:
    """The artifact of a reference argument to compare against: a deploy dir's fp32 ONNX graph when it has one."""
    return next((a for a in group if a.kind == "onnx" and a.precision == "fp32"), group[0])
