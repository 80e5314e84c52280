"""The one schema machinery for every YAML file vitdeploy reads (recipes, deployment targets): dataclass fields
declared with `spec` (bounds, choices, a one-line doc), validated with the same coercions, bounds and error
messages, and files found by packaged name or path.

Each file kind has a `Style`: its error class and how its messages name a key, so a recipe says "recipe field
'prune.rate' must be < 1" and a target "target 'x': 'opt_level' must be <= 5", from the same checks.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from vitdeploy.errors import VitDeployError


def spec(default: Any = dataclasses.MISSING, *, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, hi_open: bool = False, choices: tuple | Callable[[], tuple] | None = None,
         allow_empty: bool = False, item: type | None = None, check: Callable[..., Any] | None = None, doc: str = "",
         **kw: Any) -> Any:
    """A schema field: bounds (closed unless *_open), allowed choices (a tuple, or a function giving one when the
    choices come from a registry), whether a list with choices may be empty, a type list items are coerced to
    (YAML reads `[10, 11]` as ints), a `check(style, key, value) -> value` for structure the type cannot say, and
    a one-line doc for the reference."""
    meta = dict(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, choices=choices, allow_empty=allow_empty, item=item,
                check=check, doc=doc)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def choices_of(meta: dict) -> tuple:
    choices = meta.get("choices")
    return tuple(choices() if callable(choices) else choices or ())


@dataclass(frozen=True)
class Style:
    """How one kind of file words its errors. `name` is what the file is called ("recipe", "target"); `label`
    names the file in messages (targets name theirs, recipes say "recipe field")."""

    error: type[VitDeployError]
    name: str
    label: str = ""

    def key(self, key: str) -> str:
        return f"{self.name} field '{key}'" if not self.label else f"{self.name} {self.label}: '{key}'"

    def fail(self, key: str, problem: str) -> VitDeployError:
        return self.error(f"{self.key(key)} {problem}")

    def unknown(self, key: str, known: list[str]) -> VitDeployError:
        if not self.label:
            return self.error(f"unknown {self.name} key '{key}' (known here: {', '.join(known)})")
        return self.error(f"{self.name} {self.label}: unknown key '{key}' (known: {', '.join(known)})")

    def section(self, key: str, value: Any) -> VitDeployError:
        if not key:
            return self.error(f"{self.name}{' ' + self.label if self.label else ''} must be a YAML mapping at the top level")
        return self.error(f"{self.name} section '{key}' must be a mapping, got {value!r}")


def _type_name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
            dict: "a mapping"}.get(tp, str(tp))


def check_value(style: Style, key: str, value: Any, tp: Any, meta: dict) -> Any:
    """One field's value, coerced (int → float, a YAML string like '1e-4' → float, list items to `item`) and
    checked for type, finiteness, choices and bounds; errors name the key."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if value is None:
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return build(style, tp, value, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if tp is list and isinstance(value, list) and meta.get("item") is not None:
        value = [meta["item"](v) for v in value]
    ok = isinstance(value, tp) and not (tp in (int, float) and isinstance(value, bool))
    if ok and tp is float and not math.isfinite(value):
        raise style.fail(key, f"must be a finite number, got {value!r}")
    if not ok:
        raise style.fail(key, f"must be {_type_name(tp)}, got {value!r}")
    choices = choices_of(meta)
    if choices:
        for v in (value if isinstance(value, list) else [value]):
            if v not in choices:
                raise style.fail(key, f"must be one of {', '.join(map(str, choices))}; got {v!r}")
        if isinstance(value, list) and not value and not meta.get("allow_empty"):
            raise style.fail(key, f"must list at least one of {', '.join(map(str, choices))}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        raise style.fail(key, f"must be {'>' if meta.get('lo_open') else '>='} {lo}, got {value}")
    if hi is not None and (value > hi or (meta.get("hi_open") and value == hi)):
        raise style.fail(key, f"must be {'<' if meta.get('hi_open') else '<='} {hi}, got {value}")
    if meta.get("check") is not None:
        value = meta["check"](style, key, value)
    return value


def build(style: Style, cls: type, data: Any, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from a raw mapping: unknown keys, missing required keys, wrong types and
    out-of-range values are errors naming the key. Fields with init=False are derived, never read."""
    if not isinstance(data, dict):
        raise style.section(prefix, data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise style.unknown(f"{prefix}.{unknown[0]}" if prefix else str(unknown[0]), list(fields))
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            kwargs[name] = check_value(style, key, data[name], hints[name], dict(f.metadata))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise style.error(f"{style.name} is missing required key '{key}'")
    return cls(**kwargs)


def rows(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default, doc) for every leaf field: the reference tables in docs/ are generated from this."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += rows(tp, key)
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")  # type: ignore[misc]
        out.append((key, repr(default), f.metadata.get("doc", "")))
    return out


# ------------------------------------------------------------------------------------------------- files
def packaged(package: str) -> list[str]:
    """Names of the YAML files shipped in `package` (vitdeploy.recipes, vitdeploy.targets)."""
    root = importlib.resources.files(package)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def locate(name_or_path: str, package: str, style: Style) -> tuple[Any, str]:
    """The file behind a packaged name or a YAML path, and a label for where it came from ("packaged:NAME" or the
    path). A folder named like a packaged file does not shadow it."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise style.error(f"{style.name} file '{path}' does not exist")
        return path, str(path)
    res = importlib.resources.files(package) / f"{name_or_path}.yaml"
    if not res.is_file():
        raise style.error(f"unknown {style.name} '{name_or_path}' (packaged: {', '.join(packaged(package))}; "
                          f"or pass a YAML path)")
    return res, f"packaged:{name_or_path}"


def read_mapping(source: Any, what: str, style: Style) -> dict:
    """The top-level mapping of a YAML file (safe_load: no tags that build objects); `what` names it in errors.
    An empty file is an empty mapping."""
    try:
        data = yaml.safe_load(source.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise style.error(f"{what} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise style.error(f"{what} cannot be read: {e}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise style.error(f"{what} must be a YAML mapping at the top level")
    return data


def load(name_or_path: str, package: str, style: Style) -> tuple[dict, str, str]:
    """(raw mapping, origin label, default name) of a packaged name or YAML path."""
    source, origin = locate(name_or_path, package, style)
    return read_mapping(source, f"{style.name} '{name_or_path}'", style), origin, Path(name_or_path).stem


def apply_overrides(data: dict, overrides: list[str], style: Style) -> dict:
    """`key.sub=value` strings (value parsed as YAML) written into a raw mapping."""
    for item in overrides:
        if "=" not in item:
            raise style.error(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise style.error(f"--set {key}: '{p}' is not a section")
        node[parts[-1]] = value
    return data

