"""CUDA paths: run where a GPU exists (marker `gpu`), skipped elsewhere."""
import numpy as np
import pytest
import torch

from conftest import tiny_vit
from vitdeploy.bench.latency import measure_latency
from vitdeploy.runtime.torch import TorchRunner
from vitdeploy.compression.vtp import magnitude_plan
from vitdeploy.compression.plan import apply_plan, masked_copy
from vitdeploy.compression.recipe import PruneCfg


@pytest.mark.gpu
def test_torch_cuda_fp16_matches_cpu_fp32():
    model = tiny_vit()
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with TorchRunner(model, device="cpu") as cpu, TorchRunner(model, device="cuda") as gpu:
        ref, got = cpu.infer(x), gpu.infer(x)
    assert got.dtype == np.float32 and np.abs(got - ref).max() < 5e-2
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.75


@pytest.mark.gpu
def test_pruned_equals_masked_on_cuda():
    model = tiny_vit().cuda()
    plan = magnitude_plan(model, PruneCfg(rate=0.5))
    masked = masked_copy(model, plan)
    pruned = apply_plan(model, plan)
    x = torch.randn(3, 3, 32, 32, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_cuda_latency_is_measured():
    with TorchRunner(tiny_vit(), device="cuda") as r:
        res = measure_latency(r, 8, (3, 32, 32), warmup=3, iters=10)
    assert res["latency_ms"]["p50"] > 0 and res["throughput_ips"] > 0


@pytest.mark.gpu
def test_compress_trains_on_cuda(tmp_path, digits_model_dir, monkeypatch):
    """VITDEPLOY_DEVICE=cuda: sparsity training, slicing and fine-tuning on the GPU; the model dir loads on CPU."""
    from vitdeploy.compression.pipeline import run_compress
    from vitdeploy.compression.recipe import load_recipe
    from vitdeploy.models import load_model

    monkeypatch.setenv("VITDEPLOY_DEVICE", "cuda")
    recipe = load_recipe("vtp-40", ["sparsity.epochs=1", "finetune.epochs=1"])
    report = run_compress(load_model(str(digits_model_dir)), recipe, "digits", tmp_path / "m", "packaged:vtp-40")
    assert report["equivalence"]["max_abs_diff"] < 1e-3 and report["top1"]["after"] > 0.5
    assert load_model(str(tmp_path / "m")).model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
