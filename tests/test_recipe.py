"""Recipes: packaged ones load, the schema rejects unknown keys, wrong types and impossible values."""
import pytest

from vitdeploy.compression.recipe import Recipe, apply_overrides, available_recipes, load_recipe, schema_rows
from vitdeploy.errors import RecipeError


@pytest.mark.parametrize("name", available_recipes())
def test_packaged_recipes_validate(name):
    r = load_recipe(name)
    assert isinstance(r, Recipe) and r.name == name


def test_scientific_notation_without_a_dot_is_a_number():
    assert load_recipe("vtp-40", ["sparsity.l1=1e-3"]).sparsity.l1 == 1e-3


def test_overrides_apply_with_types():
    r = load_recipe("mlp-magnitude", ["prune.rate=0.5", "finetune.epochs=2", "distill.enabled=false", "prune.alignment=16"])
    assert (r.prune.rate, r.finetune.epochs, r.distill.enabled, r.prune.alignment) == (0.5, 2, False, 16)
    assert isinstance(load_recipe("mlp-magnitude", ["finetune.lr=1"]).finetune.lr, float)


@pytest.mark.parametrize("override,match", [
    ("prune.rate=1.0", "must be < 1"),
    ("prune.rate=-0.1", "must be >= 0"),
    ("prune.rate=abc", "must be a number"),
    ("prune.rate=nan", "finite"),
    ("prune.alignment=7", "must be one of"),
    ("prune.sites=[attn_magic]", "must be one of"),
    ("prune.sites=[]", "at least one"),
    ("finetune.epochs=1.5", "must be an integer"),
    ("finetune.epochs=true", "must be an integer"),
    ("bogus=1", "unknown recipe key 'bogus'"),
    ("prune.rat=0.2", "unknown recipe key 'prune.rat'"),
    ("prune=3", "must be a mapping"),
    ("noequals", "key=value"),
])
def test_bad_overrides(override, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe("mlp-magnitude", [override])


def test_user_yaml_files(tmp_path):
    good = tmp_path / "mine.yaml"
    good.write_text("prune:\n  rate: 0.25\n")
    r = load_recipe(str(good))
    assert r.name == "mine" and r.prune.rate == 0.25
    (tmp_path / "broken.yaml").write_text("prune: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML at line"):
        load_recipe(str(tmp_path / "broken.yaml"))
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(str(tmp_path / "list.yaml"))
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(str(tmp_path / "absent.yaml"))
    with pytest.raises(RecipeError, match="unknown recipe 'nope'.*packaged: .*mlp-magnitude"):
        load_recipe("nope")


def test_schema_rows_cover_every_leaf():
    keys = [k for k, _, _ in schema_rows()]
    assert "prune.rate" in keys and "distill.temperature" in keys and "finetune.lr" in keys
    assert all(doc for _, _, doc in schema_rows())


@pytest.mark.parametrize("overrides,match", [
    (["prune.importance=learned", "sparsity.epochs=0"], "needs sparsity.epochs >= 1"),
    (["prune.remove_heads=true", "prune.sites=[mlp_hidden]"], "remove_heads needs 'attn_out'"),
    (["prune.sites=[mlp_in, mlp_in]"], "lists a site twice"),
    (["sparsity.l1=-1"], "must be >= 0"),
    (["sparsity.score_lr=0"], "must be > 0"),
    (["sparsity.l1=1e-3x"], "must be a number"),
])
def test_cross_field_rules(overrides, match):
    with pytest.raises(RecipeError, match=match):
        load_recipe("vtp-40", overrides)


def test_errors_are_one_line_even_when_the_input_carries_line_breaks():
    """Found by hypothesis: a --set value of a bare newline made a two-line error."""
    with pytest.raises(RecipeError) as e:
        apply_overrides({}, ["\n"])
    assert "\n" not in str(e.value) and "'\\n'" in str(e.value)
    with pytest.raises(RecipeError) as e:
        load_recipe("vtp-40", ["prune.rate=\nx"])
    assert "\n" not in str(e.value)
