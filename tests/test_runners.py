"""Runners, backend registry, latency measurement, op profiles, leak checks and accuracy on real torch/onnxruntime."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch

from vitdeploy.bench.accuracy import evaluate
from vitdeploy.bench.latency import Extras, ProfileItem, measure_latency, profile_artifacts, results_table
from vitdeploy.bench.memory import rss_growth
from vitdeploy.runtime import (BACKENDS, OrtRunner, Runner, TorchRunner, TrtRunner, check_backend_available,
                               create_runner, host_info, parse_backends, summarize_ort_profile)
from vitdeploy.runtime.compare import infer_in_range
from vitdeploy.bench.artifacts import pair_backends, resolve_artifacts
from vitdeploy.bench.latency import op_profile_table
from vitdeploy.cli import main
from vitdeploy.deploy import export_onnx
from vitdeploy.errors import BackendError, VitDeployError

INPUT_SIZE = (3, 32, 32)
HAS_ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


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
    assert set(BACKENDS) == {"torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda", "ort-trt", "trt"}
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
    items = [ProfileItem("vit", lambda: TorchRunner(model, threads=1), {"precision": "fp32"}),
             ProfileItem("vit.onnx", lambda: OrtRunner(onnx_path, threads=1), {"precision": "fp32", "kind": "onnx"})]
    out = profile_artifacts(items, [1, 2], warmup=1, iters=3, input_size=INPUT_SIZE, show_progress=False)
    assert out["host"]["logical_cores"] >= 1 and out["host"]["versions"]["torch"]
    rows = [(r["artifact"], r["backend"], r["batch"]) for r in out["results"]]
    assert rows == [("vit", "torch-cpu", 1), ("vit", "torch-cpu", 2), ("vit.onnx", "ort-cpu", 1),
                    ("vit.onnx", "ort-cpu", 2)]
    assert all(r["precision"] == "fp32" for r in out["results"]) and out["results"][2]["kind"] == "onnx"
    assert out["skipped"] == [] and out["settings"]["iters"] == 3
    assert "op_profile" not in out["results"][0] and "memory" not in out["results"][0]
    assert results_table(out).row_count == 4 and op_profile_table(out) is None


def test_profile_skips_batches_a_static_graph_refuses(model, tmp_path):
    static = export_onnx(model, tmp_path / "static.onnx", INPUT_SIZE, static_batch=2)
    out = profile_artifacts([ProfileItem("static", lambda: OrtRunner(static, threads=1))], [1, 2, 4], warmup=1,
                            iters=2, input_size=INPUT_SIZE, show_progress=False)
    assert [r["batch"] for r in out["results"]] == [2]
    assert [(s["batch"], s["reason"]) for s in out["skipped"]] == [(1, "takes batches 2 to 2"), (4, "takes batches 2 to 2")]


def test_profile_extras_on_real_runners(model, onnx_path):
    """Op profile (ORT only) and leak check come after the timed loop and land in each result."""
    items = [ProfileItem("vit.onnx", lambda: OrtRunner(onnx_path, threads=1)),
             ProfileItem("vit", lambda: TorchRunner(model, threads=1))]
    out = profile_artifacts(items, [2], warmup=1, iters=3, input_size=INPUT_SIZE, show_progress=False,
                            extras=Extras(op_profile_top=4, op_profile_runs=5, leak_runs=50))
    ort_row, torch_row = out["results"]
    prof = ort_row["op_profile"]
    assert prof["runs"] == 5 and prof["batch"] == 2 and len(prof["by_op_type"]) == 4
    assert "op_profile" not in torch_row  # PyTorch has no op-level profiler here
    for row in (ort_row, torch_row):
        assert row["memory"]["runs"] == 50 and row["memory"]["rss_after_mib"] > 0
    assert op_profile_table(out).row_count == 1


# --------------------------------------------------------------------------------------------- op profile
def test_op_profile_summary_fields(onnx_path):
    with OrtRunner(onnx_path, threads=1) as r:
        prof = r.op_profile(batch(3), runs=6, top=5)
    assert prof["runs"] == 6 and prof["warmup"] == 3 and prof["kernel_ms_per_run"] > 0
    types = prof["by_op_type"]
    assert len(types) == 5 and [t["ms"] for t in types] == sorted((t["ms"] for t in types), reverse=True)
    assert 0 < sum(t["percent"] for t in types) <= 100.0 + 1e-9
    assert any(t["op_type"] in ("MatMul", "FusedMatMul", "Gemm") for t in types)  # a ViT spends its time in GEMMs
    assert all(t["nodes_per_run"] >= 1 for t in types)
    nodes = prof["by_node"]
    assert len(nodes) == 5 and all(n["node"] and n["op_type"] and n["ms"] > 0 for n in nodes)
    assert nodes[0]["ms"] <= types[0]["ms"] + 1e-9  # no node takes more than its whole op type


def test_op_profile_skips_warmup_runs(onnx_path, tmp_path):
    """summarize_ort_profile counts only runs after the skipped ones, on onnxruntime's own profile file."""
    with OrtRunner(onnx_path, threads=1, profile_dir=str(tmp_path)) as r:
        for _ in range(7):
            r.infer(batch(1))
    events = json.loads(r.profile_path.read_text())
    everything, later = summarize_ort_profile(events, top=50), summarize_ort_profile(events, skip_runs=4, top=50)
    assert everything["runs"] == 7 and later["runs"] == 3
    total = lambda s: sum(t["ms"] for t in s["by_op_type"]) * s["runs"]  # noqa: E731
    assert total(later) < total(everything)
    with pytest.raises(VitDeployError, match="no runs"):
        summarize_ort_profile(events, skip_runs=7)


# ------------------------------------------------------------------------------------------------ memory
class LeakyRunner(Runner):
    """A runner that keeps 1 MiB per call (touched, so resident), as a real leak would: the check must see it."""

    name = "leaky"

    def _activate(self) -> None:
        self.kept: list[np.ndarray] = []

    def _infer(self, x: np.ndarray) -> np.ndarray:
        self.kept.append(np.full(1024 * 1024, len(self.kept) % 251 + 1, dtype=np.uint8))
        return x.reshape(len(x), -1)[:, :2]

    def _deactivate(self) -> None:
        self.kept = []


def test_no_memory_growth_over_1000_runs(onnx_path):
    with OrtRunner(onnx_path, threads=1) as r:
        res = rss_growth(r, batch(2), runs=1000)
    assert res["runs"] == 1000 and res["growth_mib"] < 4.0, res


def test_leak_check_sees_a_real_leak():
    with LeakyRunner() as r:
        res = rss_growth(r, batch(1), runs=600, warmup=2)
    # 600 x 1 MiB kept; the allocator may first refill heap pages earlier tests freed, so ask for a sixth of it
    assert res["growth_mib"] > 100, res
    with pytest.raises(VitDeployError, match="not active"):
        rss_growth(LeakyRunner(), batch(1), runs=10)


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


def test_static_graph_evaluates_any_number_of_samples(model, onnx_path, tmp_path):
    """A static batch-4 graph gives the dynamic graph's logits for 10 samples (chunks of 4, the last padded)."""
    static = export_onnx(model, tmp_path / "static4.onnx", INPUT_SIZE, static_batch=4)
    x = batch(10, seed=3)
    with OrtRunner(static, threads=1) as s, OrtRunner(onnx_path, threads=1) as d:
        assert s.batch_range == (4, 4) and not s.supports_batch(3) and d.supports_batch(3)
        np.testing.assert_allclose(infer_in_range(s, x), d.infer(x), atol=1e-5)
    data = [(x[:7], np.arange(7) % 10), (x[7:], np.arange(3))]
    assert evaluate(OrtRunner(static, threads=1), data)["n"] == 10


# ------------------------------------------------------------------------------------------ fp16 graphs
def fp16_io_graph(path, classes: int = 10):
    """A linear classifier whose weights, input and output are all float16 (what an fp16 export with fp16 I/O is)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((int(np.prod(INPUT_SIZE)), classes)).astype(np.float16)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "fp16", [helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["batch", *INPUT_SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["batch", classes])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path, w


def test_fp16_io_graph_takes_and_gives_float32(tmp_path):
    path, w = fp16_io_graph(tmp_path / "model.fp16.onnx")
    x = batch(3)
    with OrtRunner(path, threads=1) as r:
        got = r.infer(x)
    ref = x.reshape(3, -1).astype(np.float16).astype(np.float32) @ w.astype(np.float32)
    assert got.dtype == np.float32 and got.shape == (3, 10)
    np.testing.assert_allclose(got, ref, rtol=2e-2, atol=0.5)  # fp16 accumulation over 3072 inputs
    (art,) = resolve_artifacts(str(path))
    assert art.precision == "fp16" and art.kind == "onnx" and len(art.sha256) == 64


# ---------------------------------------------------------------------------------- artifacts and engines
def test_deploy_dir_pairs_graphs_and_engines(model, tmp_path):
    """A deploy dir's graphs run on ort backends; its engines only with trt, and are skipped (named) otherwise."""
    deploy = tmp_path / "deploy"
    export_onnx(model, deploy / "model.fp32.onnx", INPUT_SIZE)
    fp16_io_graph(deploy / "model.fp16.onnx")
    (deploy / "engines").mkdir()
    (deploy / "engines" / "model.fp16.b8.plan").write_bytes(b"not a real engine")
    from vitdeploy.io import manifest_entry, seal

    files = ["model.fp32.onnx", "model.fp16.onnx", "engines/model.fp16.b8.plan"]  # the sha256 manifest load checks
    (deploy / "export.json").write_text(json.dumps(seal({  # sealed, as export writes it
        "input_size": list(INPUT_SIZE),
        "artifacts": [{"file": "model.fp32.onnx", "precision": "fp32"}, {"file": "model.fp16.onnx", "precision": "fp16"}],
        "engines": [{"file": "engines/model.fp16.b8.plan", "precision": "fp16"}],
        "files": [manifest_entry(deploy, f) for f in files]})))
    arts = resolve_artifacts(str(deploy))
    assert [(a.kind, a.precision) for a in arts] == [("onnx", "fp32"), ("onnx", "fp16"), ("engine", "fp16")]
    pairs, notes = pair_backends([arts], ["ort-cpu"])
    assert [(a.precision, b) for a, b in pairs] == [("fp32", "ort-cpu"), ("fp16", "ort-cpu")]
    assert len(notes) == 1 and "model.fp16.b8.plan" in notes[0]
    pairs, notes = pair_backends([arts], None)  # eval's default: each kind's own backend, engines on request
    assert [b for _, b in pairs] == ["ort-cpu", "ort-cpu"] and "--backend trt" in notes[0]
    with pytest.raises(VitDeployError, match="engines run on backend trt only"):
        pair_backends([arts[2:]], ["ort-cpu"])


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
@pytest.mark.parametrize("args", [["profile", "{plan}", "--backend", "trt"], ["profile", "{plan}"],
                                  ["eval", "{plan}", "--data", "digits"], ["profile", "{onnx}", "--backend", "trt"]])
def test_engine_without_tensorrt_is_one_line(capsys, tmp_path, onnx_path, args):
    plan = tmp_path / "model.fp16.b8.plan"
    plan.write_bytes(b"engine bytes")
    code, out, err = run_cli(capsys, *[a.format(plan=plan, onnx=onnx_path) for a in args])
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "'tensorrt'" in err and "not usable here" in err
    with pytest.raises(BackendError, match="tensorrt"):
        TrtRunner(plan)
    with pytest.raises(BackendError, match="tensorrt"):
        create_runner("trt", engine_path=plan)


# ------------------------------------------------------------------------------------------- TensorRT
def build_engine(onnx_file, path, max_batch: int = 8):
    """A real engine from the exported graph (TensorRT 10/11 builder; dynamic batch 1..max_batch)."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(open(onnx_file, "rb").read()), parser.get_error(0)
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, *INPUT_SIZE), (max_batch, *INPUT_SIZE), (max_batch, *INPUT_SIZE))
    config.add_optimization_profile(profile)
    path.write_bytes(bytes(builder.build_serialized_network(network, config)))
    return path


@pytest.mark.trt
def test_trt_runner_matches_onnxruntime(onnx_path, tmp_path):
    plan = build_engine(onnx_path, tmp_path / "model.fp32.b8.plan")
    x = batch(5)
    with TrtRunner(plan) as t, OrtRunner(onnx_path, threads=1) as o:
        got, ref = t.infer(x), o.infer(x)
        assert t.batch_range == (1, 8) and not t.supports_batch(9)
        with pytest.raises(VitDeployError, match="batches of 1 to 8"):
            t.infer(batch(9))
    assert got.dtype == np.float32 and np.abs(got - ref).max() < 1e-2
    (art,) = resolve_artifacts(str(plan))
    assert art.kind == "engine" and art.input_size == INPUT_SIZE and art.precision == "fp32"
    res = evaluate(TrtRunner(plan), [(batch(20), np.arange(20) % 10)], reference=OrtRunner(onnx_path, threads=1))
    assert res["n"] == 20 and res["top1_agreement"] == 1.0
