"""Recipes: a YAML file -> a typed, validated `Recipe`.

A recipe has sections (model, data, actions, train, eval), each a dataclass below; the dataclass defaults are the
VLA-0 paper settings, so a recipe only writes what it changes. `--set section.key=value` overrides are parsed as YAML
scalars and type-checked like the file. Every mistake — unknown key, wrong type, bad choice (a `Literal[...]`
field), a number out of its range (`RANGES`), NaN or infinity — is a `UserError` at load naming the key and, for a
misspelling, the nearest valid one: nothing deep in torch ever sees a bad knob.

(Over 400 lines on purpose: the sections, the table of ranges and the loader are one concept; a new field is one line
in a dataclass plus, when it is a number, one line in RANGES, both in this file.)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from tinyvla.core.ensemble import WEIGHTINGS, EnsembleConfig
from tinyvla.core.prompt import INSTRUCTION_POSITIONS, SYSTEM_PROMPTS
from tinyvla.envs.blockfind import EXPERT_KINDS, EXPERT_PATHS
from tinyvla.envs.suites import DATA_SUITES
from tinyvla.errors import UserError
from tinyvla.modeling.registry import DTYPE_CHOICES


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
    # bf16 halves memory vs fp32 with no loss seen in VLA-0; CPU runs use fp32
    dtype: Literal[DTYPE_CHOICES] = "bf16"
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
    # which tasks to train on; blockfind* also generates the data when missing
    suite: Literal[DATA_SUITES] | None = "libero_all"
    generate_episodes: int = 400  # blockfind only: expert demonstrations to generate if `repo` does not exist
    generate_seed: int = 0
    generate_blocks: int = 3  # blockfind only: blocks per demo scene (evaluation uses 3); more = fewer "nearest" wins
    generate_paired: bool = False  # blockfind only: demo every block of a layout from one start (words must matter)
    generate_home_layouts: float = 0.0  # blockfind only: share of demo layouts with each colour in its own quadrant
    # BlockFind expert: diagonal | x_first (align x, then y: dx picks the block)
    generate_path: Literal[EXPERT_PATHS] = "diagonal"
    # BlockFind expert moves: coarse (-1/0/+1 per axis) | continuous (proportional to distance, clipped)
    generate_expert: Literal[EXPERT_KINDS] = "coarse"
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
    instruction_position: Literal[INSTRUCTION_POSITIONS] = "after_images"
    # vla0: VLA-0's system turn (a pretrained VLM expects it); none: no system turn, 1/3 fewer tokens per sample for a
    # model trained from random weights, to which those constant words say nothing
    system_prompt: Literal[SYSTEM_PROMPTS] = "vla0"
    vision_id: bool = False  # "Picture N: " before each image (Qwen2.5-VL add_vision_id; the released VLA-0 checkpoint)
    val_episodes: int = 8  # episodes held out for the action-error check (0 = none)
    num_workers: int = 2  # DataLoader workers; PNG decode + crop is the data cost
    # Video cameras: decode every frame once into uint8 files at the crop's size (data/frame_cache.py) instead of per
    # sample: ~2x the samples/s per worker on 640x480 AV1, for (image_size / crop_scale)^2 x 3 bytes per frame on disk
    video_cache: bool = False
    video_cache_dir: str | None = None  # None: $TINYVLA_CACHE/video-frames or ~/.cache/tinyvla/video-frames

    def blockfind_generation(self) -> dict:
        """The kind of BlockFind demos to generate (keyword arguments of generate_episodes / generate_dataset)."""
        return {"n_blocks": self.generate_blocks, "paired": self.generate_paired,
                "home_layouts": self.generate_home_layouts, "path": self.generate_path,
                "expert": self.generate_expert}


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
    epochs: float = 24  # passes over the data (ignored when max_steps or max_samples is set)
    max_steps: int | None = None  # budget in optimizer steps
    max_samples: int | None = None  # budget in samples (steps = max_samples / global_batch)
    global_batch: int | None = None  # samples per optimizer step, whatever the GPU count (training/plan.py);
    # None = the older rule: global batch = batch_size x grad_accum x number of processes
    batch_size: int = 8  # per device (micro-batch)
    grad_accum: int = 1  # derived from global_batch when that is set
    lr: float = 5e-6  # belongs to the global batch: never scaled by the GPU count
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    # adamw-kahan: torch-optimi AdamW with Kahan summation, bf16 weights without lost updates; adamw8bit:
    # bitsandbytes, saves ~75% of optimizer memory
    optimizer: Literal["adamw", "adamw-kahan", "adamw8bit"] = "adamw"
    schedule: Literal["constant", "cosine"] = "constant"  # constant (VLA-0) | cosine (decays to min_lr_ratio x lr)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    clip_grad: float = 0.0  # max grad norm; 0 = no clipping (VLA-0)
    # > 0: the policy saved is an exponential moving average of the weights over ~1 / (1 - decay) steps (smoother than
    # the last step's weights; one fp32 copy of the trainable weights more in memory); 0 = the last weights (VLA-0)
    ema_decay: float = 0.0
    # bf16-mixed: fp32 master weights + bf16 autocast (GPU); bf16: weights in model.dtype + bf16 autocast (pair bf16
    # weights with optimizer adamw-kahan, or updates below bf16's resolution are lost); fp32: no autocast
    precision: Literal["fp32", "bf16-mixed", "bf16", "fp16"] = "bf16-mixed"
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

    def total_steps(self, frames: int, processes: int = 1) -> int:
        """Optimizer steps a run takes on `processes` processes over `frames` training frames: the run plan's
        (training/plan.py), which the trainer and the bench / doctor estimates all use."""
        from tinyvla.training.plan import plan_run

        return plan_run(self, frames, processes).steps


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
    ensemble: Literal[WEIGHTINGS] = EnsembleConfig.weighting  # vla0 (1.0 newest, 0.5 older) | exp | uniform | none
    ensemble_size: int = EnsembleConfig.max_chunks  # chunks kept
    exp_w: float = EnsembleConfig.exp_w  # decay for ensemble=exp
    execute_horizon: int = EnsembleConfig.execute_horizon  # steps between queries; 1 = re-query every step (VLA-0)
    video: int = 0  # episodes per task saved as MP4
    speculative: bool = True  # chunk-shift speculative decoding (identical output, fewer forward passes)
    # LIBERO: per_task (seed once, init states in order: VLA-0/openpi) | per_episode
    seeding: Literal["per_task", "per_episode"] = "per_task"
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
        """Every field against its type's choices and its range (`RANGES`), then the cross-field checks."""
        _check_fields(self)
        if len(self.actions.mask_char) != 1 or self.actions.mask_char.isdigit() or self.actions.mask_char.isspace():
            raise UserError(f"actions.mask_char must be one non-digit, non-space character, got {self.actions.mask_char!r}")
        if not 1 <= self.eval.execute_horizon <= self.actions.horizon:
            raise UserError(f"eval.execute_horizon must be in 1..actions.horizon ({self.actions.horizon}), "
                            f"got {self.eval.execute_horizon}")
        if len(self.train.betas) != 2:
            raise UserError(f"train.betas must be two numbers [beta1, beta2], got {self.train.betas}")
        if self.actions.gripper_dim is not None and not 0 <= self.actions.gripper_dim < self.actions.dim:
            raise UserError(f"actions.gripper_dim must be in 0..{self.actions.dim - 1} (or null: no gripper), "
                            f"got {self.actions.gripper_dim}")
        cams = self.data.cameras
        if cams is not None:
            if not 1 <= len(cams) <= 3 or len(set(map(str, cams))) != len(cams):
                raise UserError(f"data.cameras must name 1-3 different camera features, got {cams}")
            if self.data.image_key or self.data.wrist_key:
                raise UserError("data.cameras replaces data.image_key / data.wrist_key: set one or the other")
        if self.data.generate_paired and self.data.suite != "blockfind":
            raise UserError(f"data.generate_paired needs data.suite=blockfind (named colours), got {self.data.suite!r}")
        if self.data.generate_home_layouts and self.data.suite != "blockfind":
            raise UserError(f"data.generate_home_layouts needs data.suite=blockfind (named colours), "
                            f"got {self.data.suite!r}")
        return self

    @property
    def out_dir(self) -> Path:
        return Path(self.train.out_dir or f"runs/{self.name}")


# ------------------------------------------------------------------------------------------------------------------
# Ranges: every numeric knob's allowed values, checked at load
# ------------------------------------------------------------------------------------------------------------------


def _range(low, high=None, low_open=False, high_open=False, length=None, why: str = ""):
    """A check for one number (or each number of a list of `length`): returns what is wrong, or None."""
    if high is None:
        text = f"{'>' if low_open else '>='} {low}"
    else:
        text = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    text = (f"{length} numbers, each {text}" if length else text) + (f" ({why})" if why else "")

    def ok(v) -> bool:
        above = v > low if low_open else v >= low
        below = high is None or (v < high if high_open else v <= high)
        return above and below

    def check(value):
        values = value if length else [value]
        if length and len(values) != length:
            return f"must be {text}"
        if not all(ok(v) for v in values):
            return f"must be {text}"
        return None

    return check


# One line per numeric field (None values, where a field allows them, are always fine). A new numeric field gets a line
# here; tests/test_recipe.py fails for a field without one.
RANGES = {
    "model.lora.r": _range(1), "model.lora.alpha": _range(1), "model.lora.dropout": _range(0, 1, high_open=True),
    "data.generate_episodes": _range(1), "data.generate_seed": _range(0),
    "data.generate_blocks": _range(2, 4, why="BlockFind has four colours"),
    "data.generate_home_layouts": _range(0, 1, why="a share of the layouts"),
    "data.image_size": _range(1), "data.crop_scale": _range(0, 1, low_open=True),
    "data.val_episodes": _range(0), "data.num_workers": _range(0),
    "actions.horizon": _range(1), "actions.dim": _range(1), "actions.bins": _range(2),
    "actions.mask_prob": _range(0, 1), "actions.unmasked_fraction": _range(0, 1), "actions.gripper_dim": _range(0),
    "actions.horizon_s": _range(0, low_open=True, why="seconds"),
    "train.epochs": _range(0, low_open=True), "train.max_steps": _range(1), "train.max_samples": _range(1),
    "train.global_batch": _range(1), "train.batch_size": _range(1),
    "train.grad_accum": _range(1), "train.lr": _range(0, low_open=True), "train.weight_decay": _range(0),
    "train.betas": _range(0, 1, high_open=True, length=2), "train.warmup_steps": _range(0),
    "train.min_lr_ratio": _range(0, 1), "train.clip_grad": _range(0),
    "train.ema_decay": _range(0, 1, high_open=True), "train.seed": _range(0),
    "train.log_every": _range(1), "train.save_every": _range(0), "train.keep_last": _range(0),
    "train.eval_every": _range(0), "train.eval_batches": _range(1), "train.rollout_every": _range(0),
    "train.rollout_episodes": _range(1), "train.num_threads": _range(1),
    "eval.episodes_per_task": _range(1), "eval.max_steps": _range(1), "eval.num_envs": _range(1),
    "eval.seed": _range(0), "eval.wait_steps": _range(0), "eval.resolution": _range(1), "eval.ensemble_size": _range(1),
    "eval.exp_w": _range(0, 1, low_open=True), "eval.execute_horizon": _range(1), "eval.video": _range(0),
    "eval.repetition_penalty": _range(0, low_open=True, why="1.0 = none"),
}
# model.tiny is free-form (sizes of the tiny model): every value a positive number, bar these.
TINY_FLAGS = {"tie_word_embeddings": bool}


def _choice_error(key: str, value, allowed) -> UserError:
    return UserError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}{_nearest(str(value), allowed)}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_fields(node, prefix: str = "") -> None:
    """Literal choices, finiteness and RANGES for every field of a recipe (recursively)."""
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        key, value = f"{prefix}.{f.name}" if prefix else f.name, getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            _check_fields(value, key)
            continue
        allowed = _literal_values(hints[f.name])
        if allowed and value is not None and value not in allowed:
            raise _choice_error(key, value, allowed)
        if key == "model.tiny":
            _check_tiny(value)
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise UserError(f"{key} must be a finite number, got {value}")
        check = RANGES.get(key)
        if check is not None and value is not None:
            if not all(_is_number(v) for v in numbers):
                raise UserError(f"{key} must be numbers, got {value!r}")
            problem = check(value)
            if problem:
                raise UserError(f"{key} {problem}, got {value}")


def _check_tiny(tiny: dict) -> None:
    for name, value in tiny.items():
        if name in TINY_FLAGS:
            if not isinstance(value, TINY_FLAGS[name]):
                raise UserError(f"model.tiny.{name} must be true or false, got {value!r}")
        elif name == "deepstack_visual_indexes":
            if value is not None and not (isinstance(value, list) and all(_is_number(v) and v >= 0 for v in value)):
                raise UserError(f"model.tiny.{name} must be a list of layer indexes (ints >= 0), got {value!r}")
        elif value is not None and not (_is_number(value) and math.isfinite(value) and value > 0):
            raise UserError(f"model.tiny.{name} must be a positive number, got {value!r}")


def _literal_values(tp) -> tuple:
    """The allowed values of a Literal[...] annotation (also inside `Literal[...] | None`), else ()."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(v for arg in typing.get_args(tp) for v in _literal_values(arg))
    return ()


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
        if len(args) == 2 and type(None) in args:  # X | None: X's own message (a Literal's choices)
            return _coerce(value, next(a for a in args if a is not type(None)), key)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError:
                pass
        names = " or ".join(_type_name(a) for a in args)
        raise UserError(f"{key}: expected {names}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) is type(typing.get_args(tp)[0]):
            return value
        raise _choice_error(key, value, typing.get_args(tp))
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
    if path.is_dir():
        raise UserError(f"{path} is a directory; pass a recipe file such as {path / 'tiny-cpu.yaml'}")
    if not path.is_file():
        hint = ""
        if not path.suffix:
            hint = f" (recipes live in recipes/*.yaml, e.g. recipes/{path.name}.yaml)"
        raise UserError(f"recipe not found: {path}{hint}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start}); a recipe is a YAML file") from None
    if not text.strip() and not overrides:  # (an empty file plus --set overrides is a recipe made of overrides)
        raise UserError(f"{path} is empty; a recipe needs at least model / data sections (see recipes/tiny-cpu.yaml)")
    try:
        data = yaml.safe_load(text)
        data = {} if data is None else data  # only comments: every default
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
