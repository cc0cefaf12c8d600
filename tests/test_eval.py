"""Closed-loop evaluation: real BlockFind envs (in-process and in worker processes), resume, shards, failures, videos,
a real tiny policy, offline evaluation, the Typer command, and one real LIBERO episode when the simulator is there."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinyvla.evaluate import evaluate, run_offline
from tinyvla.envs.blockfind import BlockFindEnv
from tinyvla.errors import UserError
from tinyvla.envs.suites import EnvFactory, setup_suite
from tinyvla.evaluation.baselines import RandomPolicy
from tinyvla.evaluation.episodes import episode_list, parse_tasks
from tinyvla.evaluation.rollout import run_episodes
from tinyvla.evaluation.slots import WorkerSlot, make_slots
from tinyvla.evaluation.results import EpisodeLog, checkpoint_identity
from tinyvla.evaluation.video import compose_frame


def _run(out, ckpt="random", suite="blockfind-reach", **kw):
    return evaluate(ckpt, suite=suite, out=out, **kw)


def _records(out):
    """episodes.jsonl without the timing field, keyed by (task_id, episode)."""
    return {k: {f: v for f, v in r.items() if f != "seconds"} for k, r in EpisodeLog(out).load().items()}


# ----------------------------------------------------------------------------------------------------------------------
# baselines, results.json


@pytest.mark.parametrize("num_envs", [1, 3])
def test_baselines_write_results(tmp_path, num_envs):
    res = _run(tmp_path / "expert", "expert", episodes_per_task=6, num_envs=num_envs)
    saved = json.loads((tmp_path / "expert" / "results.json").read_text())
    assert saved["suite"] == "blockfind-reach" and saved["episodes"] == 6 and saved["complete"] is True
    assert saved["success_rate"] >= 0.9  # the scripted expert without noise
    (task,) = saved["tasks"]
    assert task["task"] == "pick up the block that is red" and task["episodes"] == 6
    assert task["success_rate"] == task["successes"] / 6 == saved["success_rate"]
    p = saved["protocol"]
    assert (p["seed"], p["max_steps"], p["resolution"], p["num_envs"], p["shard"]) == (7, 40, 64, num_envs, "0/1")
    assert set(saved["versions"]) >= {"tinyvla", "torch", "transformers", "mujoco", "robosuite", "libero"}
    assert saved["checkpoint"] == {"baseline": "expert"} and res["success_rate"] == saved["success_rate"]

    rnd = _run(tmp_path / "random", "random", episodes_per_task=6, num_envs=num_envs)
    assert rnd["success_rate"] < saved["success_rate"]
    lines = (tmp_path / "random" / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == 6
    for r in map(json.loads, lines):
        assert {"task_id", "task", "episode", "seed", "success", "steps", "seconds"} <= set(r)
        assert 1 <= r["steps"] <= 40


def test_episodes_do_not_depend_on_num_envs(tmp_path):
    # Each episode is seeded from its ids: one env or three (other slot order) give the same episodes.
    _run(tmp_path / "a", episodes_per_task=5, num_envs=1)
    _run(tmp_path / "b", episodes_per_task=5, num_envs=3)
    a, b = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert a == b and len(a) == 5
    assert len({r["seed"] for r in a.values()}) == 5


# ----------------------------------------------------------------------------------------------------------------------
# resume and shards


def test_resume_skips_finished_episodes(tmp_path):
    out = tmp_path / "run"
    first = _run(out, suite="blockfind", episodes_per_task=2)  # 4 tasks x 2
    assert first["run"]["episodes"] == 8
    log = out / "episodes.jsonl"
    lines = log.read_text().splitlines()
    # Drop two episodes and tear the last line, as a crash mid-write would.
    kept = lines[:3] + lines[5:]
    log.write_text("\n".join(kept) + "\n" + kept[-1][: len(kept[-1]) // 2])
    again = _run(out, suite="blockfind", episodes_per_task=2)
    assert again["run"]["episodes"] == 2  # only the two missing ones ran
    assert again["tasks"] == first["tasks"] and again["success_rate"] == first["success_rate"]
    nothing = _run(out, suite="blockfind", episodes_per_task=2)
    assert nothing["run"]["seconds"] >= 0 and "episodes" not in nothing["run"]  # nothing left to run
    assert nothing["tasks"] == first["tasks"]
    # An episode recorded as an error (a crashed worker, say) is tried again; the newest record wins.
    EpisodeLog(out).append({"task_id": 3, "task": "pick up the yellow block", "episode": 1, "success": False,
                            "steps": 0, "seconds": 0.0, "error": "env reset: env worker died (exit code -9)"})
    retried = _run(out, suite="blockfind", episodes_per_task=2)
    assert retried["run"]["episodes"] == 1 and retried["errors"] == 0 and retried["tasks"] == first["tasks"]


def test_shards_partition_the_episodes(tmp_path):
    full = _run(tmp_path / "full", suite="blockfind", episodes_per_task=3)
    s0 = _run(tmp_path / "s0", suite="blockfind", episodes_per_task=3, shard="0/2")
    s1 = _run(tmp_path / "s1", suite="blockfind", episodes_per_task=3, shard="1/2")
    k0, k1 = set(_records(tmp_path / "s0")), set(_records(tmp_path / "s1"))
    assert not k0 & k1 and k0 | k1 == set(_records(tmp_path / "full")) and len(k0 | k1) == 12
    assert s0["complete"] is False and s0["episodes"] + s1["episodes"] == 12
    assert {**_records(tmp_path / "s0"), **_records(tmp_path / "s1")} == _records(tmp_path / "full")

    # Shards into one --out, then the unsharded command: it runs nothing new and prints the full table.
    shared = tmp_path / "shared"
    _run(shared, suite="blockfind", episodes_per_task=3, shard="1/2")
    rest = _run(shared, suite="blockfind", episodes_per_task=3)
    assert rest["run"]["episodes"] == 6 and rest["complete"] is True
    assert rest["tasks"] == full["tasks"] and rest["success_rate"] == full["success_rate"]


def test_rerun_with_other_settings_is_refused(tmp_path):
    _run(tmp_path, episodes_per_task=1, max_steps=5)
    with pytest.raises(UserError, match="differs in: protocol"):
        _run(tmp_path, episodes_per_task=1, max_steps=6)


# ----------------------------------------------------------------------------------------------------------------------
# failures


class FlakyEnv(BlockFindEnv):
    """A real BlockFind env that raises on the 3rd step of one chosen episode (by its reset seed)."""

    def __init__(self, bad_seed, **kw):
        super().__init__(suite="blockfind-reach", **kw)
        self.bad_seed, self.seed = bad_seed, None

    def reset(self, seed=None, options=None):
        self.seed = seed
        return super().reset(seed=seed, options=options)

    def step(self, action):
        if self.seed == self.bad_seed and self.steps == 2:
            raise RuntimeError("simulated physics blow-up")
        return super().step(action)


def test_env_that_raises_is_an_error_episode():
    setup = setup_suite("blockfind-reach")
    episodes = episode_list(setup, [0], 4)
    bad = episodes[1].seed
    builds = []

    def factory(task_id):
        builds.append(task_id)
        return FlakyEnv(bad, max_steps=10)

    records = []
    slots = make_slots(setup, 2, factory=factory)
    stats = run_episodes(episodes, RandomPolicy(), slots, records.append)
    by_ep = {r["episode"]: r for r in records}
    assert sorted(by_ep) == [0, 1, 2, 3] and stats["episodes"] == 4
    assert by_ep[1]["success"] is False and by_ep[1]["steps"] == 2
    assert "RuntimeError: simulated physics blow-up" in by_ep[1]["error"]
    assert all("error" not in by_ep[e] for e in (0, 2, 3))
    assert len(builds) == 3  # two slots, plus the env rebuilt after the failure


def test_policy_that_raises_fails_only_its_episode():
    setup = setup_suite("blockfind-reach", max_steps=8)
    episodes = episode_list(setup, [0], 6)

    class PickyPolicy(RandomPolicy):
        """Breaks on the 3rd step of episode 2 (found through its per-episode seed), whichever slot runs it."""

        def seed_env(self, i, seed):
            super().seed_env(i, seed)
            self.steps = getattr(self, "steps", {})
            self.steps[i] = 0 if seed != episodes[2].policy_seed else -100

        def act_batch(self, observations, instructions, env_ids=None):
            if any(self.steps[i] == -98 for i in env_ids):
                raise ValueError("cannot read this frame")
            for i in env_ids:
                self.steps[i] += 1
            return super().act_batch(observations, instructions, env_ids)

    records = []
    run_episodes(episodes, PickyPolicy(), make_slots(setup, 3), records.append)
    by_ep = {r["episode"]: r for r in records}
    assert sorted(by_ep) == list(range(6))
    assert by_ep[2]["error"].startswith("policy: ValueError: cannot read this frame") and by_ep[2]["steps"] == 2
    assert all("error" not in by_ep[e] for e in (0, 1, 3, 4, 5))  # its batch-mates were retried alone and went on


class ExitingFactory(EnvFactory):
    """Picklable factory for worker processes: its env kills the whole worker process mid-episode."""

    def __init__(self, bad_seed):
        super().__init__("blockfind-reach", {"max_steps": 10})
        self.bad_seed = bad_seed

    def __call__(self, task_id):
        return _ExitingEnv(self.bad_seed, **self.kwargs)


class _ExitingEnv(FlakyEnv):
    def step(self, action):
        if self.seed == self.bad_seed and self.steps == 2:
            os._exit(3)  # a segfaulting simulator looks like this from the parent
        return BlockFindEnv.step(self, action)


def test_worker_processes_match_in_process_and_survive_a_crash():
    setup = setup_suite("blockfind-reach", max_steps=10)
    episodes = episode_list(setup, [0], 4)
    local, workers = [], []
    run_episodes(episodes, RandomPolicy(), make_slots(setup, 2), local.append)
    factory = ExitingFactory(bad_seed=episodes[2].seed)
    slots = make_slots(setup, 2, factory=factory, processes=True)
    assert all(isinstance(s, WorkerSlot) for s in slots)
    run_episodes(episodes, RandomPolicy(), slots, workers.append)
    assert all(not s.proc.is_alive() for s in slots)  # closed at the end
    strip = lambda rs: {r["episode"]: {k: v for k, v in r.items() if k != "seconds"} for r in rs}  # noqa: E731
    w, l = strip(workers), strip(local)
    assert "env worker died (exit code 3)" in w[2]["error"] and w[2]["steps"] == 2
    assert {e: w[e] for e in (0, 1, 3)} == {e: l[e] for e in (0, 1, 3)}  # the restarted worker carried on


# ----------------------------------------------------------------------------------------------------------------------
# user errors


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="valid suites: blockfind-reach, blockfind, libero_spatial"):
        _run(tmp_path, suite="libero_100")
    for bad in ("2/2", "1-2", "a/b", "0/0"):
        with pytest.raises(UserError, match="--shard"):
            _run(tmp_path, shard=bad)
    with pytest.raises(UserError, match="policy not found: .*missing"):
        _run(tmp_path, ckpt=str(tmp_path / "missing" / "final"))
    with pytest.raises(UserError, match="tasks 0..3"):
        _run(tmp_path, suite="blockfind", tasks="1,7")
    with pytest.raises(UserError, match="no scripted expert"):
        _run(tmp_path, ckpt="expert", suite="libero_object")
    with pytest.raises(UserError, match="--suite is required"):
        evaluate("random", out=tmp_path)
    with pytest.raises(UserError, match="--execute-horizon .* baselines"):
        _run(tmp_path, execute_horizon=2)
    with pytest.raises(UserError, match="--offline needs --repo"):
        evaluate("random", offline=True)
    assert not (tmp_path / "episodes.jsonl").exists()  # nothing ran


def test_missing_simulator_is_a_user_error(tmp_path, monkeypatch):
    from tinyvla.envs import libero as L

    monkeypatch.setattr(L, "_LIBERO", None)
    monkeypatch.setattr(L, "libero_installed", lambda: False)
    with pytest.raises(UserError, match=r"not installed: run `bash scripts/install-sim.sh`"):
        _run(tmp_path, suite="libero_spatial")


def test_parse_tasks():
    assert parse_tasks("0,2,5-7", 10) == [0, 2, 5, 6, 7]
    assert parse_tasks(None, 3) == [0, 1, 2]
    with pytest.raises(UserError, match="expected task ids"):
        parse_tasks("x", 3)


# ----------------------------------------------------------------------------------------------------------------------
# videos


def test_video_frames_and_files(tmp_path):
    obs = {"image": np.zeros((64, 64, 3), np.uint8), "wrist_image": np.full((64, 64, 3), 200, np.uint8)}
    frame = compose_frame(obs, 12, "pick up the red block")
    assert frame.shape[0] % 16 == 0 and frame.shape[1] % 16 == 0 and frame.shape[0] >= 256
    assert frame[:40].max() == 255  # caption text drawn in the band
    _run(tmp_path, "expert", episodes_per_task=3, video=2)
    records = EpisodeLog(tmp_path).load()
    videos = sorted(p.name for p in (tmp_path / "videos").iterdir())
    assert videos == [f"task00_ep00{e}_{'success' if records[(0, e)]['success'] else 'fail'}.mp4" for e in (0, 1)]
    import imageio.v2 as imageio

    reader = imageio.get_reader(tmp_path / "videos" / videos[0])
    frames = [f for f in reader]
    assert len(frames) == records[(0, 0)]["steps"] + 1  # the reset frame + one per step
    assert frames[0].shape == frame.shape


# ----------------------------------------------------------------------------------------------------------------------
# a real tiny policy (constrained generation through the stock transformers model)


@pytest.fixture(scope="module")
def tiny_policy_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    import torch

    from tinyvla.core.codec import ActionStats
    from tinyvla.core.prompt import PromptSpec
    from tinyvla.data.transforms import ImageSpec
    from tinyvla.modeling.loading import load_model
    from tinyvla.policy import Policy
    from tinyvla.policy_dir import PolicyConfig, save_policy_dir

    # One thread: with two, OpenMP spin-waits on a busy 2-core machine made generation ~80x slower (4.3 s vs 0.05 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model, processor = load_model("tiny-qwen3")
    # H=1 and 9 bins keep generation to 14 tokens per query: the test is about the loop, not the model.
    stats = ActionStats(min=[-1.0] * 7, max=[1.0] * 7)
    config = PolicyConfig(PromptSpec(horizon=1, dim=7, bins=9),
                          ImageSpec(image_size=64, crop_scale=1.0, color_jitter=False), stats)
    policy = Policy(config, model, processor)
    path = tmp_path_factory.mktemp("policy") / "final"
    save_policy_dir(policy, path)
    yield path
    torch.set_num_threads(threads)


def test_tiny_policy_closed_loop(tiny_policy_dir, tmp_path):
    res = _run(tmp_path, str(tiny_policy_dir), episodes_per_task=2, max_steps=5, num_envs=2, ensemble="uniform")
    assert res["episodes"] == 2 and res["complete"]
    assert res["run"]["policy_calls"] <= 5  # both envs in one batched call per step
    assert res["protocol"]["ensemble"]["weighting"] == "uniform"
    # how the policy decoded and trained: plain constrained greedy, speculative by default; the colour jitter
    assert res["protocol"]["decoding"] == {"method": "constrained_greedy", "repetition_penalty": 1.0,
                                           "speculative": True}
    assert res["protocol"]["training_color_jitter"] in ("shared", "per_view", "off")
    ident = res["checkpoint"]
    assert ident == checkpoint_identity(tiny_policy_dir) and len(ident["sha256"]) == 64
    assert ident["files"] == ["model/model.safetensors", "policy.json"]
    for r in EpisodeLog(tmp_path).load().values():
        assert "error" not in r and 1 <= r["steps"] <= 5


def test_policy_dir_without_action_stats(tiny_policy_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_policy_dir, broken)
    cfg = json.loads((broken / "policy.json").read_text())
    del cfg["action_stats"]
    (broken / "policy.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="action_stats") as err:
        _run(tmp_path / "out", str(broken), episodes_per_task=1)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="--execute-horizon must be in 1..1"):
        _run(tmp_path / "out", str(tiny_policy_dir), episodes_per_task=1, execute_horizon=2)


def test_offline_on_heldout_episodes(tiny_policy_dir, tmp_path):
    from tinyvla.envs.blockfind import generate_dataset
    from tinyvla.policy import Policy
    from tinyvla.policy_dir import save_policy_dir
    from tinyvla.recipe import recipe_from_dict
    from tinyvla.training.data import resolve_dataset, split_episodes

    repo = tmp_path / "data"
    generate_dataset("blockfind-reach", 4, repo, seed=0)
    # A policy that carries its training recipe: --offline scores the episodes that training held out.
    recipe = recipe_from_dict({"data": {"suite": "blockfind-reach", "repo": str(repo), "val_episodes": 1}})
    save_policy_dir(Policy.from_pretrained(tiny_policy_dir, device="cpu"), tmp_path / "final", recipe=recipe.to_dict())
    res = evaluate(str(tmp_path / "final"), offline=True, repo=str(repo), offline_frames=3, out=tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "offline.json").read_text())
    assert saved["frames"] == res["frames"] == 3 and "held-out" in saved["split"]
    assert len(saved["l1"]) == 7 and saved["grammar_valid_rate"] == 1.0
    assert saved["checkpoint"]["sha256"] == checkpoint_identity(tmp_path / "final")["sha256"]
    assert (tmp_path / "out" / "offline_pred_vs_true.png").stat().st_size > 1000
    reader = resolve_dataset(recipe, log=lambda *_: None)
    _, val = split_episodes(reader, 1, recipe.train.seed)
    assert saved["episodes"] == sorted({int(e) for e in np.asarray(reader.episode_index())[val]})  # the held-out one

    # Without a recipe every frame is fair game.
    policy = Policy.from_pretrained(tiny_policy_dir, device="cpu")
    res = run_offline(policy, {}, str(repo), tmp_path / "out2", n_frames=2)
    assert res["frames"] == 2
    assert json.loads((tmp_path / "out2" / "offline.json").read_text())["split"].startswith("all frames")


# ----------------------------------------------------------------------------------------------------------------------
# the Typer command


def test_typer_command(tmp_path):
    import typer
    from typer.testing import CliRunner

    from tinyvla.cli.evaluate import evaluate as eval_command

    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("noop")(lambda: None)  # two commands: `eval` stays a named sub-command, as in tinyvla's app
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "expert", "--suite", "blockfind", "--episodes-per-task", "1", "--tasks", "1-2",
                              "--num-envs", "2", "--out", str(tmp_path)], env={"COLUMNS": "160"})  # no wrapped rows
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [t["task"] for t in saved["tasks"]] == ["pick up the block that is green", "pick up the block that is blue"]
    assert "pick up the block that is green" in res.output
    res = runner.invoke(app, ["eval", "random", "--suite", "nope", "--out", str(tmp_path)])
    assert isinstance(res.exception, UserError)


# ----------------------------------------------------------------------------------------------------------------------
# LIBERO


@pytest.mark.libero
@pytest.mark.slow
def test_libero_episode_with_a_tiny_policy(tmp_path):
    pytest.importorskip("libero")
    from tinyvla.envs.libero import libero_installed

    if not libero_installed():
        pytest.skip("LIBERO simulator not installed (bash scripts/install-sim.sh)")
    # A real tiny Qwen3-VL policy, trained for a few steps on LIBERO-schema data, acting in the real simulator.
    from tinyvla.recipe import load_recipe
    from tinyvla.training.smoke import smoke_recipe
    from tinyvla.training.trainer import train

    root = Path(__file__).resolve().parents[1]
    cfg = smoke_recipe(load_recipe(root / "recipes" / "tiny-cpu.yaml", [
        f"data.repo={root / 'tests' / 'fixtures' / 'libero_v20_tiny'}", "data.suite=null",
        f"train.out_dir={tmp_path / 'train'}"]))
    policy_dir = train(cfg, smoke_test=True).policy_dir
    out = tmp_path / "eval"
    res = _run(out, str(policy_dir), suite="libero_object", episodes_per_task=1, tasks="0", max_steps=30, video=1)
    tmp_path = out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(res))
    (record,) = EpisodeLog(tmp_path).load().values()
    assert "error" not in record, record
    assert record["init_state_index"] == 0 and record["steps"] <= 30
    assert saved["tasks"][0]["task"] == "pick up the alphabet soup and place it in the basket"
    p = saved["protocol"]
    assert (p["seed"], p["max_steps"], p["wait_steps"], p["resolution"]) == (7, 30, 10, 256)
    assert p["rotate_180"] is True and p["snap_gripper"] is True and p["init_state_indices"] == [0]
    v = saved["versions"]
    assert v["mujoco"] and v["robosuite"] and v["libero"] and v["torch"]
    (video,) = (tmp_path / "videos").iterdir()
    assert video.suffix == ".mp4" and video.stat().st_size > 10_000


def test_training_probe_uses_the_rollout_code():
    from tinyvla.evaluation.probe import probe_success
    from tinyvla.evaluation.baselines import ExpertPolicy, RandomPolicy

    assert probe_success(ExpertPolicy(), "blockfind-reach", episodes=10, num_envs=5) >= 0.9
    assert probe_success(RandomPolicy(seed=0), "blockfind-reach", episodes=10, num_envs=5) <= 0.5
