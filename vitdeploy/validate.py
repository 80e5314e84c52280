"""Type and range checks for values read from files a user can edit (vitdeploy.json, checkpoint metadata, ONNX
inputs): each failure is one line naming the field, what was expected and what was found, raised as the caller's
error class. JSON hands over strings, booleans and NaN as readily as numbers, so each check says exactly what it takes.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from vitdeploy.errors import VitDeployError


def _shown(value: Any) -> str:
    return repr(value)[:60]


def positive_int(value: Any, field: str, error: type[VitDeployError] = VitDeployError) -> int:
    """An int >= 1 (not a bool, not a string of digits, not a float)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{field} must be an integer >= 1, got {_shown(value)}")
    return value


def optional_positive_int(value: Any, field: str, error: type[VitDeployError] = VitDeployError) -> Optional[int]:
    return None if value is None else positive_int(value, field, error)


def finite_number(value: Any, field: str, error: type[VitDeployError] = VitDeployError, *,
                  positive: bool = False) -> float:
    """An int or float that is finite (and > 0 with `positive`); strings and booleans are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise error(f"{field} must be a finite number, got {_shown(value)}")
    if positive and value <= 0:
        raise error(f"{field} must be > 0, got {_shown(value)}")
    return float(value)


def int_list(value: Any, field: str, length: Optional[int] = None,
             error: type[VitDeployError] = VitDeployError) -> list[int]:
    """A list of ints >= 1 (of `length` items when given)."""
    if not isinstance(value, (list, tuple)) or (length is not None and len(value) != length):
        want = f"a list of {length} integers" if length is not None else "a list of integers"
        raise error(f"{field} must be {want}, got {_shown(value)}")
    return [positive_int(v, f"{field}[{i}]", error) for i, v in enumerate(value)]


def number_list(value: Any, field: str, length: int, error: type[VitDeployError] = VitDeployError, *,
                positive: bool = False) -> list[float]:
    """A list of `length` finite numbers (each > 0 with `positive`)."""
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise error(f"{field} must be a list of {length} numbers, got {_shown(value)}")
    return [finite_number(v, f"{field}[{i}]", error, positive=positive) for i, v in enumerate(value)]


def mapping(value: Any, field: str, error: type[VitDeployError] = VitDeployError) -> dict:
    if not isinstance(value, dict):
        raise error(f"{field} must be a JSON object, got {_shown(value)}")
    return value


def exact_keys(value: dict, field: str, required: Sequence[str], optional: Sequence[str] = (),
               error: type[VitDeployError] = VitDeployError) -> None:
    """`value` has every key in `required`, and nothing outside `required` and `optional`."""
    missing = [k for k in required if k not in value]
    if missing:
        raise error(f"{field} is missing {', '.join(missing)}")
    unknown = [str(k) for k in value if k not in required and k not in optional]
    if unknown:
        raise error(f"{field} has unknown field(s) {', '.join(unknown)[:80]}")


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos", "random")  # what timm's transforms take
CROP_MODES = ("center", "squash", "border")


def data_config(cfg: Any, field: str, error: type[VitDeployError] = VitDeployError) -> dict:
    """A timm data config as every stage feeds the model with it: input_size (C, H, W) of integers >= 1, one finite
    mean and one std > 0 per channel, crop_pct > 0, and an interpolation and crop mode timm knows."""
    cfg = mapping(cfg, field, error)
    size = int_list(cfg.get("input_size"), f"{field}.input_size", 3, error)
    for key, positive in (("mean", False), ("std", True)):
        if key in cfg:
            number_list(cfg[key], f"{field}.{key}", size[0], error, positive=positive)
    if cfg.get("crop_pct") is not None:
        finite_number(cfg["crop_pct"], f"{field}.crop_pct", error, positive=True)
    for key, known in (("interpolation", INTERPOLATIONS), ("crop_mode", CROP_MODES)):
        if cfg.get(key) is not None and cfg[key] not in known:
            raise error(f"{field}.{key} must be one of {', '.join(known)}, got {_shown(cfg[key])}")
    return cfg


def class_names(value: Any, field: str, count: Optional[int] = None,
                error: type[VitDeployError] = VitDeployError) -> Optional[list[str]]:
    """None, or a list of class names (strings), `count` of them when given."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise error(f"{field} must be a list of class names, got {_shown(value)}")
    if count is not None and len(value) != count:
        raise error(f"{field} names {len(value)} classes but the model scores {count}")
    return value
