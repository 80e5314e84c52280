"""TensorRT engines. Without TensorRT: the one-line error, the inspector summary (on JSON laid out as TensorRT 10 and
11 print it), the timing cache name and GPU matching. With TensorRT and a GPU (`trt` marker, skipped elsewhere):
engines built from a tiny exported ViT at fp32 and fp16, compared with onnxruntime, inspected, with a timing cache."""
import importlib.util
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import tiny_vit

from vitdeploy.deploy.onnx_export import export_onnx
from vitdeploy.deploy.targets import load_target, target_from_dict
from vitdeploy.deploy.tensorrt_build import (build_engine, gpu_matches, import_tensorrt, summarize_layers,
                                             timing_cache_name)
from vitdeploy.errors import BackendError

CHW = (3, 32, 32)
HAS_TRT = importlib.util.find_spec("tensorrt") is not None

# What the engine inspector prints with ProfilingVerbosity.DETAILED (layer records as in NVIDIA/TensorRT#4397 and the
# 10.x -> 11.x inspector migration page: "Bindings" became "I/O Tensors").
TRT10_INFO = {"Layers": [
    {"Name": "/blocks.0/attn/qkv/MatMul_myl0_16", "LayerType": "gemm", "TacticName": "sm80_xmma_gemm_f16f16_f16f16"},
    {"Name": "_gemm_mha_v2_myl0_17", "LayerType": "kgen", "TacticName": "_gemm_mha_v2_0x957a2fe283f77dcf35c142c1390a3e6a"},
    {"Name": "/blocks.0/norm2/LayerNormalization", "LayerType": "Normalization", "TacticName": ""}],
    "Bindings": ["input", "logits"]}
TRT11_INFO = {"Layers": [{"Name": "{ForeignNode[/blocks.0/attn/MatMul.../blocks.0/attn/MatMul_1]}",
                          "LayerType": "Myelin", "TacticName": "sm90_xmma_gemm"}],
              "I/O Tensors": [{"Name": "input", "IOMode": "Input", "DataType": "Float"},
                              {"Name": "logits", "IOMode": "Output", "DataType": "Float"}]}


def test_summarize_layers():
    s = summarize_layers(TRT10_INFO)
    assert (s["layers"], s["attention_fused"], s["fused_attention_layers"]) == (3, True, ["_gemm_mha_v2_myl0_17"])
    assert s["io_tensors"] == ["input", "logits"] and s["myelin_layers"] == 2
    s = summarize_layers(TRT11_INFO)
    assert (s["layers"], s["attention_fused"], s["myelin_layers"], s["io_tensors"]) == (1, False, 1, ["input", "logits"])
    s = summarize_layers({"Layers": ["Reformat", "fmha_v2_flash_attention_fp16_64_32_S_32_sm86_kernel"]})
    assert s["attention_fused"] and s["layers"] == 2


def test_timing_cache_name_and_gpu_match():
    assert timing_cache_name("NVIDIA H100 80GB HBM3", (9, 0), "10.3.0.30") == "nvidia-h100-80gb-hbm3-sm90-trt10.3.0.30.cache"
    assert timing_cache_name(None, None, "11.0.0") == "gpu-trt11.0.0.cache"
    h100, nano = load_target("h100"), load_target("jetson-orin-nano")
    assert gpu_matches(h100, "NVIDIA H100 PCIe") and not gpu_matches(h100, "NVIDIA A100-SXM4-80GB")
    assert gpu_matches(nano, "Orin") and gpu_matches(nano, None)  # unknown GPU: do not refuse


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_missing_tensorrt_is_one_line(tmp_path):
    with pytest.raises(BackendError) as e:
        import_tensorrt()
    msg = str(e.value)
    assert msg.startswith("TensorRT is not installed here (import tensorrt failed: ") and "\n" not in msg
    assert msg.endswith("; build_engines.sh has the trtexec commands to build on the device")
    with pytest.raises(BackendError, match="TensorRT is not installed here"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", "fp32", {"name": "b1", "min": 1, "opt": 1, "max": 1},
                     load_target("h100"), CHW)


# ------------------------------------------------------------------------------------- with TensorRT and a GPU
@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """fp32 and fp16 graphs of a tiny ViT; the fp16 one keeps LayerNorm and Softmax in FP32 and FP32 I/O."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    d = tmp_path_factory.mktemp("trt")
    export_onnx(tiny_vit(), d / "model.fp32.onnx", CHW)
    fp16 = convert_float_to_float16(onnx.load(str(d / "model.fp32.onnx")), keep_io_types=True,
                                    op_block_list=["LayerNormalization", "Softmax"])
    onnx.save(fp16, str(d / "model.fp16.onnx"))
    return d


def local_target():
    import tensorrt

    return target_from_dict({"device": "datacenter", "tensorrt": [tensorrt.__version__.split(".")[0]],
                             "profiles": [{"name": "b4", "min": 1, "opt": 4, "max": 8}], "workspace_mib": 512},
                            "'test'")


def run_engine(plan_path, x):
    import tensorrt as trt
    import torch

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan_path.read_bytes())
    ctx = engine.create_execution_context()
    ctx.set_input_shape("input", x.shape)
    inp = torch.from_numpy(x).cuda()
    out = torch.empty(tuple(ctx.get_tensor_shape("logits")), dtype=torch.float32, device="cuda")
    ctx.set_tensor_address("input", inp.data_ptr())
    ctx.set_tensor_address("logits", out.data_ptr())
    stream = torch.cuda.current_stream()
    assert ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return out.cpu().numpy()


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-2), ("fp16", 5e-2)])
def test_engine_builds_matches_onnxruntime_and_is_inspected(graphs, tmp_path, precision, tol):
    target = local_target()
    cache = tmp_path / "cache" / "t.cache"
    cache.parent.mkdir()
    profile = target.profiles[0]
    rec = build_engine(graphs / f"model.{precision}.onnx", tmp_path / "e.plan", precision, profile, target, CHW,
                       timing_cache=cache, layer_info_path=tmp_path / "e.layers.json")
    assert rec["bytes"] == (tmp_path / "e.plan").stat().st_size > 0 and rec["layers"] > 0
    assert rec["strongly_typed"] == (precision == "fp16" or rec["tensorrt_version"].startswith("11"))
    assert cache.stat().st_size > 0 and json.loads((tmp_path / "e.layers.json").read_text())["Layers"]
    assert isinstance(rec["attention_fused"], bool)
    x = np.random.default_rng(0).standard_normal((4, *CHW)).astype(np.float32)
    ref = ort.InferenceSession(str(graphs / "model.fp32.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = run_engine(tmp_path / "e.plan", x)
    assert got.shape == ref.shape and np.abs(got - ref).max() < tol
    again = build_engine(graphs / f"model.{precision}.onnx", tmp_path / "f.plan", precision, profile, target, CHW,
                         timing_cache=cache)
    assert again["bytes"] > 0 and cache.stat().st_size > 0  # the cache is read back and rewritten


@pytest.mark.trt
@pytest.mark.gpu
def test_deploy_extras_build_and_serve_engines(graphs, tmp_path, monkeypatch):
    import shutil

    from vitdeploy.deploy.serving import write_deploy_extras
    from vitdeploy.deploy.triton import parse_config

    monkeypatch.setenv("VITDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    stage = tmp_path / "stage"
    stage.mkdir()
    shutil.copy(graphs / "model.fp16.onnx", stage / "model.fp16.onnx")
    out = write_deploy_extras(stage, [{"file": "model.fp16.onnx", "precision": "fp16"}], local_target(), CHW, 10, "vit")
    assert out["tensorrt"]["available"] and out["tensorrt"]["reason"] is None
    (engine,) = out["engines"]
    assert "error" not in engine and (stage / engine["file"]).is_file()
    cfg = parse_config((stage / "triton/vit_fp16/config.pbtxt").read_text())
    assert cfg["platform"] == "tensorrt_plan" and cfg["max_batch_size"] == 8
    assert (stage / "triton/vit_fp16/1/model.plan").read_bytes() == (stage / engine["file"]).read_bytes()
    assert list((tmp_path / "cache" / "tensorrt").glob("*.cache"))


@pytest.mark.trt
@pytest.mark.gpu
def test_unparsable_graph_is_one_line(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(BackendError, match="TensorRT could not parse bad.onnx") as e:
        build_engine(tmp_path / "bad.onnx", tmp_path / "bad.plan", "fp32", local_target().profiles[0], local_target(), CHW)
    assert "\n" not in str(e.value) and not (tmp_path / "bad.plan").exists()
