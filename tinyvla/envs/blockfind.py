"""BlockFind: a tiny numpy table-top for closed-loop tests of a VLA on a CPU.

A square table (coordinates [0, 1] x [0, 1], y pointing away from the viewer) holds a few coloured blocks and a
gripper that hovers over it. The policy sees two cameras, like LIBERO:

  image        top-down view of the whole table, gripper drawn on top
  wrist_image  egocentric view centred on the gripper: the target's offset from the image centre is the direction
               the gripper has to move, which is what a tiny model learns fastest (FACTS §6)

Actions are 7-D, LIBERO style: [dx, dy, dz, droll, dpitch, dyaw, gripper], each clipped to [-1, 1]. dx/dy move the
gripper by up to MOVE_SCALE table units per step; dz and the rotations are accepted and ignored (the table-top is
flat), so a dataset holds them as constant zeros. gripper > 0 means "closed" (-1 = open, +1 = closed).

The episode ends with success when the gripper is closed within GRASP_RADIUS of the named block's centre. Closing on
another block is a terminal failure (the wrong block was picked up); closing on empty table does nothing.

Two suites share the class:
  blockfind-reach  the target is always the red block (distractors of other colours are present)
  blockfind        the instruction names one of the blocks on the table; ignoring the words or the image fails

Everything here is numpy + stdlib: no torch, no gymnasium (the API only follows gymnasium's shape).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from tinyvla.errors import UserError

# ----------------------------------------------------------------------------------------------------------------------
# World constants. Units are table widths.

COLORS = {  # saturated and far apart in hue, so a hue jitter of 0.05 cannot turn one into another
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 70, 230),
    "yellow": (235, 205, 20),
}
TABLE_RGB = (150, 150, 150)  # neutral grey: every block colour stands out on it
FLOOR_RGB = (45, 40, 35)  # what the wrist camera sees past the table edge (a cue for where the gripper is)
GRIPPER_RGB = (15, 15, 15)

BLOCK_SIZE = 0.2  # side of a block: ~13 px in a 64 px scene view (FACTS: 24 px of 128 was too small to learn)
BLOCK_MIN_DIST = 0.3  # centre to centre; > BLOCK_SIZE * sqrt(2) so blocks never overlap
BLOCK_RANGE = (0.15, 0.85)  # block centres stay fully on the table
GRIPPER_RANGE = (0.2, 0.8)  # start positions; with WRIST_HALF_EXTENT the target is always at least partly in view
MOVE_SCALE = 0.08  # table units per step for an action of 1.0
GRASP_RADIUS = 0.08  # gripper centre within this of a block centre (block half-width 0.1: it is over the block)
START_MIN_DIST = 0.2  # the gripper never starts within reach of a block
WRIST_HALF_EXTENT = 0.6  # the wrist camera sees [-0.6, 0.6] around the gripper
GRIPPER_Z = 0.1  # constant hover height, reported in the state
FINGER_OPEN = 0.04  # finger joint positions reported in the state, like the Panda's qpos (+q, -q)

# Home squares for the "home layout" (a training curriculum, never used in evaluation): each colour sits within 0.1
# of its own quadrant centre, so the colour word alone says roughly where to go. Neighbouring squares stay
# BLOCK_MIN_DIST apart (0.75 - 0.25 - 2 * 0.1 = 0.3).
HOME_CENTERS = {"red": (0.25, 0.75), "green": (0.75, 0.75), "blue": (0.25, 0.25), "yellow": (0.75, 0.25)}
HOME_JITTER = 0.1

DEFAULT_MAX_STEPS = 40  # the expert needs at most ~9 moves + 1 grasp; room for noise and for a learner's detours
# One template for both levels. The colour is the LAST word on purpose: with the recipe option
# data.instruction_position=end the first action digit is predicted at this word (core/prompt.py).
INSTRUCTION = "pick up the block that is {color}"


def color_named_in(instruction: str) -> str:
    """The colour an instruction names ("pick up the block that is red" -> "red")."""
    named = [w for w in instruction.split() if w in COLORS]
    if len(named) != 1:
        raise UserError(f"BlockFind instruction {instruction!r} must name exactly one of {', '.join(COLORS)}")
    return named[0]

SUITES = {
    "blockfind-reach": "BlockFind, fixed target: always pick up the red block; distractor blocks of other colours.",
    "blockfind": "BlockFind, named target: the instruction names one of the blocks on the table "
                 "(red/green/blue/yellow).",
}


def make_env(suite: str, **kwargs) -> "BlockFindEnv":
    """Build the env for a suite name; kwargs go to BlockFindEnv (image_size, max_steps, n_blocks, seed)."""
    if suite not in SUITES:
        raise UserError(f"unknown BlockFind suite {suite!r}; valid suites: {', '.join(SUITES)}")
    return BlockFindEnv(suite=suite, **kwargs)


class BlockFindEnv:
    """Gymnasium-style table-top: reset(seed, options) -> (obs, info); step(action) -> (obs, r, term, trunc, info)."""

    def __init__(self, suite: str = "blockfind", image_size: int = 64, max_steps: int = DEFAULT_MAX_STEPS,
                 n_blocks: int = 3, seed: int | None = None):
        if suite not in SUITES:
            raise UserError(f"unknown BlockFind suite {suite!r}; valid suites: {', '.join(SUITES)}")
        if not 16 <= int(image_size) <= 1024:
            raise UserError(f"BlockFind image_size must be between 16 and 1024 pixels, got {image_size}")
        if not 2 <= int(n_blocks) <= len(COLORS):
            raise UserError(f"BlockFind n_blocks must be between 2 and {len(COLORS)}, got {n_blocks}")
        if int(max_steps) < 1:
            raise UserError(f"BlockFind max_steps must be at least 1, got {max_steps}")
        self.suite = suite
        self.image_size = int(image_size)
        self.max_steps = int(max_steps)
        self.n_blocks = int(n_blocks)
        self._rng = np.random.default_rng(seed)
        self.instruction = ""
        self.target_color = ""
        self.block_colors: list[str] = []
        self.block_pos = np.zeros((0, 2))
        self.gripper_pos = np.zeros(2)
        self.gripper_closed = False
        self.steps = 0
        self._done = True
        # The scene view never changes within an episode except for the gripper: draw the table and blocks once per
        # reset and copy it each step (a copy of 12 KB is far cheaper than redrawing).
        self._scene_bg = None

    # ------------------------------------------------------------------------------------------------------------------
    # gymnasium-style API

    def reset(self, seed: int | None = None, options: dict | None = None):
        """Start an episode. `seed` reseeds the env's generator (as in gymnasium). Options: `target_color` forces the
        named colour (it is put on the table); `home_layout=True` puts each block in its colour's home square
        (HOME_CENTERS; a training curriculum in which the colour word alone points the way)."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        options = dict(options or {})
        forced = options.pop("target_color", None)
        home_layout = bool(options.pop("home_layout", False))
        if options:
            raise UserError(f"unknown BlockFind reset options {sorted(options)}; valid: 'target_color', 'home_layout'")
        if forced is not None and forced not in COLORS:
            raise UserError(f"unknown target_color {forced!r}; valid colours: {', '.join(COLORS)}")
        rng = self._rng
        names = list(COLORS)

        # Colours: the target plus distinct distractors. The reach level always asks for red.
        if self.suite == "blockfind-reach":
            target = forced or "red"
            others = [c for c in names if c != target]
            colors = [target] + list(rng.choice(others, size=self.n_blocks - 1, replace=False))
        else:
            colors = list(rng.choice(names, size=self.n_blocks, replace=False))
            if forced is not None and forced not in colors:
                colors[0] = forced
            target = forced or colors[int(rng.integers(self.n_blocks))]
        rng.shuffle(colors)  # the target's index carries no information

        self.block_colors = [str(c) for c in colors]
        if home_layout:
            home = np.array([HOME_CENTERS[c] for c in self.block_colors])
            self.block_pos = home + rng.uniform(-HOME_JITTER, HOME_JITTER, size=home.shape)
        else:
            self.block_pos = _sample_separated(rng, self.n_blocks, BLOCK_RANGE, BLOCK_MIN_DIST)
        # Rejection-sample the gripper start so that no block is already within reach.
        for _ in range(1000):
            g = rng.uniform(*GRIPPER_RANGE, size=2)
            if np.min(np.linalg.norm(self.block_pos - g, axis=1)) >= START_MIN_DIST:
                break
        self.gripper_pos = g
        self.gripper_closed = False
        self.target_color = str(target)
        self.instruction = INSTRUCTION.format(color=self.target_color)
        self.steps = 0
        self._done = False
        self._scene_bg = self._draw_scene_background()
        return self._obs(), self._info(success=False)

    def retarget(self, color: str):
        """Name another block already on the table as the target, keeping the layout and the gripper (paired demos:
        the same first image under every instruction, so only the words tell the demonstrations apart)."""
        if color not in self.block_colors:
            raise UserError(f"target colour {color!r} is not on the table; blocks: {', '.join(self.block_colors)}")
        self.target_color = str(color)
        self.instruction = INSTRUCTION.format(color=self.target_color)
        return self._obs(), self._info(success=False)

    def step(self, action):
        if self._done:
            raise UserError("BlockFind episode is over (or never started): call env.reset() before env.step()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (7,) or not np.all(np.isfinite(a)):
            raise UserError(f"BlockFind actions must be 7 finite numbers (6 eef deltas + gripper), "
                            f"got shape {np.asarray(action).shape}")
        a = np.clip(a, -1.0, 1.0)
        self.gripper_pos = np.clip(self.gripper_pos + a[:2] * MOVE_SCALE, 0.0, 1.0)
        self.gripper_closed = bool(a[6] > 0)
        self.steps += 1

        success, grasped = False, None
        if self.gripper_closed:
            dist = np.linalg.norm(self.block_pos - self.gripper_pos, axis=1)
            i = int(np.argmin(dist))
            if dist[i] <= GRASP_RADIUS:
                grasped = self.block_colors[i]
                success = grasped == self.target_color
        terminated = grasped is not None  # success, or the wrong block is in the hand
        truncated = not terminated and self.steps >= self.max_steps
        self._done = terminated or truncated
        info = self._info(success=success)
        info["grasped"] = grasped
        return self._obs(), float(success), terminated, truncated, info

    # ------------------------------------------------------------------------------------------------------------------
    # observations

    def _info(self, success: bool) -> dict:
        return {"success": bool(success), "target_color": self.target_color, "steps": self.steps}

    def _obs(self) -> dict:
        q = 0.0 if self.gripper_closed else FINGER_OPEN
        state = np.array([*self.gripper_pos, GRIPPER_Z, 0.0, 0.0, 0.0, q, -q], dtype=np.float32)
        return {"image": self._render_scene(), "wrist_image": self._render_wrist(), "state": state}

    def _draw_scene_background(self) -> np.ndarray:
        s = self.image_size
        img = np.empty((s, s, 3), dtype=np.uint8)
        img[:] = TABLE_RGB
        for color, (x, y) in zip(self.block_colors, self.block_pos):
            _fill(img, x, y, BLOCK_SIZE / 2, BLOCK_SIZE / 2, COLORS[color], 0.0, 1.0, s)
        return img

    def _render_scene(self) -> np.ndarray:
        img = self._scene_bg.copy()
        _draw_gripper(img, self.gripper_pos[0], self.gripper_pos[1], self.gripper_closed, 0.0, 1.0, self.image_size)
        return img

    def _render_wrist(self) -> np.ndarray:
        s, w = self.image_size, WRIST_HALF_EXTENT
        gx, gy = self.gripper_pos
        x0, y1 = gx - w, gy + w  # left and top edges of the view in table coordinates
        img = np.empty((s, s, 3), dtype=np.uint8)
        img[:] = FLOOR_RGB
        _fill(img, 0.5, 0.5, 0.5, 0.5, TABLE_RGB, x0, y1, s / (2 * w))
        for color, (x, y) in zip(self.block_colors, self.block_pos):
            _fill(img, x, y, BLOCK_SIZE / 2, BLOCK_SIZE / 2, COLORS[color], x0, y1, s / (2 * w))
        _draw_gripper(img, gx, gy, self.gripper_closed, x0, y1, s / (2 * w))
        return img


# ----------------------------------------------------------------------------------------------------------------------
# drawing helpers: axis-aligned rectangles as array slices (a few microseconds each)


def _fill(img, cx, cy, hx, hy, rgb, x0, y1, scale):
    """Fill the rectangle centred at (cx, cy) with half-sizes (hx, hy); (x0, y1) is the view's top-left corner in
    table coordinates and `scale` pixels per table unit. Rows grow downwards, so y is flipped."""
    s = img.shape[0]
    c0 = int(round((cx - hx - x0) * scale))
    c1 = int(round((cx + hx - x0) * scale))
    r0 = int(round((y1 - (cy + hy)) * scale))
    r1 = int(round((y1 - (cy - hy)) * scale))
    c0, c1, r0, r1 = max(c0, 0), min(c1, s), max(r0, 0), min(r1, s)
    if c0 < c1 and r0 < r1:
        img[r0:r1, c0:c1] = rgb


def _draw_gripper(img, gx, gy, closed, x0, y1, scale):
    """A U-shaped two-finger gripper seen from above, open (wide) or closed (narrow). The fingers are thin so the
    colour of a block under the gripper stays visible between them. At least one pixel wide at any size."""
    px = 1.0 / scale
    gap = 0.035 if closed else 0.085
    fw = max(0.015, px / 2)  # finger half-width
    fh = 0.06  # finger half-length
    for side in (-1, 1):
        _fill(img, gx + side * gap, gy, fw, fh, GRIPPER_RGB, x0, y1, scale)
    _fill(img, gx, gy + fh, gap + fw, max(0.012, px / 2), GRIPPER_RGB, x0, y1, scale)  # palm joining the fingers


def _sample_separated(rng, n, lo_hi, min_dist, tries=1000) -> np.ndarray:
    """n points uniform in [lo, hi]^2 with all pairwise distances >= min_dist (rejection sampling, point by point)."""
    lo, hi = lo_hi
    for _ in range(tries):
        pts = []
        for _ in range(50 * n):
            p = rng.uniform(lo, hi, size=2)
            if all(np.hypot(*(p - q)) >= min_dist for q in pts):
                pts.append(p)
                if len(pts) == n:
                    return np.array(pts)
    raise RuntimeError("could not place the blocks apart; lower BLOCK_MIN_DIST")  # unreachable for n <= 4


# ----------------------------------------------------------------------------------------------------------------------
# policies


# How the expert travels to the block: both axes at once, or along x until aligned and only then along y. With x first,
# the choice of block is made by dx — the first integer of the answer, predicted at the instruction's last word under
# instruction_position=end — while dy only has to finish the move to the block in the gripper's column.
EXPERT_PATHS = ("diagonal", "x_first")
# How big the expert's moves are: coarse (each axis -1, 0 or +1: ints 0 / 500 / 1000, which a tiny model learns best and
# which makes chunk-shift speculation look better than it is) or continuous (proportional to the remaining distance,
# clipped to one full move: every integer of the answer carries information, as on a real robot).
EXPERT_KINDS = ("coarse", "continuous")
CONTINUOUS_GAIN = 0.7  # share of the remaining offset covered per step (FACTS §6's continuous expert)


def expert_action(env: BlockFindEnv, rng: np.random.Generator, noise: float = 0.1, color: str | None = None,
                  step: float = 1.0, path: str = "diagonal", kind: str = "coarse") -> np.ndarray:
    """Scripted noisy expert with coarse actions (FACTS §6: a tiny model learns these far better than continuous ones).

    Each movement axis is -step, 0 or +step (ints 0 / 500 / 1000 after min/max scaling): move towards the block of
    `color` (default: the instruction's target) until both axis offsets are within half a move, then close the gripper;
    `path` says whether both axes move together or x first (EXPERT_PATHS). With probability `noise` the step is
    instead a random coarse move with the gripper open, so the demonstrations show how to recover from being pushed
    off course. dz and the rotations are always 0.

    kind="continuous" (EXPERT_KINDS) moves each axis by CONTINUOUS_GAIN of the remaining offset, clipped to +-step,
    and closes the gripper once the block is within half the grasp radius; its noise moves are uniform in +-step.
    """
    color = color or env.target_color
    if color not in env.block_colors:  # e.g. a colour-blind policy whose colour is absent: go to the nearest block
        i = int(np.argmin(np.linalg.norm(env.block_pos - env.gripper_pos, axis=1)))
    else:
        i = env.block_colors.index(color)
    a = np.zeros(7, dtype=np.float32)
    if rng.random() < noise:
        a[:2] = (rng.uniform(-1.0, 1.0, size=2) if kind == "continuous" else rng.integers(-1, 2, size=2)) * step
        a[6] = -1.0
        return a
    d = env.block_pos[i] - env.gripper_pos
    if kind == "continuous":
        if np.linalg.norm(d) <= GRASP_RADIUS / 2:
            a[6] = 1.0
            return a
        a[:2] = np.clip(CONTINUOUS_GAIN * d / MOVE_SCALE, -step, step)
        if path == "x_first" and abs(d[0]) > GRASP_RADIUS / 4:
            a[1] = 0.0
        a[6] = -1.0
        return a
    dead = step * MOVE_SCALE / 2  # within half a move: moving again would overshoot
    a[:2] = np.where(np.abs(d) > dead, np.sign(d) * step, 0.0)
    if path == "x_first" and a[0]:
        a[1] = 0.0  # y waits until x is aligned
    a[6] = 1.0 if not np.any(a[:2]) else -1.0
    return a


def random_policy_action(rng: np.random.Generator) -> np.ndarray:
    """Uniform random 7-D action in [-1, 1]: the floor any learned policy must beat."""
    return rng.uniform(-1.0, 1.0, size=7).astype(np.float32)


def run_policy(env_factory: Callable[[], BlockFindEnv], policy_fn: Callable, episodes: int, seed: int) -> float:
    """Success rate of `policy_fn(env, obs, rng) -> action` over `episodes` seeded episodes of one env."""
    env = env_factory()
    master = np.random.default_rng(seed)
    wins = 0
    for _ in range(episodes):
        obs, info = env.reset(seed=int(master.integers(2**31)))
        while True:
            obs, _, terminated, truncated, info = env.step(policy_fn(env, obs, master))
            if terminated or truncated:
                break
        wins += bool(info["success"])
    return wins / max(episodes, 1)


# ----------------------------------------------------------------------------------------------------------------------
# demonstrations


def generate_episodes(suite: str, episodes: int, seed: int, image_size: int = 64, only_success: bool = True,
                      noise: float = 0.1, max_steps: int = DEFAULT_MAX_STEPS, n_blocks: int = 3,
                      paired: bool = False, home_layouts: float = 0.0, path: str = "diagonal",
                      expert: str = "coarse") -> Iterator[dict]:
    """Yield `episodes` expert rollouts (only successful ones unless only_success=False), deterministic in `seed`.

    paired=True (the `blockfind` level only) demonstrates every block of a layout in turn from the same gripper start:
    n_blocks episodes share their first image and differ only in the instruction and the actions (in independent demos
    most frames are solvable by "go to the nearest block"). Measured: not enough on its own to make a tiny model read
    the word (BENCHMARKS.md).

    home_layouts (0..1) is the share of layouts with every block in its colour's home square (`reset` option
    `home_layout`): there the word alone predicts the direction, a first-order reason to read it. With random layouts
    only, the word helps only jointly with the image, and a small model from scratch or from the reach policy never
    starts reading it (its hidden state at the answer does not change with the word).

    path="x_first" makes the expert align x before moving along y (`expert_action`); expert="continuous" makes its
    moves proportional to the remaining distance instead of coarse (EXPERT_KINDS).

    Each dict: task (str), image / wrist_image uint8 (T, S, S, 3), state float32 (T, 8), actions float32 (T, 7),
    success (bool). Frame t holds the observation the expert saw and the action it took there; the last frame's
    action is the grasp.
    """
    if episodes < 0:
        raise UserError(f"episodes must be >= 0, got {episodes}")
    if (paired or home_layouts) and suite != "blockfind":
        raise UserError(f"paired demonstrations and home layouts need the named-colour 'blockfind' suite, not {suite!r}")
    if not 0.0 <= home_layouts <= 1.0:
        raise UserError(f"home_layouts is a share of the layouts, in [0, 1]; got {home_layouts}")
    if path not in EXPERT_PATHS:
        raise UserError(f"unknown expert path {path!r}; valid: {', '.join(EXPERT_PATHS)}")
    if expert not in EXPERT_KINDS:
        raise UserError(f"unknown expert kind {expert!r}; valid: {', '.join(EXPERT_KINDS)}")
    env = make_env(suite, image_size=image_size, max_steps=max_steps, n_blocks=n_blocks)
    master = np.random.default_rng(seed)
    made, attempts, siblings = 0, 0, []
    while made < episodes:
        attempts += 1
        if attempts > 10 * episodes + 100:  # a >= 95% expert never gets here; guard against a bad noise setting
            raise UserError(f"the BlockFind expert keeps failing (noise={noise}); lower the noise")
        if siblings:  # the same layout and start again, naming the next colour
            layout_seed, home, color = siblings.pop()
            env.reset(seed=layout_seed, options={"home_layout": home})
            obs, _ = env.retarget(color)
        else:
            layout_seed = int(master.integers(2**31))
            home = bool(home_layouts) and bool(master.random() < home_layouts)
            obs, _ = env.reset(seed=layout_seed, options={"home_layout": home})
            if paired:
                siblings = [(layout_seed, home, c) for c in reversed(env.block_colors) if c != env.target_color]
        frames = {"image": [], "wrist_image": [], "state": [], "actions": []}
        while True:
            a = expert_action(env, master, noise=noise, path=path, kind=expert)
            for k in ("image", "wrist_image", "state"):
                frames[k].append(obs[k])
            frames["actions"].append(a)
            obs, _, terminated, truncated, info = env.step(a)
            if terminated or truncated:
                break
        if only_success and not info["success"]:
            continue
        made += 1
        yield {
            "task": env.instruction,
            "image": np.stack(frames["image"]),
            "wrist_image": np.stack(frames["wrist_image"]),
            "state": np.stack(frames["state"]).astype(np.float32),
            "actions": np.stack(frames["actions"]).astype(np.float32),
            "success": bool(info["success"]),
        }


def generate_dataset(suite: str, episodes: int, out_dir, seed: int = 0, image_size: int = 64, fps: int = 10,
                     n_blocks: int = 3, paired: bool = False, home_layouts: float = 0.0, path: str = "diagonal",
                     expert: str = "coarse"):
    """Write `episodes` expert demonstrations as a LeRobot v2.0 dataset (the layout of physical-intelligence/libero)."""
    from tinyvla.data.writer import write_lerobot_v2  # lazy: the writer pulls in pyarrow/PIL
    from tinyvla.progress import track

    settings = generation_settings(suite, episodes, seed, image_size, n_blocks, paired, home_layouts, path, expert)
    eps = generate_episodes(suite, episodes, seed, image_size=image_size, n_blocks=n_blocks, paired=paired,
                            home_layouts=home_layouts, path=path, expert=expert)
    eps = track(eps, episodes, f"generate {suite}", "episodes")  # a bar on a terminal, plain lines in a log
    # The settings go into meta/ with the data, so a later run can tell whether the demos still fit its recipe.
    return write_lerobot_v2(out_dir, eps, fps=fps, robot_type="blockfind",
                            extra_meta={Path(GENERATION_FILE).name: settings})


GENERATION_FILE = "meta/blockfind_generation.json"  # relative to the dataset root


def generation_settings(suite: str, episodes: int, seed: int = 0, image_size: int = 64, n_blocks: int = 3,
                        paired: bool = False, home_layouts: float = 0.0, path: str = "diagonal",
                        expert: str = "coarse") -> dict:
    """What a generated BlockFind dataset was made with (written beside it, compared when a recipe reuses it)."""
    return {"suite": suite, "episodes": int(episodes), "seed": int(seed), "image_size": int(image_size),
            "n_blocks": int(n_blocks), "paired": bool(paired), "home_layouts": float(home_layouts), "path": path,
            "expert": expert}


def time_render(image_size: int = 64, n: int = 2000) -> float:
    """Mean seconds to render one view (scene and wrist averaged), for the benchmark script."""
    env = BlockFindEnv(suite="blockfind", image_size=image_size, seed=0)
    env.reset()
    t = time.perf_counter()
    for _ in range(n):
        env._render_scene()
        env._render_wrist()
    return (time.perf_counter() - t) / (2 * n)
