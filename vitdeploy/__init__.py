"""vitdeploy: compress timm Vision Transformers and ship them.

The Python API mirrors the CLI (see `vitdeploy.api` and docs/api.md): `load_model`, `info`, `train`, `compress`,
`export`, `evaluate`, `profile`, `report`. Names load lazily, so `import vitdeploy` is cheap."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("load_model", "from_module", "info", "train", "compress", "export", "evaluate", "profile", "report",
        "study_decomposition", "study_hybrid", "latency_table", "TrainResult", "CompressResult", "ExportResult", "EvalResult", "EvalRun",
        "ProfileResult", "ReportResult")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from vitdeploy import api

        return getattr(api, name)
    raise AttributeError(f"module 'vitdeploy' has no attribute {name!r}")
