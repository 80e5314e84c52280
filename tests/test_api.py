"""The Python API: the README's example runs as written, results carry what the CLI prints, a live timm module is
taken without being changed, and bad input is a one-line VitDeployError."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import vitdeploy
from vitdeploy.errors import ModelError, RecipeError, VitDeployError

ROOT = Path(__file__).resolve().parents[1]


def _example(doc: Path) -> str:
    found = re.search(r"<!-- python-example -->\n```python\n(.*?)```", doc.read_text(), re.S)
    assert found, f"{doc} has no python-example block"
    return found.group(1)


def test_docs_carry_the_same_example():
    readme = _example(ROOT / "README.md")
    assert readme.strip() in (ROOT / "docs" / "api.md").read_text()
    assert len(readme.strip().splitlines()) <= 12


@pytest.mark.slow
def test_readme_example_runs_as_written(tmp_path):
    """The example from a fresh interpreter in an empty folder: compression, two exports and a latency check."""
    proc = subprocess.run([sys.executable, "-c", _example(ROOT / "README.md")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.match(r"1\.\d\dx fewer MACs, pruned == masked within \d\.\de-\d\d", lines[0]), lines[0]
    rows = [ln for ln in lines[1:] if " ms" in ln]
    assert len(rows) == 6  # dense fp32, compressed fp32 and int8, at batch 1 and 8
    assert all((tmp_path / "runs/py" / d / "deploy" / "export.json").is_file() for d in ("deit-tiny", "deit-tiny-40"))


def test_a_live_module_is_taken_without_change(tmp_path):
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loaded = vitdeploy.load_model(model)
    assert loaded.model is not model and loaded.arch.base == "vit_tiny_patch16_224"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model.eval()(x))
    small = vitdeploy.compress(model, "mlp-magnitude", tmp_path / "small")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert small.params_ratio > 1.2 and small.max_abs_diff < 1e-4 and small.top1 is None
    info = vitdeploy.info(small.path)
    assert info["params"] == small.record["params"]["after"]
    assert info["blocks"][0]["mlp_hidden"] == small.record["kept"][0]["mlp_hidden"] < 768


def test_a_module_timm_cannot_rebuild_is_refused():
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2,
                              mlp_ratio=2.0, in_chans=1, num_classes=5)  # skeleton arguments are read off the module
    loaded = vitdeploy.load_model(model).model
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert len(loaded.blocks) == 2 and torch.equal(loaded(x), model.eval()(x))
    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, qkv_bias=False)
    with pytest.raises(ModelError, match="does not match timm's 'vit_tiny_patch16_224'"):
        vitdeploy.load_model(model)
    with pytest.raises(ModelError, match="timm VisionTransformer"):
        vitdeploy.load_model(torch.nn.Linear(2, 2))


def test_bad_input_is_a_one_line_error(tmp_path):
    with pytest.raises(RecipeError, match="unknown recipe 'nope'"):
        vitdeploy.compress("vit_digits", "nope", tmp_path / "x")
    with pytest.raises(RecipeError, match="prune.rate"):
        vitdeploy.compress("vit_digits", "vtp-40", tmp_path / "x", overrides={"prune.rate": 2})
    with pytest.raises(VitDeployError, match="at least one artifact"):
        vitdeploy.profile([])
    with pytest.raises(VitDeployError, match="unsupported precision 'fp8'"):
        vitdeploy.export("vit_digits", tmp_path / "y", precisions=["fp8"])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_eval_and_profile_results(tmp_path, digits_model_dir):
    deploy = vitdeploy.export(digits_model_dir, tmp_path / "deploy", precisions=["fp32"])
    assert deploy.parity["fp32"]["max_abs_diff"] < 1e-4 and deploy.graphs["fp32"].is_file()
    run = vitdeploy.evaluate(deploy.path, "digits", reference=digits_model_dir, out=str(tmp_path / "eval.json"),
                             show_progress=False)
    (r,) = run.results
    assert r.precision == "fp32" and r.n == 360 and r.agreement > 0.99 and r.path.is_file()
    timing = vitdeploy.profile([deploy.path], batch=[2], iters=5, warmup=1, show_progress=False)
    (row,) = timing.rows
    assert row["batch"] == 2 and row["p50_ms"] > 0 and timing.p50_ms("model.fp32.onnx", 2) == row["p50_ms"]


def test_api_names_are_never_shadowed_by_subpackages():
    """Importing a subpackage sets it as an attribute of its parent: no subpackage may share an API name."""
    import importlib
    import pkgutil
    import types

    for info in pkgutil.walk_packages(vitdeploy.__path__, "vitdeploy."):
        importlib.import_module(info.name)
    shadowed = [n for n in vitdeploy.__all__ if isinstance(getattr(vitdeploy, n), types.ModuleType)]
    assert not shadowed, shadowed
