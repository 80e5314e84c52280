"""Loading MODEL (timm names, checkpoints, model dirs), the model-dir round trip, params/MACs figures."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from conftest import tiny_vit
from vitdeploy.compression.plan import BlockPlan, apply_plan
from vitdeploy.errors import CheckpointError, ModelError
from vitdeploy.models import (
    LowRankLinear, PrunedAttention, count_macs, count_params, describe, load_model, save_model_dir,
)
from vitdeploy.models.load import default_data_config


def pruned_tiny():
    """A tiny ViT with every kind of surgery: heads, q/k and v dims, input selects, MLP hidden, a low-rank fc1."""
    model = tiny_vit(init_values=0.1)
    plan = [
        BlockPlan(heads=[1], qk_idx=[list(range(0, 32, 2))], v_idx=[list(range(8))], attn_in=list(range(0, 64, 2)),
                  mlp_hidden=list(range(0, 256, 4)), mlp_in=list(range(40))),
        BlockPlan(mlp_hidden=list(range(128))),
    ]
    apply_plan(model, plan)
    torch.manual_seed(1)
    model.blocks[1].mlp.fc1 = LowRankLinear(64, 128, 16)
    return model


def test_model_dir_round_trip_is_bit_identical(tmp_path):
    model = pruned_tiny()
    kwargs = dict(img_size=32, patch_size=8, num_classes=10, embed_dim=64, depth=2, num_heads=2, init_values=0.1)
    arch = describe(model, "vit_tiny_patch16_224", kwargs)
    save_model_dir(tmp_path / "m", model, arch, default_data_config(model))
    loaded = load_model(str(tmp_path / "m"))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    a = loaded.model.blocks[0].attn
    assert isinstance(a, PrunedAttention) and (a.num_heads, a.qk_head_dim, a.v_head_dim) == (1, 16, 8)
    assert a.scale == pytest.approx(32 ** -0.5)
    assert isinstance(loaded.model.blocks[1].mlp.fc1, LowRankLinear)
    assert loaded.arch.to_dict() == arch.to_dict()
    cfg = json.loads((tmp_path / "m" / "vitdeploy.json").read_text())
    assert len(cfg["files"]["model.safetensors"]["sha256"]) == 64
    # the bare safetensors file of a model dir carries its architecture and loads alone
    alone = load_model(str(tmp_path / "m" / "model.safetensors"))
    with torch.no_grad():
        assert torch.equal(alone.model(x), model(x))


def test_tampered_model_dir_is_refused(tmp_path):
    model = tiny_vit()
    save_model_dir(tmp_path / "m", model, describe(model, "vit_tiny_patch16_224", {}), default_data_config(model))
    f = tmp_path / "m" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        load_model(str(tmp_path / "m"))
    f.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_model(str(tmp_path / "m"))


@pytest.mark.parametrize("fmt", ["safetensors", "torch", "torch_nested"])
def test_checkpoint_files_load(tmp_path, fmt):
    src = load_model("vit_digits").model
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "w.pth"
        torch.save({"model": state, "epoch": 3} if fmt == "torch_nested" else state, path)
    with pytest.raises(ModelError, match="--arch"):
        load_model(str(path))
    loaded = load_model(str(path), arch="vit_digits")
    assert loaded.source["kind"] == "checkpoint" and len(loaded.source["sha256"]) == 64
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), src.eval()(x))
    same = load_model("vit_digits", checkpoint=str(path))
    with torch.no_grad():
        assert torch.equal(same.model(x), src(x))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED_BY_PICKLE",))


def test_loading_never_unpickles_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"model": _Evil()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model(str(path), arch="vit_digits")
    assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_bad_checkpoints(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(str(bad), arch="vit_digits")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(str(tmp_path / "nope.pth"), arch="vit_digits")
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_vit().state_dict().items()}, str(other))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(str(other), arch="vit_digits")
    notdir = tmp_path / "plain"
    notdir.mkdir()
    with pytest.raises(CheckpointError, match="not a vitdeploy model dir"):
        load_model(str(notdir))


@pytest.mark.parametrize("name", ["swin_tiny_patch4_window7_224", "convnext_atto", "eva02_tiny_patch14_224", "resnet18"])
def test_other_families_are_refused(name):
    with pytest.raises(ModelError, match="supports timm's VisionTransformer family"):
        load_model(name)


def test_unknown_model():
    with pytest.raises(ModelError, match="unknown model"):
        load_model("vit_does_not_exist")


@pytest.mark.parametrize("name", ["vit_digits", "deit_tiny_distilled_patch16_224", "vit_little_patch16_reg4_gap_256",
                                  "deit3_small_patch16_224", "vit_base_patch32_clip_224"])
def test_vit_family_loads(name):
    loaded = load_model(name)
    assert count_params(loaded.model) > 0
    assert len(loaded.arch.blocks) == len(loaded.model.blocks)


@pytest.mark.slow
@pytest.mark.parametrize("name,params_m,macs_g", [("deit_small_patch16_224", 22.1, 4.6), ("deit_base_patch16_224", 86.6, 17.6)])
def test_known_figures(name, params_m, macs_g):
    loaded = load_model(name)
    assert count_params(loaded.model) / 1e6 == pytest.approx(params_m, abs=0.05)
    assert count_macs(loaded.model, loaded.input_size) / 1e9 == pytest.approx(macs_g, abs=0.05)


def test_macs_count_attention_matmuls():
    model = tiny_vit()
    N, D, depth = 17, 64, 2
    linear = depth * (N * D * 3 * D + N * D * D + 2 * N * D * 4 * D)
    attn = depth * 2 * N * N * D
    patch = 16 * 3 * 8 * 8 * D
    head = D * 10
    assert count_macs(model, (3, 32, 32)) == linear + attn + patch + head
