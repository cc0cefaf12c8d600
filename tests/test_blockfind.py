"""BlockFind: API shape, determinism, the success rule, and that the levels separate good and bad policies."""

from pathlib import Path

import numpy as np
import pytest

from tinyvla.envs.blockfind import (
    COLORS,
    GRASP_RADIUS,
    SUITES,
    color_named_in,
    expert_action,
    generate_episodes,
    make_env,
    random_policy_action,
    run_policy,
)
from tinyvla.errors import UserError

NAMED_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny-cpu-blockfind.yaml"


def _expert(env, obs, rng):
    return expert_action(env, rng)


def _random(env, obs, rng):
    return random_policy_action(rng)


def _red_only(env, obs, rng):  # colour-blind: always heads for the red block, whatever the instruction says
    return expert_action(env, rng, color="red")


def _at(env, color, offset=(0.0, 0.0)):
    """Teleport the gripper to a block (tests only)."""
    env.gripper_pos = env.block_pos[env.block_colors.index(color)] + np.asarray(offset)


CLOSE = np.array([0, 0, 0, 0, 0, 0, 1.0], dtype=np.float32)
OPEN = np.array([0, 0, 0, 0, 0, 0, -1.0], dtype=np.float32)


def test_unknown_suite_names_the_valid_ones():
    with pytest.raises(UserError) as err:
        make_env("blockfnd")
    for name in SUITES:
        assert name in str(err.value)


def test_seeded_reset_is_deterministic():
    a, b = make_env("blockfind"), make_env("blockfind")
    oa, _ = a.reset(seed=7)
    ob, _ = b.reset(seed=7)
    assert a.instruction == b.instruction
    for k in ("image", "wrist_image", "state"):
        np.testing.assert_array_equal(oa[k], ob[k])
    # the same actions give the same trajectory
    for _ in range(3):
        act = np.array([1, -1, 0, 0, 0, 0, -1], dtype=np.float32)
        np.testing.assert_array_equal(a.step(act)[0]["wrist_image"], b.step(act)[0]["wrist_image"])
    # other seeds give other layouts
    layouts = {tuple(np.round(a.reset(seed=s)[0]["state"][:2], 4)) for s in range(10)}
    assert len(layouts) == 10
    # reset() without a seed continues the seeded stream, so a sequence of unseeded resets is reproducible too
    a.reset(seed=1), b.reset(seed=1)
    a.reset(), b.reset()
    np.testing.assert_array_equal(a.block_pos, b.block_pos)


def test_observation_and_step_shapes():
    env = make_env("blockfind-reach", image_size=48, max_steps=5)
    obs, info = env.reset(seed=0)
    assert set(obs) == {"image", "wrist_image", "state"}
    assert obs["image"].shape == obs["wrist_image"].shape == (48, 48, 3)
    assert obs["image"].dtype == obs["wrist_image"].dtype == np.uint8
    assert obs["state"].shape == (8,) and obs["state"].dtype == np.float32
    assert info["success"] is False and isinstance(env.instruction, str)
    assert env.instruction == "pick up the block that is red"
    obs, reward, terminated, truncated, info = env.step(np.zeros(7))
    assert obs["image"].shape == (48, 48, 3) and reward == 0.0
    assert (terminated, truncated, info["success"]) == (False, False, False)
    with pytest.raises(UserError):
        env.step(np.zeros(6))


def test_truncates_at_the_step_limit():
    env = make_env("blockfind", max_steps=4)
    env.reset(seed=3)
    flags = [env.step(OPEN)[2:4] for _ in range(4)]
    assert flags == [(False, False)] * 3 + [(False, True)]
    with pytest.raises(UserError):  # stepping a finished episode is a caller bug, said in one line
        env.step(OPEN)


def test_success_only_when_closed_near_the_target():
    env = make_env("blockfind")
    env.reset(seed=5)
    target = env.target_color
    other = next(c for c in env.block_colors if c != target)

    _at(env, target)  # over the target but open: nothing happens
    _, r, term, trunc, info = env.step(OPEN)
    assert (r, term, info["success"]) == (0.0, False, False)

    _at(env, target, (GRASP_RADIUS * 1.5, 0))  # closed just out of reach: closing on empty table does nothing
    _, r, term, _, info = env.step(CLOSE)
    assert (r, term, info["success"], info["grasped"]) == (0.0, False, False, None)

    _at(env, target, (GRASP_RADIUS * 0.7, 0))  # closed within reach: success, episode over
    _, r, term, trunc, info = env.step(CLOSE)
    assert (r, term, trunc, info["success"], info["grasped"]) == (1.0, True, False, True, target)

    env.reset(seed=5)  # closing on another block ends the episode as a failure
    _at(env, other)
    _, r, term, _, info = env.step(CLOSE)
    assert (r, term, info["success"], info["grasped"]) == (0.0, True, False, other)


def test_views_show_blocks_where_they_are():
    env = make_env("blockfind", image_size=64)
    obs, _ = env.reset(seed=2)
    s = 64
    for color, (x, y) in zip(env.block_colors, env.block_pos):  # scene view: top-down, y up
        assert tuple(obs["image"][int((1 - y) * s), int(x * s)]) == COLORS[color]
    # wrist view is egocentric: with the gripper over the target, the target's colour fills the image centre
    _at(env, env.target_color)
    obs, *_ = env.step(OPEN)
    c = s // 2
    assert tuple(obs["wrist_image"][c, c]) == COLORS[env.target_color]
    # ... and moving the gripper right shifts the target left in the wrist view
    obs, *_ = env.step(np.array([1, 0, 0, 0, 0, 0, -1.0]))
    cols = np.where((obs["wrist_image"][c] == COLORS[env.target_color]).all(-1))[0]
    assert cols.size and cols.mean() < c - 2


@pytest.mark.parametrize("suite", list(SUITES))
def test_expert_solves_and_random_does_not(suite):
    expert = run_policy(lambda: make_env(suite), _expert, episodes=100, seed=0)
    rand = run_policy(lambda: make_env(suite), _random, episodes=100, seed=0)
    assert expert >= 0.95
    assert rand <= 0.25


def test_colour_blind_policy_fails_on_named_level():
    # Going to the red block solves the reach level but fails most of the named-colour level.
    assert run_policy(lambda: make_env("blockfind-reach"), _red_only, episodes=50, seed=1) >= 0.95
    assert run_policy(lambda: make_env("blockfind"), _red_only, episodes=200, seed=1) <= 0.5


def test_named_level_asks_for_every_colour():
    env = make_env("blockfind")
    asked = {env.reset(seed=s)[1]["target_color"] for s in range(40)}
    assert asked == set(COLORS)
    env.reset(seed=0, options={"target_color": "blue"})
    assert env.instruction == "pick up the block that is blue" and "blue" in env.block_colors


def test_generated_episodes_are_coarse_successful_and_reproducible():
    eps = list(generate_episodes("blockfind", episodes=20, seed=4, image_size=32))
    again = list(generate_episodes("blockfind", episodes=20, seed=4, image_size=32))
    assert len(eps) == 20
    for e, f in zip(eps, again):
        t = len(e["actions"])
        assert e["success"] is True and e["task"].startswith("pick up the ")
        assert e["image"].shape == e["wrist_image"].shape == (t, 32, 32, 3) and e["image"].dtype == np.uint8
        assert e["state"].shape == (t, 8) and e["state"].dtype == np.float32
        assert e["actions"].shape == (t, 7) and e["actions"].dtype == np.float32
        assert set(np.unique(e["actions"][:, :2])) <= {-1.0, 0.0, 1.0}  # coarse: ints 0/500/1000 after scaling
        assert not e["actions"][:, 2:6].any()
        assert e["actions"][-1, 6] == 1.0 and (e["actions"][:-1, 6] == -1.0).all()  # close only at the end
        assert e["task"] == f["task"]
        np.testing.assert_array_equal(e["actions"], f["actions"])
    tasks = {e["task"] for e in eps}
    assert len(tasks) >= 3


def test_paired_episodes_share_a_first_image_and_name_every_block():
    eps = list(generate_episodes("blockfind", episodes=8, seed=3, image_size=32, n_blocks=4, paired=True))
    assert len(eps) == 8
    for group in (eps[:4], eps[4:]):  # 4 blocks: four demos per layout, one per colour
        assert sorted(color_named_in(e["task"]) for e in group) == sorted(COLORS)
        for e in group[1:]:
            np.testing.assert_array_equal(e["image"][0], group[0]["image"][0])
            np.testing.assert_array_equal(e["wrist_image"][0], group[0]["wrist_image"][0])
        assert all(e["success"] for e in group)
        # different targets from one start: the first moves are not all the same
        assert len({tuple(e["actions"][0, :2]) for e in group}) > 1 or len({len(e["actions"]) for e in group}) > 1
    assert not np.array_equal(eps[0]["image"][0], eps[4]["image"][0])  # a new layout after each group
    unpaired = list(generate_episodes("blockfind", episodes=3, seed=3, image_size=32))
    assert len({u["image"][0].tobytes() for u in unpaired}) == 3
    with pytest.raises(UserError, match="blockfind"):
        next(generate_episodes("blockfind-reach", episodes=2, seed=0, paired=True))


def test_home_layout_puts_each_colour_in_its_quadrant_and_leaves_random_layouts_alone():
    from tinyvla.envs.blockfind import HOME_CENTERS, HOME_JITTER

    env = make_env("blockfind", image_size=32)
    for seed in range(20):
        env.reset(seed=seed, options={"home_layout": True})
        for c, p in zip(env.block_colors, env.block_pos):
            assert np.all(np.abs(p - HOME_CENTERS[c]) <= HOME_JITTER + 1e-12)
        d = np.linalg.norm(env.block_pos[:, None] - env.block_pos[None], axis=-1) + np.eye(len(env.block_pos))
        assert d.min() >= 0.3 - 1e-9  # never overlapping
    env.reset(seed=3)
    plain = env.block_pos.copy()
    env.reset(seed=3, options={"home_layout": False})
    np.testing.assert_array_equal(plain, env.block_pos)  # evaluation's layouts do not change
    eps = list(generate_episodes("blockfind", episodes=6, seed=0, image_size=32, home_layouts=1.0))
    assert all(e["success"] for e in eps)
    with pytest.raises(UserError, match="share of the layouts"):
        next(generate_episodes("blockfind", episodes=2, seed=0, home_layouts=1.5))


def test_retarget_keeps_the_layout_and_refuses_an_absent_colour():
    env = make_env("blockfind", image_size=32, seed=1)
    obs, _ = env.reset(seed=9)
    other = next(c for c in env.block_colors if c != env.target_color)
    obs2, info = env.retarget(other)
    assert env.instruction == f"pick up the block that is {other}" and info["target_color"] == other
    np.testing.assert_array_equal(obs["image"], obs2["image"])
    absent = next(c for c in COLORS if c not in env.block_colors)
    with pytest.raises(UserError, match="not on the table"):
        env.retarget(absent)


def test_generate_dataset_round_trips_through_the_lerobot_reader(tmp_path):
    from tinyvla.data.lerobot import LeRobotDataset
    from tinyvla.envs.blockfind import generate_dataset

    generate_dataset("blockfind", episodes=4, out_dir=tmp_path / "bf", seed=2, image_size=32)
    eps = list(generate_episodes("blockfind", episodes=4, seed=2, image_size=32))
    ds = LeRobotDataset(tmp_path / "bf")
    assert len(ds) == sum(len(e["actions"]) for e in eps)
    np.testing.assert_array_equal(ds.actions(), np.concatenate([e["actions"] for e in eps]))
    first = ds.sample(0, horizon=4)
    np.testing.assert_array_equal(first["image"], eps[0]["image"][0])  # PNG is lossless
    np.testing.assert_array_equal(first["wrist_image"], eps[0]["wrist_image"][0])
    assert first["instruction"] == eps[0]["task"] and first["actions"].shape == (4, 7)


def test_a_recipe_generates_paired_demos_when_asked(tmp_path):
    from tinyvla.recipe import load_recipe
    from tinyvla.training.data import resolve_dataset

    recipe = load_recipe(NAMED_RECIPE, [
        f"data.repo={tmp_path / 'bf'}", "data.generate_episodes=4", "data.generate_paired=true",
        "data.generate_blocks=2"])
    reader = resolve_dataset(recipe, log=lambda *a: None)
    episodes = np.asarray(reader.episode_index())
    first = [reader.sample(int(np.flatnonzero(episodes == e)[0]), 1) for e in range(4)]
    np.testing.assert_array_equal(first[0]["image"], first[1]["image"])  # two blocks: two demos per layout
    assert first[0]["instruction"] != first[1]["instruction"]
    assert not np.array_equal(first[1]["image"], first[2]["image"])


def test_reused_demos_made_with_other_settings_are_refused(tmp_path):
    from tinyvla.recipe import load_recipe
    from tinyvla.training.data import resolve_dataset

    repo = f"data.repo={tmp_path / 'bf'}"
    resolve_dataset(load_recipe(NAMED_RECIPE, [repo, "data.generate_episodes=2"]), log=lambda *a: None)
    # the same kind of demos, another count: reused as they are
    resolve_dataset(load_recipe(NAMED_RECIPE, [repo, "data.generate_episodes=5"]), log=lambda *a: None)
    with pytest.raises(UserError, match=r"generated with other settings: paired False \(recipe: True\).*remove it"):
        resolve_dataset(load_recipe(NAMED_RECIPE, [repo, "data.generate_paired=true"]), log=lambda *a: None)


def test_demos_worded_otherwise_than_the_env_are_refused(tmp_path, monkeypatch):
    from tinyvla.envs import blockfind
    from tinyvla.recipe import load_recipe
    from tinyvla.training.data import resolve_dataset

    recipe = load_recipe(NAMED_RECIPE, [f"data.repo={tmp_path / 'bf'}", "data.generate_episodes=2"])
    with monkeypatch.context() as m:  # demos made by an older tinyvla, whose template put the colour first
        m.setattr(blockfind, "INSTRUCTION", "pick up the {color} block")
        resolve_dataset(recipe, log=lambda *a: None)
    with pytest.raises(UserError, match=r"worded 'pick up the \w+ block'; this version says "
                                        r"'pick up the block that is red': remove it"):
        resolve_dataset(recipe, log=lambda *a: None)


def test_the_named_colour_is_read_back_from_the_instruction():
    from tinyvla.envs.blockfind import INSTRUCTION

    assert [color_named_in(INSTRUCTION.format(color=c)) for c in COLORS] == list(COLORS)
    assert INSTRUCTION.format(color="blue").split()[-1] == "blue"  # last word: what instruction_position=end needs
    with pytest.raises(UserError, match="must name exactly one of"):
        color_named_in("pick up the purple block")


def test_x_first_expert_aligns_x_before_moving_along_y(tmp_path):
    eps = list(generate_episodes("blockfind", episodes=20, seed=4, image_size=16, path="x_first"))
    assert all(e["success"] for e in eps)
    moves = np.concatenate([e["actions"][:, :2] for e in eps])
    both = np.mean((moves[:, 0] != 0) & (moves[:, 1] != 0))
    assert both < 0.1  # only the expert's random recovery moves (noise 0.1) touch both axes
    diagonal = np.concatenate([e["actions"][:, :2] for e in generate_episodes("blockfind", 20, 4, image_size=16)])
    assert np.mean((diagonal[:, 0] != 0) & (diagonal[:, 1] != 0)) > 0.3
    with pytest.raises(UserError, match="unknown expert path 'zigzag'"):
        list(generate_episodes("blockfind", 1, 0, image_size=16, path="zigzag"))


def test_demos_of_another_expert_path_are_refused(tmp_path):
    import json

    from tinyvla.recipe import load_recipe
    from tinyvla.training.data import resolve_dataset

    repo = f"data.repo={tmp_path / 'bf'}"
    resolve_dataset(load_recipe(NAMED_RECIPE, [repo, "data.generate_episodes=2", "data.generate_path=diagonal"]),
                    log=lambda *a: None)
    settings = tmp_path / "bf" / "meta" / "blockfind_generation.json"
    assert json.loads(settings.read_text())["path"] == "diagonal"
    with pytest.raises(UserError, match=r"path 'diagonal' \(recipe: 'x_first'\)"):
        resolve_dataset(load_recipe(NAMED_RECIPE, [repo, "data.generate_path=x_first"]), log=lambda *a: None)
    # a settings file from before the path was recorded: those demos were diagonal
    old = {k: v for k, v in json.loads(settings.read_text()).items() if k != "path"}
    settings.write_text(json.dumps(old))
    resolve_dataset(load_recipe(NAMED_RECIPE, [repo, "data.generate_path=diagonal"]), log=lambda *a: None)
    with pytest.raises(UserError, match="path"):
        resolve_dataset(load_recipe(NAMED_RECIPE, [repo, "data.generate_path=x_first"]), log=lambda *a: None)


def test_continuous_expert_moves_in_proportion_and_succeeds(tmp_path):
    import json

    from tinyvla.cli.main import main
    from tinyvla.envs.blockfind import MOVE_SCALE

    env = make_env("blockfind-reach", image_size=16)
    assert run_policy(lambda: make_env("blockfind-reach", image_size=16),
                      lambda e, o, r: expert_action(e, r, kind="continuous"), 100, 0) >= 0.95
    env.reset(seed=3)
    d = env.block_pos[env.block_colors.index(env.target_color)] - env.gripper_pos
    a = expert_action(env, np.random.default_rng(0), noise=0.0, kind="continuous")
    assert np.allclose(a[:2], np.clip(0.7 * d / MOVE_SCALE, -1, 1), atol=1e-6) and a[6] == -1.0
    moves = np.concatenate([e["actions"][:, :2] for e in generate_episodes("blockfind-reach", 30, 1, image_size=16,
                                                                             expert="continuous")])
    assert len(np.unique(np.round(moves, 4))) > 50  # not the coarse expert's -1 / 0 / +1
    assert np.abs(moves).max() <= 1.0
    with pytest.raises(UserError, match="unknown expert kind 'fine'"):
        list(generate_episodes("blockfind-reach", 1, 0, image_size=16, expert="fine"))
    # `data generate --expert` records it with the demos, where a recipe's data.generate_expert is compared
    assert main(["data", "generate", "blockfind-reach", "--episodes", "2", "--out", str(tmp_path / "d"),
                 "--image-size", "16", "--expert", "continuous"]) == 0
    assert json.loads((tmp_path / "d" / "meta" / "blockfind_generation.json").read_text())["expert"] == "continuous"
    from tinyvla.recipe import load_recipe
    from tinyvla.training.data import resolve_dataset

    with pytest.raises(UserError, match=r"expert 'continuous' \(recipe: 'coarse'\)"):
        resolve_dataset(load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "tiny-cpu.yaml",
                                    [f"data.repo={tmp_path / 'd'}"]), log=lambda *a: None)
    with pytest.raises(UserError, match="data.generate_expert"):
        load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "tiny-cpu.yaml", ["data.generate_expert=x"])
