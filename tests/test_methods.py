"""The method table and its contract: a method added from outside the package in one module plus one recipe runs
through compress and export like the built-in ones, and a method that breaks the contract is caught by name."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import vitdeploy
from vitdeploy.compression.context import MethodResult, check_result
from vitdeploy.compression.methods import DECOMPOSITIONS, METHODS, get_method, register_method
from vitdeploy.compression.recipe import load_recipe
from vitdeploy.errors import RecipeError

HERE = Path(__file__).resolve().parent
TOY_RECIPE = HERE / "toy-uniform-mlp.yaml"


@pytest.fixture
def toy():
    import toy_method

    toy_method.register()
    yield toy_method
    METHODS.pop(toy_method.NAME, None)


def test_builtin_methods_and_decompositions_are_tabled():
    assert {"vtp", "mcf"} <= set(METHODS)
    from vitdeploy.compression.decompose import METHODS as FACTORS

    assert list(FACTORS) == list(DECOMPOSITIONS)  # one spelling of the names, one factor function each
    recipe = load_recipe("vtp-svd", ["decompose.method=qr-pivoted"])
    assert recipe.decompose.method == "qr-pivoted"
    with pytest.raises(RecipeError, match="must be one of svd, qr-full"):
        load_recipe("vtp-svd", ["decompose.method=eig"])


def test_a_recipe_naming_an_unregistered_method_is_refused():
    with pytest.raises(RecipeError, match="recipe field 'method' must be one of vtp, mcf"):
        load_recipe(str(TOY_RECIPE))


def test_the_method_table_limits_sites(toy):
    with pytest.raises(RecipeError, match="method 'toy-uniform-mlp' compresses mlp_hidden only"):
        load_recipe(str(TOY_RECIPE), ["prune.sites=[mlp_in]"])
    with pytest.raises(RecipeError, match="method .mcf. compresses the FFN only: prune.sites may list mlp_in and mlp_hidden"):
        load_recipe("mcf", ["prune.sites=[attn_in]"])
    with pytest.raises(ValueError, match="already registered"):
        register_method("vtp", "x:y", "again")


def test_toy_method_runs_through_compress_and_export(toy, tmp_path, digits_model_dir):
    small = vitdeploy.compress(digits_model_dir, str(TOY_RECIPE), tmp_path / "toy", data="digits")
    rec = json.loads((small.path / "compress.json").read_text())
    assert rec["recipe"]["method"] == "toy-uniform-mlp"
    assert [s["stage"] for s in rec["stages"]] == ["dense", "pruned", "finetuned"]
    assert all(b["mlp_hidden"] == 192 for b in rec["kept"])  # half of 384, in every block
    assert small.max_abs_diff < 1e-4 and 0.3 < small.params_removed < 0.6
    deploy = vitdeploy.export(small.path, tmp_path / "toy" / "deploy", precisions=["fp32"])
    assert deploy.parity["fp32"]["max_abs_diff"] < 1e-4
    assert vitdeploy.load_model(small.path).arch.blocks[0].mlp.hidden == 192


def test_a_method_that_breaks_the_contract_is_named(toy, digits_model_dir):
    from vitdeploy.compression.context import make_context

    ctx = make_context(vitdeploy.load_model(digits_model_dir), load_recipe(str(TOY_RECIPE)), None)
    good = toy.run(ctx)
    assert isinstance(check_result("toy", good, ctx), MethodResult)
    with pytest.raises(RuntimeError, match="method 'toy' broke its contract: run\\(\\) returned tuple"):
        check_result("toy", (good.model, {}), ctx)
    with pytest.raises(RuntimeError, match="lacks 'inputs'"):
        check_result("toy", MethodResult(good.model, {"rate": 0.5}, {"max_abs_diff": 0.0, "reference": "x"}), ctx)
    with pytest.raises(RuntimeError, match="pipeline's key 'stages'"):
        check_result("toy", MethodResult(good.model, {"rate": 0.5}, good.equivalence, details={"stages": []}), ctx)
    ctx.add_stage("pruned", good.model)
    with pytest.raises(RuntimeError, match="added a 'pruned'"):
        check_result("toy", good, ctx)
    assert get_method("toy-uniform-mlp").load() is toy.run
