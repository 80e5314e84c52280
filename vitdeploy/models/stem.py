"""A convolutional patch embedding: a few stride-2 3x3 convolutions in place of one patch-sized one.

A ViT whose patch embedding is one large-stride convolution trains slowly from scratch on small data; replacing it
by a short stack of stride-2 3x3 convolutions ("early convolutions", Xiao et al., 2021) makes it optimise faster and
generalise better at the same depth and width. Only the embedding changes: the blocks, the class token and the head
are timm's own, so every vitdeploy method (VTP, MCF, decomposition) applies unchanged, and `proj` stays the layer
that writes the residual stream (a 1x1 convolution to the width), which the residual-permuting passes rely on.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
from timm.layers import PatchEmbed


class ConvStemPatchEmbed(PatchEmbed):
    """log2(patch) stages, each a stride-2 3x3 conv + BatchNorm + GELU followed by `stage_depth - 1` stride-1 ones,
    then `proj`, a 1x1 conv to `embed_dim`.

    `stem_chans` are the stages' widths (default: the width halved per stage, counted back from the last stage at
    half of `embed_dim`). The patch must be a square power of two. `in_chans` is kept as an attribute: `proj` no
    longer reads the image."""

    def __init__(self, img_size=224, patch_size=16, in_chans: int = 3, embed_dim: int = 768,
                 stem_chans: Optional[Sequence[int]] = None, stage_depth: int = 2, bias: bool = True,
                 **kwargs) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         bias=bias, **kwargs)
        p = self.patch_size[0]
        if self.patch_size[0] != self.patch_size[1] or p < 2 or p & (p - 1):
            raise ValueError(f"a convolutional stem needs a square power-of-two patch, not {self.patch_size}")
        stages = int(math.log2(p))
        chans = list(stem_chans) if stem_chans is not None else [max(8, embed_dim // 2 ** (stages - i)) for i in range(stages)]
        if len(chans) != stages:
            raise ValueError(f"patch {p} needs {stages} stem stages, got stem_chans={chans}")
        layers: list[nn.Module] = []
        c = in_chans
        for out in chans:
            for i in range(stage_depth):
                layers += [nn.Conv2d(c, out, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                           nn.BatchNorm2d(out), nn.GELU()]
                c = out
        self.in_chans = in_chans
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c, embed_dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.stem(x))
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)  # B, C, H, W -> B, N, C
        return self.norm(x)


def input_channels(model: nn.Module) -> int:
    """The image channels a ViT reads: its patch embedding's `in_chans`, else its projection's input channels."""
    pe = model.patch_embed
    return int(getattr(pe, "in_chans", None) or pe.proj.in_channels)
