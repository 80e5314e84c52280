"""The architecture description stored in a model dir: the base timm model (name + kwargs) and, per block,
the dims that surgery changed. `describe` reads it off a live model; `build` rebuilds an empty model from it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import timm
import torch.nn as nn
from timm.layers import Mlp
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block, VisionTransformer

from vitdeploy.errors import ModelError
from vitdeploy.models.surgery import IndexSelect, LowRankLinear, PrunedAttention, PrunedMlp, attention_dims

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
    def from_dict(cls, d: dict) -> "BlockDims":
        return cls(attn=AttnDims(**d["attn"]), mlp=MlpDims(**d["mlp"]))


@dataclass
class ArchSpec:
    """Enough to rebuild the module tree without unpickling anything: timm name + kwargs + per-block dims."""

    base: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    blocks: list[BlockDims] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"base": self.base, "kwargs": self.kwargs, "blocks": [asdict(b) for b in self.blocks]}

    @classmethod
    def from_dict(cls, d: dict) -> "ArchSpec":
        try:
            return cls(base=d["base"], kwargs=dict(d.get("kwargs", {})), blocks=[BlockDims.from_dict(b) for b in d["blocks"]])
        except (KeyError, TypeError) as e:
            raise ModelError(f"architecture description is malformed ({type(e).__name__}: {e})") from None


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
    return ArchSpec(base=base, kwargs=dict(kwargs), blocks=[describe_block(b, width) for b in model.blocks])


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


def build(arch: ArchSpec) -> VisionTransformer:
    """An (uninitialised-weights) model with every block shaped as `arch` says. Weights come from a state dict."""
    model = create_base(arch.base, arch.kwargs)
    if len(arch.blocks) != len(model.blocks):
        raise ModelError(f"architecture lists {len(arch.blocks)} blocks but '{arch.base}' has {len(model.blocks)}")
    width = model.embed_dim
    for blk, want in zip(model.blocks, arch.blocks):
        have = describe_block(blk, width)
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


def _resized_norm(norm: nn.Module, width: int) -> nn.Module:
    if getattr(norm, "normalized_shape", (width,))[0] != width:
        raise ModelError("a pruned width under a scale norm cannot be rebuilt")
    return norm
