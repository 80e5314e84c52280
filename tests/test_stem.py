"""vit_fashion's convolutional stem: the ONNX graph equals PyTorch and its MACs equal the graph's, the residual
permutation that MCF relies on still folds exactly, the model survives the model-dir and live-module round trips,
and `train` takes the model's own schedule for what the caller leaves out."""
import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch

import vitdeploy
from test_macs import onnx_macs
from vitdeploy.compression.mcf import permute_residual
from vitdeploy.deploy.onnx_export import export_onnx
from vitdeploy.models import count_macs
from vitdeploy.models.registry import GENERAL_TRAIN_DEFAULTS, TRAIN_DEFAULTS, train_defaults
from vitdeploy.models.stem import ConvStemPatchEmbed, input_channels

SIZE = (3, 28, 28)


def _model():
    torch.manual_seed(0)
    model = timm.create_model("vit_fashion")
    with torch.no_grad():  # BatchNorm statistics away from 0/1, so folding them is really exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_shape_tokens_and_channels():
    model = _model()
    assert isinstance(model.patch_embed, ConvStemPatchEmbed)
    assert model.patch_embed.num_patches == 49 and input_channels(model) == 3
    assert model.patch_embed.proj.kernel_size == (1, 1) and model.patch_embed.proj.out_channels == 96
    assert model(torch.randn(2, *SIZE)).shape == (2, 10)


def test_onnx_equals_pytorch_and_macs_equal_the_graph(tmp_path):
    model = _model()
    path = export_onnx(model, tmp_path / "m.onnx", SIZE, static_batch=2)
    x = torch.randn(2, *SIZE)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(got - want).max() < 1e-4
    assert count_macs(model, SIZE) * 2 == onnx_macs(path)  # the graph was exported at batch 2


def test_the_residual_permutation_still_folds_exactly():
    model = _model()
    x = torch.randn(3, *SIZE)
    with torch.no_grad():
        before = model(x)
        permute_residual(model, torch.randperm(96, generator=torch.Generator().manual_seed(1)))
        after = model(x)
    assert torch.allclose(before, after, atol=1e-5)


@pytest.mark.parametrize("patch", [6, (4, 8), 1])
def test_a_patch_the_stem_cannot_make_is_refused(patch):
    with pytest.raises(ValueError, match="power-of-two patch"):
        ConvStemPatchEmbed(img_size=28, patch_size=patch, embed_dim=32)


def test_model_dir_and_live_module_round_trips(tmp_path):
    model = _model()
    loaded = vitdeploy.load_model(model)
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.input_size == SIZE
    from vitdeploy.models import save_model_dir

    save_model_dir(tmp_path / "m", loaded.model, loaded.arch, loaded.data_config)
    again = vitdeploy.load_model(str(tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(again.model(x), model(x))


def test_train_takes_the_model_schedule_for_what_is_left_out(tmp_path):
    assert train_defaults("vit_digits") == GENERAL_TRAIN_DEFAULTS
    assert train_defaults("vit_fashion") == {**GENERAL_TRAIN_DEFAULTS, **TRAIN_DEFAULTS["vit_fashion"]}
    r = vitdeploy.train("vit_fashion", "digits", tmp_path / "m", epochs=1, batch_size=256)
    cfg = r.record["train_config"]
    assert cfg["epochs"] == 1 and cfg["batch_size"] == 256  # given
    fashion = TRAIN_DEFAULTS["vit_fashion"]
    assert cfg["lr"] == fashion["lr"] and cfg["augment"] == fashion["augment"]  # the model's own
    assert cfg["weight_decay"] == GENERAL_TRAIN_DEFAULTS["weight_decay"]  # the general one
