"""Planning to a budget: the knapsack against brute force, the counted cost model against counted MACs, the latency
table's interpolation and file checks, the recipe's rules, and latency-50 end to end on vit_digits (a table
measured on onnxruntime, the plan timed against dense, compress.json and the plot), the table command, the
TensorRT device kit, and bad input through the CLI."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from conftest import tiny_vit
from vitdeploy.cli import main
from vitdeploy.compression.budget import (CountedCost, Shape, _Group, _solve, plan_to_budget, predict, retained,
                                          shape_of, shape_of_plan)
from vitdeploy.compression.plan import apply_plan
from vitdeploy.compression.recipe import load_recipe
from vitdeploy.compression.vtp import magnitude_scores
from vitdeploy.errors import RecipeError, VitDeployError
from vitdeploy.models import count_macs, load_model, load_model_dir
from vitdeploy.runtime.latency_table import (LatencyTable, build_table, candidates, dense_dims, describe_budget,
                                             grid_of, load_table, table_from_trtexec, write_device_kit)

SITES = ["embed", "attn_qk", "attn_out", "mlp_hidden"]


# ---------------------------------------------------------------------------------------------- the solver
@pytest.mark.parametrize("seed", range(6))
def test_the_knapsack_is_feasible_and_within_its_gap_of_brute_force(seed):
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(4):
        cost = np.sort(rng.uniform(1, 10, 5))
        imp = np.sort(rng.uniform(0, 10, 5))  # more cost buys more importance, as wider widths do
        groups.append(_Group(imp, cost, list(range(5))))
    budget = float(rng.uniform(10, 30))
    best = max((sum(g.imp[i] for g, i in zip(groups, p)) for p in itertools.product(range(5), repeat=4)
                if sum(g.cost[i] for g, i in zip(groups, p)) <= budget), default=None)
    picks, bound = _solve(groups, budget)
    got = sum(g.imp[i] for g, i in zip(groups, picks))
    assert sum(g.cost[i] for g, i in zip(groups, picks)) <= budget + 1e-9
    assert bound >= best - 1e-9 >= got - 1e-9  # the Lagrangian bound holds; nothing beats brute force
    assert got >= 0.85 * best  # and the greedy fill leaves little on the table on these instances


def test_no_plan_fits_below_the_floors():
    groups = [_Group(np.array([1.0, 2.0]), np.array([5.0, 6.0]), [0, 1])]
    assert _solve(groups, 4.0) is None


# ------------------------------------------------------------------------------------------- cost models
def test_counted_macs_match_the_counted_model():
    model = load_model("vit_digits").model.eval()
    dims = dense_dims(model)
    cost = CountedCost(dims, "macs")
    dense = predict(cost, shape_of(model))
    assert dense == pytest.approx(count_macs(model, (3, 32, 32)), rel=0.03)
    scores = magnitude_scores(model, SITES)
    bp = plan_to_budget(model, scores, cost, 0.5 * dense, 8, 0.1)
    assert bp.predicted <= 0.5 * dense
    pruned = apply_plan(load_model("vit_digits").model.eval(), bp.plan)
    assert shape_of(pruned) == bp.shape == shape_of_plan(dims, bp.plan)
    counted = count_macs(pruned, (3, 32, 32)) / count_macs(model, (3, 32, 32))
    assert counted == pytest.approx(bp.predicted / dense, abs=0.02) and 0.4 <= counted <= 0.51
    assert bp.retained == pytest.approx(retained(scores, bp.keep), rel=1e-6)
    assert 0 <= bp.gap < 0.05


def test_a_budget_plan_keeps_more_importance_than_the_rate_plan_at_the_same_cost():
    """The global threshold keeps the top scores by count; the knapsack keeps the most importance by cost, so at the
    rate plan's own cost it can only do as well or better."""
    import dataclasses

    from vitdeploy.compression.vtp import plan_from_scores

    model = load_model("vit_digits").model.eval()
    dims = dense_dims(model)
    cfg = dataclasses.replace(load_recipe("vtp-40").prune, importance="magnitude")
    scores = magnitude_scores(model, list(cfg.sites))
    rate_plan, keep = plan_from_scores(model, scores, cfg)
    cost = CountedCost(dims, "macs")
    budget = predict(cost, shape_of_plan(dims, rate_plan))
    bp = plan_to_budget(model, scores, cost, budget, cfg.alignment, cfg.min_keep)
    assert bp.predicted <= budget and bp.retained >= retained(scores, keep) - 1e-6


# ------------------------------------------------------------------------------------------- the table
def _table(**kw) -> LatencyTable:
    args = dict(backend="ort-cpu", batch=1, threads=1, dims={}, widths=[8, 16], qk=[4, 8], v=[4, 8], hidden=[8, 16],
                attn_ms=[[[1, 2], [3, 4]], [[5, 6], [7, 8]]], mlp_ms=[[1, 3], [2, 6]], fixed_ms=[1, 2])
    return LatencyTable(**{**args, **kw})


def test_the_table_interpolates_between_its_grid_points():
    t = _table()
    assert t.attn(8, 4, 4) == 1 and t.attn(16, 8, 8) == 8
    scaled = _table(scale=0.5)
    assert scaled.attn(16, 8, 8) == 4 and scaled.mlp(16, 16) == 3 and scaled.fixed(16) == 1
    assert t.attn(12, 6, 6) == pytest.approx(np.mean(range(1, 9)))
    assert t.mlp(8, 12) == pytest.approx(2) and t.fixed(12) == pytest.approx(1.5)
    with pytest.raises(VitDeployError, match="no residual width of 24"):
        t.fixed(24)


@pytest.mark.parametrize("change,match", [
    (dict(fixed_ms=[1]), "do not match its grid"),
    (dict(widths=[16, 8]), "ascending"),
    (dict(mlp_ms=[[1, -3], [2, 6]]), "negative or non-finite"),
    (dict(scale=0), "'scale' must be a positive number"),
    (dict(scale="x"), "'scale' must be a positive number"),
])
def test_a_malformed_table_is_one_line(change, match):
    with pytest.raises(VitDeployError, match=match) as e:
        _table(**change)
    assert "\n" not in str(e.value)


def test_a_table_file_round_trips_and_bad_files_are_refused(tmp_path):
    p = _table().save(tmp_path / "t.json")
    assert load_table(p).attn(12, 6, 6) == _table().attn(12, 6, 6)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(VitDeployError, match="not valid JSON"):
        load_table(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(VitDeployError, match="not a vitdeploy latency table"):
        load_table(tmp_path / "other.json")


def test_grids_cover_the_candidates_end_to_end():
    c = candidates(384, 8, 0.1)
    assert c[0] == 40 and c[-1] == 384 and all(b - a == 8 for a, b in zip(c, c[1:]))
    g = grid_of(c, 5)
    assert g[0] == c[0] and g[-1] == c[-1] and len(g) == 5
    assert candidates(8, 8, 0.1) == [8]


@pytest.mark.parametrize("backend", ["ort-cpu", "torch-cpu"])
def test_a_measured_table_predicts_the_dense_model_and_checks_its_interpolation(backend):
    model = tiny_vit().eval()
    t = build_table(model, backend, 2, 1, (3, 32, 32), rounds=2, block=2, show_progress=False)
    assert t.backend == backend and t.threads == 1
    d = dense_dims(model)
    assert t.widths[-1] == d.embed and t.hidden[-1] == d.hidden and t.qk[-1] == d.qk
    assert predict(t, shape_of(model)) == pytest.approx(t.dense_ms()) == pytest.approx(t.anchor["measured_ms"])
    assert t.anchor["predicted_ms"] > 0 and t.scale == pytest.approx(t.anchor["measured_ms"] / t.anchor["predicted_ms"])
    w, qk, v, h = t.probe["shape"]  # the second whole model, at the middle of every grid axis
    assert w == t.widths[len(t.widths) // 2] and h == t.hidden[len(t.hidden) // 2] and t.probe["measured_ms"] > 0
    assert t.probe["fraction_error"] == pytest.approx(
        (t.uniform_ms(w, qk, v, h) / t.dense_ms()) / (t.probe["measured_ms"] / t.anchor["measured_ms"]) - 1)
    assert t.checks and all(c["measured_ms"] > 0 for c in t.checks)
    assert t.host.get("cpu")


# ------------------------------------------------------------------------------------------------ recipes
@pytest.mark.parametrize("sets,match", [
    (["prune.budget.macs_ratio=0.5"], "both latency_ratio and macs_ratio"),
    (["prune.sites=[attn_in,mlp_hidden]"], "remove attn_in"),
    (["prune.remove_heads=true"], "keeps every head"),
    (["decompose.enabled=true"], "low-rank factoring"),
    (["prune.budget.backend=trt"], "plans from a table measured on the device"),
    (["prune.budget.latency_ratio=1.5"], "must be <= 1"),
])
def test_budget_recipe_rules(sets, match):
    with pytest.raises(RecipeError, match=match) as e:
        load_recipe("latency-50", sets)
    assert "\n" not in str(e.value)


def test_a_budget_on_another_method_is_refused():
    with pytest.raises(RecipeError, match="method 'mcf' has no budget planner"):
        load_recipe("mcf", ["prune.budget.macs_ratio=0.5"])


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def latency_run(tmp_path_factory):
    from vitdeploy import api

    out = tmp_path_factory.mktemp("budget") / "l50"
    api.compress("vit_digits", "latency-50", out, overrides=[
        "prune.importance=magnitude", "prune.budget.batch=4", "prune.budget.threads=1",
        "prune.budget.measure_seconds=1", "prune.budget.replans=1"])
    return out


def test_latency_50_plans_measures_and_reports(latency_run):
    rep = json.loads((latency_run / "compress.json").read_text())
    b = rep["budget"]
    assert b["kind"] == "latency_ratio" and b["value"] == 0.5 and b["backend"] == "ort-cpu" and b["batch"] == 4
    assert 1 <= len(b["rounds"]) <= 2
    r0 = b["rounds"][0]
    assert r0["measured_ms"] > 0 and r0["dense_measured_ms"] > r0["measured_ms"]
    assert r0["ratio_prediction_error"] == pytest.approx(r0["predicted_ratio"] / r0["measured_ratio"] - 1)
    assert b["table"]["anchor"]["measured_ms"] == pytest.approx(r0["dense_predicted_ms"])  # calibrated to the anchor
    assert b["measured_ratio"] < 1 and b["table"]["checks"]
    assert b["rate_based"]["retained_importance"] > 0 and 0 < b["rate_based"]["rate"] < 1
    loaded = load_model_dir(str(latency_run))  # the manifest covers compress.json and both plots
    assert shape_of(loaded.model) == Shape(b["shape"]["embed"], tuple(map(tuple, b["shape"]["blocks"])))
    assert (latency_run / "latency_budget.png").stat().st_size > 10_000
    assert rep["equivalence"]["max_abs_diff"] < 1e-4
    lines = describe_budget(b)
    assert any("measured" in line and "×" in line for line in lines)


def test_a_macs_budget_needs_no_backend(tmp_path):
    from vitdeploy import api

    r = api.compress("vit_digits", "latency-50", tmp_path / "m", overrides=[
        "prune.importance=magnitude", "prune.budget.latency_ratio=null", "prune.budget.macs_ratio=0.4"]).record
    assert r["budget"]["kind"] == "macs_ratio" and 0.3 <= r["macs"]["ratio"] <= 0.4 + 0.01


def test_the_table_command_and_planning_with_its_file(tmp_path, capsys):
    table = tmp_path / "t.json"
    with pytest.raises(SystemExit) as e:
        main(["latency-table", "vit_digits", "--batch", "2", "--threads", "1", "--out", str(table)])
    assert e.value.code in (0, None), capsys.readouterr().err
    assert "the dense model timed whole at" in capsys.readouterr().out
    assert load_table(table).batch == 2
    with pytest.raises(SystemExit) as e:
        main(["compress", "vit_digits", "--recipe", "latency-50", "--latency-table", str(table), "--out",
              str(tmp_path / "p"), "--set", "prune.importance=magnitude", "--set", "prune.budget.batch=2",
              "--set", "prune.budget.threads=1", "--set", "prune.budget.verify=false"])
    out = capsys.readouterr().out
    assert e.value.code in (0, None)
    rep = json.loads((tmp_path / "p" / "compress.json").read_text())
    assert str(table) in rep["budget"]["table"]["source"] and "not measured here" in out


@pytest.mark.parametrize("args,match", [
    (["compress", "vit_digits", "--recipe", "vtp-40", "--latency-table", "{table}", "--set",
      "prune.importance=magnitude", "--out", "{out}"], "sets none"),
    (["compress", "vit_digits", "--recipe", "latency-50", "--latency-table", "{bad}", "--set",
      "prune.importance=magnitude", "--out", "{out}"], "not valid JSON"),
    (["compress", "vit_digits", "--recipe", "latency-50", "--latency-table", "{table}", "--set",
      "prune.importance=magnitude", "--set", "prune.budget.batch=8", "--out", "{out}"], "at batch 2"),
    (["latency-table", "--out", "{out}"], "give MODEL"),
    (["latency-table", "--from-trtexec", "{tmp}", "--out", "{out}"], "not a latency device kit"),
])
def test_budget_bad_input_is_one_line(tmp_path, capsys, args, match):
    table = _table(batch=2).save(tmp_path / "t.json")
    (tmp_path / "bad.json").write_text("[")
    subs = dict(table=table, bad=tmp_path / "bad.json", out=tmp_path / "out", tmp=tmp_path)
    with pytest.raises(SystemExit) as e:
        main([a.format(**subs) for a in args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and match in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_the_device_kit_writes_unit_graphs_and_reads_trtexec_times_back(tmp_path):
    """The kit's graphs are real FP16 ONNX sub-graphs; trtexec cannot run here, so its --exportTimes files are
    written in trtexec's format (a list of per-inference records with computeMs) to check the way back."""
    import onnx

    model = tiny_vit().eval()
    kit = write_device_kit(model, tmp_path / "kit", 1, (3, 32, 32))
    meta = json.loads((kit / "units.json").read_text())
    script = (kit / "time_units.sh").read_text()
    assert script.count("time_unit ") == len(meta["units"]) and "--exportTimes" in script
    first = onnx.load(str(kit / "units" / meta["units"][2]["file"]))
    assert first.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    (kit / "times").mkdir()
    units = [u["unit"] for u in meta["units"]]
    assert units.count("model") == units.count("probe") == 1  # the calibration's whole models, timed on the device
    for u in meta["units"]:
        t = {"overhead": 0.01, "fixed": 0.1, "model": 2.0, "probe": 1.5}.get(u["unit"], 0.001 * sum(u["at"]))
        records = [{"startComputeMs": i, "computeMs": t, "latencyMs": t + 0.02} for i in range(5)]
        (kit / "times" / (u["file"][:-5] + ".json")).write_text(json.dumps(records))
    table = table_from_trtexec(kit)
    d = dense_dims(model)
    assert table.backend == "trt" and table.precision == "fp16"
    raw = 0.1 + d.depth * (0.001 * (2 * d.embed + d.qk + d.v + d.hidden) - 0.02)  # the units' sum for the dense model
    w, q, v, h = table.probe["shape"]
    praw = 0.1 + d.depth * (0.001 * (2 * w + q + v + h) - 0.02)
    assert table.anchor["measured_ms"] == 2.0 and table.anchor["predicted_ms"] == pytest.approx(raw)
    assert table.probe["measured_ms"] == 1.5 and table.probe["predicted_ms"] == pytest.approx(praw)
    assert table.probe["fraction_error"] == pytest.approx((praw / raw) / (1.5 / 2.0) - 1)
    assert table.scale == pytest.approx(2.0 / raw) and table.dense_ms() == pytest.approx(2.0)
    assert table.attn(d.embed, d.qk, d.v) == pytest.approx(table.scale * (0.001 * (d.embed + d.qk + d.v) - 0.01))
    with pytest.raises(VitDeployError, match="is missing"):
        (kit / "times" / (meta["units"][0]["file"][:-5] + ".json")).unlink()
        table_from_trtexec(kit)


def test_a_pruned_model_is_refused_as_a_start():
    from vitdeploy.compression.plan import BlockPlan, Plan

    pruned = apply_plan(tiny_vit().eval(), Plan([BlockPlan(mlp_hidden=list(range(64))), BlockPlan()]))
    with pytest.raises(VitDeployError, match="blocks all have one shape"):
        dense_dims(pruned)


def test_the_report_shows_the_budget(latency_run, tmp_path):
    from vitdeploy import api

    r = api.report([latency_run], tmp_path / "report")
    text = (r.path / "report.md").read_text()
    assert "budget: 0.5 × the dense latency on ort-cpu batch 4" in text and "latency_budget.png" in text


def test_replanning_corrects_by_the_miss_then_interpolates_once_bracketed():
    from vitdeploy.compression.budget import _next_hold

    one = [{"held_to_ms": 100.0, "miss": -0.2}]
    assert _next_hold(one, 100.0, 1.25) == pytest.approx(125.0)
    both = one + [{"held_to_ms": 130.0, "miss": 0.1}]
    assert _next_hold(both, 130.0, 1 / 1.1) == pytest.approx(120.0)  # where the line through the two crosses 0
    same_side = one + [{"held_to_ms": 125.0, "miss": -0.05}]
    assert _next_hold(same_side, 125.0, 1 / 0.95) == pytest.approx(125.0 / 0.95)
