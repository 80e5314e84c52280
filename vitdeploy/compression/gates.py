"""VTP's importance scores: one learnable gate per dim at up to five sites of every block, applied through
forward hooks so the model's own modules and state-dict keys stay untouched.

Sites (VTP's four, plus q/k dims which VTP leaves alone, plus the residual width):
  embed      the residual stream, one gate vector shared by the whole model, applied where the stream is read:
             the output of every block's norm1 and norm2 and of the final norm (or fc_norm, or the head's input)
                                                                       folds into those norms' weight and bias
  attn_in    qkv input (LayerNorm-1 output, after any index-select)     folds into qkv columns
  attn_qk    q dims of every head (q·k sums only over kept dims)         folds into q rows of qkv (and bias)
  attn_out   attention output before proj = each head's v dims          folds into proj columns
  mlp_in     fc1 input (LayerNorm-2 output)                             folds into fc1 columns
  mlp_hidden MLP hidden activations before fc2                          folds into fc2 columns

The gate container is a submodule of the model (`model.vtp_gates`) while it trains, so an optimizer, a state dict
or DistributedDataParallel sees the scores like any other parameter.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn as nn

from vitdeploy.errors import RecipeError
from vitdeploy.models.surgery import attention_dims, check_embed_prunable, residual_heads

SITES = ("embed", "attn_in", "attn_qk", "attn_out", "mlp_in", "mlp_hidden")
MODEL = -1  # the block index of model-level sites (embed)
VTP_SITES = ("attn_in", "attn_out", "mlp_in", "mlp_hidden")
ATTR = "vtp_gates"


def _key(block: int, site: str) -> str:
    return f"{block}_{site}"


def site_sizes(blk: nn.Module) -> dict[str, int]:
    """How many dims each site of a block has (of the block as it is now: dense or already sliced)."""
    d = attention_dims(blk.attn)
    return {
        "attn_in": blk.attn.qkv.in_features, "attn_qk": d["num_heads"] * d["qk_head_dim"],
        "attn_out": blk.attn.proj.in_features, "mlp_in": blk.mlp.fc1.in_features, "mlp_hidden": blk.mlp.fc2.in_features,
    }


class GateSet(nn.Module):
    """The scores of every gated (block, site), initialised to 1, and the hook handles that apply them."""

    def __init__(self, sizes: dict[tuple[int, str], int]) -> None:
        super().__init__()
        self.scores = nn.ParameterDict({_key(b, s): nn.Parameter(torch.ones(n)) for (b, s), n in sizes.items()})
        self.sites = sorted({s for _, s in sizes}, key=SITES.index)
        self._handles: list = []

    def get(self, block: int, site: str) -> torch.Tensor | None:
        return self.scores[_key(block, site)] if _key(block, site) in self.scores else None

    def items(self) -> Iterator[tuple[int, str, nn.Parameter]]:
        for k, p in self.scores.items():
            b, s = k.split("_", 1)
            yield int(b), s, p

    def l1(self) -> torch.Tensor:
        """Σ|a| over every score: the sparsity term of the objective (a true L1 norm, not a gradient tweak)."""
        return sum(p.abs().sum() for p in self.scores.values())

    @torch.no_grad()
    def count_below(self, *thresholds: float) -> list[int]:
        flat = torch.cat([p.detach().abs().flatten() for p in self.scores.values()])
        return [int((flat < t).sum()) for t in thresholds]

    def numel(self) -> int:
        return sum(p.numel() for p in self.scores.values())


def _scale_input(gate: nn.Parameter):
    def hook(module: nn.Module, args: tuple) -> tuple:
        return (args[0] * gate,) + tuple(args[1:])
    return hook


def _scale_q(gate: nn.Parameter):
    n = gate.numel()

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return torch.cat([out[..., :n] * gate, out[..., n:]], dim=-1)
    return hook


def embed_readers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Where the embed gate is applied: (module, "out") for a LayerNorm whose output it scales, (module, "in") for
    a Linear head whose input it scales when no norm precedes the classifier."""
    readers: list[tuple[nn.Module, str]] = []
    for blk in model.blocks:
        readers += [(blk.norm1, "out"), (blk.norm2, "out")]
    final = [m for m in (model.norm, model.fc_norm) if not isinstance(m, nn.Identity)]
    if final:
        readers.append((final[-1], "out"))
    else:
        readers += [(h, "in") for h in residual_heads(model)]
    for module, where in readers:
        if where == "out" and not (isinstance(module, nn.LayerNorm) and module.elementwise_affine):
            raise RecipeError(f"site 'embed' needs affine LayerNorms on the residual stream, found {type(module).__name__}")
    return readers


def _scale_output(gate: nn.Parameter):
    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return out * gate
    return hook


def attach_gates(model: nn.Module, sites: list[str] | tuple[str, ...],
                 values: dict[tuple[int, str], torch.Tensor] | None = None) -> GateSet:
    """Put scores at `sites` of every block and return them: all 1 (the function is unchanged), or `values`.
    Hooks close over their own parameters, so never deep-copy a gated model: copy the ungated one and attach."""
    unknown = [s for s in sites if s not in SITES]
    if unknown:
        raise RecipeError(f"unknown pruning site {unknown[0]!r}; known: {', '.join(SITES)}")
    if hasattr(model, ATTR):
        raise RecipeError("the model already carries VTP gates")
    sizes = {}
    if "embed" in sites:
        try:
            check_embed_prunable(model)
        except ValueError as e:
            raise RecipeError(f"site 'embed': {e}") from None
        embed_readers(model)
        sizes[(MODEL, "embed")] = model.embed_dim
    for b, blk in enumerate(model.blocks):
        if "attn_qk" in sites and not all(isinstance(getattr(blk.attn, n, nn.Identity()), nn.Identity) for n in ("q_norm", "k_norm")):
            raise RecipeError("site 'attn_qk' cannot be gated on a model with q/k normalisation (the gate would not fold "
                              "through the norm); drop it from prune.sites")
        n = site_sizes(blk)
        sizes.update({(b, s): n[s] for s in sites if s != "embed"})
    device = next(model.parameters()).device
    gates = GateSet(sizes).to(device)
    if values is not None:
        with torch.no_grad():
            for b, s, a in gates.items():
                a.copy_(values[(b, s)])
    setattr(model, ATTR, gates)
    if "embed" in sites:
        gate = gates.get(MODEL, "embed")
        for module, where in embed_readers(model):
            hook = module.register_forward_hook(_scale_output(gate)) if where == "out" else \
                module.register_forward_pre_hook(_scale_input(gate))
            gates._handles.append(hook)
    for b, blk in enumerate(model.blocks):
        targets = {"attn_in": blk.attn.qkv, "attn_out": blk.attn.proj, "mlp_in": blk.mlp.fc1, "mlp_hidden": blk.mlp.fc2}
        for site in sites:
            if site == "embed":
                continue
            gate = gates.get(b, site)
            if site == "attn_qk":
                gates._handles.append(blk.attn.qkv.register_forward_hook(_scale_q(gate)))
            else:
                gates._handles.append(targets[site].register_forward_pre_hook(_scale_input(gate)))
    return gates


def detach_gates(model: nn.Module) -> GateSet:
    """Remove the hooks and the container; the model computes its ungated function again."""
    gates: GateSet = getattr(model, ATTR)
    for h in gates._handles:
        h.remove()
    gates._handles.clear()
    delattr(model, ATTR)
    return gates


def _dense(layer: nn.Module) -> nn.Linear:
    if not isinstance(layer, nn.Linear):
        raise RecipeError(f"cannot fold gates into a {type(layer).__name__}; prune before factoring layers")
    return layer


@torch.no_grad()
def fold_gates(model: nn.Module) -> GateSet:
    """Multiply every score into the weights next to it and drop the gates: the model keeps computing exactly
    what the gated model computed, so slicing it afterwards equals masking the gates."""
    gates = detach_gates(model)
    for b, site, a in gates.items():
        a = a.detach()
        if site == "embed":
            for module, where in embed_readers(model):
                if where == "in":
                    _dense(module).weight.mul_(a)
                    continue
                module.weight.mul_(a)
                if module.bias is not None:
                    module.bias.mul_(a)
            continue
        blk = model.blocks[b]
        if site == "attn_in":
            _dense(blk.attn.qkv).weight.mul_(a)
        elif site == "attn_qk":
            qkv = _dense(blk.attn.qkv)
            qkv.weight[: a.numel()].mul_(a[:, None])
            if qkv.bias is not None:
                qkv.bias[: a.numel()].mul_(a)
        elif site == "attn_out":
            _dense(blk.attn.proj).weight.mul_(a)
        elif site == "mlp_in":
            _dense(blk.mlp.fc1).weight.mul_(a)
        elif site == "mlp_hidden":
            _dense(blk.mlp.fc2).weight.mul_(a)
    return gates


@torch.no_grad()
def zero_pruned(gates: GateSet, keep: dict[tuple[int, str], torch.Tensor]) -> None:
    """Zero every score whose dim the plan drops (`keep` maps (block, site) to the kept indices): the masked model."""
    for b, site, a in gates.items():
        mask = torch.ones_like(a, dtype=torch.bool)
        mask[keep[(b, site)]] = False
        a[mask] = 0
