"""Data spec strings ("digits", "fashion-mnist[:PATH]", "imagefolder:PATH") and the checks shared by every kind."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from vitdeploy.errors import DataError

KINDS = ("digits", "fashion-mnist", "imagefolder")
SPLITS = ("train", "val")  # what digits and imagefolder offer
KIND_SPLITS = {"digits": SPLITS, "imagefolder": SPLITS, "fashion-mnist": ("train", "val", "test")}
ACCEPTED_FORMS = "'digits', 'fashion-mnist', 'fashion-mnist:PATH' or 'imagefolder:PATH'"


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec. `str(spec)` gives back a string that `parse_data_spec` turns into an equal spec."""

    kind: str  # "digits" | "fashion-mnist" | "imagefolder"
    path: str | None = None  # imagefolder: required; fashion-mnist: optional (None: the Debian package's folder)

    def __post_init__(self) -> None:
        if isinstance(self.path, str):  # surrounding blanks are never part of a path; keeps str() round-trips exact
            object.__setattr__(self, "path", self.path.strip())
        if self.kind not in KINDS:
            raise DataError(f"unknown data kind {self.kind!r}: expected {ACCEPTED_FORMS}")
        if self.kind == "digits" and self.path is not None:
            raise DataError("the 'digits' data spec takes no path")
        if self.kind == "imagefolder" and not self.path:
            raise DataError("the 'imagefolder' data spec needs a path: 'imagefolder:PATH'")
        if self.kind == "fashion-mnist" and self.path is not None and not self.path:
            raise DataError("the 'fashion-mnist:PATH' data spec needs a path after the colon (or use 'fashion-mnist')")

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def parse_data_spec(spec: str | DataSpec) -> DataSpec:
    """Parse "digits", "fashion-mnist", "fashion-mnist:PATH" or "imagefolder:PATH" (kind is case-insensitive, the
    path is kept as written)."""
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
    if kind == "fashion-mnist":
        return DataSpec("fashion-mnist", path if sep else None)
    if kind == "imagefolder":
        raise DataError("the 'imagefolder' data spec needs a path: 'imagefolder:PATH'")
    raise DataError(f"unknown data spec {spec!r}: expected {ACCEPTED_FORMS}")


def _alternatives(names: tuple[str, ...]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def check_split(split: str, splits: tuple[str, ...] = SPLITS) -> str:
    """`split` itself if it is one of `splits` (train and val unless a dataset offers more), else a DataError."""
    if split not in splits:
        raise DataError(f"unknown split {split!r}: expected {_alternatives(tuple(splits))}")
    return split


def splits_of(spec: str | DataSpec) -> tuple[str, ...]:
    """The splits the dataset named by `spec` offers ("test" only where a dataset has an official test set)."""
    return KIND_SPLITS[parse_data_spec(spec).kind]


def default_eval_split(spec: str | DataSpec) -> str:
    """The split evaluation measures unless told otherwise: the official test set where there is one
    (fashion-mnist), else val."""
    return "test" if "test" in splits_of(spec) else "val"


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
