"""vitdeploy's own timm model names. Importing this module registers them with timm.

`vit_digits`: a small ViT for the embedded digits data (8x8 images shown at 32x32, patch 8 -> 16 patches + class
token, 6 blocks of width 96 with 3 heads of dim 32, MLP 384; ~0.67 M params, ~11 M MACs). Sized to train to
>= 95 % val top-1 on a 2-core CPU in about a minute, with head dims large enough for 8-aligned head pruning."""
from __future__ import annotations

from timm.models import register_model
from timm.models._builder import build_model_with_cfg
from timm.models._registry import generate_default_cfgs
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from vitdeploy.data import DIGITS_MEAN, DIGITS_STD

VIT_DIGITS_ARGS = dict(img_size=32, patch_size=8, embed_dim=96, depth=6, num_heads=3, mlp_ratio=4.0, num_classes=10)

default_cfgs = generate_default_cfgs({
    "vit_digits": dict(
        url="", num_classes=10, input_size=(3, 32, 32), pool_size=None, crop_pct=1.0, crop_mode="center",
        interpolation="bilinear", mean=(DIGITS_MEAN,) * 3, std=(DIGITS_STD,) * 3,
        first_conv="patch_embed.proj", classifier="head", license="apache-2.0",
    ),
})


@register_model
def vit_digits(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Small ViT for scikit-learn's digits; no pretrained weights exist (train it with `vitdeploy train`)."""
    args = {**VIT_DIGITS_ARGS, **kwargs}
    return build_model_with_cfg(VisionTransformer, "vit_digits", pretrained, pretrained_filter_fn=checkpoint_filter_fn, **args)
