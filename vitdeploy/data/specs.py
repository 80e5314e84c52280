"""Data spec strings ("digits", "imagefolder:PATH") and the checks shared by every dataset kind."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from vitdeploy.errors import DataError

KINDS = ("digits", "imagefolder")
SPLITS = ("train", "val")
ACCEPTED_FORMS = "'digits' or 'imagefolder:PATH'"


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec. `str(spec)` gives back a string that `parse_data_spec` turns into an equal spec."""

    kind: str  # "digits" | "imagefolder"
    path: str | None = None  # imagefolder only

    def __post_init__(self) -> None:
        if isinstance(self.path, str):  # surrounding blanks are never part of a path; keeps str() round-trips exact
            object.__setattr__(self, "path", self.path.strip())
        if self.kind not in KINDS:
            raise DataError(f"unknown data kind {self.kind!r}: expected {ACCEPTED_FORMS}")
        if self.kind == "digits" and self.path is not None:
            raise DataError("the 'digits' data spec takes no path")
        if self.kind == "imagefolder" and not self.path:
            raise DataError("the 'imagefolder' data spec needs a path: 'imagefolder:PATH'")

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def parse_data_spec(spec: str | DataSpec) -> DataSpec:
    """Parse "digits" or "imagefolder:PATH" (kind is case-insensitive, the path is kept as written)."""
    if isinstance(spec, DataSpec):
        return spec
    if not isinstance(spec, str):
        raise DataError(f"data spec must be a string, got {type(spec).__name__}: expected {ACCEPTED_FORMS}")
    text = spec.strip()
    kind, sep, path = text.partition(":")
    kind = kind.strip().lower()
    if kind == "digits" and not sep:
        return DataSpec("digits")
    if kind == "imagefolder" and sep:
        return DataSpec("imagefolder", path)  # an empty path is refused by DataSpec itself
    if kind == "imagefolder":
        raise DataError("the 'imagefolder' data spec needs a path: 'imagefolder:PATH'")
    raise DataError(f"unknown data spec {spec!r}: expected {ACCEPTED_FORMS}")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected 'train' or 'val'")
    return split


def input_size_of(data_config: Mapping[str, Any]) -> tuple[int, int, int]:
    """The (3, H, W) input size of a timm data config, checked."""
    if not isinstance(data_config, Mapping) or "input_size" not in data_config:
        raise DataError("data config has no 'input_size' (expected a timm data config with input_size=(3, H, W))")
    size = data_config["input_size"]
    try:
        c, h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise DataError(f"data config input_size {size!r} is not (3, H, W)") from None
    if c != 3 or h < 1 or w < 1:
        raise DataError(f"data config input_size {tuple(size)!r} is not (3, H, W) with H, W >= 1")
    return c, h, w
