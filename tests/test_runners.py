"""Runners, backend registry, latency measurement and accuracy evaluation on real torch/onnxruntime."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch

from vitdeploy.bench import (
    BACKENDS,
    OrtRunner,
    TorchRunner,
    check_backend_available,
    create_runner,
    evaluate,
    host_info,
    measure_latency,
    parse_backends,
    profile_artifacts,
    results_table,
)
from vitdeploy.deploy import export_onnx
from vitdeploy.errors import BackendError, VitDeployError

INPUT_SIZE = (3, 32, 32)
HAS_ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=2).eval()


@pytest.fixture(scope="module")
def onnx_path(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("runners") / "vit.onnx", INPUT_SIZE)


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *INPUT_SIZE), dtype=np.float32)


# ------------------------------------------------------------------------------------------------ runners
def test_torch_and_ort_runners_agree(model, onnx_path):
    x = batch(4)
    with TorchRunner(model, threads=1) as tr, OrtRunner(onnx_path, threads=1) as orr:
        a, b = tr.infer(x), orr.infer(x)
    assert tr.name == "torch-cpu" and orr.name == "ort-cpu"
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (4, 10)
    assert np.abs(a - b).max() < 1e-4
    assert not tr.active and not orr.active


def test_threads_are_pinned_and_restored(model, onnx_path):
    before = torch.get_num_threads()
    with TorchRunner(model, threads=1) as tr:
        assert torch.get_num_threads() == 1
        assert tr.threads == 1
    assert torch.get_num_threads() == before
    with OrtRunner(onnx_path, threads=1) as orr:
        opts = orr.session.get_session_options()
        assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1
        assert orr.threads == 1
    default = OrtRunner(onnx_path)
    assert isinstance(default.threads, int) and default.threads >= 1


def test_torch_runner_restores_training_flags():
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3), torch.nn.Dropout(0.5))
    m.train()
    with TorchRunner(m) as r:
        assert not m.training
        out1, out2 = r.infer(np.ones((2, 3, 2, 2), np.float32)), r.infer(np.ones((2, 3, 2, 2), np.float32))
        np.testing.assert_array_equal(out1, out2)  # dropout is off while the runner is active
    assert m.training and all(x.training for x in m.modules())


def test_infer_needs_activation(model):
    r = TorchRunner(model)
    with pytest.raises(VitDeployError, match="not active"):
        r.infer(batch(1))


def test_ort_profile_dir(onnx_path, tmp_path):
    with OrtRunner(onnx_path, threads=1, profile_dir=str(tmp_path / "prof")) as r:
        r.infer(batch(2))
    assert r.profile_path is not None and r.profile_path.is_file()
    assert isinstance(json.loads(r.profile_path.read_text()), list)
    assert [p.name for p in (tmp_path / "prof").iterdir()] == [r.profile_path.name]  # scratch removed


def test_ort_runner_missing_file(tmp_path):
    with pytest.raises(VitDeployError, match="not found"):
        OrtRunner(tmp_path / "missing.onnx")


# ----------------------------------------------------------------------------------------------- registry
def test_parse_backends():
    assert parse_backends("ort-cpu, torch-cpu,ort-cpu") == ["ort-cpu", "torch-cpu"]
    assert set(BACKENDS) == {"torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda", "ort-trt"}
    with pytest.raises(BackendError, match="known: torch-cpu"):
        parse_backends("ort-cpu,tensorflow")
    with pytest.raises(BackendError):
        parse_backends(" , ")


def test_backend_availability():
    check_backend_available("torch-cpu")
    check_backend_available("ort-cpu")
    with pytest.raises(BackendError, match="unknown backend"):
        check_backend_available("jax-tpu")


@pytest.mark.skipif(HAS_ORT_CUDA, reason="this onnxruntime has the CUDA provider")
def test_unavailable_provider_raises(onnx_path):
    with pytest.raises(BackendError, match="available: .*CPUExecutionProvider") as e:
        check_backend_available("ort-cuda")
    assert "\n" not in str(e.value)
    with pytest.raises(BackendError, match="CUDAExecutionProvider"):
        OrtRunner(onnx_path, provider="cuda")
    with pytest.raises(BackendError):
        OrtRunner(onnx_path, provider="tensorrt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_torch_cuda_unavailable(model):
    with pytest.raises(BackendError, match="torch.cuda.is_available"):
        TorchRunner(model, device="cuda")


def test_create_runner(model, onnx_path):
    assert isinstance(create_runner("torch-cpu", model=model), TorchRunner)
    assert isinstance(create_runner("ort-cpu", onnx_path=onnx_path, threads=1), OrtRunner)
    with pytest.raises(VitDeployError):
        create_runner("ort-cpu", model=model)


# ------------------------------------------------------------------------------------------------ latency
def test_measure_latency(onnx_path):
    ticks = []
    with OrtRunner(onnx_path, threads=1) as r:
        res = measure_latency(r, 2, INPUT_SIZE, warmup=2, iters=12, progress=ticks.append)
    lat = res["latency_ms"]
    assert res["batch"] == 2 and res["iters"] == 12 and res["threads"] == 1
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["min"] <= lat["mean"] <= lat["max"] and lat["std"] >= 0
    assert res["throughput_ips"] == pytest.approx(2 * 1000 / lat["mean"])
    assert sum(ticks) == 12


def test_measure_latency_duration_and_errors(model):
    r = TorchRunner(model, threads=1)
    res = measure_latency(r, 1, INPUT_SIZE, warmup=1, duration=0.2)  # activates the runner for the call
    assert res["iters"] >= 1 and not r.active
    with pytest.raises(VitDeployError, match="batch"):
        measure_latency(r, 0, INPUT_SIZE)
    with pytest.raises(VitDeployError):
        measure_latency(r, 1, INPUT_SIZE, iters=0)


def test_profile_artifacts_and_table(model, onnx_path):
    items = [("vit", lambda: TorchRunner(model, threads=1)), ("vit.onnx", lambda: OrtRunner(onnx_path, threads=1))]
    out = profile_artifacts(items, [1, 2], warmup=1, iters=3, input_size=INPUT_SIZE, show_progress=False)
    assert out["host"]["logical_cores"] >= 1 and out["host"]["versions"]["torch"]
    rows = [(r["artifact"], r["backend"], r["batch"]) for r in out["results"]]
    assert rows == [("vit", "torch-cpu", 1), ("vit", "torch-cpu", 2), ("vit.onnx", "ort-cpu", 1),
                    ("vit.onnx", "ort-cpu", 2)]
    assert results_table(out).row_count == 4


def test_host_info():
    h = host_info(threads=3)
    assert h["threads"] == 3 and h["cpu"] and h["physical_cores"] <= h["logical_cores"]
    assert ("gpu" in h) and (h["gpu"] is None) == (not torch.cuda.is_available())


# ----------------------------------------------------------------------------------------------- accuracy
def identity_classifier(classes: int) -> torch.nn.Module:
    """Logits equal the input's values: (N, 1, 1, classes) -> (N, classes)."""
    lin = torch.nn.Linear(classes, classes)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(classes))
        lin.bias.zero_()
    return torch.nn.Sequential(torch.nn.Flatten(), lin)


def known_batches():
    # logits are 0..5 placed so the label sits at a chosen rank: 0 (top-1), 2 and 4 (top-5 only), 5 (miss)
    def sample(label: int, rank: int) -> np.ndarray:
        order = [c for c in range(6) if c != label]
        order.insert(rank, label)  # order[i] is the class with the i-th highest logit
        v = np.zeros(6, np.float32)
        for i, c in enumerate(order):
            v[c] = 5 - i
        return v.reshape(1, 1, 6)

    xs = np.stack([sample(1, 0), sample(3, 2), sample(0, 5), sample(5, 4)])
    ys = np.array([1, 3, 0, 5])
    return [(torch.from_numpy(xs[:2]), torch.from_numpy(ys[:2])), (xs[2:], ys[2:])]


def test_evaluate_known_answers():
    seen = []
    with TorchRunner(identity_classifier(6)) as r:
        res = evaluate(r, known_batches(), progress=seen.append)
    assert res["n"] == 4 and seen == [2, 2]
    assert res["top1"] == pytest.approx(1 / 4)
    assert res["top5"] == pytest.approx(3 / 4)
    assert "top1_agreement" not in res


def test_evaluate_topk_capped_by_classes():
    x = np.array([[[[0.0, 1.0, 2.0]]], [[[2.0, 1.0, 0.0]]]], np.float32)
    res = evaluate(TorchRunner(identity_classifier(3)), [(x, np.array([0, 0]))])
    assert res["top1"] == 0.5 and res["top5"] == 1.0 and res["topk"] == 3


def test_evaluate_against_reference(model, onnx_path):
    data = [(batch(3, seed=s), np.arange(3) + s) for s in range(2)]
    r = TorchRunner(model, threads=1)
    res = evaluate(r, data, reference=r)
    assert res["top1_agreement"] == 1.0 and res["cosine_mean"] == pytest.approx(1.0)
    res2 = evaluate(OrtRunner(onnx_path, threads=1), data, reference=TorchRunner(model, threads=1))
    assert res2["top1_agreement"] == 1.0 and res2["cosine_mean"] > 0.9999
    assert res2["top1"] == res["top1"] and 0.0 <= res2["top5"] <= 1.0
    with pytest.raises(VitDeployError, match="no samples"):
        evaluate(r, [])
