"""`vitdeploy study decomposition` and `vitdeploy study hybrid` from the CLI (short phases): the files, the rows, equal
ranks and params across decomposition methods, matched params for the VTP baseline; bad input is one line and
writes nothing."""
import json

import pytest

from test_cli import run
from vitdeploy.compression.decompose import METHODS

SHORT = ["--set", "sparsity.epochs=1", "--set", "sparsity.l1=1e-3"]


def test_decomposition_study(capsys, tmp_path, digits_model_dir):
    out = tmp_path / "study"
    code, stdout, err = run(capsys, "study", "decomposition", digits_model_dir, "--data", "digits", "--out", out,
                            "--finetune-epochs", "1", *SHORT, "--set", "decompose.rank_rule=ratio",
                            "--set", "decompose.ratio=0.25")
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"study.json", "study.md", "study.png"}
    rep = json.loads((out / "study.json").read_text())
    rows = {r["method"]: r for r in rep["rows"]}
    assert list(rows) == ["dense", "vtp", *METHODS]
    for r in rows.values():
        assert {"method", "rank", "params", "macs", "top1_before_finetune", "top1_after_finetune"} <= set(r)
        assert 0 <= r["top1_before_finetune"] <= 1 and 0 <= r["top1_after_finetune"] <= 1
    factored = [rows[m] for m in METHODS]
    assert rep["equal_params"] and len({(r["params"], r["macs"], json.dumps(r["rank"])) for r in factored}) == 1
    assert factored[0]["params"] < rows["vtp"]["params"] < rows["dense"]["params"]
    assert factored[0]["rank"]["factored_layers"] > 0
    errs = {m: rows[m]["rel_error_mean"] for m in METHODS}
    assert errs["svd"] == min(errs.values()) and errs["svd"] > 0
    assert all(len(rep["layers"][m]) == 6 * 4 for m in METHODS)
    md = (out / "study.md").read_text()
    assert "| VTP+SVD |" in md and "| VTP+LU |" in md and "top-1 after fine-tune" in md
    assert "VTP+QR (column pivoting)" in stdout


def test_hybrid_sweep(capsys, tmp_path, digits_model_dir):
    """Two MLP rates at one attention rank, without fine-tuning (the fine-tune path is the study's and the recipe's)."""
    out = tmp_path / "sweep"
    code, stdout, err = run(capsys, "study", "hybrid", digits_model_dir, "--data", "digits", "--out", out,
                            "--ranks", "0.34", "--rates", "0.2,0.3", "--finetune-epochs", "0", *SHORT)
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"sweep.json", "sweep.md", "sweep.png"}
    rep = json.loads((out / "sweep.json").read_text())
    series = [r["series"] for r in rep["rows"]]
    assert series.count("dense") == 1 and series.count("hybrid") == 2 and 1 <= series.count("vtp") <= 2
    hybrids = [r for r in rep["rows"] if r["series"] == "hybrid"]
    assert hybrids[1]["params"] < hybrids[0]["params"] < rep["rows"][0]["params"]  # a higher MLP rate cuts more
    assert all(r["rank"]["rank_max"] == 40 for r in hybrids)  # 0.34 · 96 = 32.6 → 40 (multiples of 8)
    for p in rep["pairs"]:
        assert abs(p["vtp_params"] - p["hybrid_params"]) / p["hybrid_params"] < 0.05
    assert all(r["top1_after_finetune"] == r["top1_before_finetune"] for r in rep["rows"])  # no fine-tune asked for
    assert "hybrid − VTP" in (out / "sweep.md").read_text() and "VTP rate" in stdout


@pytest.mark.parametrize("args, match", [
    (["decomposition", "--methods", "svd,eig"], "unknown decomposition method 'eig'"),
    (["hybrid", "--ranks", "0.5,1.5"], "--ranks takes ratios in (0, 1]"),
    (["hybrid", "--rates", "0.1,x"], "--rates must be a comma-separated list of numbers"),
    (["decomposition", "--set", "decompose.method=eig"], "recipe field 'decompose.method' must be one of"),
    (["hybrid", "--vtp-recipe", "nope"], "unknown recipe 'nope'"),
])
def test_bad_study_input_is_one_line(capsys, tmp_path, args, match):
    out = tmp_path / "o"
    code, _, err = run(capsys, "study", args[0], "vit_digits", "--data", "digits", "--out", out, *args[1:])
    assert code == 2 and err.count("\n") == 1 and match in err, err
    assert not out.exists() and not list(tmp_path.iterdir())
