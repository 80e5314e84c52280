"""VTP: gates are exact when 1 and fold exactly; the L1 term is in the objective; the global-threshold plan keeps
aligned, uniform-per-head counts; and pruned == masked (gated, dropped scores zeroed) on several ViT variants."""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_vit
from vitdeploy.compression.gates import SITES, attach_gates, detach_gates, fold_gates
from vitdeploy.compression.recipe import PruneCfg
from vitdeploy.compression.vtp import magnitude_scores, plan_from_scores, prune_with_reference
from vitdeploy.errors import RecipeError
from vitdeploy.models import count_macs, count_params

VARIANTS = {
    "class-token": dict(),
    "avg-pool": dict(class_token=False, global_pool="avg"),
    "layer-scale": dict(init_values=1e-2),
    "registers-no-qkv-bias": dict(reg_tokens=2, qkv_bias=False),
}


def _distilled():
    import timm

    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10).eval()


def _random_scores(model, sites, seed=0):
    """Scores as a sparsity phase leaves them: spread out, some near zero, some negative."""
    g = torch.Generator().manual_seed(seed)
    scores = magnitude_scores(model, sites)
    return {k: v * torch.empty_like(v).uniform_(-0.2, 1.5, generator=g) for k, v in scores.items()}


@torch.no_grad()
def _pruned_and_masked(model, cfg, scores):
    plan, keep = plan_from_scores(model, scores, cfg)
    pruned, masked = prune_with_reference(model, list(cfg.sites), scores, plan, keep)
    return plan, pruned, masked


@pytest.mark.parametrize("name", [*VARIANTS, "distilled"])
@pytest.mark.parametrize("cfg", [
    PruneCfg(rate=0.4),
    PruneCfg(rate=0.4, sites=list(SITES), remove_heads=True, alignment=16),
    PruneCfg(rate=0.2, sites=["attn_qk", "attn_out"], scope="uniform"),
], ids=["vtp4", "all-sites-heads", "attention-uniform"])
def test_pruned_equals_masked(name, cfg):
    model = _distilled() if name == "distilled" else tiny_vit(**VARIANTS[name])
    scores = _random_scores(model, cfg.sites)
    plan, pruned, masked = _pruned_and_masked(model, cfg, scores)
    assert count_params(pruned) < count_params(model)
    assert count_macs(pruned, (3, 32, 32)) < count_macs(model, (3, 32, 32))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        diff = (pruned(x) - masked(x)).abs().max().item()
        assert diff < 1e-5, diff
        assert (pruned(x) - model(x)).abs().max() > 1e-4  # the plan removed something that mattered (10x the tolerance)


def test_gates_of_one_change_nothing_and_fold_exactly():
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        gated = copy.deepcopy(model)
        gates = attach_gates(gated, list(SITES))
        torch.testing.assert_close(gated(x), ref)
        for _, _, a in gates.items():
            a.uniform_(0.5, 1.5)
        out = gated(x)
        assert not torch.allclose(out, ref, atol=1e-4)
        fold_gates(gated)
        assert not hasattr(gated, "vtp_gates")
        torch.testing.assert_close(gated(x), out, atol=1e-5, rtol=1e-5)


def test_gates_are_model_parameters_and_detach_restores():
    model = tiny_vit()
    gates = attach_gates(model, ["mlp_hidden", "attn_in"])
    names = [n for n, _ in model.named_parameters() if n.startswith("vtp_gates.")]
    assert len(names) == 2 * len(model.blocks) and gates.numel() == 2 * (64 * 4 + 64)
    with pytest.raises(RecipeError, match="already carries"):
        attach_gates(model, ["mlp_in"])
    detach_gates(model)
    assert not any(n.startswith("vtp_gates.") for n, _ in model.named_parameters())


def test_l1_term_is_in_the_objective():
    """The gradient of λ·Σ|a| reaches every score as λ·sign(a), through autograd, on top of the task gradient."""
    model = tiny_vit()
    gates = attach_gates(model, ["mlp_hidden"])
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    task = F.cross_entropy(model(x), y)
    g_task = torch.autograd.grad(task, list(gates.parameters()), retain_graph=True)
    total = task + 1e-2 * gates.l1()
    g_total = torch.autograd.grad(total, list(gates.parameters()))
    for a, b in zip(g_task, g_total):
        torch.testing.assert_close(b - a, torch.full_like(a, 1e-2))


@pytest.mark.parametrize("alignment", [8, 16])
def test_global_threshold_plan_shape(alignment):
    model = tiny_vit(embed_dim=96, num_heads=3)  # head dim 32, mlp 384
    cfg = PruneCfg(rate=0.4, sites=list(SITES), alignment=alignment, min_keep=0.25)
    scores = _random_scores(model, cfg.sites, seed=1)
    plan, keep = plan_from_scores(model, scores, cfg)
    for bp in plan:
        for idx in (bp.attn_in, bp.mlp_in, bp.mlp_hidden):
            assert len(idx) % alignment == 0 and len(idx) >= 0.25 * 96
        assert len({len(v) for v in bp.v_idx}) == 1 and len(bp.v_idx[0]) % alignment == 0
        assert len({len(q) for q in bp.qk_idx}) == 1 and len(bp.qk_idx[0]) % alignment == 0
    total = sum(v.numel() for v in scores.values())
    kept = sum(len(k) for k in keep.values())
    assert abs(kept / total - 0.6) < 0.15  # alignment and the floor move the count a little, not much


def test_global_threshold_follows_scores():
    """A site whose scores are all tiny loses down to its floor; one whose scores are all large keeps everything."""
    model = tiny_vit()
    scores = {(b, s): torch.full((n,), v) for b in range(2) for s, n, v in
              (("mlp_hidden", 256, 1.0), ("mlp_in", 64, 1e-3))}
    scores[(0, "mlp_hidden")] = torch.linspace(0.01, 1, 256)
    cfg = PruneCfg(rate=0.3, sites=["mlp_in", "mlp_hidden"], min_keep=0.25)
    plan, _ = plan_from_scores(model, scores, cfg)
    assert all(len(bp.mlp_in) == 16 for bp in plan)  # 25 % floor of 64, aligned
    assert len(plan[1].mlp_hidden) == 256
    assert 64 < len(plan[0].mlp_hidden) < 256


def test_remove_heads_drops_dead_heads_exactly():
    model = tiny_vit(embed_dim=96, num_heads=3)
    scores = _random_scores(model, ["attn_out"])
    for b in range(2):
        scores[(b, "attn_out")][32:64] = 1e-6  # head 1 is dead in every block
    cfg = PruneCfg(rate=0.4, sites=["attn_out"], remove_heads=True)  # 40 % of 192 scores > the 64 dead ones
    plan, pruned, masked = _pruned_and_masked(model, cfg, scores)
    assert all(bp.heads == [0, 2] for bp in plan)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (pruned(x) - masked(x)).abs().max() < 1e-5


def test_qk_gate_refused_with_qk_norm():
    model = tiny_vit(qk_norm=True)
    with pytest.raises(RecipeError, match="q/k normalisation"):
        attach_gates(model, ["attn_qk"])


def test_compress_vtp_from_the_cli(capsys, tmp_path, digits_model_dir):
    """`vitdeploy compress --recipe vtp-40` end to end (short phases): stages, reduction, equivalence, kept dims,
    and the pruned model dir loads and exports with ONNX == PyTorch."""
    import json

    import numpy as np

    from test_cli import run
    from vitdeploy.deploy.onnx_export import export_onnx, parity
    from vitdeploy.models import load_model

    out = tmp_path / "vtp"
    code, stdout, err = run(capsys, "compress", digits_model_dir, "--recipe", "vtp-40", "--data", "digits", "--out", out,
                                "--set", "sparsity.epochs=2", "--set", "finetune.epochs=1", "--set", "sparsity.l1=1e-3")
    assert code == 0, err
    rep = json.loads((out / "compress.json").read_text())
    assert [s["stage"] for s in rep["stages"]] == ["dense", "sparsity", "pruned", "finetuned"]
    assert all(s["top1"] is not None and s["params"] > 0 and s["macs"] > 0 for s in rep["stages"])
    assert rep["stages"][1]["scores"] == 96 + 6 * (96 + 96 + 384)  # the residual width, then q/k, v, hidden per block
    assert rep["equivalence"]["max_abs_diff"] < 1e-4
    assert 0.3 < rep["reduction"]["params"] < 0.6 and 0.3 < rep["reduction"]["macs"] < 0.6
    assert len(rep["sparsity"]) == 2 and {"l1_term", "scores_below_1e-2", "scores_below_1e-1"} <= set(rep["sparsity"][0])
    dense = {b["block"]: b for b in rep["dense_blocks"]}
    for b in rep["kept"]:
        for key in ("width", "attn_in", "mlp_in", "mlp_hidden", "qk_head_dim", "v_head_dim"):
            assert b[key] % 16 == 0 and 0 < b[key] <= dense[b["block"]][key]  # the recipe aligns to 16
    loaded = load_model(str(out))
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    path = export_onnx(loaded.model, tmp_path / "vtp.onnx", loaded.input_size)
    assert parity(loaded.model, path, x)["max_abs_diff"] < 1e-4


def test_input_dims_are_kept_in_aligned_blocks_and_survive_save_load(tmp_path):
    """Input-dim plans keep whole runs of the alignment, so the index-select moves blocks (fast in onnxruntime);
    the grouping is rebuilt when a model dir is loaded, and ONNX still equals PyTorch."""
    import numpy as np

    from vitdeploy.deploy.onnx_export import export_onnx, parity
    from vitdeploy.models import describe, load_model_dir, save_model_dir
    from vitdeploy.models.surgery import IndexSelect, block_groups

    model = tiny_vit(embed_dim=96, num_heads=3)
    cfg = PruneCfg(rate=0.4, sites=["attn_in", "mlp_in"], alignment=8)
    plan, pruned, masked = _pruned_and_masked(model, cfg, _random_scores(model, cfg.sites))
    for bp in plan:
        for idx in (bp.attn_in, bp.mlp_in):
            assert block_groups(idx, 96) is not None
    selects = [m for m in pruned.modules() if isinstance(m, IndexSelect)]
    assert selects and all(m.group >= 8 for m in selects)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (pruned(x) - masked(x)).abs().max() < 1e-5
        elementwise = torch.randn(2, 5, 96)
        assert torch.equal(selects[0](elementwise), elementwise.index_select(-1, selects[0].index))
    save_model_dir(tmp_path / "m", pruned, describe(pruned, "vit_tiny_patch16_224", dict(
        img_size=32, patch_size=8, num_classes=10, embed_dim=96, depth=2, num_heads=3)), {"input_size": [3, 32, 32]})
    loaded = load_model_dir(tmp_path / "m").model
    assert [m.group for m in loaded.modules() if isinstance(m, IndexSelect)] == [m.group for m in selects]
    path = export_onnx(loaded, tmp_path / "m.onnx", (3, 32, 32))
    assert parity(loaded, path, np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32))["max_abs_diff"] < 1e-4
