"""INT8 planned under an accuracy budget: per-tensor calibration thresholds, the Q/DQ builder against
onnxruntime's quantizer, the planner finding a layer planted to break under INT8 and returning it to float, the
mixed graph (FP32 or FP16 for the rest) keeping the placement rules, and `vitdeploy export --int8-max-drop` end to
end, with bad budgets ending in one line."""
from __future__ import annotations

import collections
import csv
import json

import numpy as np
import onnx
import pytest
import torch

from conftest import tiny_vit
from test_cli import run as run_cli
from test_onnx_export import realistic_images
from test_quant import clean_of, run, types_of
from vitdeploy.deploy.calibrate import TensorHistogram, choose, collect_histograms, quantization_error, threshold
from vitdeploy.deploy.int8 import Int8Config, linear_nodes, qdq_problems, quantize_int8
from vitdeploy.deploy.int8_plan import PlanConfig, find_units, plan_int8, with_fp16_rest
from vitdeploy.deploy.qdq import QdqBuilder, quantized_nodes
from vitdeploy.errors import VitDeployError
from vitdeploy.runtime.compare import compare_logits

F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return clean_of(tiny_vit(), tmp_path_factory.mktemp("plan-clean"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny ViT that computes the same function, but one hidden unit of blocks.1's MLP fires ~1000x larger than
    the rest and is then ignored (its fc2 column is zero): per-tensor INT8 on fc2's input, calibrated by minmax,
    spends all 255 levels on that unit and crushes the others."""
    model = tiny_vit()
    with torch.no_grad():
        fc1, fc2 = model.blocks[1].mlp.fc1, model.blocks[1].mlp.fc2
        fc1.weight[0] = 0.0
        fc1.bias[0] = 500.0
        fc2.weight[:, 0] = 0.0
    return clean_of(model, tmp_path_factory.mktemp("plan-planted"))


def thresholds_of(model, images, method="minmax", scratch=None):
    probe = QdqBuilder(model, {})
    nodes = [u.node for u in find_units(model)]
    hist = collect_histograms(model, [t for n in nodes for t in probe.activations(n)], images, scratch)
    return {t: choose(h, method)[1] for t, h in hist.items()}, nodes


# -------------------------------------------------------------------------------------------- calibration
def test_thresholds_per_method_on_a_long_tail():
    rng = np.random.default_rng(0)
    x = np.abs(np.concatenate([rng.standard_normal(200_000), [60.0]]))  # one outlier far out
    h = TensorHistogram(float(x.max()), np.histogram(x, bins=2048, range=(0, x.max()))[0])
    t = {m: threshold(h, m) for m in ("minmax", "percentile", "entropy")}
    assert t["minmax"] == pytest.approx(60.0)
    assert 3.0 < t["percentile"] < 60.0 and 1.0 < t["entropy"] < 60.0
    method, chosen = choose(h, "auto")
    assert method != "minmax" and quantization_error(h, chosen) < quantization_error(h, 60.0)
    assert quantization_error(h, chosen) == min(quantization_error(h, v) for v in t.values())
    empty = TensorHistogram(0.0, np.zeros(2048, np.int64))
    assert threshold(empty, "entropy") == 0.0 and choose(empty, "auto")[1] == 0.0


def test_builder_matches_onnxruntime_quantizer_with_minmax(clean, tmp_path):
    """Same ranges, same rounding: the builder's Linear-only graph computes what quantize_static's does."""
    calib, x = realistic_images(32, seed=7), realistic_images(16)
    thr, _ = thresholds_of(clean, calib, scratch=tmp_path)
    mine = QdqBuilder(clean, thr).build([n.name for n in linear_nodes(clean)])
    theirs, _ = quantize_int8(clean, calib, Int8Config())
    assert qdq_problems(mine) == []
    counts = collections.Counter(n.op_type for n in mine.graph.node)
    assert counts == collections.Counter(n.op_type for n in theirs.graph.node)
    assert np.abs(run(mine, x) - run(theirs, x)).max() < 1e-4


def test_builder_places_qdq_only_on_the_chosen_layers(clean, tmp_path):
    thr, nodes = thresholds_of(clean, realistic_images(32, seed=7), "auto", tmp_path)
    b = QdqBuilder(clean, thr)
    full = b.build(nodes)
    assert qdq_problems(full) == [] and quantized_nodes(full) == nodes  # both attention matmuls included
    some = [nodes[0], nodes[4]]
    part = b.build(some)
    assert qdq_problems(part) == [] and quantized_nodes(part) == some
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in b.build([]).graph.node)
    onnx.checker.check_model(part, full_check=True)
    with pytest.raises(VitDeployError, match="unknown MatMul/Gemm"):
        b.build(["/blocks/blocks.9/mlp/fc1/MatMul"])


def test_units_name_every_quantizable_layer(clean):
    units = find_units(clean)
    assert [u.name for u in units[:6]] == ["blocks.0.attn.qkv", "blocks.0.attn.qk", "blocks.0.attn.pv",
                                           "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    assert len(units) == 2 * 6 + 1 and units[-1].name == "head"
    assert len(find_units(clean, {units[0].node})) == len(units) - 1


# ---------------------------------------------------------------------------------------------- planning
def test_plan_returns_the_planted_layer_and_meets_the_budget(planted, tmp_path):
    calib, held = realistic_images(32, seed=7), realistic_images(96, seed=11)
    labels = run(planted, held).argmax(axis=1)  # FP32's own predictions: top-1 here is agreement with FP32
    cfg = PlanConfig(min_agreement=0.95, images=len(held), method="minmax", batch=2, threads=1, drop_slower=False)
    plan = plan_int8(planted, calib, held, labels, cfg, tmp_path)
    r = plan.record
    assert r["full"]["agreement"] < 0.95 <= r["planned"]["agreement"]  # the search was needed, and it worked
    assert "blocks.1.mlp.fc2" in r["planned"]["returned_to_float"]
    worst = max(plan.rows, key=lambda row: row["alone_loss_points"])
    assert worst["layer"] == "blocks.1.mlp.fc2" and not worst["int8"]
    assert r["planned"]["layers"] == len(plan.rows) - len(r["planned"]["returned_to_float"]) >= 1
    # least valuable first: nothing went back that ranks after the planted layer
    assert all(row["return_order"] <= worst["return_order"] for row in plan.rows if not row["int8"])
    assert qdq_problems(plan.model) == [] and "/blocks/blocks.1/mlp/fc2/MatMul" not in quantized_nodes(plan.model)
    assert compare_logits(run(plan.model, held), run(planted, held))["top1_agreement"] == r["planned"]["agreement"]
    assert [t["returned"] for t in r["search"]][0] == 0 and any(t["meets"] for t in r["search"])
    assert all(row["gain_ms"] is not None for row in plan.rows)  # every layer was timed


def test_plan_that_cannot_be_met_is_an_error(planted, tmp_path):
    held = realistic_images(32, seed=11)
    cfg = PlanConfig(max_drop=0.0, images=len(held), method="minmax", batch=2, threads=1, drop_slower=False)
    labels = run(planted, held).argmax(axis=1)
    with pytest.raises(VitDeployError, match="no INT8 placement meets the budget"):
        plan_int8(planted, realistic_images(16, seed=7), held, labels, cfg, tmp_path,
                  exclude={u.node for u in find_units(planted) if u.name != "blocks.1.mlp.fc2"})


def test_fp16_rest_keeps_int8_layers_fp32_and_the_rules(clean, tmp_path):
    thr, nodes = thresholds_of(clean, realistic_images(32, seed=7), "auto", tmp_path)
    planned = QdqBuilder(clean, thr).build(nodes[:6])
    mixed = with_fp16_rest(planned)
    onnx.checker.check_model(mixed, full_check=True)
    assert qdq_problems(mixed) == [] and quantized_nodes(mixed) == nodes[:6]
    types = types_of(mixed)
    for n in mixed.graph.node:
        if n.name in nodes[:6]:
            assert all(types[i] == F32 for i in n.input if i), n.name
        elif n.op_type in ("MatMul", "Gemm"):
            assert all(types[i] == F16 for i in n.input if i), n.name
        if n.op_type == "LayerNormalization":
            assert types[n.input[0]] == F32
    x = realistic_images(16)
    assert compare_logits(run(mixed, x), run(planned, x))["cosine"] > 0.999


@pytest.mark.parametrize("kw,match", [
    (dict(), "needs --int8-max-drop or --int8-min-agreement"),
    (dict(max_drop=-1.0), "--int8-max-drop"),
    (dict(min_agreement=1.5), "--int8-min-agreement"),
    (dict(max_drop=0.5, method="kl"), "unknown calibration method"),
])
def test_bad_plan_configs(kw, match):
    with pytest.raises(VitDeployError, match=match):
        PlanConfig(**kw)


# ---------------------------------------------------------------------------------------------- end to end
def test_export_with_a_budget_end_to_end(capsys, tmp_path, digits_model_dir):
    out = tmp_path / "planned"
    code, stdout, err = run_cli(capsys, "export", digits_model_dir, "--precision", "fp32,int8", "--int8-max-drop", "5",
                                "--calib-data", "digits", "--calib-images", "48", "--int8-plan-images", "64",
                                "--target", "cpu", "--out", out)
    assert code == 0, err
    assert "int8 plan:" in stdout and "held-out images" in stdout
    rec = json.loads((out / "export.json").read_text())
    int8 = rec["int8"]
    assert int8["mode"] == "planned" and int8["rest"] == "fp32" and int8["method"] == "auto"
    assert int8["held_out"]["split"] == "train" and int8["held_out"]["excludes_calibration_images"]
    plan = int8["plan"]
    assert plan["budget"] == {"max_drop_points": 5.0} and plan["planned"]["drop_points"] <= 5.0
    assert plan["held_out"]["images"] == 64 and set(plan["speed"]["graphs"]) == {"fp32", "full", "planned"}
    assert {"drop_points", "saving_ms"} <= set(plan["predicted"])
    gains = {row["layer"]: row["gain_ms"] for row in plan["layers"]}
    assert set(plan["planned"]["returned_not_faster"]) == {k for k, g in gains.items() if g <= 0}
    assert set(plan["planned"]["returned_not_faster"]) <= set(plan["planned"]["returned_to_float"])
    with open(out / int8["table"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 * 6 + 1 == len(plan["layers"]) and {r["int8"] for r in rows} <= {"yes", "no"}
    assert (out / int8["plot"]).stat().st_size > 1000
    listed = {f["file"] for f in rec["files"]}
    assert {int8["table"], int8["plot"], "model.int8.onnx", "build_engines.sh"} <= listed
    model = onnx.load(str(out / "model.int8.onnx"))
    assert qdq_problems(model) == [] and len(quantized_nodes(model)) == int8["quantized_nodes"]


@pytest.mark.parametrize("args,match", [
    (["--precision", "int8", "--int8-max-drop", "-1"], "--int8-max-drop"),
    (["--precision", "int8", "--int8-min-agreement", "2"], "--int8-min-agreement"),
    (["--precision", "int8", "--calib-method", "auto"], "--calib-method auto"),
    (["--precision", "fp32", "--int8-max-drop", "0.5"], "add int8 to --precision"),
    (["--precision", "int8", "--int8-max-drop", "0.5", "--exclude", "blocks.9"], "matches no quantized layer"),
])
def test_bad_budget_is_one_line(capsys, tmp_path, digits_model_dir, args, match):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "export", digits_model_dir, "--calib-data", "digits", "--out", out, *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert match in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
