"""Recipe -> dataset -> training samples.

`resolve_dataset` finds (or, for BlockFind, generates) the dataset a recipe names and restricts it to the recipe's
suite. `split_episodes` holds out whole episodes for the action-error check. `ActionSampleDataset` turns frame indices
into model inputs; `EpochSampler` decides the order — deterministic from (seed, epoch), sharded over processes like
a distributed sampler, and able to skip what a resumed run already saw, so resuming replays the exact same batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tinyvla.core.codec import ActionCodec, ActionStats
from tinyvla.core.prompt import PromptSpec
from tinyvla.data.transforms import ImageSpec
from tinyvla.errors import UserError
from tinyvla.inputs import encode_training_example
from tinyvla.envs.suites import BLOCKFIND_SUITES
from tinyvla.recipe import Recipe


@dataclass
class TrainingData:
    reader: object
    train_frames: np.ndarray  # frame indices used for training
    val_frames: np.ndarray  # frame indices of held-out episodes
    stats: ActionStats


def resolve_dataset(recipe: Recipe, log=print):
    """Open the recipe's dataset; BlockFind data is generated on first use (and reused after)."""
    from tinyvla.data import open_dataset

    cfg = recipe.data
    repo = cfg.repo
    if cfg.suite in BLOCKFIND_SUITES and not Path(repo).exists():
        from tinyvla.envs.blockfind import generate_dataset

        log(f"generating {cfg.generate_episodes} {cfg.suite} expert episodes into {repo} (first run only)")
        generate_dataset(cfg.suite, cfg.generate_episodes, repo, seed=cfg.generate_seed, **cfg.blockfind_generation())
    elif cfg.suite in BLOCKFIND_SUITES:
        _check_generated_data_fits(cfg)
    tasks = None
    if cfg.suite is not None and cfg.suite not in BLOCKFIND_SUITES:
        from tinyvla.data.libero_tasks import suite_tasks

        tasks = suite_tasks(cfg.suite)
    reader = open_dataset(repo, cameras=cfg.cameras, image_key=cfg.image_key, wrist_key=cfg.wrist_key,
                          action_key=cfg.action_key, tasks=tasks)
    if cfg.suite in BLOCKFIND_SUITES:
        _check_blockfind_wording(reader, repo)
    return reader


def _check_blockfind_wording(reader, repo: str) -> None:
    """Demos whose instructions the evaluation will never say (an older wording) would train a policy on words it
    is not asked in: refuse them."""
    from tinyvla.envs.blockfind import COLORS, INSTRUCTION

    spoken = {INSTRUCTION.format(color=c) for c in COLORS}
    other = sorted({str(t) for t in np.unique(reader.frame_task())} - spoken)
    if other:
        raise UserError(f"{repo} holds BlockFind demos worded {other[0]!r}; this version says "
                        f"{INSTRUCTION.format(color='red')!r}: remove it to regenerate, or set data.repo to a new "
                        "directory")


def _check_generated_data_fits(cfg) -> None:
    """A BlockFind dataset generated earlier with other settings than the recipe's is refused, not silently reused
    (e.g. data.generate_paired changed but data.repo still points at the old demos)."""
    import json

    from tinyvla.envs.blockfind import GENERATION_FILE, generation_settings

    made = Path(cfg.repo) / GENERATION_FILE
    if not made.is_file():  # written by hand, by `data generate` of an older tinyvla, or not BlockFind's generator
        return
    wanted = generation_settings(cfg.suite, cfg.generate_episodes, cfg.generate_seed, **cfg.blockfind_generation())
    # the only path / expert before `path` / `expert` were recorded
    have = {"path": "diagonal", "expert": "coarse", **json.loads(made.read_text())}
    # the kind of demos, not how many: a dataset made with `tinyvla data generate --episodes N` is the user's choice
    differ = [k for k in ("suite", "n_blocks", "paired", "home_layouts", "path", "expert") if have.get(k) != wanted[k]]
    if differ:
        diff = ", ".join(f"{k} {have.get(k)!r} (recipe: {wanted[k]!r})" for k in differ)
        raise UserError(f"{cfg.repo} was generated with other settings: {diff}; remove it or set data.repo to a "
                        "new directory")


def attach_video_cache(recipe: Recipe, reader, main: bool, log=print, poll_s: float = 2.0) -> None:
    """data.video_cache: the local main process decodes the missing videos into the frame cache; the other processes
    wait for its entries to appear (polling the files, not a collective barrier: a first build of a large dataset can
    outlast a process group's timeout); then every process reads its frames from there."""
    import os

    from tinyvla.data.frame_cache import VideoFrameCache, cache_side

    videos = reader.video_files()
    if not recipe.data.video_cache or not videos:
        return
    cache = VideoFrameCache(recipe.data.video_cache_dir, cache_side(recipe.data.image_size, recipe.data.crop_scale))
    if main:
        cache.build(videos, workers=os.cpu_count() or 1, log=log)
    else:
        cache.wait_until_built(videos, poll_s)
    reader.use_frame_cache(cache)


def split_episodes(reader, val_episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train frame indices, val frame indices), holding out `val_episodes` whole episodes chosen by `seed`."""
    episodes = np.asarray(reader.episode_index())
    unique = np.unique(episodes)
    if len(unique) == 0:
        raise UserError("the dataset has no frames: check data.repo and data.suite")
    n_val = min(val_episodes, max(0, len(unique) - 1))  # always keep at least one episode to train on
    held = np.random.default_rng(seed).choice(unique, size=n_val, replace=False) if n_val else np.array([], int)
    is_val = np.isin(episodes, held)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def load_training_data(recipe: Recipe, log=print) -> TrainingData:
    reader = resolve_dataset(recipe, log)
    train_frames, val_frames = split_episodes(reader, recipe.data.val_episodes, recipe.train.seed)
    if recipe.actions.stats:
        stats = ActionStats.load(recipe.actions.stats)
    else:
        actions = np.asarray(reader.actions())[train_frames]
        tasks = np.asarray(reader.frame_task())[train_frames] if recipe.actions.per_task_bounds else None
        stats = ActionStats.from_actions(actions, None if tasks is None else [str(t) for t in tasks])
    if stats.dim != recipe.actions.dim:
        raise UserError(f"the dataset's actions have {stats.dim} dimensions but actions.dim is {recipe.actions.dim}; "
                        f"set --set actions.dim={stats.dim}")
    log(fit_recipe_to_dataset(recipe, reader))
    return TrainingData(reader, train_frames, val_frames, stats)


def fit_recipe_to_dataset(recipe: Recipe, reader) -> str:
    """Settle what the recipe leaves to the dataset and say in one line what the policy will read and write:
    `actions.horizon_s` becomes steps at the dataset's fps; with no `data.cameras`, a dataset whose cameras are not
    LIBERO's two defaults has its cameras recorded (the policy then reads observations under those names)."""
    a, d = recipe.actions, recipe.data
    fps = float(reader.info.get("fps") or 0) or None
    if a.horizon_s is not None:
        if fps is None:
            raise UserError(f"actions.horizon_s needs the dataset's fps, and {d.repo} does not say it; set "
                            "actions.horizon (steps) instead")
        a.horizon = max(1, round(a.horizon_s * fps))
        if recipe.eval.execute_horizon > a.horizon:
            recipe.eval.execute_horizon = a.horizon
    if d.cameras is None and not getattr(reader, "default_views", True):
        d.cameras = list(reader.cameras)
    names = (reader.info.get("features", {}).get(reader.action_key) or {}).get("names") or []
    names = names if isinstance(names, list) and len(names) == a.dim else []  # v2.0 LIBERO: ["actions"]
    named = [i for i, n in enumerate(names) if "gripper" in str(n).lower()]
    if a.gripper_dim is not None and len(named) == 1 and named[0] != a.gripper_dim:
        raise UserError(f"actions.gripper_dim is {a.gripper_dim} but the dataset's gripper is dimension {named[0]} "
                        f"({names[named[0]]}); set --set actions.gripper_dim={named[0]}")
    grip = "no gripper" if a.gripper_dim is None else f"gripper dim {a.gripper_dim}" + (
        f" ({names[a.gripper_dim]})" if names else "")
    seconds = f" = {a.horizon / fps:.2f} s at {fps:g} fps" if fps else ""
    return (f"data: {len(reader)} frames; cameras {', '.join(reader.cameras)} -> {len(reader.cameras)} view(s); "
            f"actions '{reader.action_key}' D={a.dim}, {grip}; horizon {a.horizon} steps{seconds}")


class ActionSampleDataset(torch.utils.data.Dataset):
    """Frame index -> model inputs with labels. Items are requested as (frame, epoch) so augmentation randomness is a
    pure function of (seed, epoch, frame): identical with any number of workers and after a resume."""

    def __init__(self, reader, codec: ActionCodec, processor, prompt: PromptSpec, image_spec: ImageSpec,
                 train: bool, seed: int, mask_prob: float = 0.0, mask_token_id: int | None = None,
                 unmasked_fraction: float = 0.1):
        self.reader, self.codec, self.processor = reader, codec, processor
        self.prompt, self.image_spec = prompt, image_spec
        self.train, self.seed = train, seed
        self.mask_prob, self.mask_token_id, self.unmasked_fraction = mask_prob, mask_token_id, unmasked_fraction

    def __len__(self):
        return len(self.reader)

    def __getitem__(self, key):
        frame, epoch = key if isinstance(key, tuple) else (key, 0)
        sample = self.reader.sample(int(frame), self.prompt.horizon)
        rng = np.random.default_rng([self.seed, epoch, int(frame)]) if self.train else None
        text = self.codec.actions_to_text(sample["actions"], sample["instruction"])
        return encode_training_example(self.processor, self.prompt, self.image_spec, sample, text, rng,
                                       mask_prob=self.mask_prob, mask_token_id=self.mask_token_id,
                                       unmasked_fraction=self.unmasked_fraction)


class EpochSampler(torch.utils.data.Sampler):
    """Yields (frame, epoch): a fresh permutation per epoch, this process's shard of it, minus batches already seen.

    Every process gets the same number of frames (the permutation is cut to a multiple of the world size), as a
    distributed sampler with drop_last would, so no process waits on another at the end of an epoch.
    """

    def __init__(self, frames: np.ndarray, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.frames, self.seed, self.rank, self.world, self.shuffle = np.asarray(frames), seed, rank, world, shuffle
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0):
        """`skip` = samples of this epoch this process has already consumed (a resume)."""
        self.epoch, self.skip = epoch, skip

    def per_rank(self) -> int:
        return len(self.frames) // self.world

    def __len__(self):
        return self.per_rank() - self.skip

    def __iter__(self):
        order = self.frames
        if self.shuffle:
            order = order[np.random.default_rng([self.seed, self.epoch]).permutation(len(order))]
        mine = order[: self.per_rank() * self.world][self.rank :: self.world]
        for frame in mine[self.skip :]:
            yield int(frame), self.epoch
