"""Tracing a PyTorch module to an ONNX file: the one call to torch's exporter, shared by the deploy stage (whose
graphs it then cleans) and by latency measurement on onnxruntime (sub-graphs of a latency table, whole models
timed against each other)."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch

from vitdeploy.errors import VitDeployError


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Hide the exporter's deprecation and tracer warnings from users; errors still propagate."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
        yield


def trace_to_onnx(model: torch.nn.Module, example: torch.Tensor, out: str | Path, opset: int,
                  dynamic_axes: dict[str, dict[int, str]] | None, input_names: Sequence[str] = ("input",),
                  output_names: Sequence[str] = ("logits",)) -> Path:
    """Trace `model` on `example` into `out` (weights inside, constants folded)."""
    # We choose the TorchScript (tracing) exporter on purpose, with dynamo=False: torch >= 2.9 defaults to the
    # torch.export-based exporter, but the tracer is the mature path for ViTs (stable LayerNormalization/Erf
    # graphs that TensorRT and onnx-graphsurgeon handle well, and simple dynamic_axes for the batch dim).
    try:
        with quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                model, (example,), str(out),
                dynamo=False,
                export_params=True,
                opset_version=int(opset),
                do_constant_folding=True,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
            )
    except torch.onnx.errors.OnnxExporterError as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VitDeployError(f"ONNX export failed: {msg}") from e
    return Path(out)
