"""The architecture description stored in a model dir: the base timm model (name + kwargs) and, per block,
the dims that surgery changed. `describe` reads it off a live model; `build` rebuilds an empty model from it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import timm
import torch
import torch.nn as nn
from timm.layers import Mlp
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from vitdeploy.errors import ModelError
from vitdeploy.validate import exact_keys, finite_number, int_list, mapping, optional_positive_int, positive_int
from vitdeploy.models.surgery import IndexSelect, LowRankLinear, PrunedAttention, PrunedMlp, attention_dims, slice_embed

SUPPORTED = (
    "timm's VisionTransformer family (ViT, DeiT, DeiT-III, distilled DeiT, ViTs with registers; class token or "
    "average pool, layer scale, qkv bias, GELU variants)"
)


@dataclass
class AttnDims:
    num_heads: int
    qk_head_dim: int
    v_head_dim: int
    in_dim: int
    scale: float
    qkv_rank: Optional[int] = None
    proj_rank: Optional[int] = None


@dataclass
class MlpDims:
    in_dim: int
    hidden: int
    fc1_rank: Optional[int] = None
    fc2_rank: Optional[int] = None


@dataclass
class BlockDims:
    attn: AttnDims
    mlp: MlpDims

    @classmethod
    def from_dict(cls, d: Any, field: str = "block") -> "BlockDims":
        """Checked field by field: every count an integer >= 1, the scale a finite number > 0, ranks None or >= 1."""
        d = mapping(d, field, ModelError)
        exact_keys(d, field, ("attn", "mlp"), error=ModelError)
        a = mapping(d["attn"], f"{field}.attn", ModelError)
        exact_keys(a, f"{field}.attn", ("num_heads", "qk_head_dim", "v_head_dim", "in_dim", "scale"),
                   ("qkv_rank", "proj_rank"), ModelError)
        m = mapping(d["mlp"], f"{field}.mlp", ModelError)
        exact_keys(m, f"{field}.mlp", ("in_dim", "hidden"), ("fc1_rank", "fc2_rank"), ModelError)
        attn = AttnDims(
            **{k: positive_int(a[k], f"{field}.attn.{k}", ModelError) for k in ("num_heads", "qk_head_dim",
                                                                                   "v_head_dim", "in_dim")},
            scale=finite_number(a["scale"], f"{field}.attn.scale", ModelError, positive=True),
            **{k: optional_positive_int(a.get(k), f"{field}.attn.{k}", ModelError) for k in ("qkv_rank", "proj_rank")})
        mlp = MlpDims(
            **{k: positive_int(m[k], f"{field}.mlp.{k}", ModelError) for k in ("in_dim", "hidden")},
            **{k: optional_positive_int(m.get(k), f"{field}.mlp.{k}", ModelError) for k in ("fc1_rank", "fc2_rank")})
        return cls(attn=attn, mlp=mlp)


@dataclass
class ArchSpec:
    """Enough to rebuild the module tree without unpickling anything: timm name + kwargs + per-block dims."""

    base: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    blocks: list[BlockDims] = field(default_factory=list)
    embed_dim: Optional[int] = None  # the residual width where pruning cut it (None: the base model's)

    def to_dict(self) -> dict:
        d = {"base": self.base, "kwargs": self.kwargs, "blocks": [asdict(b) for b in self.blocks]}
        return d if self.embed_dim is None else {**d, "embed_dim": self.embed_dim}

    @classmethod
    def from_dict(cls, d: Any, where: str = "architecture") -> "ArchSpec":
        """The description read from vitdeploy.json or a checkpoint's metadata, checked by type and range before
        anything is built from it; a bad field is a one-line ModelError naming it (`where` says whose)."""
        d = mapping(d, where, ModelError)
        exact_keys(d, where, ("base", "blocks"), ("kwargs", "embed_dim"), ModelError)
        if not isinstance(d["base"], str) or not d["base"]:
            raise ModelError(f"{where}.base must be a timm model name, got {str(d['base'])[:60]!r}")
        kwargs = check_kwargs(mapping(d.get("kwargs", {}), f"{where}.kwargs", ModelError), f"{where}.kwargs")
        if not isinstance(d["blocks"], list):
            raise ModelError(f"{where}.blocks must be a list, got {str(d['blocks'])[:60]!r}")
        blocks = [BlockDims.from_dict(b, f"{where}.blocks[{i}]") for i, b in enumerate(d["blocks"])]
        embed = optional_positive_int(d.get("embed_dim"), f"{where}.embed_dim", ModelError)
        return cls(base=d["base"], kwargs=kwargs, blocks=blocks, embed_dim=embed)


# timm keyword arguments whose values are counts or sizes: checked before timm sees them (timm would build a
# tensor of negative size, or compare a string with an int, and fail with a message that names neither)
_COUNT_KWARGS = ("num_classes", "embed_dim", "depth", "num_heads", "in_chans", "reg_tokens", "class_token_count")
_SIZE_KWARGS = ("img_size", "patch_size")


def check_kwargs(kwargs: dict, field: str) -> dict:
    for k in _COUNT_KWARGS:
        if k in kwargs and not (k == "num_classes" and kwargs[k] == 0) and not (k == "reg_tokens" and kwargs[k] == 0):
            positive_int(kwargs[k], f"{field}.{k}", ModelError)
    for k in _SIZE_KWARGS:
        if k in kwargs:
            v = kwargs[k]
            if isinstance(v, (list, tuple)):
                int_list(v, f"{field}.{k}", 2, ModelError)
            else:
                positive_int(v, f"{field}.{k}", ModelError)
    if "mlp_ratio" in kwargs:
        finite_number(kwargs["mlp_ratio"], f"{field}.mlp_ratio", ModelError, positive=True)
    return dict(kwargs)


def check_supported(model: nn.Module, name: str) -> None:
    """Refuse, in one line, anything that is not a plain VisionTransformer stack of Attention + Mlp blocks."""
    if not isinstance(model, VisionTransformer):
        raise ModelError(f"'{name}' is a {type(model).__name__}; vitdeploy supports {SUPPORTED}")
    for i, blk in enumerate(model.blocks):
        if type(blk) is not Block:
            raise ModelError(f"'{name}' uses {type(blk).__name__} blocks (block {i}); vitdeploy supports {SUPPORTED}")
        if not isinstance(blk.attn, (Attention, PrunedAttention)) or getattr(blk.attn, "gate", None) is not None:
            raise ModelError(f"'{name}' block {i} has unsupported attention {type(blk.attn).__name__}; vitdeploy supports {SUPPORTED}")
        if type(blk.mlp) not in (Mlp, PrunedMlp) or isinstance(getattr(blk.mlp, "fc1", None), nn.Conv2d):
            raise ModelError(f"'{name}' block {i} has unsupported MLP {type(blk.mlp).__name__} (e.g. SwiGLU); vitdeploy supports {SUPPORTED}")


def _rank(layer: nn.Module) -> Optional[int]:
    return layer.rank if isinstance(layer, LowRankLinear) else None


def _in_dim(module: nn.Module, width: int) -> int:
    sel = getattr(module, "in_select", None)
    return sel.index.numel() if isinstance(sel, IndexSelect) else width


def _out_features(layer: nn.Module) -> int:
    return layer.out_features


def describe_block(blk: Block, width: int) -> BlockDims:
    a = attention_dims(blk.attn)
    attn = AttnDims(
        num_heads=a["num_heads"], qk_head_dim=a["qk_head_dim"], v_head_dim=a["v_head_dim"],
        in_dim=_in_dim(blk.attn, width), scale=a["scale"],
        qkv_rank=_rank(blk.attn.qkv), proj_rank=_rank(blk.attn.proj),
    )
    mlp = MlpDims(
        in_dim=_in_dim(blk.mlp, width), hidden=_out_features(blk.mlp.fc1),
        fc1_rank=_rank(blk.mlp.fc1), fc2_rank=_rank(blk.mlp.fc2),
    )
    return BlockDims(attn=attn, mlp=mlp)


def describe(model: VisionTransformer, base: str, kwargs: dict[str, Any]) -> ArchSpec:
    width = model.embed_dim
    embed = width if getattr(model, "base_embed_dim", width) != width else None
    return ArchSpec(base=base, kwargs=dict(kwargs), blocks=[describe_block(b, width) for b in model.blocks],
                    embed_dim=embed)


def create_base(base: str, kwargs: dict[str, Any], pretrained: bool = False) -> VisionTransformer:
    """timm.create_model with errors turned into one line."""
    from vitdeploy.models import registry  # noqa: F401  (registers vit_digits)

    if not timm.is_model(base):
        raise ModelError(f"unknown model '{base}': not a timm model name, a checkpoint file, or a vitdeploy model dir")
    try:
        if pretrained:
            model = _create_pretrained(base, kwargs)
        else:
            model = timm.create_model(base, pretrained=False, **kwargs)
    except ModelError:
        raise
    except TypeError as e:
        raise ModelError(f"cannot build '{base}' with {kwargs}: {e}") from None
    except (ValueError, AssertionError, RuntimeError) as e:
        if pretrained:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelError(f"could not load pretrained weights for '{base}' (is the model hub reachable?): {msg}") from None
        raise ModelError(f"cannot build '{base}' with {kwargs}: {' '.join(str(e).split())[:200]}") from None
    except Exception as e:  # hub, network, file-system problems while fetching weights
        if pretrained:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelError(f"could not load pretrained weights for '{base}' (is the model hub reachable?): {msg}") from None
        raise
    check_supported(model, base)
    return model


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _create_pretrained(base: str, kwargs: dict[str, Any]) -> nn.Module:
    """timm's pretrained path; with the hub unreachable, only the local cache is tried (no minute of retries)."""
    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE or _hub_reachable():
        return timm.create_model(base, pretrained=True, **kwargs)
    hub.HF_HUB_OFFLINE = True
    try:
        return timm.create_model(base, pretrained=True, **kwargs)
    except Exception:
        raise ModelError(f"could not load pretrained weights for '{base}': the model hub is not reachable from here "
                         "and the weights are not in the local cache") from None
    finally:
        hub.HF_HUB_OFFLINE = False


def build(arch: ArchSpec, where: str = "architecture") -> VisionTransformer:
    """An (uninitialised-weights) model with every block shaped as `arch` says. Weights come from a state dict.
    `where` names the description in errors (e.g. "model dir 'runs/s40': vitdeploy.json arch")."""
    model = create_base(arch.base, arch.kwargs)
    if len(arch.blocks) != len(model.blocks):
        raise ModelError(f"architecture lists {len(arch.blocks)} blocks but '{arch.base}' has {len(model.blocks)}")
    if arch.embed_dim is not None:
        if arch.embed_dim > model.embed_dim:
            raise ModelError(f"{where}.embed_dim is {arch.embed_dim}, more than the {model.embed_dim} of '{arch.base}'")
        try:
            slice_embed(model, torch.arange(arch.embed_dim))
        except ValueError as e:
            raise ModelError(f"{where}.embed_dim: {e}") from None
    width = model.embed_dim
    for i, (blk, want) in enumerate(zip(model.blocks, arch.blocks)):
        have = describe_block(blk, width)
        check_within(want, have, width, f"{where}.blocks[{i}]")
        if want.attn != have.attn:
            a = want.attn
            old = blk.attn
            blk.attn = PrunedAttention(
                width, a.num_heads, a.qk_head_dim, a.v_head_dim, a.scale, in_dim=a.in_dim,
                qkv_bias=old.qkv.bias is not None, proj_bias=old.proj.bias is not None,
                qkv_rank=a.qkv_rank, proj_rank=a.proj_rank,
                q_norm=None if isinstance(old.q_norm, nn.Identity) else old.q_norm,
                k_norm=None if isinstance(old.k_norm, nn.Identity) else old.k_norm,
                norm=None if isinstance(old.norm, nn.Identity) else _resized_norm(old.norm, a.num_heads * a.v_head_dim),
                attn_drop=old.attn_drop.p, proj_drop=old.proj_drop.p,
            )
        if want.mlp != have.mlp:
            m = want.mlp
            old = blk.mlp
            blk.mlp = PrunedMlp(
                width, m.hidden, old.act, in_dim=m.in_dim, out_features=old.fc2.out_features,
                bias=(old.fc1.bias is not None, old.fc2.bias is not None),
                fc1_rank=m.fc1_rank, fc2_rank=m.fc2_rank,
                norm=None if isinstance(old.norm, nn.Identity) else _resized_norm(old.norm, m.hidden),
                drop=(old.drop1.p, old.drop2.p),
            )
    return model


def check_within(want: BlockDims, dense: BlockDims, width: int, where: str) -> None:
    """Pruning and factoring only ever shrink a block: a description wider than the dense block it came from (or a
    rank no smaller than its layer) is refused in one line before any tensor is allocated for it."""
    a, d, m = want.attn, dense.attn, want.mlp
    qkv_out, proj_in = a.num_heads * (2 * a.qk_head_dim + a.v_head_dim), a.num_heads * a.v_head_dim
    bounds = [
        ("attn.in_dim", a.in_dim, width), ("mlp.in_dim", m.in_dim, width), ("mlp.hidden", m.hidden, dense.mlp.hidden),
        ("attn.num_heads x attn.qk_head_dim", a.num_heads * a.qk_head_dim, d.num_heads * d.qk_head_dim),
        ("attn.num_heads x attn.v_head_dim", proj_in, d.num_heads * d.v_head_dim),
        ("attn.qkv_rank", a.qkv_rank, min(a.in_dim, qkv_out)), ("attn.proj_rank", a.proj_rank, min(proj_in, width)),
        ("mlp.fc1_rank", m.fc1_rank, min(m.in_dim, m.hidden)), ("mlp.fc2_rank", m.fc2_rank, min(m.hidden, width)),
    ]
    for name, value, limit in bounds:
        if value is not None and value > limit:
            raise ModelError(f"{where}: {name} is {value}, more than the {limit} the dense block allows")


def _resized_norm(norm: nn.Module, width: int) -> nn.Module:
    if getattr(norm, "normalized_shape", (width,))[0] != width:
        raise ModelError("a pruned width under a scale norm cannot be rebuilt")
    return norm
