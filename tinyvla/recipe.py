"""Recipes: a YAML file -> a typed, validated `Recipe`.

A recipe has sections (model, data, actions, train, eval), each a dataclass below; the dataclass defaults are the
VLA-0 paper settings, so a recipe only writes what it changes. `--set section.key=value` overrides are parsed as YAML
scalars and type-checked like the file. Every mistake — unknown key, wrong type, bad choice — is a `UserError` naming
the key and, for a misspelling, the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tinyvla.core.ensemble import WEIGHTINGS, EnsembleConfig
from tinyvla.core.prompt import INSTRUCTION_POSITIONS
from tinyvla.envs.blockfind import EXPERT_PATHS
from tinyvla.envs.suites import DATA_SUITES
from tinyvla.errors import UserError


@dataclass
class LoraConfig:
    enabled: bool = False  # LoRA trains ~1% of the weights: fits a 24 GB GPU, usually a few points below full FT
    r: int = 16  # adapter rank: higher = more capacity and memory
    alpha: int = 32  # scaling; alpha / r is the effective multiplier on the adapter's update
    dropout: float = 0.05
    target_regex: str | None = None  # None = attention + MLP projections of the language model only


@dataclass
class ModelConfig:
    name: str = "qwen3-2b"  # short name (qwen3-2b ...), tiny-qwen3 / tiny-qwen2.5, arch:NAME, HF id, or local dir
    tokenizer: str | None = None  # None = the model's own; "qwen" (real vocab, offline) or "tiny" (byte-level)
    dtype: str = "bf16"  # bf16 halves memory vs fp32 with no loss seen in VLA-0; CPU runs use fp32
    attn_implementation: str | None = "sdpa"  # sdpa | flash_attention_2 | eager
    trust_remote_code: bool = False  # stock transformers classes only, unless you really need remote code
    tiny: dict = field(default_factory=dict)  # size overrides for tiny-* models (hidden_size, num_hidden_layers, ...)
    init_from: str | None = None  # start from a tinyvla policy's weights (a curriculum stage; same architecture)
    lora: LoraConfig = field(default_factory=LoraConfig)
    freeze_vision: bool = False  # freezing the vision tower saves memory; VLA-0 fine-tunes everything
    gradient_checkpointing: bool = False  # ~30% slower steps for much less activation memory


@dataclass
class DataConfig:
    repo: str = "physical-intelligence/libero"  # LeRobot dir or hub id, or a raw LIBERO HDF5 folder
    suite: str | None = "libero_all"  # which tasks to train on; blockfind* also generates the data when missing
    generate_episodes: int = 400  # blockfind only: expert demonstrations to generate if `repo` does not exist
    generate_seed: int = 0
    generate_blocks: int = 3  # blockfind only: blocks per demo scene (evaluation uses 3); more = fewer "nearest" wins
    generate_paired: bool = False  # blockfind only: demo every block of a layout from one start (words must matter)
    generate_home_layouts: float = 0.0  # blockfind only: share of demo layouts with each colour in its own quadrant
    generate_path: str = "diagonal"  # BlockFind expert: diagonal | x_first (align x, then y: dx picks the block)
    # The dataset's camera features the model sees, in image order (1-3, any names), e.g. [observation.images.front,
    # observation.images.wrist]; the policy then reads observations under these keys. None = LIBERO's two views
    # (image_key / wrist_key or the dataset version's defaults), else every camera of the dataset.
    cameras: list | None = None
    image_key: str | None = None  # None = the default for the dataset's codebase version
    wrist_key: str | None = None
    action_key: str | None = None
    image_size: int = 224  # side of each view fed to the model, after the crop
    crop_scale: float = 0.875  # random crop (train) / centre crop (eval) of this fraction of the side, 256 -> 224
    color_jitter: bool = True  # brightness/contrast/saturation 0.2, hue 0.05 in training, as VLA-0
    jitter_per_view: bool = False  # False: one jitter draw for both views (VLA-0's one ColorJitter call); True: one each
    tile_views: bool = True  # one 2-wide image (VLA-0) vs two images; tiling is slightly better and fewer tokens
    # after_images (VLA-0) | before_images (image tokens can read it) | end (the answer starts at its last word:
    # what lets a model trained from scratch use the words at all; core/prompt.py)
    instruction_position: str = "after_images"
    vision_id: bool = False  # "Picture N: " before each image (Qwen2.5-VL add_vision_id; the released VLA-0 checkpoint)
    val_episodes: int = 8  # episodes held out for the action-error check (0 = none)
    num_workers: int = 2  # DataLoader workers; PNG decode + crop is the data cost

    def blockfind_generation(self) -> dict:
        """The kind of BlockFind demos to generate (keyword arguments of generate_episodes / generate_dataset)."""
        return {"n_blocks": self.generate_blocks, "paired": self.generate_paired,
                "home_layouts": self.generate_home_layouts, "path": self.generate_path}


@dataclass
class ActionsConfig:
    horizon: int = 8  # H actions predicted per query; longer = smoother but slower to react and more tokens
    # The horizon in seconds instead (rounded to steps at the dataset's fps, printed): 8 steps are 0.8 s of LIBERO at
    # 10 fps but 0.27 s of an SO-101 at 30 fps. Each step costs D + 1 answer tokens at every query.
    horizon_s: float | None = None
    dim: int = 7  # D: 6 end-effector deltas + gripper
    bins: int = 1000  # B: ints 0..B; 250 costs ~1.5 pt in VLA-0, 4000 ~0.5 pt
    mask_prob: float = 0.4  # masked action augmentation: up to this fraction of action chars masked; 0 = off
    mask_char: str = "?"  # the character whose token replaces masked inputs
    unmasked_fraction: float = 0.1  # share of samples left unmasked
    per_task_bounds: bool = False  # min/max per instruction instead of global: finer bins, needs the task at test time
    gripper_dim: int | None = 6  # which dimension is the gripper (snapped to +-1 in the simulator); null = none
    stats: str | None = None  # action stats JSON (from `data stats --save-stats`); None = computed from the data


@dataclass
class TrainConfig:
    epochs: float = 24  # passes over the data (ignored when max_steps is set)
    max_steps: int | None = None
    batch_size: int = 8  # per device; global batch = batch_size x grad_accum x number of processes
    grad_accum: int = 1
    lr: float = 5e-6  # taken as written: never scaled by the GPU count
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes; saves ~75% of optimizer memory)
    schedule: str = "constant"  # constant (VLA-0) | cosine (decays to min_lr_ratio x lr)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    clip_grad: float = 0.0  # max grad norm; 0 = no clipping (VLA-0)
    precision: str = "bf16"  # bf16 | fp32 mixed precision for accelerate
    seed: int = 0
    compile: bool = False  # torch.compile: faster steps after a slow first one
    log_every: int = 10
    save_every: int = 500  # checkpoint interval in steps
    keep_last: int = 2  # checkpoints kept on disk
    eval_every: int = 500  # held-out action error interval in steps (0 = only at the end)
    eval_batches: int = 4
    rollout_every: int = 0  # closed-loop success probe interval in steps (BlockFind suites; 0 = off)
    rollout_episodes: int = 20  # episodes per probe: more = less noisy, slower
    num_threads: int | None = None  # CPU threads for torch (None = torch's default)
    tensorboard: bool = True
    wandb: bool = False
    out_dir: str | None = None  # None = runs/<recipe name>

    def total_steps(self, frames_per_process: int) -> int:
        """Optimizer steps a run takes: max_steps, else epochs x the whole accumulated batches of one process's share
        of an epoch (the trainer drops an epoch's partial batch and partial accumulation). The trainer and the
        bench / doctor estimates both use this."""
        if self.max_steps:
            return int(self.max_steps)
        steps_per_epoch = max(1, (frames_per_process // self.batch_size) // self.grad_accum)
        return max(1, math.ceil(self.epochs * steps_per_epoch))


@dataclass
class EvalConfig:
    suite: str | None = None  # None = the data suite (libero_all -> each LIBERO suite in turn)
    episodes_per_task: int = 50  # LIBERO stores 50 init states per task
    max_steps: int | None = None  # None = the suite's protocol value
    num_envs: int = 1  # parallel environment workers
    seed: int = 7  # openpi / VLA-0 protocol seed
    wait_steps: int = 10  # no-op steps after reset while objects settle
    resolution: int = 256  # render size
    # Ensembling (defaults: tinyvla.core.ensemble.EnsembleConfig, whose names the policy records)
    ensemble: str = EnsembleConfig.weighting  # vla0 (1.0 newest, 0.5 older) | exp | uniform | none; none: ~-2 pt
    ensemble_size: int = EnsembleConfig.max_chunks  # chunks kept
    exp_w: float = EnsembleConfig.exp_w  # decay for ensemble=exp
    execute_horizon: int = EnsembleConfig.execute_horizon  # steps between queries; 1 = re-query every step (VLA-0)
    video: int = 0  # episodes per task saved as MP4
    speculative: bool = True  # chunk-shift speculative decoding (identical output, fewer forward passes)
    seeding: str = "per_task"  # LIBERO: per_task (seed once, init states in order: VLA-0/openpi) | per_episode
    repetition_penalty: float = 1.0  # 1.0 = plain constrained greedy (the model's generation_config is ignored)


@dataclass
class Recipe:
    name: str = "recipe"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    actions: ActionsConfig = field(default_factory=ActionsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "Recipe":
        """Cross-field checks that a type alone cannot express."""
        choices = {
            "model.dtype": (self.model.dtype, ("fp32", "bf16", "fp16")),
            "train.precision": (self.train.precision, ("fp32", "bf16", "fp16")),
            "train.optimizer": (self.train.optimizer, ("adamw", "adamw8bit")),
            "train.schedule": (self.train.schedule, ("constant", "cosine")),
            "eval.ensemble": (self.eval.ensemble, WEIGHTINGS),
            "data.instruction_position": (self.data.instruction_position, INSTRUCTION_POSITIONS),
            "data.generate_path": (self.data.generate_path, EXPERT_PATHS),
            "eval.seeding": (self.eval.seeding, ("per_task", "per_episode")),
        }
        if self.data.suite is not None:
            choices["data.suite"] = (self.data.suite, DATA_SUITES)
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise UserError(f"{key}: {value!r} is not one of {', '.join(allowed)}{_nearest(str(value), allowed)}")
        positive = {
            "actions.horizon": self.actions.horizon, "actions.dim": self.actions.dim, "actions.bins": self.actions.bins,
            "train.batch_size": self.train.batch_size, "train.grad_accum": self.train.grad_accum,
            "data.image_size": self.data.image_size, "eval.ensemble_size": self.eval.ensemble_size,
        }
        for key, value in positive.items():
            if value < 1:
                raise UserError(f"{key} must be >= 1, got {value}")
        if not 0.0 <= self.actions.mask_prob <= 1.0:
            raise UserError(f"actions.mask_prob must be in [0, 1], got {self.actions.mask_prob}")
        if not 0.0 <= self.actions.unmasked_fraction <= 1.0:
            raise UserError(f"actions.unmasked_fraction must be in [0, 1], got {self.actions.unmasked_fraction}")
        if len(self.actions.mask_char) != 1 or self.actions.mask_char.isdigit() or self.actions.mask_char.isspace():
            raise UserError(f"actions.mask_char must be one non-digit, non-space character, got {self.actions.mask_char!r}")
        if not 0.0 < self.data.crop_scale <= 1.0:
            raise UserError(f"data.crop_scale must be in (0, 1], got {self.data.crop_scale}")
        if not 1 <= self.eval.execute_horizon <= self.actions.horizon:
            raise UserError(f"eval.execute_horizon must be in 1..actions.horizon ({self.actions.horizon}), "
                            f"got {self.eval.execute_horizon}")
        if self.actions.gripper_dim is not None and not 0 <= self.actions.gripper_dim < self.actions.dim:
            raise UserError(f"actions.gripper_dim must be in 0..{self.actions.dim - 1} (or null: no gripper), "
                            f"got {self.actions.gripper_dim}")
        if self.actions.horizon_s is not None and self.actions.horizon_s <= 0:
            raise UserError(f"actions.horizon_s must be > 0 seconds, got {self.actions.horizon_s}")
        cams = self.data.cameras
        if cams is not None:
            if not 1 <= len(cams) <= 3 or len(set(map(str, cams))) != len(cams):
                raise UserError(f"data.cameras must name 1-3 different camera features, got {cams}")
            if self.data.image_key or self.data.wrist_key:
                raise UserError("data.cameras replaces data.image_key / data.wrist_key: set one or the other")
        if self.eval.repetition_penalty <= 0:
            raise UserError(f"eval.repetition_penalty must be > 0 (1.0 = none), got {self.eval.repetition_penalty}")
        if self.train.lr <= 0:
            raise UserError(f"train.lr must be > 0, got {self.train.lr}")
        if not 2 <= self.data.generate_blocks <= 4:
            raise UserError(f"data.generate_blocks must be in 2..4 (BlockFind has four colours), "
                            f"got {self.data.generate_blocks}")
        if self.data.generate_paired and self.data.suite != "blockfind":
            raise UserError(f"data.generate_paired needs data.suite=blockfind (named colours), got {self.data.suite!r}")
        if not 0.0 <= self.data.generate_home_layouts <= 1.0:
            raise UserError(f"data.generate_home_layouts is a share of the layouts, in [0, 1]; "
                            f"got {self.data.generate_home_layouts}")
        if self.data.generate_home_layouts and self.data.suite != "blockfind":
            raise UserError(f"data.generate_home_layouts needs data.suite=blockfind (named colours), "
                            f"got {self.data.suite!r}")
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.train.out_dir or f"runs/{self.name}")


# ------------------------------------------------------------------------------------------------------------------
# Loading and overrides
# ------------------------------------------------------------------------------------------------------------------


def _nearest(word: str, candidates) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value, tp, key: str):
    """Check `value` against the annotation `tp`, converting only lossless cases (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError:
                pass
        names = " or ".join(_type_name(a) for a in args)
        raise UserError(f"{key}: expected {names}, got {type(value).__name__} {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif tp is list or origin is list:
        if isinstance(value, list):
            return list(value)
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, key)
        raise UserError(f"{key}: expected a section (mapping), got {type(value).__name__} {value!r}")
    else:  # pragma: no cover - an annotation this loader does not know is a bug in this file
        raise TypeError(f"unsupported annotation {tp} for {key}")
    raise UserError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            where = f"section '{prefix}'" if prefix else "the recipe"
            raise UserError(f"unknown key '{full}' in {where}{_nearest(str(key), fields)}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def recipe_from_dict(data: dict) -> Recipe:
    if not isinstance(data, dict):
        raise UserError("a recipe must be a YAML mapping with sections model, data, actions, train, eval")
    return _build(Recipe, data).validate()


def parse_override(text: str) -> tuple[list[str], object]:
    """'train.lr=1e-4' -> (['train', 'lr'], 0.0001). The value is read as a YAML scalar ('null', 'true', '[1, 2]')."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.key=value, e.g. --set train.lr=1e-4")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise UserError(f"--set {text!r}: the key is empty; expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-4 as a string (it wants 1.0e-4); numbers are what users mean.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    return path, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply --set overrides to the raw recipe mapping; a missing key fails with the nearest valid one."""
    for text in overrides:
        path, value = parse_override(text)
        cls, node = Recipe, data
        for depth, part in enumerate(path):
            full = ".".join(path[: depth + 1])
            if cls is None or not dataclasses.is_dataclass(cls):
                raise UserError(f"--set {full}: '{'.'.join(path[:depth])}' is not a section")
            names = {f.name: f for f in dataclasses.fields(cls)}
            if part not in names:
                raise UserError(f"--set {full}: no such key{_nearest(part, names)}")
            if depth == len(path) - 1:
                node[part] = value
            else:
                hint = typing.get_type_hints(cls)[part]
                if hint is dict:  # a free-form mapping (model.tiny): the rest of the path is one key inside it
                    node.setdefault(part, {})[".".join(path[depth + 1:])] = value
                    break
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise UserError(f"--set {full}: expected a section in the recipe, found {node!r}")
                cls = hint
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        hint = ""
        if not path.suffix:
            hint = f" (recipes live in recipes/*.yaml, e.g. recipes/{path.name}.yaml)"
        raise UserError(f"recipe not found: {path}{hint}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a YAML mapping with sections model, data, actions, train, eval")
    data.setdefault("name", path.stem)
    data = apply_overrides(data, overrides or [])
    return recipe_from_dict(data)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    from tinyvla.core.atomic import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(recipe.to_dict(), sort_keys=False))
