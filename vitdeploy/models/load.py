"""Turn a MODEL argument into a live model: a timm name, a checkpoint file, or a vitdeploy model dir."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import timm.data
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from vitdeploy.errors import CheckpointError, ModelError
from vitdeploy.io import is_staging_path, refuse_staged, sha256_file
from vitdeploy.models import modeldir
from vitdeploy.models.arch import ArchSpec, build, create_base, describe
from vitdeploy.models.stem import input_channels
from vitdeploy.validate import class_names

_CKPT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")


@dataclass
class LoadedModel:
    model: VisionTransformer
    arch: ArchSpec
    data_config: dict
    source: dict  # kind (timm | checkpoint | model_dir), name or path, sha256 where a file was read
    meta: dict = field(default_factory=dict)  # the model dir's vitdeploy.json, if that is where it came from

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_config["input_size"])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)


def default_data_config(model: nn.Module) -> dict:
    """timm's data config, with the input size the model was actually built for (timm reports the pretrained one)."""
    cfg = timm.data.resolve_data_config({}, model=model)
    cfg["input_size"] = (input_channels(model), *model.patch_embed.img_size)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def check_data_config(cfg: Any, model: nn.Module, field: str) -> None:
    """The normalisation and input size every stage feeds the model with (vitdeploy.validate.data_config), and an
    input size that is the one the architecture was built for."""
    from vitdeploy.validate import data_config

    size = list(data_config(cfg, field, ModelError)["input_size"])
    built = [input_channels(model), *(int(s) for s in model.patch_embed.img_size)]
    if size != built:
        raise ModelError(f"{field}.input_size is {size} but the architecture takes {built}")


def load_model(
    spec: str,
    checkpoint: Optional[str] = None,
    arch: Optional[str] = None,
    pretrained: bool = False,
    overrides: Optional[dict[str, Any]] = None,
) -> LoadedModel:
    """Resolve MODEL. `checkpoint` fills a timm architecture from a file; `arch` names the timm architecture of a
    bare checkpoint file given as MODEL; `overrides` are timm kwargs (e.g. num_classes) for fresh models."""
    path = Path(spec)
    for given in (path, Path(checkpoint) if checkpoint else None):
        if given is not None and given.exists() and not is_staging_path(given):  # a staging dir itself: read_config says so
            refuse_staged(given, "a model or checkpoint")
    if path.is_dir():
        if checkpoint or pretrained:
            raise ModelError("--checkpoint/--pretrained apply to timm names, not to a model dir")
        return load_model_dir(path)
    if path.is_file():
        if checkpoint:
            raise ModelError(f"'{spec}' is already a checkpoint file; --checkpoint applies to a timm name")
        return _from_checkpoint(path, arch, overrides)
    if spec.endswith(_CKPT_SUFFIXES) or "/" in spec or spec.startswith("."):
        raise CheckpointError(f"'{spec}' does not exist (expected a timm model name, a checkpoint file, or a model dir)")
    if checkpoint:
        return _from_checkpoint(Path(checkpoint), spec, overrides)
    kwargs = dict(overrides or {})
    model = create_base(spec, kwargs, pretrained=pretrained)
    return LoadedModel(
        model=model.eval(), arch=describe(model, spec, kwargs), data_config=default_data_config(model),
        source={"kind": "timm", "name": spec, "pretrained": pretrained},
    )


def load_model_dir(path: str | Path) -> LoadedModel:
    path = Path(path)
    cfg = modeldir.read_config(path)
    modeldir.verify_files(path, cfg)
    where = f"model dir '{path}': {modeldir.CONFIG}"
    arch = ArchSpec.from_dict(cfg.get("arch"), f"{where} arch")
    model = build(arch, f"{where} arch")
    state = modeldir.load_state_file(path / modeldir.WEIGHTS)
    _load_state(model, state, f"model dir '{path}'", arch.base)
    data_config = cfg.get("data_config") or default_data_config(model)
    check_data_config(data_config, model, f"{where} data_config")
    class_names(cfg.get("classes"), f"{where} classes", int(model.num_classes) or None, ModelError)
    return LoadedModel(
        model=model.eval(), arch=arch, data_config=data_config,
        source={"kind": "model_dir", "path": str(path), "sha256": cfg["files"][modeldir.WEIGHTS]["sha256"]},
        meta=cfg,
    )


def _from_checkpoint(path: Path, arch_name: Optional[str], overrides: Optional[dict[str, Any]]) -> LoadedModel:
    state = modeldir.load_state_file(path)
    stored = modeldir.safetensors_arch(path) if path.suffix == ".safetensors" else None
    if stored is not None and arch_name is None:
        arch = ArchSpec.from_dict(stored, f"checkpoint '{path}' metadata: arch")
        model = build(arch, f"checkpoint '{path}' metadata: arch")
    else:
        if arch_name is None:
            raise ModelError(f"checkpoint '{path}' does not say its architecture: pass --arch NAME (a timm model name)")
        kwargs = dict(overrides or {})
        head = state.get("head.weight")
        if head is not None and head.ndim == 2 and "num_classes" not in kwargs:
            kwargs["num_classes"] = int(head.shape[0])
        model = create_base(arch_name, kwargs)
        state = checkpoint_filter_fn(state, model)
        arch = describe(model, arch_name, kwargs)
    _load_state(model, state, f"checkpoint '{path}'", arch.base)
    return LoadedModel(
        model=model.eval(), arch=arch, data_config=default_data_config(model),
        source={"kind": "checkpoint", "path": str(path), "sha256": sha256_file(path)},
    )


def _load_state(model: nn.Module, state: dict, what: str, arch_name: str) -> None:
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        detail = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise CheckpointError(f"{what} does not fit '{arch_name}': {detail}") from None
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(f"{what} does not fit '{arch_name}': " + ", ".join(parts))
