"""`vitdeploy report`: the Pareto choice (pure functions), the plots, and whole reports on real model dirs."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import matplotlib.image
import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitdeploy.bench.paired import paired_speedup
from vitdeploy.viz.pareto import best_within, budget_bands, pareto_front
from vitdeploy.viz.plots import plot_kept_dims
from vitdeploy.cli import main

PROFILING = Path(__file__).resolve().parents[1] / "profiling"


def run(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_png(path: Path) -> np.ndarray:
    """A real, non-blank PNG of a readable size."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000, path
    img = matplotlib.image.imread(str(path))
    assert img.shape[0] > 300 and img.shape[1] > 500 and img[..., :3].std() > 0.05, (path, img.shape)
    return img


# ------------------------------------------------------------------------------------------------ Pareto
def test_pareto_front_known_points():
    pts = [(1.0, 0.90), (2.0, 0.95), (1.5, 0.89), (3.0, 0.95), (0.5, 0.80), (2.0, 0.96), (0.5, 0.80)]
    # 1 and 3 lose to 5 (as fast or faster, more accurate), 2 to 0, 6 duplicates 4
    assert pareto_front(pts) == [4, 0, 5]
    assert pareto_front([]) == [] and pareto_front([(1.0, 0.5)]) == [0]
    assert best_within(pts, 0.4) is None and best_within(pts, 1.9) == 0 and best_within(pts, 10) == 5
    assert budget_bands(pts) == [(0.5, 1.0, 4), (1.0, 2.0, 0), (2.0, None, 5)]


grid = st.tuples(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0, 8.0]), st.sampled_from([0.7, 0.8, 0.85, 0.9, 0.95]))


@settings(max_examples=200, deadline=None)
@given(st.lists(grid, max_size=12))
def test_pareto_front_is_exactly_the_unbeaten_points(pts):
    beaten = {i for i, (l1, a1) in enumerate(pts) for j, (l2, a2) in enumerate(pts)
              if l2 <= l1 and a2 >= a1 and (l2 < l1 or a2 > a1)}
    first_copy = {i for i, p in enumerate(pts) if pts.index(p) == i}
    front = pareto_front(pts)
    assert set(front) == (set(range(len(pts))) - beaten) & first_copy
    assert [pts[i][0] for i in front] == sorted(pts[i][0] for i in front)


@settings(max_examples=200, deadline=None)
@given(st.lists(grid, min_size=1, max_size=12), st.sampled_from([0.4, 0.5, 0.9, 1.0, 1.7, 2.0, 5.0, 9.0]))
def test_budget_bands_give_best_within(pts, budget):
    pick = best_within(pts, budget)
    band = next((i for lo, hi, i in budget_bands(pts) if lo <= budget and (hi is None or budget < hi)), None)
    assert (pick is None) == (band is None)
    if pick is not None:
        assert pts[band] == pts[pick]
        assert all(a <= pts[pick][1] for lat, a in pts if lat <= budget)


# ------------------------------------------------------------------------------------------------- plots
def test_plot_kept_dims(tmp_path):
    dense = [{"block": i, "heads": 6, "qk_head_dim": 64, "v_head_dim": 64, "attn_in": 384, "mlp_in": 384, "mlp_hidden": 1536}
             for i in range(12)]
    kept = [dict(b, heads=6 - i % 3, qk_head_dim=32 + 8 * (i % 4), mlp_hidden=1536 - 96 * i) for i, b in enumerate(dense)]
    assert_png(plot_kept_dims(kept, dense, tmp_path / "with.png", "deit_small: kept per block"))
    assert_png(plot_kept_dims(kept, None, tmp_path / "without.png", "kept only"))
    with pytest.raises(ValueError):
        plot_kept_dims([], None, tmp_path / "empty.png", "nothing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["with.png", "without.png"]  # no temporaries left


# ------------------------------------------------------------------------------------- report, end to end
@pytest.fixture(scope="module")
def runs(digits_model_dir, tmp_path_factory):
    """A dense and an mlp-magnitude vit_digits, exported, evaluated and profiled through the CLI."""
    root = tmp_path_factory.mktemp("report")
    dense, small = root / "dense", root / "small"
    shutil.copytree(digits_model_dir, dense, ignore=shutil.ignore_patterns("deploy", "eval*.json", "profile*.json"))
    def cli(*args):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        assert exc.value.code == 0, args

    cli("compress", dense, "--recipe", "mlp-magnitude", "--data", "digits", "--set", "finetune.epochs=0",
        "--set", "prune.rate=0.5", "--out", small)
    for m in (dense, small):
        cli("export", m, "--out", m / "deploy")
    cli("eval", dense / "deploy", "--data", "digits", "--out", str(dense / "eval.{precision}.json"))
    cli("eval", small / "deploy", "--data", "digits", "--reference", dense / "deploy", "--out", str(small / "eval.{precision}.json"))
    cli("profile", dense / "deploy", small / "deploy", "--backend", "ort-cpu", "--batch", "1,2", "--iters", "3",
        "--warmup", "1", "--threads", "1", "--op-profile", "3", "--out", root / "profile.json")
    cli("profile", small, "--backend", "torch-cpu", "--batch", "1", "--iters", "2", "--warmup", "1", "--threads", "1",
        "--out", small / "profile.torch.json")  # found by report inside the run dir
    return root, dense, small


def test_report_on_real_model_dirs(capsys, runs):
    root, dense, small = runs
    out = root / "report"
    code, stdout, err = run(capsys, "report", dense, small, "--profile", root / "profile.json", "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["accuracy_latency.png", "kept_dims_small.png",
                                                      "latency_batch.png", "report.json", "report.md"]
    for png in out.glob("*.png"):
        assert_png(png)
    rep = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in rep["runs"]] == ["dense", "small"] and rep["baseline"] == "dense"
    assert rep["runs"][1]["params"] < rep["runs"][0]["params"] and rep["runs"][1]["recipe"] == "mlp-magnitude"
    evals = {m.name: json.loads((m / "eval.fp32.json").read_text()) for m in (dense, small)}
    points = {(p["variant"], p["backend"], p["batch"]): p for p in rep["points"]}
    assert set(points) == {("dense", "ort-cpu", 1), ("dense", "ort-cpu", 2), ("small", "ort-cpu", 1),
                           ("small", "ort-cpu", 2), ("small", "torch-cpu", 1)}
    for (variant, backend, _), p in points.items():
        assert p["precision"] == "fp32" and p["p50_ms"] > 0
        if backend == "ort-cpu":  # the ONNX graph's own eval, not the PyTorch number
            assert p["top1"] == evals[variant]["top1"] and "eval.fp32.json" in p["top1_source"]
    assert points[("dense", "ort-cpu", 2)]["speedup"] == 1.0
    dense1, small1 = points[("dense", "ort-cpu", 1)], points[("small", "ort-cpu", 1)]
    assert small1["mode"] == "interleaved" and len(small1["rounds_ms"]) == len(dense1["rounds_ms"]) == 3
    paired = paired_speedup(dense1["rounds_ms"], small1["rounds_ms"])  # timed interleaved: paired per round
    assert small1["speedup"] == paired["speedup"] and small1["speedup_ci95"] == paired["ci95"]
    assert small1["speedup_ci95"][0] <= small1["speedup"] <= small1["speedup_ci95"][1]
    assert points[("small", "torch-cpu", 1)]["speedup"] is None  # dense was not measured on torch-cpu

    advice = rep["advice"]
    assert (advice["backend"], advice["batch"]) == ("ort-cpu", 1)  # best covered, then the smaller batch
    dense1, small1 = (points[(v, "ort-cpu", 1)] for v in ("dense", "small"))
    tied = paired_speedup(dense1["rounds_ms"], small1["rounds_ms"])["verdict"] == "not distinguishable"
    if tied:  # as fast at this noise: the more accurate one, else the smaller one, is the only pick
        best = max((dense1, small1), key=lambda p: (p["top1"], -p["params"]))
        expected = [best]
    else:
        expected = [(dense1, small1)[i] for i in pareto_front([(p["p50_paired_ms"], p["top1"]) for p in (dense1, small1)])]
    assert [f["variant"] for f in advice["pareto_front"]] == [f["variant"] for f in expected]
    # budgets are on the paired scale: dense's p50 divided by each variant's paired speedup
    assert small1["p50_paired_ms"] == pytest.approx(dense1["p50_ms"] / small1["speedup"])
    assert advice["budgets"][0]["from_ms"] == min(dense1["p50_ms"], small1["p50_paired_ms"])
    assert advice["budgets"][-1]["to_ms"] is None

    md = (out / "report.md").read_text()
    for text in ("## Which variant to ship", "| dense |", "| small |", "ort-cpu b2 p50 ms", "### ort-cpu, batch 2",
                 "![top-1 against latency](accuracy_latency.png)", "## Compression", "kept_dims_small.png",
                 "## Where the time goes", "Pareto-optimal", "within sampling noise"):
        assert text in md, text
    assert rep["unmatched"] == []


def test_report_setting_and_bad_inputs(capsys, runs, tmp_path):
    root, dense, small = runs
    code, _, err = run(capsys, "report", dense, small, "--profile", root / "profile.json", "--out", tmp_path / "b2",
                       "--backend", "ort-cpu", "--batch", "2")
    assert code == 0, err
    assert json.loads((tmp_path / "b2" / "report.json").read_text())["advice"]["batch"] == 2
    assert "For **ort-cpu at batch 2**" in (tmp_path / "b2" / "report.md").read_text()
    bad = [(["--backend", "trt"], "no measurement for backend trt"),
           (["--profile", dense / "eval.fp32.json"], "is not a profile file"),
           (["--profile", tmp_path / "absent.json"], "does not exist")]
    for extra, match in bad:
        code, _, err = run(capsys, "report", dense, small, "--out", tmp_path / "bad", *extra)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and match in err, err
        assert not (tmp_path / "bad").exists()
    code, _, err = run(capsys, "report", tmp_path, "--out", tmp_path / "bad")
    assert code == 2 and "not a model dir" in err


def test_report_without_profiles_still_compares_sizes(capsys, runs, tmp_path):
    copies = [tmp_path / m.name for m in runs[1:]]
    for m, c in zip(runs[1:], copies):
        shutil.copytree(m, c, ignore=shutil.ignore_patterns("deploy", "profile*.json"))
    code, _, err = run(capsys, "report", *copies, "--out", tmp_path / "r")
    assert code == 0, err
    md = (tmp_path / "r" / "report.md").read_text()
    assert "No latency was measured" in md and "| small | fp32 |" in md
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["kept_dims_small.png", "report.json", "report.md"]


def test_report_reads_profile_engine_output(capsys, runs, tmp_path):
    """A board's profile_engine.py JSON (timed here on onnxruntime) joins the report by its --variant name."""
    spec = importlib.util.spec_from_file_location("profile_engine", PROFILING / "profile_engine.py")
    pe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pe)
    root, dense, small = runs
    sess = ort.InferenceSession(str(small / "deploy" / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    results = []
    for b in (1, 4):
        times = pe.timed_calls(lambda x: sess.run(None, {"input": x}), pe.make_input(b, (3, 32, 32)), 2, 5, None)
        results.append(pe.result_record("/board/engines/model.fp16.b8.plan", "fp16", None, "small", b, times, 2))
    pe.write_json(tmp_path / "board.json", {"host": pe.host_info(None, None), "results": results, "skipped": []})
    code, _, err = run(capsys, "report", dense, small, "--profile", tmp_path / "board.json", "--out", tmp_path / "r")
    assert code == 0, err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    trt = [p for p in rep["points"] if p["backend"] == "trt"]
    assert [(p["variant"], p["precision"], p["batch"]) for p in trt] == [("small", "fp16", 1), ("small", "fp16", 4)]
    assert all(p["top1"] is None for p in trt)  # nobody evaluated an fp16 artifact: no accuracy is made up
    assert "### trt, batch 4" in (tmp_path / "r" / "report.md").read_text()
