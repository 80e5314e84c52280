"""`vitdeploy export`: from a model to a deploy dir with ONNX graphs, their parity with PyTorch, and export.json."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from vitdeploy.data import load_dataset
from vitdeploy.deploy.onnx_export import export_onnx, onnx_summary, parity
from vitdeploy.errors import VitDeployError
from vitdeploy.io import atomic_write_json, sha256_file, staged_dir
from vitdeploy.models import LoadedModel
from vitdeploy.models.modeldir import json_ready
from vitdeploy.provenance import provenance

PRECISIONS = ("fp32",)  # fp16 and int8 graphs arrive with the export issue


def parse_precisions(spec: str) -> list[str]:
    names = list(dict.fromkeys(p.strip().lower() for p in spec.split(",") if p.strip()))
    bad = [p for p in names if p not in PRECISIONS]
    if not names or bad:
        raise VitDeployError(f"unsupported precision {', '.join(map(repr, bad)) or repr(spec)}; this build exports: {', '.join(PRECISIONS)}")
    return names


def parity_inputs(loaded: LoadedModel, data: Optional[str], n: int = 64) -> tuple[np.ndarray, str]:
    """Real images from `data` (the model's own training data by default); seeded noise only when there is none."""
    data = data or (loaded.meta.get("provenance") or {}).get("data")
    if data:
        ds = load_dataset(data, "val", loaded.data_config)
        x = torch.stack([ds[i][0] for i in range(min(n, len(ds)))])
        return x.numpy(), f"{data} val images ({len(x)})"
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, *loaded.input_size, generator=g).numpy(), "seeded random normal (no data given)"


def run_export(loaded: LoadedModel, out: Path, precisions: list[str], data: Optional[str] = None,
               opset: int = 17, static_batch: Optional[int] = None) -> dict:
    x, described = parity_inputs(loaded, data)
    report: dict = {
        "model": loaded.source, "input_size": list(loaded.input_size), "data_config": json_ready(loaded.data_config),
        "classes": loaded.meta.get("classes"), "opset": opset,
        "batch": "dynamic" if static_batch is None else static_batch, "parity_inputs": described, "artifacts": [],
    }
    with staged_dir(out) as stage:
        for precision in precisions:
            name = f"model.{precision}.onnx"
            path = export_onnx(loaded.model, stage / name, loaded.input_size, opset=opset, static_batch=static_batch)
            summary = onnx_summary(path)
            report["artifacts"].append({
                "file": name, "precision": precision, "bytes": path.stat().st_size, "sha256": sha256_file(path),
                "opset": summary["opset"], "nodes": summary["nodes"], "ops": summary["ops"],
                "batch_symbolic": summary["batch_symbolic"], "inputs": summary["inputs"], "outputs": summary["outputs"],
                "parity": parity(loaded.model, path, x),
            })
        report["provenance"] = provenance(source=loaded.source)
        atomic_write_json(stage / "export.json", report)
    return report
