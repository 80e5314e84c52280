"""The residual-width site (`embed`) and the taylor saliency: pruned == masked (with the LayerNorms of the reference
normalising over the kept dims), a model dir rebuilt at the cut width, ONNX == PyTorch, on every ViT variant."""
from __future__ import annotations

import copy

import pytest
import timm
import torch

from conftest import tiny_vit
from vitdeploy.compression.gates import MODEL
from vitdeploy.compression.plan import apply_plan, kept_stats_norms, masked_copy
from vitdeploy.compression.recipe import PruneCfg, load_recipe
from vitdeploy.compression.vtp import (gated_reference, magnitude_scores, plan_from_scores, prune_with_reference,
                                       taylor_scores)
from vitdeploy.deploy import export_onnx, parity
from vitdeploy.errors import ModelError, RecipeError
from vitdeploy.models import count_macs, count_params, load_model_dir
from vitdeploy.models.arch import ArchSpec, build, describe
from vitdeploy.models.modeldir import save_model_dir

VARIANTS = {
    "class token": dict(),
    "average pool": dict(class_token=False, global_pool="avg"),
    "layer scale": dict(init_values=1e-2),
    "registers": dict(reg_tokens=2, qkv_bias=False),
    "no embed class": dict(no_embed_class=True, init_values=1e-1),
}
SITES = (["embed"], ["embed", "attn_out", "mlp_hidden"], ["embed", "attn_in", "attn_qk", "attn_out", "mlp_in", "mlp_hidden"])


def variant(name: str) -> tuple[torch.nn.Module, str, dict]:
    if name == "distilled":
        torch.manual_seed(0)
        kw = dict(img_size=32, patch_size=8, depth=2)
        return timm.create_model("deit_tiny_distilled_patch16_224", **kw).eval(), "deit_tiny_distilled_patch16_224", kw
    kw = dict(img_size=32, patch_size=8, num_classes=10, embed_dim=64, depth=2, num_heads=2, **VARIANTS[name])
    return tiny_vit(**VARIANTS[name]), "vit_tiny_patch16_224", kw


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def plan_for(model, sites, importance="magnitude", rate=0.4):
    cfg = PruneCfg(rate=rate, sites=list(sites), importance=importance)
    if importance == "taylor":
        scores = taylor_scores(model, list(sites), [(images(8, s), torch.randint(0, 10, (8,))) for s in range(2)])
    else:
        scores = magnitude_scores(model, list(sites))
    plan, keep = plan_from_scores(model, scores, cfg)
    return scores, plan, keep


@pytest.mark.parametrize("name", [*VARIANTS, "distilled"])
@pytest.mark.parametrize("sites", SITES, ids=lambda s: "+".join(s))
def test_embed_pruned_equals_masked(name, sites):
    model, _, _ = variant(name)
    scores, plan, keep = plan_for(model, sites)
    assert plan.embed is not None and len(plan.embed) % 8 == 0 and len(plan.embed) < model.embed_dim
    ones = {k: torch.ones_like(v) for k, v in scores.items()}
    pruned, masked = prune_with_reference(model, list(sites), ones, plan, keep)
    x = images()
    with torch.no_grad():
        out = pruned(x)
        torch.testing.assert_close(out, masked(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, masked_copy(model, plan)(x), atol=1e-5, rtol=1e-5)
        # the renormalisation is real: the reference without kept-dims statistics differs
        assert (out - gated_reference(model, list(sites), ones, keep)(x)).abs().max() > 1e-4
    assert pruned.embed_dim == len(plan.embed) and pruned.patch_embed.proj.out_channels == len(plan.embed)
    assert count_macs(pruned, (3, 32, 32)) < count_macs(model, (3, 32, 32))


@pytest.mark.parametrize("name", [*VARIANTS, "distilled"])
def test_embed_cut_model_dir_onnx_round_trip(name, tmp_path):
    """The cut model equals the model rebuilt from its description at the smaller width with the same sliced
    weights, through a model dir, and its ONNX graph equals PyTorch."""
    model, base, kw = variant(name)
    _, plan, _ = plan_for(model, ["embed", "attn_out", "mlp_hidden"])
    pruned = apply_plan(model, plan).eval()
    arch = describe(pruned, base, kw)
    assert arch.embed_dim == len(plan.embed)
    assert ArchSpec.from_dict(arch.to_dict()) == arch
    save_model_dir(tmp_path / "m", pruned, arch, {"input_size": [3, 32, 32]})
    loaded = load_model_dir(tmp_path / "m").model
    assert count_params(loaded) == count_params(pruned)
    x = images(4, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x), atol=0, rtol=0)
    path = export_onnx(loaded, tmp_path / "m.onnx", (3, 32, 32))
    assert parity(loaded, path, x.numpy())["max_abs_diff"] < 1e-4


def test_embed_cut_has_no_index_select():
    """Cutting the residual width instead of the block inputs leaves no gather in the blocks."""
    from vitdeploy.models.surgery import IndexSelect

    model, _, _ = variant("class token")
    _, plan, _ = plan_for(model, ["embed", "attn_out", "mlp_hidden"])
    pruned = apply_plan(model, plan)
    assert not [m for m in pruned.modules() if isinstance(m, IndexSelect)]


def test_embed_with_input_sites_stays_within_the_cut():
    model, _, _ = variant("class token")
    _, plan, _ = plan_for(model, ["embed", "attn_in", "mlp_in"], rate=0.5)
    for bp in plan:
        assert set(bp.attn_in) <= set(plan.embed) and set(bp.mlp_in) <= set(plan.embed)


def test_taylor_scores_are_loss_sensitivities():
    """The taylor saliency is ½·Σ(∂L/∂a)² of real gradients: zero for a dim nothing reads, positive elsewhere,
    and removing the lowest-saliency dims moves the loss less than removing the highest."""
    model, _, _ = variant("class token")
    with torch.no_grad():
        for blk in model.blocks:
            blk.norm2.weight[5] = 0  # fc1 reads nothing from residual dim 5 ...
            blk.norm2.bias[5] = 0
    sites = ["embed", "mlp_hidden"]
    batches = [(images(16, s), torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(s))) for s in range(3)]
    scores = taylor_scores(model, sites, batches)
    assert set(scores) == {(MODEL, "embed"), (0, "mlp_hidden"), (1, "mlp_hidden")}
    assert all((v >= 0).all() and v.sum() > 0 for v in scores.values())
    # ... but attention still does, so dim 5 keeps a saliency; mlp hidden dims of a dead unit have none
    with torch.no_grad():
        model.blocks[0].mlp.fc2.weight[:, 7] = 0
    assert taylor_scores(model, sites, batches)[(0, "mlp_hidden")][7] == 0

    def loss_without(dims):
        cfg_keep = {k: torch.ones_like(v) for k, v in scores.items()}
        cfg_keep[(MODEL, "embed")][dims] = 0
        m = gated_reference(model, sites, cfg_keep, {k: torch.nonzero(v).flatten() for k, v in cfg_keep.items()})
        with torch.no_grad():
            return sum(torch.nn.functional.cross_entropy(m(x), y).item() for x, y in batches)

    order = scores[(MODEL, "embed")].argsort()
    dense = loss_without([])
    assert abs(loss_without(order[:8]) - dense) < abs(loss_without(order[-8:]) - dense)


def test_taylor_plan_prunes_and_matches_reference():
    model, _, _ = variant("layer scale")
    scores, plan, keep = plan_for(model, ["embed", "attn_qk", "attn_out", "mlp_hidden"], importance="taylor")
    pruned, masked = prune_with_reference(model, ["embed", "attn_qk", "attn_out", "mlp_hidden"],
                                          {k: torch.ones_like(v) for k, v in scores.items()}, plan, keep)
    with torch.no_grad():
        torch.testing.assert_close(pruned(images()), masked(images()), atol=1e-5, rtol=1e-5)


def test_kept_stats_norm_is_the_cut_layernorm():
    norm = torch.nn.LayerNorm(16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    keep = torch.tensor([0, 3, 4, 9, 10, 15])
    holder = torch.nn.Module()
    holder.patch_embed, holder.norm_pre, holder.blocks = torch.nn.Module(), norm, []
    holder.norm = holder.fc_norm = torch.nn.Identity()
    kept_stats_norms(holder, keep.tolist())
    x = torch.randn(2, 5, 16)
    cut = torch.nn.functional.layer_norm(x[..., keep], (6,), norm.weight[keep], norm.bias[keep])
    out = holder.norm_pre(x)
    torch.testing.assert_close(out[..., keep], cut)
    assert out[..., [1, 2]].abs().max() == 0


def test_embed_recipe_fields_and_bad_input():
    r = load_recipe("vtp-40", ["prune.sites=[embed, attn_out, mlp_hidden]", "prune.importance=taylor",
                               "prune.taylor_images=64"])
    assert r.prune.sites == ["embed", "attn_out", "mlp_hidden"] and r.prune.importance == "taylor"
    with pytest.raises(RecipeError, match="prune.importance"):
        load_recipe("vtp-40", ["prune.importance=fisher"])
    with pytest.raises(RecipeError, match="taylor_images"):
        load_recipe("vtp-40", ["prune.taylor_images=0"])
    with pytest.raises(RecipeError, match="method 'mcf'"):
        load_recipe("mcf", ["prune.sites=[embed, mlp_hidden]"])


def test_embed_refused_where_it_cannot_be_cut():
    from vitdeploy.compression.gates import attach_gates

    model = tiny_vit(global_pool="map")
    with pytest.raises(RecipeError, match="attention-pool"):
        attach_gates(model, ["embed"])


def test_arch_embed_dim_checked():
    model, base, kw = variant("class token")
    arch = describe(model, base, kw).to_dict()
    for bad, match in ((0, "embed_dim"), ("x", "embed_dim"), (65, "more than the 64")):
        with pytest.raises(ModelError, match=match):
            build(ArchSpec.from_dict({**arch, "embed_dim": bad}))


def test_mcf_embed_rule_cuts_the_residual_width():
    """MCF's shared FFN inputs as the residual width: the whole model narrows, the cut equals the kept-statistics
    reference, every FFN cut equals its masked reference, and no block keeps an index-select."""
    from vitdeploy.compression.mcf import back_to_front, fis_scorer
    from vitdeploy.compression.recipe import McfCfg
    from vitdeploy.models.surgery import IndexSelect

    model = tiny_vit(depth=3)
    cfg = McfCfg(in_rate=0.25, input_rule="embed", threshold=0.05)
    prune = PruneCfg(rate=0.5, sites=["mlp_in", "mlp_hidden"], scope="uniform", alignment=8)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(6, 3, 32, 32, generator=g) for _ in range(2)]
    pruned, plan, steps, xt = back_to_front(model, fis_scorer(lambda: batches, cfg), prune, cfg, sample=images(4),
                                            measure=lambda m: (0, 0, None), recover=lambda m, b: None)
    assert xt["rule"] == "embed" and xt["kept_inputs"] == 48 and xt["embed_max_abs_diff"] < 1e-5
    assert pruned.embed_dim == 48 and all(s.max_abs_diff < 1e-5 for s in steps)
    assert all(s.kept_hidden == 128 for s in steps)
    assert not [m for m in pruned.modules() if isinstance(m, IndexSelect)]


@pytest.mark.parametrize("site", ["embed", "attn_in", "attn_qk", "attn_out", "mlp_in", "mlp_hidden"])
def test_dim_costs_are_the_macs_a_cut_saves(site):
    """prune.cost: macs divides by what removing a dim saves: exactly the counted MACs of cutting 8 of them."""
    from vitdeploy.compression.plan import BlockPlan, Plan
    from vitdeploy.compression.vtp import dim_costs

    model, _, _ = variant("class token")
    cost = dim_costs(model, [site])[(MODEL, site) if site == "embed" else (0, site)]
    H, D, E = 2, 32, 64
    bp = {"attn_in": BlockPlan(attn_in=list(range(8, E))), "mlp_in": BlockPlan(mlp_in=list(range(8, E))),
          "mlp_hidden": BlockPlan(mlp_hidden=list(range(8, 4 * E))),
          "attn_qk": BlockPlan(qk_idx=[list(range(4, D))] * H), "attn_out": BlockPlan(v_idx=[list(range(4, D))] * H)}
    plan = Plan([BlockPlan(), BlockPlan()], embed=list(range(8, E))) if site == "embed" else Plan([bp[site], BlockPlan()])
    cut = apply_plan(copy.deepcopy(model), plan)
    assert count_macs(model, (3, 32, 32)) - count_macs(cut, (3, 32, 32)) == pytest.approx(8 * cost, rel=1e-9)
