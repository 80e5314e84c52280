"""What `profile` and `eval` accept as ARTIFACT: an .onnx file, a deploy dir (export.json), or any MODEL
(timm name, checkpoint, model dir). Each resolves to runnable artifacts with their input size and data config."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import onnx

from vitdeploy.bench.runners import Runner, create_runner
from vitdeploy.errors import VitDeployError
from vitdeploy.io import read_json
from vitdeploy.models import LoadedModel, load_model


@dataclass
class Artifact:
    label: str
    kind: str  # "onnx" | "torch"
    input_size: tuple[int, int, int]
    data_config: dict
    onnx_path: Optional[Path] = None
    loaded: Optional[LoadedModel] = None
    precision: str = "fp32"

    def runner(self, backend: str, threads: Optional[int] = None) -> Runner:
        if self.kind == "onnx" and backend.startswith("torch-"):
            raise VitDeployError(f"backend '{backend}' runs PyTorch models; '{self.label}' is an ONNX graph (use ort-cpu)")
        if self.kind == "torch" and backend.startswith("ort-"):
            raise VitDeployError(f"backend '{backend}' runs ONNX graphs; export '{self.label}' first (vitdeploy export) or use torch-cpu")
        return create_runner(backend, model=self.loaded.model if self.loaded else None, onnx_path=self.onnx_path, threads=threads)

    def runs_on(self, backend: str) -> bool:
        return backend.startswith("torch-") == (self.kind == "torch")


def _export_record(folder: Path) -> dict | None:
    return read_json(folder / "export.json")


def _onnx_input_size(path: Path) -> tuple[int, int, int]:
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise VitDeployError(f"'{path}' is not a readable ONNX file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(dims[1:]):
        raise VitDeployError(f"'{path}' does not take an NCHW image batch with fixed C, H, W")
    return (dims[1], dims[2], dims[3])


def _onnx_artifact(path: Path, record: dict | None, precision: str = "fp32") -> Artifact:
    size = _onnx_input_size(path)
    cfg = (record or {}).get("data_config") or {"input_size": list(size), "mean": [0.485, 0.456, 0.406],
                                                  "std": [0.229, 0.224, 0.225], "interpolation": "bicubic",
                                                  "crop_pct": 0.875, "crop_mode": "center"}
    return Artifact(label=str(path), kind="onnx", input_size=size, data_config=cfg, onnx_path=path, precision=precision)


def resolve_artifacts(spec: str, arch: Optional[str] = None) -> list[Artifact]:
    """`arch` names the timm architecture of a bare checkpoint file (as --arch does for MODEL elsewhere)."""
    path = Path(spec)
    if path.is_file() and path.suffix == ".onnx":
        return [_onnx_artifact(path, _export_record(path.parent))]
    if path.is_dir():
        record = _export_record(path)
        if record is not None:
            return [_onnx_artifact(path / a["file"], record, a.get("precision", "fp32")) for a in record["artifacts"]]
    loaded = load_model(spec, arch=arch)
    return [Artifact(label=spec, kind="torch", input_size=loaded.input_size, data_config=loaded.data_config, loaded=loaded)]
