"""Export a timm ViT to ONNX, check it, and measure how closely onnxruntime reproduces PyTorch.

The file is written atomically: the exporter works in a scratch folder beside the target, the result is
checked with the ONNX checker, and only then renamed into place, so a crash never leaves a valid-looking
but broken `.onnx` behind.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
import torch

from vitdeploy.errors import VitDeployError
from vitdeploy.io import atomic_file
from vitdeploy.models.surgery import deploy_form, restore_form
from vitdeploy.runtime.trace import trace_to_onnx

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET = 17  # LayerNormalization is a single ONNX op from opset 17 on.
try:  # the newest opset the TorchScript exporter knows; keep a fallback in case the private constant moves
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as MAX_OPSET
except Exception:  # pragma: no cover - depends on the torch version
    MAX_OPSET = 20
# protobuf cannot serialize a message over 2 GiB; leave headroom for the graph itself beside the weights.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


# ----------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put every submodule in eval mode for the block and restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _model_device(model: torch.nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def cpu_fp32_model(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model on CPU in fp32 and eval mode, without touching the caller's module (a copy if it must move)."""
    needs_copy = _model_device(model).type != "cpu" or any(
        t.is_floating_point() and t.dtype != torch.float32 for t in model.parameters()
    )
    if needs_copy:
        model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
    with eval_mode(model):
        yield model


def _check_input_size(input_size: tuple[int, int, int]) -> tuple[int, int, int]:
    size = tuple(int(s) for s in input_size)
    if len(size) != 3 or any(s < 1 for s in size):
        raise VitDeployError(f"input_size must be (channels, height, width) of positive ints, got {input_size!r}")
    return size  # type: ignore[return-value]


def _example_input(batch: int, input_size: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *input_size), generator=g, dtype=torch.float32)


# ------------------------------------------------------------------------------------------ file writing
def tensor_bytes(model_proto: onnx.ModelProto) -> int:
    """Bytes held by the graph's initializers (the weights), which dominate a ViT's serialized size."""
    total = 0
    for t in model_proto.graph.initializer:
        total += len(t.raw_data) if t.HasField("raw_data") else t.ByteSize()
    return total


def needs_external_data(model_proto: onnx.ModelProto, threshold: int = EXTERNAL_DATA_THRESHOLD) -> bool:
    """True when the model is too large for a single protobuf file (2 GiB limit)."""
    return tensor_bytes(model_proto) > threshold


def write_onnx(model_proto: onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None) -> list[Path]:
    """Check and atomically write `model_proto` to `path`; returns the files written.

    `external_data=None` decides from the size; with external data the weights go to `<name>.data` beside
    the model. Both files are staged under temporary names, checked, and renamed in place (data first).
    """
    path = Path(path)
    if external_data is None:
        external_data = needs_external_data(model_proto)
    if not external_data:
        with atomic_file(path) as tmp:
            onnx.save_model(model_proto, str(tmp))
            onnx.checker.check_model(str(tmp))
        return [path]
    data_path = path.with_name(path.name + ".data")
    # The data file's name is recorded inside the model, so write both under their final names in a scratch
    # folder, check them together, then move each into the temporary file that atomic_file renames.
    with atomic_file(path) as tmp_model, atomic_file(data_path) as tmp_data, _scratch_dir(path) as scratch:
        staged = scratch / path.name
        save_with_external_data(model_proto, staged, data_path.name)
        onnx.checker.check_model(str(staged))
        os.replace(scratch / data_path.name, tmp_data)
        os.replace(staged, tmp_model)
    return [path, data_path]


def copy_fields(src: Any, dst: Any, skip: str) -> None:
    """Copy every set field of protobuf message `src` but `skip` into `dst` (one level: the rest is copied whole)."""
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        field = getattr(dst, fd.name)
        if hasattr(field, "extend"):  # a repeated field
            field.extend(value)
        elif hasattr(field, "CopyFrom"):
            field.CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def save_with_external_data(model_proto: onnx.ModelProto, path: str | os.PathLike, data_name: str,
                            threshold: int = 1024, align: int = 4096) -> None:
    """Write `model_proto` to `path` with the raw data of every initializer of at least `threshold` bytes in
    `data_name` beside it (page-aligned offsets). Unlike onnx.save_model(save_as_external_data=True), which clears
    the raw data of the model it is given, `model_proto` is left whole and is never copied whole: the graph is
    rebuilt around tensor stubs and the weights are streamed to the data file one tensor at a time."""
    path = Path(path)
    light = onnx.ModelProto()
    copy_fields(model_proto, light, skip="graph")
    copy_fields(model_proto.graph, light.graph, skip="initializer")
    offset = 0
    with open(path.parent / data_name, "wb") as f:
        for t in model_proto.graph.initializer:
            if not t.HasField("raw_data") or len(t.raw_data) < threshold:
                light.graph.initializer.append(t)  # small or not raw: stays inline (a copy of a small tensor)
                continue
            stub = light.graph.initializer.add()
            copy_fields(t, stub, skip="raw_data")
            pad = -offset % align
            f.write(b"\0" * pad)
            offset += pad
            raw = t.raw_data  # one tensor's bytes at a time
            f.write(raw)
            stub.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = stub.external_data.add()
                entry.key, entry.value = key, value
            offset += len(raw)
            del raw
    with open(path, "wb") as f:
        f.write(light.SerializeToString())


@contextlib.contextmanager
def _scratch_dir(beside: Path) -> Iterator[Path]:
    """A temporary folder next to `beside` (same filesystem, so renames out of it are atomic)."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{beside.name}.", suffix=".export", dir=beside.parent) as d:
        yield Path(d)


@contextlib.contextmanager
def scratch_graph(model: onnx.ModelProto, folder: Path, name: str) -> Iterator[Path]:
    """An in-memory graph written to `folder/name` for as long as the block runs (onnxruntime and graphs over
    protobuf's 2 GiB limit need a file), then deleted with its external data."""
    path = Path(folder) / name
    write_onnx(model, path)
    try:
        yield path
    finally:
        for p in Path(folder).glob(f"{name}*"):
            p.unlink()


# ------------------------------------------------------------------------------------------------ export
def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    input_size: tuple[int, int, int],
    opset: int = 17,
    dynamic_batch: bool = True,
    static_batch: int | None = None,
    trace_batch: int = 2,
    deploy_attention: bool = True,
) -> Path:
    """Export `model` (NCHW float32 in, logits out) to ONNX at `path` and return the path.

    Input is named `input`, output `logits`. By default the batch dim is symbolic ("batch"); with
    `static_batch=N` the graph is traced at batch N and every shape is fixed. Attention is traced in its deploy form
    (models/surgery.deploy_form); `deploy_attention=False` traces the modules as they are (for comparisons).
    """
    path = Path(path)
    size = _check_input_size(input_size)
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise VitDeployError(f"opset {opset} is not supported: use {MIN_OPSET}..{MAX_OPSET} "
                             f"(17+ keeps LayerNorm as one LayerNormalization op)")
    if static_batch is not None:
        if static_batch < 1:
            raise VitDeployError(f"static_batch must be >= 1, got {static_batch}")
        batch, dynamic_axes = int(static_batch), None
    elif dynamic_batch:
        # Tracing at batch 1 lets the tracer specialise size-1 dims; trace at >= 2 so the batch stays general.
        if trace_batch < 2:
            raise VitDeployError(f"trace_batch must be >= 2 for a dynamic-batch export, got {trace_batch}")
        batch, dynamic_axes = int(trace_batch), {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    else:
        batch, dynamic_axes = int(trace_batch), None

    with _scratch_dir(path) as scratch, cpu_fp32_model(model) as m:
        raw = scratch / "model.onnx"
        traced, swaps = deploy_form(m) if deploy_attention else (m, [])
        try:
            trace_to_onnx(traced, _example_input(batch, size), raw, int(opset), dynamic_axes, [INPUT_NAME], [OUTPUT_NAME])
        finally:
            restore_form(swaps)
        proto = onnx.load(str(raw))  # pulls in external data if torch wrote any (> 2 GiB models)
    write_onnx(proto, path)
    return path


# ----------------------------------------------------------------------------------------------- summary
def value_dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    dims: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    return dims


def onnx_summary(path: str | Path) -> dict[str, Any]:
    """What is in an exported file: opset, node count, op histogram, I/O names and shapes, symbolic batch."""
    path = Path(path)
    if not path.is_file():
        raise VitDeployError(f"ONNX file not found: {path}")
    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    init_names = {t.name for t in proto.graph.initializer}
    inputs = [{"name": v.name, "shape": value_dims(v)} for v in proto.graph.input if v.name not in init_names]
    outputs = [{"name": v.name, "shape": value_dims(v)} for v in proto.graph.output]
    first = inputs[0]["shape"] if inputs and inputs[0]["shape"] else [None]
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    return {
        "opset": opset,
        "nodes": len(proto.graph.node),
        "ops": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "inputs": inputs,
        "outputs": outputs,
        "batch_symbolic": isinstance(first[0], str),
        "external_data": external,
        "file_bytes": path.stat().st_size,
    }


# ------------------------------------------------------------------------------------------------ parity
def parity(model: torch.nn.Module, onnx_path: str | Path, inputs: np.ndarray, threads: int | None = None,
           batch_size: int = 32) -> dict[str, Any]:
    """Run PyTorch fp32 and onnxruntime CPU on the same inputs and compare the logits.

    Returns max/mean absolute difference, mean per-sample cosine, top-1 agreement and n. Inputs are run in
    chunks of `batch_size` (or the file's fixed batch, padding the last chunk).
    """
    from vitdeploy.runtime.compare import compare_logits, infer_in_range
    from vitdeploy.runtime.onnxrt import OrtRunner
    from vitdeploy.runtime.torch import TorchRunner

    x = np.ascontiguousarray(np.asarray(inputs, dtype=np.float32))
    if x.ndim != 4 or len(x) == 0:
        raise VitDeployError(f"parity needs a non-empty NCHW batch, got shape {x.shape}")
    with cpu_fp32_model(model) as m:
        with TorchRunner(m, threads=threads) as tr, OrtRunner(onnx_path, provider="cpu", threads=threads) as orr:
            ref = infer_in_range(tr, x, max(1, int(batch_size)))
            got = infer_in_range(orr, x, max(1, int(batch_size)))
    return compare_logits(got, ref)
