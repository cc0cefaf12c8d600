"""PolicyConfig: the one place recipe settings become policy settings, and policy.json round trips (no model needed)."""

import json

import pytest

from tinyvla.core.codec import ActionStats
from tinyvla.errors import UserError
from tinyvla.policy_dir import DecodingConfig, PolicyConfig
from tinyvla.recipe import recipe_from_dict

STATS = ActionStats(min=[-1.0] * 7, max=[1.0] * 7)


def test_from_recipe_maps_eval_settings_once():
    recipe = recipe_from_dict({
        "actions": {"horizon": 4, "bins": 250, "per_task_bounds": True, "gripper_dim": 5},
        "data": {"suite": "blockfind-reach", "image_size": 48, "crop_scale": 1.0, "instruction_position": "end"},
        "eval": {"ensemble": "exp", "ensemble_size": 3, "exp_w": 0.25, "execute_horizon": 2, "speculative": False},
    })
    cfg = PolicyConfig.from_recipe(recipe, STATS, dataset_info={"codebase_version": "v2.0"})
    assert (cfg.prompt.horizon, cfg.prompt.bins, cfg.prompt.instruction_position) == (4, 250, "end")
    assert (cfg.image.image_size, cfg.image.crop_scale) == (48, 1.0)
    assert cfg.ensemble.to_dict() == {"weighting": "exp", "max_chunks": 3, "exp_w": 0.25, "execute_horizon": 2}
    assert cfg.decoding.speculative is False and cfg.per_task_bounds and cfg.gripper_dim == 5
    assert cfg.meta["dataset"]["codebase_version"] == "v2.0" and cfg.meta["base_model"] == recipe.model.name
    assert PolicyConfig.from_recipe(recipe, STATS).meta == {}  # no dataset named: nothing recorded


def test_json_round_trip_and_decoding_stays_out():
    recipe = recipe_from_dict({"actions": {"horizon": 2}, "eval": {"ensemble": "uniform"}})
    cfg = PolicyConfig.from_recipe(recipe, STATS).replace(meta={"base_model": "tiny-qwen3"},
                                                          decoding=DecodingConfig(speculative=True))
    saved = json.loads(json.dumps(cfg.to_json()))
    assert "decoding" not in saved and saved["ensemble"]["weighting"] == "uniform" and saved["format"] == 1
    again = PolicyConfig.from_json(saved)
    assert again.to_json() == saved and again.decoding == DecodingConfig()  # how to decode is the loader's choice
    assert again.meta == {"base_model": "tiny-qwen3"}


@pytest.mark.parametrize("system", ["vla0", "none"])
def test_system_prompt_choice_round_trips(system):
    recipe = recipe_from_dict({"actions": {"horizon": 2}, "data": {"system_prompt": system}})
    cfg = PolicyConfig.from_recipe(recipe, STATS)
    saved = json.loads(json.dumps(cfg.to_json()))
    assert ("timesteps" in saved["system_prompt"]) == (system == "vla0")  # VLA-0's words, or "" for none
    assert PolicyConfig.from_json(saved).prompt.system_prompt == system


def test_old_and_broken_policy_json():
    saved = PolicyConfig.from_recipe(recipe_from_dict({}), STATS).to_json()
    old = {k: v for k, v in saved.items() if k not in ("instruction_position", "ensemble", "system_prompt")}
    old["instruction_first"] = True  # written before instruction_position existed
    old["ensemble"] = {"weighting": "none"}  # partial: the rest are the defaults
    cfg = PolicyConfig.from_json(old)
    assert cfg.prompt.instruction_position == "before_images"
    assert cfg.ensemble.to_dict() == {"weighting": "none", "max_chunks": 8, "exp_w": 0.5, "execute_horizon": 1}
    with pytest.raises(UserError, match="system_prompt does not match"):
        PolicyConfig.from_json({**saved, "bins": 999})
    with pytest.raises(UserError, match="no 'action_stats'"):
        PolicyConfig.from_json({k: v for k, v in saved.items() if k != "action_stats"})


def test_replace_changes_only_the_keys_given():
    cfg = PolicyConfig.from_recipe(recipe_from_dict({"actions": {"horizon": 4}}), STATS)
    new = cfg.replace(ensemble={"execute_horizon": 4}, decoding={"speculative": False})
    assert new.ensemble.execute_horizon == 4 and new.ensemble.weighting == cfg.ensemble.weighting
    assert cfg.ensemble.execute_horizon == 1 and cfg.decoding.speculative is True  # the original is untouched
