"""Deployment targets: what a device runs, as YAML validated against a small schema.

A target says which precisions are deployed by default, the batch profiles (min/opt/max) that TensorRT engines are
built for, the builder workspace and optimisation level, the DLA core (Jetson AGX Orin), and which TensorRT major
versions the device runs (JetPack 6 ships TensorRT 10; data-center containers run 10 or 11). Packaged targets live in
`export/` and ship as `vitdeploy.targets`; a path to a user's own YAML works too. Unknown keys, wrong types and values
that cannot work on the device are errors naming the key.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from vitdeploy import schema
from vitdeploy.errors import TargetError
from vitdeploy.precision import PRECISIONS
from vitdeploy.schema import Style, spec

DEVICES = ("cpu", "jetson", "datacenter")
TENSORRT_MAJORS = ("10", "11")
PROFILE_KEYS = ("name", "min", "opt", "max")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")  # profile names end up in file names


@dataclass
class Target:
    name: str = spec("", doc="target name (default: the YAML file name)")
    description: str = spec("", doc="one line for reports")
    device: str = spec("datacenter", choices=DEVICES, doc="what runs the model: cpu, jetson or datacenter")
    precisions: list = spec(["fp32", "fp16", "int8"], choices=PRECISIONS,
                            doc="precisions exported when --precision is not given")
    profiles: list = spec([{"name": "b1", "min": 1, "opt": 1, "max": 1}], check=lambda *a: _check_profiles(*a),
                          doc="batch profiles [{name, min, opt, max}]: one TensorRT engine per precision and profile")
    workspace_mib: int = spec(4096, lo=16, doc="TensorRT builder workspace pool, MiB")
    opt_level: int = spec(3, lo=0, hi=5, doc="TensorRT builder optimisation level (higher: slower build, faster engine)")
    dla_core: Optional[int] = spec(None, lo=0, doc="DLA core to build for (Jetson AGX Orin: 0 or 1); null: GPU only")
    gpu_fallback: bool = spec(False, doc="let layers the DLA cannot run fall back to the GPU (needs dla_core)")
    tensorrt: list = spec(["10", "11"], choices=TENSORRT_MAJORS, allow_empty=True, item=str,
                          doc="TensorRT major versions the device runs")
    gpu_names: list = spec([], doc="parts of the GPU name this target is for; engines are only built on a match")
    max_batch_size: int = field(init=False, default=0)  # the largest profile max: Triton's max_batch_size

    def __post_init__(self) -> None:
        self.max_batch_size = max((int(p["max"]) for p in self.profiles), default=0)

    @property
    def serving_profile(self) -> dict:
        """The profile whose engine Triton serves: the one reaching the largest batch."""
        return max(self.profiles, key=lambda p: (p["max"], p["opt"]))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------- validation
PACKAGE = "vitdeploy.targets"


def _style(label: str) -> Style:
    return Style(TargetError, "target", label)


def _fail(label: str, key: str, problem: str) -> TargetError:
    return _style(label).fail(key, problem)


def _check_profiles(style: Style, field_key: str, profiles: list) -> list[dict]:
    """The `check` of the profiles field: each a {name, min, opt, max} mapping with 1 <= min <= opt <= max."""
    label = style.label
    if not profiles:
        raise _fail(label, field_key, "must list at least one {name, min, opt, max} profile")
    out = []
    for i, p in enumerate(profiles):
        key = f"{field_key}[{i}]"
        if not isinstance(p, dict):
            raise _fail(label, key, f"must be a mapping with keys {', '.join(PROFILE_KEYS)}, got {p!r}")
        unknown = [k for k in p if k not in PROFILE_KEYS]
        missing = [k for k in PROFILE_KEYS if k not in p]
        if unknown or missing:
            what = f"has unknown key '{unknown[0]}'" if unknown else f"is missing '{missing[0]}'"
            raise _fail(label, key, f"{what} (keys: {', '.join(PROFILE_KEYS)})")
        if not isinstance(p["name"], str) or not _NAME_RE.match(p["name"]):
            raise _fail(label, f"{key}.name", f"must be letters, digits, '_' or '-', got {p['name']!r}")
        for k in ("min", "opt", "max"):
            if not isinstance(p[k], int) or isinstance(p[k], bool) or p[k] < 1:
                raise _fail(label, f"{key}.{k}", f"must be an integer >= 1, got {p[k]!r}")
        if not p["min"] <= p["opt"] <= p["max"]:
            raise _fail(label, key, f"must have min <= opt <= max, got {p['min']}, {p['opt']}, {p['max']}")
        out.append({k: p[k] for k in PROFILE_KEYS})
    names = [p["name"] for p in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise _fail(label, "profiles", f"names must be unique; '{dup}' appears twice")
    return out


def _check_target(label: str, t: Target) -> Target:
    """Rules that span fields: each one is something the device or TensorRT would refuse later, less clearly."""
    for key in ("precisions", "tensorrt"):
        values = getattr(t, key)
        if len(set(values)) != len(values):
            raise _fail(label, key, "lists a value twice")
    if not t.precisions:
        raise _fail(label, "precisions", f"must list at least one of {', '.join(PRECISIONS)}")
    if t.device == "cpu" and t.tensorrt:
        raise _fail(label, "tensorrt", "must be empty for a cpu target (TensorRT runs on NVIDIA GPUs)")
    if t.device != "cpu" and not t.tensorrt:
        raise _fail(label, "tensorrt", f"must list the TensorRT versions a {t.device} device runs")
    if t.dla_core is not None:
        if t.device != "jetson":
            raise _fail(label, "dla_core", f"needs device 'jetson' (DLA cores are on Jetson boards), got '{t.device}'")
        # TensorRT: "DLA does not support dynamic dimensions, so the profile's min, max, and opt values must be equal".
        dynamic = next((p for p in t.profiles if not p["min"] == p["opt"] == p["max"]), None)
        if dynamic:
            raise _fail(label, "profiles", f"must be static on the DLA (min = opt = max); '{dynamic['name']}' is "
                                           f"{dynamic['min']}/{dynamic['opt']}/{dynamic['max']}")
    elif t.gpu_fallback:
        raise _fail(label, "gpu_fallback", "only applies with a dla_core")
    if not all(isinstance(g, str) and g for g in t.gpu_names):
        raise _fail(label, "gpu_names", f"must be non-empty strings, got {t.gpu_names!r}")
    return t


def target_from_dict(data: Any, label: str) -> Target:
    """Validate a raw mapping (from YAML) into a Target; `label` names it in errors."""
    return _check_target(label, schema.build(_style(label), Target, data))


# ------------------------------------------------------------------------------------------------ loading
def available_targets() -> list[str]:
    return schema.packaged(PACKAGE)


def load_target(name_or_path: str) -> Target:
    """A packaged target by name (`jetson-orin-nano`) or a YAML file path, validated."""
    style = _style(f"'{name_or_path}'")
    data, _, name = schema.load(name_or_path, PACKAGE, style)
    data.setdefault("name", name)
    return target_from_dict(data, style.label)
