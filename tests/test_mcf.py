"""MCF: FIS marks on a hand-computable case and against a brute-force count on a real ViT; the residual permutation
(X-Transformation) is exact; the schedule runs back to front; the structured cut equals the masked reference; the
MCF model survives a model-dir round trip and exports with ONNX == PyTorch (slices, no gathers); the recipe loads;
and `vitdeploy compress --recipe mcf --data digits` works end to end."""
import copy
import json

import numpy as np
import pytest
import torch

from conftest import tiny_vit
from vitdeploy.compression.mcf import (
    _marks, _score, back_to_front, fis_importance, fis_scorer, magnitude_scorer, one_shot, permute_residual,
)
from vitdeploy.compression.plan import masked_copy
from vitdeploy.compression.recipe import McfCfg, PruneCfg, load_recipe
from vitdeploy.errors import RecipeError
from vitdeploy.models.surgery import IndexSelect

PRUNE = PruneCfg(rate=0.5, sites=["mlp_in", "mlp_hidden"], scope="uniform", alignment=8)


def _images(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 3, 32, 32, generator=g) for _ in range(n)]


def _distilled():
    import timm

    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10).eval()


def test_marks_by_hand():
    """y = W·x: products |x_c·W[j, c]| below τ·|y_j| are negligible; the rest are counted."""
    x = torch.tensor([[1.0, 0.001, -2.0]])
    w = torch.tensor([[1.0, 1.0, 1.0], [0.5, 100.0, 0.0]])
    counts, y, mag = _marks(x, w, None, 0.01, chunk=1)
    torch.testing.assert_close(y, torch.tensor([[-0.999, 0.6]]))
    # row 0: |1|, |0.001|, |-2| against 0.00999 -> 1, 0, 1; row 1: 0.5, 0.1, 0 against 0.006 -> 1, 1, 0
    assert counts.tolist() == [[1, 0, 1], [1, 1, 0]]
    torch.testing.assert_close(mag, torch.tensor([1.5, 0.101, 2.0], dtype=torch.float64))
    score = _score(counts.sum(0), 2, mag)  # c0 has two marks; c1 and c2 one each, c2 the larger contribution
    assert score.argsort(descending=True).tolist() == [0, 2, 1] and score.max() < 1.25 and score.min() >= 0.5


@pytest.mark.parametrize("kw,token", [(dict(), "cls"), (dict(class_token=False, global_pool="avg"), "mean"),
                                      (dict(reg_tokens=2), "mean")])
def test_fis_matches_brute_force(kw, token):
    """I1/I2 equal a per-image, per-product count on the LayerNorm-2 output's class token (or mean patch token)."""
    model = tiny_vit(**kw)
    cfg = McfCfg(token="auto" if token == "cls" or "class_token" in kw else token, threshold=0.05, hidden_threshold=0.1)
    images = _images()
    res = fis_importance(model, images, [1], cfg)[1]
    seen = []
    handle = model.blocks[1].norm2.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        for x in images:
            model(x)
    handle.remove()
    mlp = model.blocks[1].mlp
    i1, i2 = torch.zeros_like(res.i1), torch.zeros_like(res.i2)
    for out in seen:
        toks = out[:, 0] if token == "cls" else out[:, model.num_prefix_tokens:].mean(1)
        for t in toks:
            y = mlp.fc1(t)
            for j in range(y.numel()):
                i1[j] += ((t * mlp.fc1.weight[j]).abs() >= 0.05 * y[j].abs()).float()
            h = mlp.act(y)
            z = mlp.fc2(h)
            for o in range(z.numel()):
                i2[o] += ((h * mlp.fc2.weight[o]).abs() >= 0.1 * z[o].abs()).float()
    assert res.images == 12
    torch.testing.assert_close(res.i1, i1)
    torch.testing.assert_close(res.i2, i2)
    assert 0 < res.negligible_fc1 < 1 and 0 < res.negligible_fc2 < 1


@pytest.mark.parametrize("kw", [dict(), dict(class_token=False, global_pool="avg"), dict(init_values=1e-2),
                                dict(reg_tokens=2, qkv_bias=False), "distilled"])
def test_permute_residual_is_exact(kw):
    model = _distilled() if kw == "distilled" else tiny_vit(**kw)
    x = torch.randn(3, 3, 32, 32)
    perm = torch.randperm(model.embed_dim, generator=torch.Generator().manual_seed(1))
    permuted = permute_residual(copy.deepcopy(model), perm)
    with torch.no_grad():
        assert (permuted(x) - model(x)).abs().max() < 1e-5
        assert not torch.equal(permuted.blocks[0].mlp.fc1.weight, model.blocks[0].mlp.fc1.weight)


@pytest.mark.parametrize("rule", ["uniform", "per_layer"])
def test_back_to_front_equals_masked_reference(rule):
    """Blocks are cut last to first with a recovery call after each; without training in between, the final model
    equals the (permuted) dense model with every dropped dim zeroed, and the uniform rule turns every select into a
    slice of the same prefix."""
    model = tiny_vit(depth=3)
    cfg = McfCfg(in_rate=0.25, input_rule=rule, threshold=0.05)
    x = torch.randn(4, 3, 32, 32)
    order = []
    pruned, plan, steps, xt = back_to_front(model, fis_scorer(lambda: _images(), cfg), PRUNE, cfg, sample=x,
                                            measure=lambda m: (0, 0, None), recover=lambda m, b: order.append(b))
    assert order == [2, 1, 0] and [s.block for s in steps] == [2, 1, 0]
    assert all(s.max_abs_diff < 1e-5 for s in steps)
    assert all((s.kept_in, s.kept_hidden) == (48, 128) for s in steps)
    reference = copy.deepcopy(model)
    if rule == "uniform":
        assert xt["permuted_max_abs_diff"] < 1e-5
        permute_residual(reference, torch.tensor(xt["permutation"]))
        assert all(bp.mlp_in == list(range(48)) for bp in plan)
        assert all(b.mlp.in_select.start == 0 for b in pruned.blocks)
    else:
        assert len({tuple(bp.mlp_in) for bp in plan}) > 1  # each FFN chose its own inputs
        assert all(b.mlp.in_select.start < 0 and b.mlp.in_select.group >= 8 for b in pruned.blocks)
    masked = masked_copy(reference, plan)
    with torch.no_grad():
        assert (pruned(x) - masked(x)).abs().max() < 1e-5
        assert (pruned(x) - model(x)).abs().max() > 1e-3  # the cut removed something that mattered


def test_fis_and_magnitude_pick_different_dims_at_the_same_counts():
    model = tiny_vit()
    cfg = McfCfg(in_rate=0.25, input_rule="per_layer", threshold=0.05)
    fis, fis_plan = one_shot(model, fis_scorer(lambda: _images(), cfg), PRUNE, cfg)
    counts = {b: {"mlp_in": len(bp.mlp_in), "mlp_hidden": len(bp.mlp_hidden)} for b, bp in enumerate(fis_plan)}
    mag, mag_plan = one_shot(model, magnitude_scorer, PRUNE, cfg, counts=counts)
    assert [len(bp.mlp_hidden) for bp in mag_plan] == [len(bp.mlp_hidden) for bp in fis_plan]
    assert any(bp.mlp_hidden != bq.mlp_hidden for bp, bq in zip(fis_plan, mag_plan))


def test_mcf_model_dir_round_trip_and_onnx(tmp_path):
    from vitdeploy.deploy.onnx_export import export_onnx, parity
    from vitdeploy.models import describe, load_model_dir, save_model_dir

    import onnx

    model = tiny_vit(embed_dim=96, num_heads=3)
    cfg = McfCfg(in_rate=1 / 3, threshold=0.05)
    x = torch.randn(2, 3, 32, 32)
    pruned = back_to_front(model, fis_scorer(lambda: _images(), cfg), PRUNE, cfg, sample=x,
                           measure=lambda m: (0, 0, None), recover=lambda m, b: None)[0]
    arch = describe(pruned, "vit_tiny_patch16_224", dict(img_size=32, patch_size=8, num_classes=10, embed_dim=96,
                                                          depth=2, num_heads=3))
    assert [(b.mlp.in_dim, b.mlp.hidden) for b in arch.blocks] == [(64, 192)] * 2
    save_model_dir(tmp_path / "m", pruned, arch, {"input_size": [3, 32, 32]})
    loaded = load_model_dir(tmp_path / "m").model
    assert all(b.mlp.in_select.start == 0 for b in loaded.blocks)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    path = export_onnx(loaded, tmp_path / "m.onnx", (3, 32, 32))
    assert parity(loaded, path, np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32))["max_abs_diff"] < 1e-4
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    dense_ops = [n.op_type for n in onnx.load(str(export_onnx(model, tmp_path / "d.onnx", (3, 32, 32)))).graph.node]
    assert ops.count("Slice") >= dense_ops.count("Slice") + 2 and ops.count("Gather") == dense_ops.count("Gather")


def test_contiguous_index_select_is_a_slice():
    sel = IndexSelect(96, 40)
    sel.set_index(torch.arange(16, 56))
    x = torch.randn(2, 5, 96)
    assert sel.start == 16 and torch.equal(sel(x), x[..., 16:56])
    sel.set_index(torch.tensor(list(range(8)) + list(range(16, 48))))  # two runs: a gather of 8-blocks
    assert sel.start < 0 and sel.group == 8 and torch.equal(sel(x), x.index_select(-1, sel.index))


def test_recipe():
    r = load_recipe("mcf")
    assert r.method == "mcf" and r.mcf.input_rule == "uniform" and r.mcf.in_rate == 0.33
    assert set(r.prune.sites) == {"mlp_in", "mlp_hidden"}
    with pytest.raises(RecipeError, match="compresses the FFN only"):
        load_recipe("mcf", ["prune.sites=[attn_in, mlp_hidden]"])
    with pytest.raises(RecipeError, match="mcf.input_rule"):
        load_recipe("mcf", ["mcf.input_rule=gather"])
    with pytest.raises(RecipeError, match="mcf.threshold"):
        load_recipe("mcf", ["mcf.threshold=0"])


def test_cli_compress_mcf(capsys, tmp_path, digits_model_dir):
    from vitdeploy.cli import main

    def run(*args):
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        return exc.value.code, out, err

    out = tmp_path / "mcf"
    code, _, err = run("compress", digits_model_dir, "--recipe", "mcf", "--data", "digits", "--out", out,
                       "--set", "mcf.calib_images=64", "--set", "mcf.recovery_epochs=0", "--set", "finetune.epochs=1")
    assert code == 0, err
    rep = json.loads((out / "compress.json").read_text())
    assert [s["stage"] for s in rep["stages"]] == ["dense", "pruned", "finetuned"]
    assert [r["block"] for r in rep["mcf"]] == [5, 4, 3, 2, 1, 0]
    assert all(b["mlp_in"] == 64 and b["mlp_hidden"] == 192 for b in rep["kept"])
    assert rep["macs"]["ratio"] < 0.7 and rep["equivalence"]["max_abs_diff"] < 1e-4
    assert rep["calibration"]["images"] == 64 and rep["x_transform"]["rule"] == "uniform"
    assert (out / "kept_dims.png").is_file()
    code, _, err = run("export", out, "--out", out / "deploy")
    assert code == 0, err
    art = json.loads((out / "deploy" / "export.json").read_text())["artifacts"][0]
    assert art["parity"]["max_abs_diff"] < 1e-4 and art["parity"]["top1_agreement"] == 1.0
    code, _, err = run("compress", digits_model_dir, "--recipe", "mcf", "--out", tmp_path / "nodata")
    assert code == 2 and "needs --data" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "nodata").exists()
