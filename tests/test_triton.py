"""Triton model repository and the deploy extras: config.pbtxt parses back (through protobuf's text parser and
Triton's field names) to the fields written, the repository is self-contained and its ONNX models run in
onnxruntime at the batch sizes the config allows, and bad input fails in one line before anything is written."""
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import tiny_vit
from onnx import TensorProto, helper

from vitdeploy.deploy.onnx_export import export_onnx
from vitdeploy.deploy.serving import read_graph_io, why_not_build_here, write_deploy_extras
from vitdeploy.deploy.targets import load_target
from vitdeploy.deploy.triton import TritonModel, parse_config, render_config, safe_model_name
from vitdeploy.errors import VitDeployError

CHW = (3, 32, 32)


@pytest.fixture(scope="module")
def graphs_dir(tmp_path_factory):
    """A tiny ViT exported with a dynamic and with a static batch, and a hand-built FP16-I/O classifier graph."""
    d = tmp_path_factory.mktemp("graphs")
    model = tiny_vit()
    export_onnx(model, d / "model.fp32.onnx", CHW)
    export_onnx(model, d / "static.onnx", CHW, static_batch=4)
    w = helper.make_tensor("w", TensorProto.FLOAT16, [3 * 32 * 32, 10],
                           np.random.default_rng(0).standard_normal(3 * 32 * 32 * 10).astype(np.float16).tobytes(),
                           raw=True)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "fp16_io", [helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["batch", *CHW])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["batch", 10])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), d / "model.fp16.onnx")
    return d


def stage_with(graphs_dir, tmp_path, files):
    stage = tmp_path / "stage"
    stage.mkdir()
    for src, dst in files.items():
        shutil.copy(graphs_dir / src, stage / dst)
    return stage


# ---------------------------------------------------------------------------------------------- config
def test_names_are_made_safe_or_refused():
    assert safe_model_name("deit_small_patch16_224") == "deit_small_patch16_224"
    assert safe_model_name("runs/s40 pruned") == "runs_s40_pruned"
    for bad in ("../evil", "a/../../b", "/etc/x", "", "..", ".hidden", "C:\\x"):
        with pytest.raises(VitDeployError, match="model name"):
            safe_model_name(bad)


@pytest.mark.parametrize("model", [
    TritonModel("vit_fp16", "tensorrt_plan", 16, "input", "fp32", [3, 224, 224], "logits", "fp16", [1000], [8],
                dla_core=0),
    TritonModel("vit_int8", "onnxruntime_onnx", 0, "input", "fp32", [4, 3, 32, 32], "logits", "fp32", [4, 10],
                instance_kind="KIND_CPU", instance_count=2),
])
def test_config_parses_back_to_the_same_fields(model):
    cfg = parse_config(render_config(model, "a comment\nover two lines"))
    assert (cfg["name"], cfg["platform"], cfg["max_batch_size"]) == (model.name, model.platform, model.max_batch_size)
    assert cfg["backend"] == {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime"}[model.platform]
    assert cfg["input"] == [{"name": "input", "data_type": f"TYPE_{model.input_dtype.upper()}", "dims": model.input_dims}]
    assert cfg["output"] == [{"name": "logits", "data_type": f"TYPE_{model.output_dtype.upper()}",
                              "dims": model.output_dims}]
    group = cfg["instance_group"][0]
    assert (group["kind"], group["count"]) == (model.instance_kind, model.instance_count)
    assert group["secondary_devices"] == ([{"kind": "KIND_NVDLA", "device_id": 0}] if model.dla_core is not None else [])
    if model.max_batch_size:
        assert cfg["dynamic_batching"] == {"preferred_batch_size": model.preferred_batch_sizes,
                                           "max_queue_delay_microseconds": 100}
    else:
        assert "dynamic_batching" not in cfg  # no batch dimension to batch on


def test_parse_rejects_what_triton_would():
    with pytest.raises(VitDeployError, match='no field named "max_batch"'):
        parse_config('name: "x"\nmax_batch: 4\n')
    with pytest.raises(VitDeployError, match="config.pbtxt"):
        parse_config('input [ { data_type: TYPE_FLOAT32 } ]')
    with pytest.raises(VitDeployError, match="unknown Triton platform"):
        render_config(TritonModel("x", "pytorch_libtorch", 1, "i", "fp32", [1], "o", "fp32", [1]))


# -------------------------------------------------------------------------------------------- extras
def test_cpu_target_repository_runs_in_onnxruntime(graphs_dir, tmp_path):
    stage = stage_with(graphs_dir, tmp_path, {"model.fp32.onnx": "model.fp32.onnx"})
    target = load_target("cpu")
    out = write_deploy_extras(stage, [{"file": "model.fp32.onnx", "precision": "fp32"}], target, CHW, 10, "tiny vit")
    json.dumps(out)
    assert out["build_script"] == "build_engines.sh" and (stage / "build_engines.sh").stat().st_mode & 0o111
    assert out["engines"] == [] and out["tensorrt"]["reason"] == "target 'cpu' runs no TensorRT (device: cpu)"
    (model,) = out["triton"]["models"]
    assert (model["name"], model["platform"], model["source"]) == ("tiny_vit_fp32", "onnxruntime_onnx", "model.fp32.onnx")
    folder = stage / "triton" / "tiny_vit_fp32"
    copied = folder / "1" / "model.onnx"
    assert not copied.is_symlink() and copied.read_bytes() == (stage / "model.fp32.onnx").read_bytes()
    cfg = parse_config((folder / "config.pbtxt").read_text())
    assert cfg["max_batch_size"] == target.max_batch_size == model["max_batch_size"]
    assert cfg["instance_group"][0]["kind"] == "KIND_CPU"
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [8]
    # what Triton would send: a batch of up to max_batch_size, dims as configured
    sess = ort.InferenceSession(str(copied), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = cfg["input"], cfg["output"]
    x = np.random.default_rng(0).standard_normal((cfg["max_batch_size"], *inp["dims"])).astype(np.float32)
    (y,) = sess.run([outp["name"]], {inp["name"]: x})
    assert y.shape == (cfg["max_batch_size"], *outp["dims"])


def test_gpu_targets_without_tensorrt_serve_onnx_and_script_the_engines(graphs_dir, tmp_path):
    stage = stage_with(graphs_dir, tmp_path, {"model.fp32.onnx": "model.fp32.onnx", "model.fp16.onnx": "model.fp16.onnx"})
    graphs = [{"file": "model.fp32.onnx", "precision": "fp32"}, {"file": "model.fp16.onnx", "precision": "fp16"}]
    out = write_deploy_extras(stage, graphs, load_target("jetson-orin-nano"), CHW, 10, "vit")
    if out["tensorrt"]["available"]:
        pytest.skip("TensorRT is installed here: covered by test_tensorrt.py")
    assert out["tensorrt"] == {"available": False, "version": None, "reason": out["tensorrt"]["reason"]}
    assert out["tensorrt"]["reason"].startswith("TensorRT is not installed here (import tensorrt failed:")
    assert out["tensorrt"]["reason"].endswith("build_engines.sh has the trtexec commands to build on the device")
    fp16 = parse_config((stage / "triton/vit_fp16/config.pbtxt").read_text())
    assert fp16["platform"] == "onnxruntime_onnx" and fp16["instance_group"][0]["kind"] == "KIND_GPU"
    assert (fp16["input"][0]["data_type"], fp16["output"][0]["data_type"]) == ("TYPE_FP16", "TYPE_FP16")
    script = (stage / "build_engines.sh").read_text()
    assert "--saveEngine=model.fp16.b8.plan" in script and "build_trt11" not in script  # JetPack 6: TensorRT 10 only
    plan_cfg = script.split("install_plan model.fp16.b8.plan triton/vit_fp16 <<'PBTXT'\n")[1].split("\nPBTXT")[0]
    plan = parse_config(plan_cfg)
    assert (plan["platform"], plan["max_batch_size"], plan["input"][0]["dims"]) == ("tensorrt_plan", 16, list(CHW))


def test_dla_target_serves_static_engines_without_batching(graphs_dir, tmp_path):
    stage = stage_with(graphs_dir, tmp_path, {"model.fp32.onnx": "model.int8.onnx"})
    write_deploy_extras(stage, [{"file": "model.int8.onnx", "precision": "int8"}], load_target("jetson-agx-orin"),
                        CHW, 10, "vit")
    script = (stage / "build_engines.sh").read_text()
    plan = parse_config(script.split("triton/vit_int8 <<'PBTXT'\n")[1].split("\nPBTXT")[0])
    assert plan["max_batch_size"] == 0 and plan["input"][0]["dims"] == [8, *CHW]  # DLA profiles are static
    assert plan["instance_group"][0]["secondary_devices"] == [{"kind": "KIND_NVDLA", "device_id": 0}]


def test_static_batch_graph(graphs_dir, tmp_path):
    stage = stage_with(graphs_dir, tmp_path, {"static.onnx": "model.fp32.onnx"})
    assert read_graph_io(stage / "model.fp32.onnx", CHW, 10).static_batch == 4
    out = write_deploy_extras(stage, [{"file": "model.fp32.onnx", "precision": "fp32"}], load_target("a100"), CHW, 10,
                              "vit")
    cfg = parse_config((stage / "triton/vit_fp32/config.pbtxt").read_text())
    assert cfg["max_batch_size"] == 0 and cfg["input"][0]["dims"] == [4, *CHW] and out["triton"]["models"]
    script = (stage / "build_engines.sh").read_text()
    assert "--saveEngine=model.fp32.b4.plan" in script and "--minShapes" not in script


@pytest.mark.parametrize("graphs,size,classes,name,match", [
    ([{"file": "model.fp32.onnx", "precision": "fp32"}] * 2, CHW, 10, "vit", "unknown or repeated"),
    ([{"file": "model.fp32.onnx", "precision": "bf8"}], CHW, 10, "vit", "unknown or repeated"),
    ([{"file": "absent.onnx", "precision": "fp32"}], CHW, 10, "vit", "not a plain file name"),
    ([{"file": "../stage/model.fp32.onnx", "precision": "fp32"}], CHW, 10, "vit", "not a plain file name"),
    ([{"file": "model.fp32.onnx", "precision": "fp32"}], (3, 224, 224), 10, "vit", "expected \\[batch, 3, 224, 224\\]"),
    ([{"file": "model.fp32.onnx", "precision": "fp32"}], CHW, 1000, "vit", "expected \\[batch, 1000\\]"),
    ([{"file": "model.fp32.onnx", "precision": "fp32"}], CHW, 10, "../escape", "would leave the Triton model repository"),
    ([], CHW, 10, "vit", "no ONNX graphs"),
])
def test_bad_input_fails_in_one_line_and_writes_nothing(graphs_dir, tmp_path, graphs, size, classes, name, match):
    stage = stage_with(graphs_dir, tmp_path, {"model.fp32.onnx": "model.fp32.onnx"})
    with pytest.raises(VitDeployError, match=match) as e:
        write_deploy_extras(stage, graphs, load_target("h100"), size, classes, name)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in stage.iterdir()) == ["model.fp32.onnx"]


def test_why_engines_are_not_built_here():
    h100, cpu = load_target("h100"), load_target("cpu")
    here = {"available": True, "version": "10.7.0", "reason": None}
    assert why_not_build_here(here, h100, "NVIDIA H100 80GB HBM3") is None
    assert "runs no TensorRT" in why_not_build_here(here, cpu, "NVIDIA H100 80GB HBM3")
    assert "is for H100" in why_not_build_here(here, h100, "NVIDIA A100-SXM4-40GB")
    assert "no CUDA GPU" in why_not_build_here(here, h100, None)
    assert "runs TensorRT 10" in why_not_build_here({**here, "version": "11.1.0"}, load_target("jetson-orin-nano"), "Orin")
    missing = {"available": False, "version": None, "reason": "TensorRT is not installed here (...)"}
    assert why_not_build_here(missing, h100, None) == missing["reason"]
    assert "runs no TensorRT" in why_not_build_here(missing, cpu, None)
