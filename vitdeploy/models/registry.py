"""vitdeploy's own timm model names. Importing this module registers them with timm.

`vit_digits`: a small ViT for the embedded digits data (8x8 images shown at 32x32, patch 8 -> 16 patches + class
token, 6 blocks of width 96 with 3 heads of dim 32, MLP 384; ~0.67 M params, ~11 M MACs). Sized to train to
>= 95 % val top-1 on a 2-core CPU in about a minute, with head dims large enough for 8-aligned head pruning.

`vit_fashion`: the Fashion-MNIST benchmark model at 28x28: a convolutional stem (models/stem.py) to 7x7 = 49 tokens +
class token, 4 blocks of width 96 with 3 heads of dim 32, MLP 384; ~0.50 M params, ~26.9 M MACs. Sized so its own
7-epoch schedule (TRAIN_DEFAULTS) fits in 15 minutes on a 2-core CPU; docs/reference.md says why this shape."""
from __future__ import annotations

from timm.models import register_model
from timm.models._builder import build_model_with_cfg
from timm.models._registry import generate_default_cfgs
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from vitdeploy.data import DIGITS_MEAN, DIGITS_STD, FASHION_MEAN, FASHION_STD
from vitdeploy.models.stem import ConvStemPatchEmbed

VIT_DIGITS_ARGS = dict(img_size=32, patch_size=8, embed_dim=96, depth=6, num_heads=3, mlp_ratio=4.0, num_classes=10)
VIT_FASHION_ARGS = dict(img_size=28, patch_size=4, embed_dim=96, depth=4, num_heads=3, mlp_ratio=4.0, num_classes=10)

# `vitdeploy train`'s settings where the command line leaves them out: the general ones, and per model the schedule
# it was sized with (vit_fashion: see docs/results.md#fashion-mnist for the curve this schedule gives).
GENERAL_TRAIN_DEFAULTS = dict(epochs=40, lr=2e-3, batch_size=64, weight_decay=0.05, warmup_epochs=2.0,
                              label_smoothing=0.1, augment=False)
TRAIN_DEFAULTS: dict[str, dict] = {
    "vit_fashion": dict(epochs=7, lr=2e-3, batch_size=128, warmup_epochs=1.0, augment=False),
}


def train_defaults(name: str) -> dict:
    """The training settings `vitdeploy train NAME` uses for whatever the caller does not set."""
    return {**GENERAL_TRAIN_DEFAULTS, **TRAIN_DEFAULTS.get(name, {})}


default_cfgs = generate_default_cfgs({
    "vit_digits": dict(
        url="", num_classes=10, input_size=(3, 32, 32), pool_size=None, crop_pct=1.0, crop_mode="center",
        interpolation="bilinear", mean=(DIGITS_MEAN,) * 3, std=(DIGITS_STD,) * 3,
        first_conv="patch_embed.proj", classifier="head", license="apache-2.0",
    ),
    "vit_fashion": dict(
        url="", num_classes=10, input_size=(3, 28, 28), pool_size=None, crop_pct=1.0, crop_mode="center",
        interpolation="bilinear", mean=(FASHION_MEAN,) * 3, std=(FASHION_STD,) * 3,
        first_conv="patch_embed.stem.0", classifier="head", license="apache-2.0",
    ),
})


@register_model
def vit_digits(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Small ViT for scikit-learn's digits; no pretrained weights exist (train it with `vitdeploy train`)."""
    args = {**VIT_DIGITS_ARGS, **kwargs}
    return build_model_with_cfg(VisionTransformer, "vit_digits", pretrained, pretrained_filter_fn=checkpoint_filter_fn, **args)


@register_model
def vit_fashion(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Small ViT for Fashion-MNIST at its native 28x28; no pretrained weights exist (train it with `vitdeploy train`)."""
    args = {"embed_layer": ConvStemPatchEmbed, **VIT_FASHION_ARGS, **kwargs}
    return build_model_with_cfg(VisionTransformer, "vit_fashion", pretrained, pretrained_filter_fn=checkpoint_filter_fn, **args)
