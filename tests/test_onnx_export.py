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


def _attention_variant(variant: str) -> torch.nn.Module:
    from vitdeploy.models.surgery import PrunedAttention, slice_attention

    if variant == "qk_norm":
        torch.manual_seed(0)
        return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=2,
                                 qk_norm=True).eval()
    m = tiny_vit()
    if variant == "pruned":  # 2 of 3 heads, 40 q/k and 24 v dims each
        m.blocks[0].attn = slice_attention(m.blocks[0].attn, 192, heads=[0, 2], qk_idx=torch.arange(40).expand(2, 40),
                                           v_idx=torch.arange(24).expand(2, 24))
    if variant == "low_rank":  # a factored qkv: the scale goes into its second factor
        torch.manual_seed(1)
        m.blocks[1].attn = PrunedAttention(192, 3, 64, 64, 64 ** -0.5, qkv_rank=32).eval()
    return m.eval()


@pytest.mark.parametrize("variant", ["dense", "pruned", "low_rank", "qk_norm"])
def test_export_traces_attention_in_its_deploy_form(tmp_path, variant):
    """q, k and v are split off the qkv output before any transpose (no 5-D transpose, no Squeeze) and the softmax
    scale sits in the q rows of qkv (no Mul in front of a MatMul), except behind a q/k norm; the function is the
    same and the caller's attention modules are the ones it had."""
    from vitdeploy.deploy.graph import clean_graph

    m = _attention_variant(variant)
    attns = [b.attn for b in m.blocks]
    path = export_onnx(m, tmp_path / "m.onnx", INPUT_SIZE)
    assert [b.attn for b in m.blocks] == attns
    assert parity(m, path, realistic_images(4))["max_abs_diff"] < 1e-4
    g = clean_graph(onnx.load(str(path)))[0].graph
    ops = [n.op_type for n in g.node]
    assert "Squeeze" not in ops
    assert all(len(next(a.ints for a in n.attribute if a.name == "perm")) == 4 for n in g.node if n.op_type == "Transpose"
               and n.attribute and "blocks" in n.name)
    muls = {n.output[0] for n in g.node if n.op_type == "Mul"}
    weights = {t.name for t in g.initializer}
    scaled = [n.name for n in g.node if n.op_type == "MatMul" and not weights & set(n.input)  # q·kᵀ and p·v
              and any(i in muls for i in n.input)]
    assert (len(scaled) == len(m.blocks)) if variant == "qk_norm" else not scaled
    if variant == "dense":  # traced as it is, timm's attention keeps its 5-D transpose and its scale Muls
        asis = clean_graph(onnx.load(str(export_onnx(m, tmp_path / "asis.onnx", INPUT_SIZE, deploy_attention=False))))[0]
        assert "Squeeze" in [n.op_type for n in asis.graph.node] and len(asis.graph.node) > len(g.node)


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


# ------------------------------------------------------------------------------ `vitdeploy export` end to end
def run_cli(capsys, *args):
    """The CLI in-process, through the same entry point as the console script."""
    from vitdeploy.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_cli_export_all_precisions_with_a_target(capsys, tmp_path, digits_model_dir):
    import json

    from vitdeploy.io import sha256_file

    out = tmp_path / "deploy"
    code, stdout, err = run_cli(capsys, "export", digits_model_dir, "--precision", "fp32,fp16,int8", "--calib-images",
                                "96", "--calib-method", "percentile", "--target", "jetson-orin-nano", "--out", out)
    assert code == 0, err
    ex = json.loads((out / "export.json").read_text())
    arts = {a["precision"]: a for a in ex["artifacts"]}
    assert list(arts) == ["fp32", "fp16", "int8"] and ex["precisions"] == ["fp32", "fp16", "int8"]
    for a in arts.values():
        path = out / a["file"]
        assert a["bytes"] == path.stat().st_size and a["sha256"] == sha256_file(path) and a["batch_symbolic"]
        assert a["ops"].get("LayerNormalization") == 13 and "Pow" not in a["ops"] and "Identity" not in a["ops"]
        assert a["parity"]["n"] == 64 and "digits val images" in ex["parity_inputs"]
    assert arts["fp32"]["parity"]["max_abs_diff"] < 1e-4 and arts["fp32"]["parity"]["top1_agreement"] == 1.0
    assert arts["fp16"]["parity"]["cosine"] > 0.999 and arts["fp16"]["io_dtype"] == "fp32"
    assert arts["int8"]["parity"]["cosine"] > 0.99 and arts["int8"]["parity"]["top1_agreement"] >= 0.9
    passes = ex["cleanup"]["passes"]
    assert passes[0]["pass"] == "raw" and all(p["max_abs_diff"] < 1e-4 for p in passes)
    assert passes[-1]["nodes"] == arts["fp32"]["nodes"] < passes[0]["nodes"]
    assert len(ex["fp16"]["residual_adds"]) == 12 and ex["fp16"]["kept_for_accuracy"] == []
    assert ex["fp16"]["agreement"]["cosine"] > 0.999
    cal = ex["int8"]
    assert cal["calibration"]["data"] == "digits" and cal["images"] == 96 and cal["method"] == "percentile"
    assert cal["quantized_nodes"] == 6 * 4 + 1 and cal["activations"].startswith("int8 symmetric")
    assert ex["target"]["name"] == "jetson-orin-nano" and (out / ex["build_script"]).is_file()
    assert (out / ex["triton"]["repository"]).is_dir() and ex["tensorrt"]["reason"]  # no TensorRT here
    manifest = {f["file"]: f for f in ex["files"]}
    assert {"model.fp32.onnx", "model.fp16.onnx", "model.int8.onnx", "build_engines.sh"} <= set(manifest)
    assert all(manifest[f]["sha256"] == sha256_file(out / f) for f in manifest)
    assert not [p for p in out.rglob("*") if "raw" in p.name or p.name.startswith(".")]  # the raw export is gone
    assert stdout.count("wrote ") >= 3 and "jetson-orin-nano" in stdout
    for a in arts.values():  # every graph keeps a dynamic batch
        for batch in (1, 5):
            x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)
            s = ort.InferenceSession(str(out / a["file"]), providers=["CPUExecutionProvider"])
            t = np.float16 if "16" in s.get_inputs()[0].type else np.float32
            assert s.run(None, {"input": x.astype(t)})[0].shape == (batch, 10)


def test_cli_export_takes_precisions_from_the_target(capsys, tmp_path, digits_model_dir):
    import json

    out = tmp_path / "cpu"
    code, _, err = run_cli(capsys, "export", digits_model_dir, "--target", "cpu", "--calib-images", "32",
                           "--io-dtype", "fp16", "--exclude", "head", "--out", out)
    assert code == 0, err
    ex = json.loads((out / "export.json").read_text())
    assert [a["precision"] for a in ex["artifacts"]] == ["fp32", "int8"]  # the cpu target's precisions
    assert ex["int8"]["excluded_nodes"] == ["/head/Gemm"] and ex["triton"]["models"]


def test_cli_export_without_a_target_still_writes_the_script_and_triton(capsys, tmp_path, digits_model_dir):
    import json

    out = tmp_path / "plain"
    code, _, err = run_cli(capsys, "export", digits_model_dir, "--out", out)
    assert code == 0, err
    ex = json.loads((out / "export.json").read_text())
    assert [a["precision"] for a in ex["artifacts"]] == ["fp32"] and ex["target"]["name"] == "gpu"
    assert (out / "build_engines.sh").is_file() and (out / "triton").is_dir() and ex["tensorrt"]["reason"]


BAD_EXPORT = [
    ("unknown target", ["--target", "nowhere"], "unknown target"),
    ("calib images 0", ["--precision", "int8", "--calib-images", "0"], "--calib-images"),
    ("unreadable calib data", ["--precision", "int8", "--calib-data", "imagefolder:{tmp}/none"], "does not exist"),
    ("calib data spec", ["--precision", "int8", "--calib-data", "mnist"], "mnist"),
    ("int8 without data", ["--precision", "int8"], "calibration images"),
    ("unknown layer excluded", ["--precision", "int8", "--calib-images", "8", "--exclude", "blocks.99"], "matches no"),
    ("io dtype", ["--precision", "fp16", "--io-dtype", "bf16"], "--io-dtype"),
    ("calib method", ["--precision", "int8", "--calib-method", "kl"], "--calib-method"),
]


@pytest.mark.parametrize("case,args,match", BAD_EXPORT, ids=[b[0] for b in BAD_EXPORT])
def test_cli_export_bad_input_is_one_line(capsys, tmp_path, digits_model_dir, case, args, match):
    model = "vit_digits" if case == "int8 without data" else digits_model_dir  # a timm name records no training data
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "export", model, "--out", out, *[a.format(tmp=tmp_path) for a in args])
    assert code == 2, (case, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert match in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
