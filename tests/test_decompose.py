"""Low-rank factoring: every method is exact at full rank and never worse at a higher rank (random and trained
weights), SVD is the best at every rank, the rank rules round and budget as documented, and a factored model
(pruned or not) survives save/load and exports with ONNX == PyTorch. The two recipes run from the CLI."""
import json

import numpy as np
import pytest
import torch

from conftest import tiny_vit
from vitdeploy.compression.decompose import (DENSE_NO_SAVING, METHODS, choose_rank, decompose_model, factor,
                                          relative_error, summarize)
from vitdeploy.compression.plan import apply_plan
from vitdeploy.compression.recipe import DecomposeCfg, PruneCfg, load_recipe
from vitdeploy.compression.vtp import magnitude_plan
from vitdeploy.models import LowRankLinear, PrunedAttention, PrunedMlp, count_macs, count_params, describe

TINY_KW = dict(img_size=32, patch_size=8, num_classes=10, embed_dim=64, depth=2, num_heads=2)


def _errors(w: torch.Tensor, method: str, ranks) -> list[float]:
    return [relative_error(w, *factor(w, r, method)) for r in ranks]


def _assert_nested(errs: list[float], what: str) -> None:
    for a, b in zip(errs, errs[1:]):
        assert b <= a + 1e-9, f"{what}: error grew from {a} to {b}"


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("shape", [(40, 24), (24, 40), (32, 32)], ids=["tall", "wide", "square"])
def test_exact_at_full_rank_and_never_worse_with_rank_random(method, shape):
    w = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(sum(shape)))
    k = min(shape)
    errs = _errors(w, method, range(1, k + 1))
    _assert_nested(errs, method)
    assert errs[-1] < 1e-10
    assert errs[0] > 0.5  # a random matrix is far from rank 1: the check above is not vacuous
    up, down = factor(w, 5, method)
    assert up.shape == (shape[0], 5) and down.shape == (5, shape[1]) and up.dtype == w.dtype


@pytest.fixture(scope="module")
def trained_weights(digits_model_dir):
    """qkv, proj, fc1 and fc2 of a trained vit_digits block, and of the same block after a VTP-40 plan."""
    from vitdeploy.models import load_model

    model = load_model(str(digits_model_dir)).model
    pruned = apply_plan(load_model(str(digits_model_dir)).model, magnitude_plan(model, PruneCfg(rate=0.4)))
    out = {}
    for tag, m in (("dense", model), ("pruned", pruned)):
        blk = m.blocks[2]
        for name, layer in (("qkv", blk.attn.qkv), ("proj", blk.attn.proj), ("fc1", blk.mlp.fc1), ("fc2", blk.mlp.fc2)):
            out[f"{tag}.{name}"] = layer.weight.detach().double()
    return out


@pytest.mark.parametrize("method", list(METHODS))
def test_exact_at_full_rank_and_never_worse_with_rank_trained(method, trained_weights):
    for name, w in trained_weights.items():
        k = min(w.shape)
        errs = _errors(w, method, [*range(1, k, 3), k])
        _assert_nested(errs, f"{method} on {name} {tuple(w.shape)}")
        assert errs[-1] < 1e-9, name


def test_svd_is_best_and_variant_identities(trained_weights):
    """Eckart–Young: no method beats SVD at any rank. Full and reduced QR give the same factors; the COD's product
    is the pivoted QR's; complete-pivoting LU picks its own columns (differs from unpivoted QR)."""
    for name, w in trained_weights.items():
        for r in (8, 16, 32):
            errs = {m: relative_error(w, *factor(w, r, m)) for m in METHODS}
            assert all(errs["svd"] <= e + 1e-12 for e in errs.values()), (name, r, errs)
            assert errs["qr-full"] == pytest.approx(errs["qr-reduced"], abs=1e-12)
            assert errs["cod"] == pytest.approx(errs["qr-pivoted"], abs=1e-12)
            assert errs["lu"] != pytest.approx(errs["qr-full"], abs=1e-6)
        up, down = factor(w, 16, "cod")
        assert torch.allclose(down @ down.T, torch.eye(16, dtype=w.dtype), atol=1e-10)  # orthonormal rows
        up, down = factor(w, 16, "svd")
        assert torch.allclose(up.norm(dim=0), down.norm(dim=1), atol=1e-10)  # balanced split: √σ on both sides


def test_rank_rules():
    # singular values 8, 4, 2, 1, ... of a 64 × 48 matrix
    g = torch.Generator().manual_seed(0)
    q1, _ = torch.linalg.qr(torch.randn(64, 48, dtype=torch.float64, generator=g))
    q2, _ = torch.linalg.qr(torch.randn(48, 48, dtype=torch.float64, generator=g))
    s = 2.0 ** -torch.arange(48, dtype=torch.float64) * 8
    w = q1 @ torch.diag(s) @ q2.T
    assert choose_rank(w, DecomposeCfg(rank_rule="energy", energy=0.5)) == (8, None)  # σ1² alone is 75 %: r=1 → 8
    assert choose_rank(w, DecomposeCfg(rank_rule="energy", energy=0.99999)) == (16, None)
    assert choose_rank(w, DecomposeCfg(rank_rule="ratio", ratio=0.3)) == (16, None)  # 14.4 rounds up
    assert choose_rank(w, DecomposeCfg(rank_rule="ratio", ratio=0.3, alignment=32)) == (None, DENSE_NO_SAVING)
    r, _ = choose_rank(w, DecomposeCfg(rank_rule="budget", budget=0.5))  # ≤ 0.5·64·48/112 = 13.7 → 8
    assert r == 8 and r * (64 + 48) <= 0.5 * 64 * 48
    assert choose_rank(w, DecomposeCfg(rank_rule="budget", budget=0.1))[0] is None  # 2.7: no multiple of 8 fits
    assert choose_rank(w, DecomposeCfg(rank_rule="ratio", ratio=0.9)) == (None, DENSE_NO_SAVING)
    assert choose_rank(torch.randn(16, 6), DecomposeCfg(rank_rule="ratio", ratio=0.1))[1] == DENSE_NO_SAVING


@pytest.mark.parametrize("method", list(METHODS))
def test_decompose_model_rows_and_function(method):
    """Dense blocks become PrunedAttention/PrunedMlp with LowRankLinear layers; rows say what happened; at a
    rank close to full the function barely moves, and the params fall as the rows say."""
    model = tiny_vit(**TINY_KW)
    before = count_params(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    cfg = DecomposeCfg(enabled=True, method=method, layers=["qkv", "proj", "fc1", "fc2"], rank_rule="ratio", ratio=0.25)
    rows = decompose_model(model, cfg)
    assert [(r["block"], r["layer"]) for r in rows] == [(b, n) for b in range(2) for n in ("qkv", "proj", "fc1", "fc2")]
    by = {(r["block"], r["layer"]): r for r in rows}
    assert by[(0, "qkv")]["shape"] == [192, 64] and by[(0, "qkv")]["rank"] == 16
    assert by[(0, "proj")]["rank"] == 16 and by[(0, "fc1")]["rank"] == 16
    for blk in model.blocks:
        assert isinstance(blk.attn, PrunedAttention) and isinstance(blk.mlp, PrunedMlp)
        for layer in (blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2):
            assert isinstance(layer, LowRankLinear) and layer.down.bias is None and layer.up.bias is not None
    assert count_params(model) == before - sum(r["params_before"] - r["params_after"] for r in rows)
    assert all(0 < r["rel_error"] < 1 for r in rows)
    assert summarize(rows)["factored_layers"] == 8

    near_full = tiny_vit(**TINY_KW)
    decompose_model(near_full, DecomposeCfg(method=method, layers=["qkv"], rank_rule="ratio", ratio=0.5))
    with torch.no_grad():
        assert not torch.allclose(near_full(x), ref, atol=1e-4)  # rank 32 of 64 changes the function...
    exact = tiny_vit(**TINY_KW)
    for blk in exact.blocks:  # ...a rank that covers the whole weight does not
        blk.attn.qkv.weight.data[:, 32:] = 0
    with torch.no_grad():
        ref0 = exact(x)
    decompose_model(exact, DecomposeCfg(method=method, layers=["qkv"], rank_rule="energy", energy=0.999999))
    assert all(isinstance(b.attn.qkv, LowRankLinear) and b.attn.qkv.rank == 32 for b in exact.blocks)
    with torch.no_grad():
        assert torch.allclose(exact(x), ref0, atol=1e-4)


def test_layers_that_save_nothing_stay_dense():
    model = tiny_vit(**TINY_KW)
    rows = decompose_model(model, DecomposeCfg(layers=["proj"], rank_rule="ratio", ratio=0.5))  # 32·128 ≥ 64·64
    assert all(r["rank"] is None and r["reason"] == DENSE_NO_SAVING and r["params_after"] == r["params_before"]
               for r in rows)
    assert all(isinstance(b.attn.proj, torch.nn.Linear) for b in model.blocks)
    assert all(type(b.attn).__name__ == "Attention" for b in model.blocks)  # untouched: no needless conversion


def _pruned_and_factored(method="svd"):
    """Block 0 pruned (VTP plan on block 0 only), block 1 left as timm built it; qkv and fc1 factored everywhere."""
    model = tiny_vit(**TINY_KW)
    plan = magnitude_plan(model, PruneCfg(rate=0.4))
    plan[1] = type(plan[1])()  # block 1 not pruned
    apply_plan(model, plan)
    assert type(model.blocks[1].attn).__name__ == "Attention"
    rows = decompose_model(model, DecomposeCfg(method=method, layers=["qkv", "fc1"], rank_rule="ratio", ratio=0.25))
    assert all(r["rank"] is not None for r in rows)
    return model


@pytest.mark.parametrize("method", ["svd", "lu"])
def test_factored_model_round_trips_through_a_model_dir(tmp_path, method):
    from vitdeploy.models import load_model, save_model_dir

    model = _pruned_and_factored(method)
    arch = describe(model, "vit_tiny_patch16_224", TINY_KW)
    assert arch.blocks[1].attn.qkv_rank == 16 and arch.blocks[1].mlp.fc1_rank == 16 and arch.blocks[1].attn.proj_rank is None
    save_model_dir(tmp_path / "m", model, arch, {"input_size": [3, 32, 32]})
    loaded = load_model(str(tmp_path / "m")).model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    assert describe(loaded, "vit_tiny_patch16_224", TINY_KW) == arch
    assert count_macs(loaded, (3, 32, 32)) == count_macs(model, (3, 32, 32))


def test_factored_model_exports_with_onnx_equal_to_torch(tmp_path):
    from vitdeploy.deploy.onnx_export import export_onnx, parity

    model = _pruned_and_factored()
    path = export_onnx(model, tmp_path / "f.onnx", (3, 32, 32))
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32), dtype=np.float32)
    p = parity(model, path, x)
    assert p["max_abs_diff"] < 1e-4 and p["top1_agreement"] == 1.0


@pytest.mark.parametrize("name", ["vtp-svd", "hybrid"])
def test_recipes_parse_and_factor(name):
    r = load_recipe(name)
    assert r.decompose.enabled
    if name == "hybrid":
        assert set(r.prune.sites) <= {"mlp_in", "mlp_hidden"} and set(r.decompose.layers) == {"qkv", "proj"}
    else:
        assert r.decompose.method == "svd"


def test_hybrid_recipe_from_the_cli(capsys, tmp_path, digits_model_dir):
    """`vitdeploy compress --recipe hybrid` (short phases): MLP pruned, attention factored, the stages in order,
    the model dir loads back and equals what was written."""
    from test_cli import run
    from vitdeploy.models import load_model

    out = tmp_path / "hybrid"
    code, _, err = run(capsys, "compress", digits_model_dir, "--recipe", "hybrid", "--data", "digits", "--out", out,
                       "--set", "sparsity.epochs=1", "--set", "finetune.epochs=1")
    assert code == 0, err
    rep = json.loads((out / "compress.json").read_text())
    assert [s["stage"] for s in rep["stages"]] == ["dense", "sparsity", "pruned", "factored", "finetuned"]
    layers = rep["decompose"]["layers"]
    assert {r["layer"] for r in layers} == {"qkv", "proj"} and any(r["rank"] for r in layers)
    assert rep["stages"][3]["params"] < rep["stages"][2]["params"] < rep["stages"][0]["params"]
    assert all(b["heads"] == 3 and b["v_head_dim"] == 32 and b["attn_in"] == 96 for b in rep["kept"])  # attention not pruned
    assert any(b["ranks"].get("qkv") for b in rep["kept"])
    loaded = load_model(str(out))
    assert count_params(loaded.model) == rep["params"]["after"]
