"""Deployment: ONNX export, graph cleanup, FP16 and INT8 graphs, TensorRT builds, trtexec scripts, Triton
repositories and targets. Names are imported lazily, so importing the package loads no ONNX tooling."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"export_onnx": "onnx_export", "onnx_summary": "onnx_export", "parity": "onnx_export",
            "write_onnx": "onnx_export"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vitdeploy.deploy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vitdeploy.deploy.{_EXPORTS[name]}"), name)
