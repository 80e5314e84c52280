"""Shared fixtures: a briefly trained vit_digits model dir, and automatic skips for the gpu/trt markers."""
import importlib.util
from pathlib import Path

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    has_gpu = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT (tensorrt does not import here)"))


@pytest.fixture(scope="session")
def digits_model_dir(tmp_path_factory) -> Path:
    """vit_digits trained for a few epochs on digits through the library (well above chance, a few seconds)."""
    from vitdeploy.compression.pipeline import run_train
    from vitdeploy.compression.recipe import TrainCfg
    from vitdeploy.models import load_model

    out = tmp_path_factory.mktemp("models") / "dense"
    run_train(load_model("vit_digits"), "digits", TrainCfg(epochs=4, lr=2e-3, warmup_epochs=1), out)
    return out


def tiny_vit(**kw):
    import timm

    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, num_classes=10, embed_dim=64, depth=2, num_heads=2)
    return timm.create_model("vit_tiny_patch16_224", **{**args, **kw}).eval()
