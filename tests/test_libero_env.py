"""LIBERO env wrapper: the protocol and observation maths always; one real simulator episode when it is installed."""

import numpy as np
import pytest

from tinyvla.envs import libero as L
from tinyvla.errors import UserError


def test_protocol_defaults_resolve_per_suite():
    d = L.LiberoProtocol().to_dict()
    assert d == {
        "seed": 7, "max_steps": None, "wait_steps": 10, "resolution": 256, "rotate_180": True,
        "snap_gripper": True, "init_state_indices": None, "seeding": "per_task",
    }
    with pytest.raises(UserError, match="seeding must be one of per_task, per_episode"):
        L.LiberoProtocol(seeding="per_run").resolved("libero_goal")
    assert L.LiberoProtocol().resolved("libero_object").max_steps == 280
    assert L.LiberoProtocol().resolved("libero_10").max_steps == 520
    assert L.LiberoProtocol(max_steps=3).resolved("libero_10").max_steps == 3
    with pytest.raises(UserError, match="max_steps"):
        L.LiberoProtocol(max_steps=0).resolved("libero_goal")
    with pytest.raises(UserError, match="init_state_indices is empty"):
        L.LiberoProtocol(init_state_indices=[]).resolved("libero_goal")
    assert L.LiberoProtocol(init_state_indices=(3, 1)).resolved("libero_goal").init_state_indices == [3, 1]


def test_unknown_suite_lists_valid_ones():
    # Checked before the simulator is imported, so this runs (and must fail cleanly) without it.
    with pytest.raises(UserError, match="libero_spatial, libero_object, libero_goal, libero_10, libero_90"):
        L.LiberoEnv("libero_100")
    with pytest.raises(UserError, match="unknown LIBERO suite"):
        L.list_tasks("spatial")


def test_missing_simulator_says_how_to_install(monkeypatch):
    monkeypatch.setattr(L, "_LIBERO", None)
    monkeypatch.setattr(L, "libero_installed", lambda: False)
    with pytest.raises(UserError, match=r"not installed: run `bash scripts/install-sim.sh`"):
        L.LiberoEnv("libero_object", 0)


def test_quat_to_axis_angle():
    s = np.sqrt(0.5)
    np.testing.assert_allclose(L.quat_to_axis_angle([0, 0, 0, 1]), [0, 0, 0])
    np.testing.assert_allclose(L.quat_to_axis_angle([0, 0, s, s]), [0, 0, np.pi / 2], atol=1e-7)  # 90 deg about z
    np.testing.assert_allclose(L.quat_to_axis_angle([1, 0, 0, 0]), [np.pi, 0, 0], atol=1e-7)  # 180 deg about x
    np.testing.assert_allclose(L.quat_to_axis_angle([0, -s, 0, s]), [0, -np.pi / 2, 0], atol=1e-7)


@pytest.mark.libero
@pytest.mark.slow  # ~20 s on 2 cores: env creation ~8 s, hard reset ~3 s, 22 rendered steps at ~150 ms
def test_libero_object_episode():
    # Not pytest.importorskip("libero.libero"): importing it before tinyvla writes LIBERO's config blocks on stdin.
    if not L.libero_installed():
        pytest.skip("LIBERO simulator not installed (bash scripts/install-sim.sh)")
    max_steps = 12
    protocol = L.LiberoProtocol(max_steps=max_steps)
    tasks = L.list_tasks("libero_object")
    assert len(tasks) == 10 and L.num_init_states("libero_object", 0) == 50
    with L.LiberoEnv("libero_object", 0, protocol) as env:
        assert env.instruction == tasks[0] == "pick up the alphabet soup and place it in the basket"
        obs, info = env.reset(options={"init_state_index": 0})
        assert info["init_state_index"] == 0 and info["success"] is False
        assert env._env.env.timestep == protocol.wait_steps  # the no-op settle steps ran
        for key in ("image", "wrist_image"):
            assert obs[key].shape == (256, 256, 3) and obs[key].dtype == np.uint8
        raw = env.raw_obs
        for key, raw_key in (("image", "agentview_image"), ("wrist_image", "robot0_eye_in_hand_image")):
            assert not np.array_equal(obs[key], raw[raw_key])  # the scene is not symmetric, so rotation shows
            np.testing.assert_array_equal(obs[key], raw[raw_key][::-1, ::-1])
        assert obs["state"].shape == (8,) and obs["state"].dtype == np.float32
        np.testing.assert_allclose(obs["state"][:3], raw["robot0_eef_pos"], rtol=1e-6)
        np.testing.assert_allclose(obs["state"][6:], raw["robot0_gripper_qpos"], rtol=1e-6)
        z0, gap0 = obs["state"][2], obs["state"][6] - obs["state"][7]

        # Move up with the gripper command +0.3 (snapped to +1 = close) until the step budget runs out.
        for t in range(1, max_steps + 1):
            obs, reward, terminated, truncated, info = env.step([0, 0, 0.5, 0, 0, 0, 0.3])
            assert not terminated and info["step"] == t
            assert truncated == (t == max_steps)
        assert obs["state"][2] > z0 + 0.01  # the end effector rose
        assert obs["state"][6] - obs["state"][7] < gap0 - 0.005  # the fingers closed
        # Truncated exactly at the env horizon: a further step is our error, not LIBERO's "terminated episode" one.
        assert env._env.env.timestep == env._env.env.horizon == protocol.wait_steps + max_steps
        with pytest.raises(RuntimeError, match="call reset"):
            env.step([0] * 7)
