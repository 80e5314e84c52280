"""Plans: aligned kept counts, magnitude planning, and pruned == masked on whole models."""
import pytest
import torch

from conftest import tiny_vit
from vitdeploy.compression.vtp import magnitude_plan
from vitdeploy.compression.plan import BlockPlan, aligned_keep, apply_plan, masked_copy
from vitdeploy.compression.recipe import PruneCfg
from vitdeploy.models import count_params


@pytest.mark.parametrize("n", [8, 24, 64, 100, 256, 1536, 3072])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.77, 0.99])
@pytest.mark.parametrize("alignment", [8, 16, 32, 64])
def test_aligned_keep(n, rate, alignment):
    k = aligned_keep(n, rate, alignment, min_keep=0.1)
    assert 1 <= k <= n
    assert k == n or k % alignment == 0
    assert k >= min(n, 0.1 * n)


@pytest.mark.parametrize("variant", [dict(), dict(class_token=False, global_pool="avg"), dict(init_values=1e-2),
                                     dict(reg_tokens=2, qkv_bias=False)])
def test_magnitude_plan_pruned_equals_masked(variant):
    model = tiny_vit(**variant)
    plan = magnitude_plan(model, PruneCfg(rate=0.4, alignment=8, sites=["mlp_hidden"], scope="uniform"))
    assert all(len(bp.mlp_hidden) % 8 == 0 and len(bp.mlp_hidden) == 152 for bp in plan)
    masked = masked_copy(model, plan)
    pruned = apply_plan(tiny_vit(**variant), plan)
    assert count_params(pruned) < count_params(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(pruned(x), model(x), atol=1e-3)  # the plan really removed something


def test_distilled_deit_pruned_equals_masked():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=2).eval()
    plan = [BlockPlan(heads=[0, 2], qk_idx=[list(range(32)), list(range(8, 40))], v_idx=[list(range(16))] * 2,
                      attn_in=list(range(0, 192, 3)), mlp_hidden=list(range(0, 768, 2)), mlp_in=list(range(96)))] * 2
    masked = masked_copy(model, plan)
    pruned = apply_plan(model, plan)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-5)
