"""Triton model repository: one model per precision, `tensorrt_plan` where an engine exists, `onnxruntime_onnx`
otherwise, each a self-contained folder (files copied, never linked) that `tritonserver --model-repository` loads.

    triton/<model>_<precision>/config.pbtxt
    triton/<model>_<precision>/1/model.plan | model.onnx

config.pbtxt is protobuf text of Triton's `inference.ModelConfig` (triton-inference-server/common,
protobuf/model_config.proto). `parse_config` reads it back through protobuf's own text parser against the subset of
that schema we write (same field names and numbers), so a typo or a field Triton does not know fails here, not on
the server.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from vitdeploy.errors import VitDeployError
from vitdeploy.io import atomic_file, atomic_write_text

# platform -> (backend, the file name Triton looks for in the version folder)
PLATFORMS = {"tensorrt_plan": ("tensorrt", "model.plan"), "onnxruntime_onnx": ("onnxruntime", "model.onnx")}
DATA_TYPES = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16", "bf16": "TYPE_BF16", "int8": "TYPE_INT8",
              "int32": "TYPE_INT32", "int64": "TYPE_INT64"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class TritonModel:
    """What one config.pbtxt says. `max_batch_size` 0 means no batching: dims then include the batch."""
    name: str
    platform: str
    max_batch_size: int
    input_name: str
    input_dtype: str
    input_dims: list[int]
    output_name: str
    output_dtype: str
    output_dims: list[int]
    preferred_batch_sizes: list[int] = field(default_factory=list)
    max_queue_delay_microseconds: int = 100
    instance_kind: str = "KIND_GPU"
    instance_count: int = 1
    dla_core: Optional[int] = None

    @property
    def model_file(self) -> str:
        return PLATFORMS[self.platform][1]


def safe_model_name(name: str) -> str:
    """A Triton model (folder) name: characters outside [A-Za-z0-9_.-] become '_'; a name that climbs out of the
    repository ('..' as a path part, an absolute path) or is empty or hidden is refused."""
    raw = str(name)
    parts = re.split(r"[\\/]+", raw)
    if raw.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", raw):
        raise VitDeployError(f"model name {raw!r} would leave the Triton model repository; use a plain name")
    safe = _UNSAFE.sub("_", raw).strip("_")
    if not safe or safe.startswith("."):
        raise VitDeployError(f"model name {raw!r} is empty or hidden once made safe for Triton ({safe!r})")
    return safe


def data_type(dtype: str) -> str:
    if dtype not in DATA_TYPES:
        raise VitDeployError(f"Triton has no data type for {dtype!r} (known: {', '.join(DATA_TYPES)})")
    return DATA_TYPES[dtype]


# ------------------------------------------------------------------------------------------------ writing
def _tensor(name: str, dtype: str, dims: list[int]) -> list[str]:
    return ["  {", f'    name: "{name}"', f"    data_type: {data_type(dtype)}",
            f"    dims: [ {', '.join(str(int(d)) for d in dims)} ]", "  }"]


def render_config(m: TritonModel, comment: str = "") -> str:
    """config.pbtxt text for `m`, laid out like Triton's own examples."""
    if m.platform not in PLATFORMS:
        raise VitDeployError(f"unknown Triton platform {m.platform!r} (known: {', '.join(PLATFORMS)})")
    if m.name != safe_model_name(m.name):
        raise VitDeployError(f"Triton model name {m.name!r} is not a plain name")
    lines = [f"# {line}" for line in comment.splitlines()]
    lines += [f'name: "{m.name}"', f'platform: "{m.platform}"', f'backend: "{PLATFORMS[m.platform][0]}"',
              f"max_batch_size: {int(m.max_batch_size)}",
              "input [", *_tensor(m.input_name, m.input_dtype, m.input_dims), "]",
              "output [", *_tensor(m.output_name, m.output_dtype, m.output_dims), "]"]
    if m.max_batch_size > 0:  # the dynamic batcher needs a batch dimension to work with
        lines.append("dynamic_batching {")
        if m.preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in m.preferred_batch_sizes)} ]")
        lines += [f"  max_queue_delay_microseconds: {int(m.max_queue_delay_microseconds)}", "}"]
    lines += ["instance_group [", "  {", f"    count: {int(m.instance_count)}", f"    kind: {m.instance_kind}"]
    if m.dla_core is not None:  # Triton's TensorRT backend places the instance on this DLA core
        lines += ["    secondary_devices [", "      {", "        kind: KIND_NVDLA",
                  f"        device_id: {int(m.dla_core)}", "      }", "    ]"]
    lines += ["  }", "]"]
    return "\n".join(lines) + "\n"


def write_model(repo: Path, m: TritonModel, source: Path, comment: str = "") -> Path:
    """Write `<repo>/<name>/config.pbtxt` and copy `source` (plus an ONNX graph's external data) into version 1."""
    repo = Path(repo)
    folder = repo / safe_model_name(m.name)
    if folder.resolve().parent != repo.resolve():
        raise VitDeployError(f"Triton model {m.name!r} would be written outside {repo}")
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    _copy(source, version / m.model_file)
    data = source.with_name(source.name + ".data")
    if m.platform == "onnxruntime_onnx" and data.is_file():  # the graph names its data file; keep that name
        _copy(data, version / data.name)
    config = atomic_write_text(folder / "config.pbtxt", render_config(m, comment))
    for path in (folder, version):
        path.chmod(0o755)
    config.chmod(0o644)  # readable by a server running as another user
    return folder


def _copy(src: Path, dst: Path) -> None:
    with atomic_file(dst) as tmp:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)


# ------------------------------------------------------------------------------------------------ reading
@functools.lru_cache(maxsize=1)
def _config_class() -> Any:
    """The protobuf class of the ModelConfig subset we write, built at run time (no generated code needed)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="vitdeploy/triton_model_config.proto", package="inference",
                                               syntax="proto3")
    dtype = proto.enum_type.add(name="DataType")
    for number, name in enumerate(["TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32",
                                   "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16",
                                   "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16"]):
        dtype.value.add(name=name, number=number)

    def message(name: str, fields: list[tuple[str, int, int, str, bool]]) -> Any:
        msg = proto.message_type.add(name=name)
        for fname, number, ftype, type_name, repeated in fields:
            fd = msg.field.add(name=fname, number=number, type=ftype,
                               label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
            if type_name:
                fd.type_name = type_name
        return msg

    tensor = [("name", 1, F.TYPE_STRING, "", False), ("data_type", 2, F.TYPE_ENUM, ".inference.DataType", False)]
    message("ModelInput", tensor + [("dims", 4, F.TYPE_INT64, "", True)])
    message("ModelOutput", tensor + [("dims", 3, F.TYPE_INT64, "", True)])
    message("ModelDynamicBatching", [("preferred_batch_size", 1, F.TYPE_INT32, "", True),
                                     ("max_queue_delay_microseconds", 2, F.TYPE_UINT64, "", False)])
    group = message("ModelInstanceGroup", [
        ("count", 2, F.TYPE_INT32, "", False), ("kind", 4, F.TYPE_ENUM, ".inference.ModelInstanceGroup.Kind", False),
        ("secondary_devices", 8, F.TYPE_MESSAGE, ".inference.ModelInstanceGroup.SecondaryDevice", True)])
    kind = group.enum_type.add(name="Kind")
    for number, name in enumerate(["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]):
        kind.value.add(name=name, number=number)
    secondary = group.nested_type.add(name="SecondaryDevice")
    secondary.enum_type.add(name="SecondaryDeviceKind").value.add(name="KIND_NVDLA", number=0)
    secondary.field.add(name="kind", number=1, type=F.TYPE_ENUM, label=F.LABEL_OPTIONAL,
                        type_name=".inference.ModelInstanceGroup.SecondaryDevice.SecondaryDeviceKind")
    secondary.field.add(name="device_id", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    message("ModelConfig", [
        ("name", 1, F.TYPE_STRING, "", False), ("platform", 2, F.TYPE_STRING, "", False),
        ("backend", 17, F.TYPE_STRING, "", False), ("max_batch_size", 4, F.TYPE_INT32, "", False),
        ("input", 5, F.TYPE_MESSAGE, ".inference.ModelInput", True),
        ("output", 6, F.TYPE_MESSAGE, ".inference.ModelOutput", True),
        ("instance_group", 7, F.TYPE_MESSAGE, ".inference.ModelInstanceGroup", True),
        ("dynamic_batching", 11, F.TYPE_MESSAGE, ".inference.ModelDynamicBatching", False)])
    pool = descriptor_pool.DescriptorPool()  # private: never clashes with a real tritonclient in the default pool
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def _to_dict(msg: Any) -> dict:
    """Every field of the subset (defaults included, unset sub-messages left out), enums by name."""
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED  # protobuf >= 6
        if fd.type == fd.TYPE_MESSAGE:
            if repeated:
                out[fd.name] = [_to_dict(v) for v in value]
            elif msg.HasField(fd.name):
                out[fd.name] = _to_dict(value)
        elif fd.type == fd.TYPE_ENUM:
            name = fd.enum_type.values_by_number
            out[fd.name] = [name[v].name for v in value] if repeated else name[value].name
        else:
            out[fd.name] = list(value) if repeated else value
    return out


def parse_config(text: str, where: str = "config.pbtxt") -> dict:
    """config.pbtxt text -> dict, through protobuf's text parser and Triton's field names; bad text -> one line."""
    from google.protobuf import text_format

    msg = _config_class()()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        raise VitDeployError(f"{where} is not a Triton model config this tool writes: {e}") from None
    return _to_dict(msg)
