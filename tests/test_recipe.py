from pathlib import Path

import pytest

from tinyvla.errors import UserError
from tinyvla.recipe import apply_overrides, load_recipe, parse_override, recipe_from_dict

RECIPES = sorted(Path(__file__).resolve().parents[1].joinpath("recipes").glob("*.yaml"))


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_defaults_are_the_vla0_seed_settings():
    r = recipe_from_dict({})
    assert (r.actions.horizon, r.actions.dim, r.actions.bins, r.actions.mask_prob) == (8, 7, 1000, 0.4)
    assert (r.train.epochs, r.train.batch_size, r.train.lr) == (24, 8, 5e-6)
    assert r.eval.seed == 7 and r.eval.ensemble == "vla0"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    r = load_recipe(path)
    assert r.name == path.stem
    text = path.read_text()
    assert text.startswith("#") and "tinyvla train" in text.split("\n\n")[0], "each recipe starts with a how-to-run header"


def test_set_overrides_are_typed(tmp_path):
    p = write(tmp_path, "train:\n  lr: 1.0e-4\n")
    r = load_recipe(p, ["train.lr=3e-4", "actions.mask_prob=0", "model.lora.enabled=true", "train.max_steps=null",
                        "model.tiny.hidden_size=96", "data.suite=blockfind"])
    assert r.train.lr == 3e-4 and isinstance(r.train.lr, float)
    assert r.actions.mask_prob == 0.0 and r.model.lora.enabled is True and r.train.max_steps is None
    assert r.model.tiny == {"hidden_size": 96} and r.data.suite == "blockfind"


def test_parse_override_values():
    assert parse_override("a.b=1e-4") == (["a", "b"], 1e-4)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a.b=hello") == (["a", "b"], "hello")


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("trian:\n  lr: 1\n", [], "unknown key 'trian' in the recipe (did you mean 'train'?)"),
        ("train:\n  lrr: 1\n", [], "unknown key 'train.lrr' in section 'train' (did you mean 'lr'?)"),
        ("train:\n  batch_size: eight\n", [], "train.batch_size: expected int, got str 'eight'"),
        ("train:\n  lr: [1]\n", [], "train.lr: expected float"),
        ("", ["train.lrate=1"], "--set train.lrate: no such key (did you mean 'lr'?)"),
        ("", ["trains.lr=1"], "--set trains: no such key (did you mean 'train'?)"),
        ("", ["train.lr"], "expected section.key=value"),
        ("", ["train.lr.x=1"], "'train.lr' is not a section"),
        ("", ["train.schedule=cosin"], "train.schedule: 'cosin' is not one of constant, cosine (did you mean 'cosine'?)"),
        ("", ["data.suite=libero_obj"], "data.suite: 'libero_obj' is not one of"),
        ("", ["eval.execute_horizon=9"], "eval.execute_horizon must be in 1..actions.horizon"),
        ("", ["data.generate_blocks=5"], "data.generate_blocks must be in [2, 4] (BlockFind has four colours)"),
        ("", ["data.suite=blockfind-reach", "data.generate_paired=true"], "data.generate_paired needs data.suite=blockfind"),
        ("", ["data.generate_home_layouts=2"], "data.generate_home_layouts must be in [0, 1] (a share of the layouts)"),
        ("", ["data.instruction_position=first"], "data.instruction_position: 'first' is not one of after_images, "
                                                   "before_images, end"),
        ("", ["data.instruction_first=true"], "no such key (did you mean 'instruction_position'?)"),
        ("", ["data.generate_path=zigzag"], "data.generate_path: 'zigzag' is not one of diagonal, x_first"),
        ("", ["data.system_prompt=short"], "data.system_prompt: 'short' is not one of vla0, none"),
        ("", ["data.video_cache=maybe"], "data.video_cache: expected bool"),
        ("model: 3\n", [], "model: expected a section"),
        ("- a\n- b\n", [], "must be a YAML mapping"),
    ],
)
def test_bad_recipes_fail_with_one_clear_line(tmp_path, text, overrides, message):
    with pytest.raises(UserError) as err:
        load_recipe(write(tmp_path, text), overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_yaml_names_the_line(tmp_path):
    with pytest.raises(UserError, match=r"malformed YAML at line 2, column 8: mapping values are not allowed here"):
        load_recipe(write(tmp_path, "train:\n  lr: a: b\n"))


def test_missing_recipe(tmp_path):
    with pytest.raises(UserError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_overrides_do_not_touch_other_keys():
    data = {"train": {"lr": 1.0}}
    apply_overrides(data, ["train.seed=3"])
    assert data == {"train": {"lr": 1.0, "seed": 3}}


def _numeric_fields(cls, prefix=""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _numeric_fields(tp, key + ".")
        elif {int, float} & set(typing.get_args(tp) or (tp,)):
            yield key


def test_every_numeric_knob_has_a_range():
    """A new int / float recipe field needs a line in recipe.RANGES, so a bad value fails at load, not in torch."""
    from tinyvla.recipe import RANGES, Recipe

    numeric = set(_numeric_fields(Recipe))
    assert numeric - set(RANGES) == set(), "add these to RANGES"
    assert set(RANGES) - numeric - {"train.betas"} == set(), "RANGES names fields that do not exist"


def test_choice_fields_carry_their_values_and_the_defaults_are_valid():
    import typing

    from tinyvla.recipe import Recipe, TrainConfig

    hint = typing.get_type_hints(TrainConfig)["schedule"]
    assert typing.get_args(hint) == ("constant", "cosine")
    Recipe().validate()  # every default inside its own range and choices
