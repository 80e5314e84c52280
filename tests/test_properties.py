"""Property-based tests (hypothesis) of recipe parsing and VTP planning.

Any mapping, any YAML text and any `--set` override either becomes a valid Recipe or fails with a RecipeError of one
line. Any rate in [0, 1), any alignment, any site choice, on tiny and odd ViTs (odd widths, one head, odd MLP
ratios, no qkv bias, class token or average pooling, registers) either gives a plan that applies, runs and equals
the masked model, with kept counts that obey the alignment and minimum-keep rules, or a one-line VitDeployError.
"""
import math
import tempfile
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vitdeploy.compression.gates import SITES
from vitdeploy.compression.plan import BlockPlan
from vitdeploy.compression.recipe import PruneCfg, Recipe, RecipeError, load_recipe, recipe_from_dict
from vitdeploy.compression.vtp import magnitude_plan, magnitude_scores, plan_from_scores, prune_with_reference
from vitdeploy.errors import VitDeployError
from vitdeploy.models.surgery import attention_dims

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODELS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # each builds a ViT


def one_line(e: BaseException) -> bool:
    msg = str(e)
    return bool(msg.strip()) and "\n" not in msg and "Traceback" not in msg


# ---------------------------------------------------------------------------------------------- recipes
KEYS = ["name", "method", "description", "seed", "prune", "sparsity", "finetune", "distill", "decompose", "mcf",
        "eval_batches", "rate", "sites", "alignment", "min_keep", "scope", "importance", "remove_heads", "epochs",
        "lr", "enabled", "layers", "rank_rule", "energy", "ratio", "alpha", "temperature", "threshold", "bogus"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["vtp", "mcf", "learned", "magnitude", "global", "uniform", "svd", "attn_in",
                                           "mlp_hidden", "qkv", "fc1", "1e-4", "0.5", "nan", "inf"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)
MAPPINGS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6)
DOTTED = st.lists(st.sampled_from(KEYS) | st.text(max_size=5), min_size=1, max_size=3).map(".".join)
OVERRIDES = st.lists(st.one_of(
    st.tuples(DOTTED, st.text(max_size=12) | st.sampled_from(["0.3", "1.2", "-1", "[attn_in]", "{a: 1}", "true",
                                                              "8", "7", "nan", "[", "!!python/name:os.system"]))
    .map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=10)), max_size=4)


def _valid(r: Recipe) -> None:
    """A Recipe that parsed holds values inside its schema."""
    assert 0 <= r.prune.rate < 1 and r.prune.alignment in (8, 16, 32, 64) and 0 < r.prune.min_keep <= 1
    assert r.prune.sites and set(r.prune.sites) <= set(SITES) and len(set(r.prune.sites)) == len(r.prune.sites)
    assert math.isfinite(r.finetune.lr) and r.finetune.lr > 0 and r.finetune.epochs >= 0
    assert r.method in ("vtp", "mcf")


@FAST
@given(data=MAPPINGS, overrides=OVERRIDES)
def test_any_mapping_and_overrides_give_a_recipe_or_one_line(data, overrides):
    try:
        r = recipe_from_dict(data, overrides)
    except RecipeError as e:
        assert one_line(e), str(e)
        return
    _valid(r)


@FAST
@given(text=st.one_of(st.text(max_size=80), MAPPINGS.map(lambda d: yaml.safe_dump(d, allow_unicode=True))),
       overrides=OVERRIDES)
def test_any_yaml_file_gives_a_recipe_or_one_line(text, overrides):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.yaml"
        try:
            path.write_text(text, encoding="utf-8")
        except UnicodeEncodeError:  # lone surrogates: not a file a user can have
            assume(False)
        try:
            r = load_recipe(str(path), overrides)
        except RecipeError as e:
            # PyYAML's reader errors span lines and recipe.py passes them on; the CLI joins them into one line
            # (cli._one_line). Every other recipe error is one line at the source.
            assert one_line(e) or "is not valid YAML" in str(e).splitlines()[0], str(e)
            return
    _valid(r)


def test_yaml_tags_never_run_code(tmp_path):
    """safe_load: a python tag is a parse error, not a call."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(RecipeError):
        load_recipe(str(evil))
    with pytest.raises(RecipeError):
        load_recipe("mlp-magnitude", [f"name=!!python/object/apply:os.system ['touch {marker}']", "prune.rate=x"])
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- planning
@st.composite
def tiny_models(draw):
    """Tiny, odd ViTs: any head count 1..3, odd head dims, odd MLP widths, with or without qkv bias and class token."""
    import timm

    heads = draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([1, 3, 5, 8, 9, 16, 17, 24]))
    pool = draw(st.sampled_from(["token", "avg"]))
    kw = dict(img_size=16, patch_size=8, num_classes=draw(st.integers(1, 5)), embed_dim=heads * head_dim,
              depth=draw(st.integers(1, 2)), num_heads=heads, mlp_ratio=draw(st.sampled_from([0.5, 1.0, 1.37, 2.0, 4.0])),
              qkv_bias=draw(st.booleans()), class_token=pool == "token", global_pool=pool,
              reg_tokens=draw(st.sampled_from([0, 0, 1])))
    assume(int(kw["embed_dim"] * kw["mlp_ratio"]) >= 1)
    torch.manual_seed(draw(st.integers(0, 3)))
    return timm.create_model("vit_tiny_patch16_224", **kw).eval(), kw


@st.composite
def prune_cfgs(draw):
    sites = draw(st.lists(st.sampled_from(SITES), min_size=1, max_size=5, unique=True))
    return PruneCfg(importance="magnitude", rate=draw(st.floats(0, 1, exclude_max=True)), sites=sites,
                    scope=draw(st.sampled_from(["global", "uniform"])),
                    alignment=draw(st.sampled_from([8, 16, 32, 64])),
                    min_keep=draw(st.floats(0, 1, exclude_min=True)),
                    remove_heads="attn_out" in sites and draw(st.booleans()))


def _check_count(k: int, total: int, cfg: PruneCfg, what: str) -> None:
    """The alignment and minimum-keep rules of align_count, for one kept count."""
    assert 1 <= k <= total, (what, k, total)
    if total <= cfg.alignment:
        assert k == total, (what, k, total)
        return
    assert k == total or k % cfg.alignment == 0, (what, k, total, cfg.alignment)
    floor = min(total, math.ceil(cfg.min_keep * total / cfg.alignment) * cfg.alignment)
    assert k >= floor, (what, k, floor)


def _check_plan(model, plan: list[BlockPlan], cfg: PruneCfg) -> None:
    assert len(plan) == len(model.blocks)
    for b, (blk, bp) in enumerate(zip(model.blocks, plan)):
        d = attention_dims(blk.attn)
        H, Dqk, Dv = d["num_heads"], d["qk_head_dim"], d["v_head_dim"]
        for site, total in (("attn_in", blk.attn.qkv.in_features), ("mlp_in", blk.mlp.fc1.in_features),
                            ("mlp_hidden", blk.mlp.fc2.in_features)):
            idx = getattr(bp, site)
            if idx is not None:
                assert len(set(idx)) == len(idx) and all(0 <= i < total for i in idx)
                _check_count(len(idx), total, cfg, f"block {b} {site}")
        heads = bp.heads if bp.heads is not None else list(range(H))
        assert 1 <= len(heads) <= H and len(set(heads)) == len(heads)
        for idx, dim, name in ((bp.qk_idx, Dqk, "qk"), (bp.v_idx, Dv, "v")):
            if idx is None:
                continue
            assert len(idx) == len(heads) and len({len(i) for i in idx}) == 1, f"block {b} {name} not uniform"
            if not (name == "qk" and "attn_qk" not in cfg.sites):
                _check_count(len(idx[0]), dim, cfg, f"block {b} {name} per head")


@MODELS
@given(m=tiny_models(), cfg=prune_cfgs(), seed=st.integers(0, 2**16))
def test_any_rate_and_alignment_on_odd_models_plans_and_runs(m, cfg, seed):
    model, kw = m
    g = torch.Generator().manual_seed(seed)
    scores = {k: v * torch.empty_like(v).uniform_(-0.5, 1.5, generator=g)
              for k, v in magnitude_scores(model, list(cfg.sites)).items()}
    try:
        plan, keep = plan_from_scores(model, scores, cfg)
    except VitDeployError as e:
        assert one_line(e), str(e)
        return
    _check_plan(model, plan, cfg)
    pruned, masked = prune_with_reference(model, list(cfg.sites), scores, plan, keep)
    x = torch.randn(2, 3, 16, 16, generator=g)
    with torch.no_grad():
        y, ref = pruned(x), masked(x)
    assert y.shape == (2, kw["num_classes"]) and torch.isfinite(y).all()
    assert (y - ref).abs().max().item() < 1e-4


@MODELS
@given(m=tiny_models(), cfg=prune_cfgs())
def test_magnitude_plan_applies_to_any_odd_model(m, cfg):
    """The training-free path `compress` takes with importance: magnitude, straight on the model's weights."""
    from vitdeploy.compression.plan import apply_plan
    from vitdeploy.models import count_params

    model, kw = m
    try:
        plan = magnitude_plan(model, cfg)
    except VitDeployError as e:
        assert one_line(e), str(e)
        return
    _check_plan(model, plan, cfg)
    before = count_params(model)
    apply_plan(model, plan)
    assert count_params(model) <= before
    with torch.no_grad():
        y = model(torch.randn(1, 3, 16, 16))
    assert y.shape == (1, kw["num_classes"]) and torch.isfinite(y).all()
