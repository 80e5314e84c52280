"""`vitdeploy study decomposition` and `vitdeploy study hybrid` from the CLI (short phases): the files, the rows, equal
ranks and params across decomposition methods, matched params for the VTP baseline; bad input is one line and
writes nothing."""
import json

import pytest
import torch

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


def test_train_images_is_one_fixed_subset_for_every_seed(digits_model_dir):
    """`train_images` shortens a schedule on the same images whatever the seed; the order still follows the seed."""
    from vitdeploy.compression.context import make_context
    from vitdeploy.compression.recipe import load_recipe
    from vitdeploy.models import load_model

    sets = {}
    for seed in (0, 1):
        ctx = make_context(load_model(str(digits_model_dir)), load_recipe("vtp-40", ["train_images=200", f"seed={seed}"]),
                           "digits")
        assert len(ctx.train_set) == 200 and len(ctx.train_loader.dataset) == 200
        assert ctx.train_loader_for(ctx.recipe.sparsity).dataset.indices == ctx.train_set.indices
        sets[seed] = (ctx.train_set.indices, next(iter(ctx.train_loader))[1])
    assert sets[0][0] == sets[1][0] and not sets[0][1].equal(sets[1][1])
    full = make_context(load_model(str(digits_model_dir)), load_recipe("vtp-40"), "digits")
    assert len(full.train_set) > 1000


def test_rate_for_matches_macs_with_magnitude_scores(digits_model_dir):
    """The rate search reaches a MACs target with training-free scores, which rank dims without scaling weights."""
    from vitdeploy.compression.recipe import load_recipe
    from vitdeploy.compression.study import prune_at, rate_for
    from vitdeploy.compression.vtp import magnitude_scores
    from vitdeploy.models import count_macs, load_model

    model = load_model(str(digits_model_dir)).model.eval()
    size = tuple(load_model(str(digits_model_dir)).data_config["input_size"])
    recipe = load_recipe("vtp-40", ["prune.sites=[attn_in,attn_out,mlp_in,mlp_hidden]"])  # fc1 columns fold (mlp_in)
    scores = magnitude_scores(model, list(recipe.prune.sites))
    target = int(0.7 * count_macs(model, size))
    rate = rate_for(model, scores, recipe, target, lambda m: count_macs(m, size), fold=False)
    pruned = prune_at(model, scores, recipe, rate, fold=False)
    assert abs(count_macs(pruned, size) - target) / target < 0.05
    for a, b in zip(pruned.blocks, model.blocks):  # fold=False: the kept weights are the dense ones, unscaled
        for name in ("fc1", "fc2"):
            kept, dense = getattr(a.mlp, name).weight, getattr(b.mlp, name).weight
            assert torch.isin(kept, dense).all()
    folded = prune_at(model, scores, recipe, rate, fold=True)
    assert not torch.isin(folded.blocks[0].mlp.fc1.weight, model.blocks[0].mlp.fc1.weight).all()
