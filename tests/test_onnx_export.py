"""ONNX export of a tiny timm ViT: structure, numerical parity with PyTorch, atomicity, external data."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
import torch.nn.functional as F

from vitdeploy.deploy import export_onnx, onnx_summary, parity, write_onnx
from vitdeploy.deploy.onnx_export import needs_external_data
from vitdeploy.errors import VitDeployError

INPUT_SIZE = (3, 32, 32)


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=4).eval()


def realistic_images(n: int, seed: int = 0) -> np.ndarray:
    """Smooth, image-like inputs: upsampled low-resolution noise in [0, 1], ImageNet-normalised."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((n, 3, 4, 4), generator=g)
    img = F.interpolate(low, size=INPUT_SIZE[1:], mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((img - mean) / std).numpy().astype(np.float32)


def ort_run(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": x})[0]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_vit()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "vit.onnx", INPUT_SIZE)


def test_export_structure(model, exported):
    assert exported.is_file()
    onnx.checker.check_model(str(exported))
    s = onnx_summary(exported)
    assert s["opset"] >= 17
    n_norms = sum(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert n_norms == 2 * len(model.blocks) + 1
    assert s["ops"].get("LayerNormalization") == n_norms
    assert "Pow" not in s["ops"]
    assert [i["name"] for i in s["inputs"]] == ["input"]
    assert [o["name"] for o in s["outputs"]] == ["logits"]
    assert s["inputs"][0]["shape"] == ["batch", *INPUT_SIZE]
    assert s["outputs"][0]["shape"] == ["batch", 10]
    assert s["batch_symbolic"] is True
    assert s["nodes"] == sum(s["ops"].values())
    assert s["external_data"] is False
    assert not [p for p in exported.parent.iterdir() if p.name != exported.name]  # no temp leftovers


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_ort_matches_torch_at_any_batch(model, exported, batch):
    x = realistic_images(batch, seed=batch)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = ort_run(exported, x)
    assert got.shape == (batch, 10)
    assert np.abs(got - ref).max() < 1e-4


def test_static_batch_export(model, tmp_path):
    path = export_onnx(model, tmp_path / "static.onnx", INPUT_SIZE, static_batch=3)
    s = onnx_summary(path)
    assert s["inputs"][0]["shape"] == [3, *INPUT_SIZE]
    assert s["outputs"][0]["shape"] == [3, 10]
    assert s["batch_symbolic"] is False
    x = realistic_images(3)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(ort_run(path, x) - ref).max() < 1e-4
    with pytest.raises(Exception):
        ort_run(path, realistic_images(2))
    # parity pads to the fixed batch when n is not a multiple of it
    p = parity(model, path, realistic_images(5), threads=1)
    assert p["n"] == 5 and p["top1_agreement"] == 1.0


def test_parity_on_realistic_inputs(model, exported):
    p = parity(model, exported, realistic_images(16), threads=1, batch_size=6)
    assert p["n"] == 16
    assert p["top1_agreement"] == 1.0
    assert p["cosine"] > 0.9999
    assert 0 <= p["mean_abs_diff"] <= p["max_abs_diff"] < 1e-4


def test_export_does_not_mutate_model(tmp_path):
    m = tiny_vit()
    m.train()
    m.blocks[0].eval()  # a mixed-mode model must come back exactly as it was
    before = {k: v.clone() for k, v in m.state_dict().items()}
    flags = [x.training for x in m.modules()]
    export_onnx(m, tmp_path / "m.onnx", INPUT_SIZE, static_batch=2)
    assert [x.training for x in m.modules()] == flags
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


class Exploding(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_crash_during_export_leaves_no_file(tmp_path):
    target = tmp_path / "out" / "broken.onnx"
    with pytest.raises(RuntimeError, match="boom"):
        export_onnx(Exploding(), target, INPUT_SIZE)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


@pytest.mark.parametrize("kwargs", [{"opset": 16}, {"opset": 99}, {"static_batch": 0}, {"trace_batch": 1}])
def test_bad_arguments_rejected(model, tmp_path, kwargs):
    with pytest.raises(VitDeployError):
        export_onnx(model, tmp_path / "x.onnx", INPUT_SIZE, **kwargs)
    assert not (tmp_path / "x.onnx").exists()


def test_bad_input_size_rejected(model, tmp_path):
    with pytest.raises(VitDeployError):
        export_onnx(model, tmp_path / "x.onnx", (3, 32))  # type: ignore[arg-type]


def test_external_data_writer(model, exported, tmp_path):
    proto = onnx.load(str(exported))
    assert not needs_external_data(proto)
    assert needs_external_data(proto, threshold=1024)
    target = tmp_path / "ext" / "vit.onnx"
    files = write_onnx(proto, target, external_data=True)
    data = target.with_name("vit.onnx.data")
    assert files == [target, data]
    assert data.is_file() and data.stat().st_size > target.stat().st_size
    assert sorted(p.name for p in target.parent.iterdir()) == ["vit.onnx", "vit.onnx.data"]
    onnx.checker.check_model(str(target))
    assert onnx_summary(target)["external_data"] is True
    x = realistic_images(2)
    assert np.abs(ort_run(target, x) - ort_run(exported, x)).max() < 1e-6


def test_onnx_summary_missing_file(tmp_path):
    with pytest.raises(VitDeployError):
        onnx_summary(tmp_path / "nope.onnx")
