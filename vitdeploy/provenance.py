"""Provenance carried by every artifact: versions of the stack, the command, and sha256 of the inputs."""
from __future__ import annotations

import datetime as _dt
import importlib.metadata as _md
import platform
import sys
from typing import Any

from vitdeploy import __version__

_LIBS = ("torch", "timm", "onnx", "onnxruntime", "onnx-graphsurgeon", "numpy", "safetensors")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"vitdeploy": __version__, "python": platform.python_version()}
    for name in _LIBS:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            out[name] = None
    return out


def provenance(**extra: Any) -> dict[str, Any]:
    """A provenance record: when, by which command, with which libraries; `extra` adds recipe, inputs, etc."""
    rec: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["vitdeploy", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("vitdeploy") else None,
        "versions": library_versions(),
    }
    rec.update({k: v for k, v in extra.items() if v is not None})
    return rec
