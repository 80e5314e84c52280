"""The model dir: `vitdeploy.json` (architecture, data config, file manifest, provenance) + `model.safetensors`.
Loading rebuilds the module tree from the JSON and fills it from safetensors: nothing is ever unpickled."""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vitdeploy.errors import CheckpointError, IntegrityError
from vitdeploy.io import atomic_file, atomic_write_json, check_seal, is_staging_path, seal, sha256_file, verify_entry
from vitdeploy.models.arch import ArchSpec

FORMAT = "vitdeploy.model"
FORMAT_VERSION = 2  # 2: the record is sealed (record_sha256 over the whole description)
CONFIG = "vitdeploy.json"
WEIGHTS = "model.safetensors"


def is_model_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def json_ready(obj: Any) -> Any:
    """Tuples to lists, recursively, so configs survive a JSON round trip the same way every time."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    return obj


def save_weights(model: nn.Module, path: Path, arch: ArchSpec) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_file(path) as tmp:
        try:
            save_file(state, str(tmp), metadata={"format": FORMAT, "arch": json.dumps(arch.to_dict())})
        except SafetensorError as e:  # safetensors reports a failed write as "... (os error 28)": keep the errno
            raise os_error_of(e, tmp) from None


def save_model_dir(out: str | Path, model: nn.Module, arch: ArchSpec, data_config: dict,
                   manifest: tuple[str, ...] = (), **extra: Any) -> Path:
    """Write weights first and the JSON (with the sha256 manifest) last, so a dir without a valid JSON is never
    mistaken for a model. `manifest` names files the caller already wrote into `out` (compress.json, plots) that the
    manifest covers too. Callers write into a staged dir (vitdeploy.io.staged_dir) for whole-dir atomicity."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / WEIGHTS, arch)
    files = {name: {"sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size} for name in (WEIGHTS, *manifest)}
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": arch.to_dict(),
        "data_config": json_ready(data_config),
        "files": files,
        **json_ready(extra),
    }
    atomic_write_json(out / CONFIG, seal(cfg))
    return out


def os_error_of(e: Exception, path: Path) -> Exception:
    """The OSError behind a library's write error ("... (os error 28)"), so that a full disk reads as one; the error
    itself when it names no errno."""
    m = re.search(r"os error (\d+)", str(e))
    return OSError(int(m.group(1)), os.strerror(int(m.group(1))), str(path)) if m else e


def read_config(path: str | Path) -> dict:
    path = Path(path)
    if is_staging_path(path):
        raise CheckpointError(f"'{path}' is the staging folder of a run that did not finish, not a model dir")
    try:
        cfg = json.loads((path / CONFIG).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"'{path}' is a folder but not a vitdeploy model dir (no {CONFIG})") from None
    except IsADirectoryError:
        raise CheckpointError(f"model dir '{path}': {CONFIG} is a folder, not a file") from None
    except PermissionError:
        raise CheckpointError(f"model dir '{path}': {CONFIG} cannot be read (permission denied)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"model dir '{path}': {CONFIG} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise CheckpointError(f"model dir '{path}': {CONFIG} is not a vitdeploy model description")
    version = cfg.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"model dir '{path}': {CONFIG} format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"model dir '{path}' has format version {version}; this vitdeploy reads up to {FORMAT_VERSION}")
    check_seal(cfg, f"model dir '{path}'", CONFIG)
    return cfg


def verify_files(path: Path, cfg: dict) -> None:
    """Every file in the manifest is there with its recorded size and sha256; the weights must be listed."""
    files = cfg.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise IntegrityError(f"model dir '{path}': {CONFIG} has no sha256 manifest entry for {WEIGHTS}")
    for name, rec in files.items():
        verify_entry(path, {"file": name, **rec} if isinstance(rec, dict) else rec, f"model dir '{path}'")


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a torch file (weights_only=True): never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint '{path}' is not a readable safetensors file ({_first_line(e)})") from None
    try:
        with warnings.catch_warnings():  # torch warns on stderr about pickle protocols: the error below says it all
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, EOF: all mean "not a safe, whole torch checkpoint"
        raise CheckpointError(f"checkpoint '{path}' cannot be loaded safely as tensors (weights_only=True): {_first_line(e)}") from None
    return _unwrap_state(obj, path)


_WRAPPERS = ("state_dict_ema", "model_ema", "state_dict", "model")  # keys training scripts wrap a state dict in


def _unwrap_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in _WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint '{path}' does not hold a state dict of tensors")
    wrapped = [k for k in _WRAPPERS if k in obj]
    if wrapped:  # {'model': tensor}: timm's key filter would unwrap it again and fail on the tensor
        raise CheckpointError(f"checkpoint '{path}': '{wrapped[0]}' holds a single tensor, not a state dict of "
                              f"parameter names to tensors")
    if not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"checkpoint '{path}' has state dict keys that are not parameter names (strings)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def safetensors_arch(path: str | Path) -> dict | None:
    """The architecture vitdeploy stored in a safetensors file's metadata, if any."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return None
    if meta.get("format") == FORMAT and "arch" in meta:
        try:
            return json.loads(meta["arch"])
        except json.JSONDecodeError:
            return None
    return None


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else type(e).__name__
