"""Precision names, spelled once: what `vitdeploy export` writes, and what an artifact's name or metadata may say
(engines built elsewhere may be `best`, `bf16` or `fp8`)."""
from __future__ import annotations

from vitdeploy.errors import VitDeployError

PRECISIONS = ("fp32", "fp16", "int8")  # the graphs export writes, one per precision, in this order
ARTIFACT_PRECISIONS = PRECISIONS + ("best", "bf16", "fp8")  # what an artifact (a TensorRT engine) may carry


def parse_precisions(spec: str) -> list[str]:
    """"fp32, int8" -> ["fp32", "int8"] (order kept, duplicates dropped); unknown or empty -> one-line error."""
    items = [p.strip().lower() for p in str(spec).split(",")]
    if any(items) and not all(items):
        raise VitDeployError(f"--precision has an empty item in {spec!r}; list precisions like fp32,fp16")
    names = list(dict.fromkeys(p for p in items if p))
    bad = [p for p in names if p not in PRECISIONS]
    if not names or bad:
        raise VitDeployError(f"unsupported precision {', '.join(map(repr, bad)) or repr(spec)}; "
                             f"this build exports: {', '.join(PRECISIONS)}")
    return names
