"""The policy format, one owner: `PolicyConfig` (what policy.json says) and the policy directory (save, load,
`model.init_from`).

    config = PolicyConfig.from_recipe(recipe, stats)          # training: the recipe decides
    config = PolicyConfig.from_json(json.loads(text))         # loading: policy.json decides (old files too)
    policy = Policy(config, model, processor)                 # tinyvla.policy: acting, no disk

The directory (what `train` writes as DIR/final and `export` writes for others):

    policy.json          H, D, B, action stats, prompt + image layout, ensembling defaults, recipe, dataset, versions
    action_stats.json    the codec's stats on their own (what `data stats --save-stats` writes)
    model/               config.json + model.safetensors (the base weights when a LoRA adapter is kept apart),
                         tokenizer + image processor files
    adapter/             optional peft LoRA adapter (adapter_config.json + adapter_model.safetensors)
    README.md            a model card (export)

Loading reads safetensors only — a directory holding pickled weights (*.bin, *.pt, *.pkl) is refused — and never runs
remote code. Imports flow one way: policy.py -> policy_dir.py -> modeling/loading.py (this module never imports
policy.py; torch only inside the functions that move weights).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import NamedTuple

from tinyvla.core.atomic import atomic_dir, write_json_atomic
from tinyvla.core.codec import ActionCodec, ActionStats
from tinyvla.core.ensemble import EnsembleConfig
from tinyvla.core.prompt import INSTRUCTION_POSITIONS, PromptSpec
from tinyvla.data.transforms import ImageSpec
from tinyvla.errors import UserError
from tinyvla.hub import is_hub_id
from tinyvla.machine import machine_info
from tinyvla.versions import versions

POLICY_FORMAT = 1  # bump when policy.json changes incompatibly
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# recorded in policy.json, not used for acting; trained_on: the machine that trained it (tinyvla/machine.py);
# observation_keys: extra request keys for `tinyvla serve`
META_KEYS = ("dataset", "base_model", "recipe", "trained_on", "observation_keys")


# ----------------------------------------------------------------------------------------------------------------------
# The config


@dataclasses.dataclass
class DecodingConfig:
    """How this process runs the model. Not part of policy.json: the same policy decodes either way, and the actions
    are the same (speculative decoding changes only the number of forward passes)."""

    # Chunk-shift speculative decoding in act_batch (tinyvla/modeling/speculative.py): each env's previous chunk,
    # shifted by the steps since, drafts its next one. Off unless the caller asks (eval: the recipe's eval.speculative).
    speculative: bool = False
    redraft: bool = True  # options of speculative_generate
    reuse_cache: bool = True
    adaptive: bool = True
    max_draft_tokens: int | None = None
    pass_token_budget: int | None = None  # draft tokens per pass over the batch (a CPU server's setting)
    skip_forced: bool = True  # grammar-forced tokens ride along with the next pass (speculative_generate)
    # Extra keyword arguments for model.generate on the plain greedy path, e.g. {"cache_implementation": "static"}
    # on a GPU (transformers then compiles the decode step). Empty = transformers' defaults.
    generate_kwargs: dict = dataclasses.field(default_factory=dict)
    # Plain constrained greedy unless this says otherwise (eval: the recipe's eval.repetition_penalty). A checkpoint's
    # generation_config never decides: Qwen-VL Instruct ships repetition_penalty 1.05, which `generate` would apply
    # even to greedy decoding. Both paths apply this one value, so they still write the same text.
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if not self.repetition_penalty > 0:
            raise UserError(f"repetition_penalty must be > 0 (1.0 = none), got {self.repetition_penalty}")

    def speculative_options(self) -> dict:
        return {"redraft": self.redraft, "reuse_cache": self.reuse_cache, "adaptive": self.adaptive,
                "max_draft_tokens": self.max_draft_tokens, "pass_token_budget": self.pass_token_budget,
                "repetition_penalty": float(self.repetition_penalty),
                "skip_forced": self.skip_forced}

    def greedy_kwargs(self) -> dict:
        """What `generate` gets on the plain path: every setting explicit, so generation_config.json decides none."""
        return {"do_sample": False, "repetition_penalty": float(self.repetition_penalty), "no_repeat_ngram_size": 0}

    def record(self) -> dict:
        """What results.json records about decoding."""
        return {"method": "constrained_greedy", "repetition_penalty": float(self.repetition_penalty),
                "speculative": bool(self.speculative)}


@dataclasses.dataclass
class PolicyConfig:
    """Everything a policy needs besides its weights: how it reads (prompt, images), writes (codec stats), blends
    (ensembling) and decodes, plus what it records about its origin (`meta`: dataset, base_model, recipe)."""

    prompt: PromptSpec
    image: ImageSpec
    stats: ActionStats
    per_task_bounds: bool = False
    gripper_dim: int | None = 6
    ensemble: EnsembleConfig = dataclasses.field(default_factory=EnsembleConfig)
    decoding: DecodingConfig = dataclasses.field(default_factory=DecodingConfig)
    meta: dict = dataclasses.field(default_factory=dict)

    def codec(self) -> ActionCodec:
        return ActionCodec(self.stats, horizon=self.prompt.horizon, bins=self.prompt.bins,
                           per_task_bounds=self.per_task_bounds, gripper_dim=self.gripper_dim)

    def replace(self, **changes) -> "PolicyConfig":
        """A copy with fields changed; `ensemble={...}` / `decoding={...}` change only the keys given."""
        for part in ("ensemble", "decoding"):
            if isinstance(changes.get(part), dict):
                changes[part] = dataclasses.replace(getattr(self, part), **changes[part])
        return dataclasses.replace(self, **changes)

    # -- from a recipe (training, bench) ------------------------------------------------------------------------------
    @classmethod
    def from_recipe(cls, recipe, stats: ActionStats, dataset_info: dict | None = None) -> "PolicyConfig":
        """The policy a recipe trains. `dataset_info` (the training reader's info): given, the config records which
        data and base model it came from."""
        prompt, image = specs_from_recipe(recipe)
        e = recipe.eval
        meta = {}
        if dataset_info is not None:
            meta = {"dataset": {"repo": recipe.data.repo, "suite": recipe.data.suite,
                                "revision": dataset_info.get("revision"),
                                "codebase_version": dataset_info.get("codebase_version")},
                    "base_model": recipe.model.name}
        # The one place recipe names become the policy's: eval.ensemble -> weighting, eval.ensemble_size -> max_chunks.
        ensemble = EnsembleConfig(weighting=e.ensemble, max_chunks=e.ensemble_size, exp_w=e.exp_w,
                                  execute_horizon=e.execute_horizon)
        return cls(prompt, image, stats, per_task_bounds=recipe.actions.per_task_bounds,
                   gripper_dim=recipe.actions.gripper_dim, ensemble=ensemble,
                   decoding=DecodingConfig(speculative=e.speculative, repetition_penalty=e.repetition_penalty),
                   meta=meta)

    # -- policy.json ------------------------------------------------------------------------------------------------
    @classmethod
    def from_json(cls, cfg: dict, decoding: DecodingConfig | None = None) -> "PolicyConfig":
        """Rebuild from a policy.json dict, validating it. Files written before a key existed still load."""
        for key in ("horizon", "dim", "bins", "action_stats", "image"):
            if key not in cfg:
                raise UserError(f"policy.json has no '{key}': this directory was not written by tinyvla train/export")
        stats = ActionStats.from_dict(cfg["action_stats"])
        if stats.dim != cfg["dim"]:
            raise UserError(f"policy.json: action stats have {stats.dim} dimensions but dim is {cfg['dim']}; "
                            "re-export the policy with matching stats")
        # policies written before instruction_position existed say only whether the instruction came first
        position = cfg.get("instruction_position",
                           "before_images" if cfg.get("instruction_first", False) else "after_images")
        if position not in INSTRUCTION_POSITIONS:
            raise UserError(f"policy.json: instruction_position {position!r} is not one of "
                            f"{', '.join(INSTRUCTION_POSITIONS)}; the file was edited by hand")
        cameras = cfg["image"].get("cameras")  # absent: LIBERO's two views, read as image / wrist_image
        prompt = PromptSpec(horizon=cfg["horizon"], dim=cfg["dim"], bins=cfg["bins"],
                            tile_views=cfg["image"].get("tile_views", True), instruction_position=position,
                            num_views=len(cameras) if cameras else 2, vision_id=bool(cfg.get("vision_id", False)),
                            system_prompt="none" if cfg.get("system_prompt") == "" else "vla0")
        if "system_prompt" in cfg and cfg["system_prompt"] != prompt.system:
            raise UserError("policy.json: system_prompt does not match horizon/dim/bins; the file was edited by hand")
        image_cfg = dict(cfg["image"])
        image_cfg.setdefault("jitter_per_view", True)  # written before the option existed: each view drew its own
        image = ImageSpec(**{k: image_cfg[k] for k in ("image_size", "crop_scale", "color_jitter", "tile_views",
                                                       "jitter_per_view") if k in image_cfg},
                          cameras=tuple(cameras) if cameras else None)
        known = {f.name for f in dataclasses.fields(EnsembleConfig)}
        ensemble = EnsembleConfig(**{k: v for k, v in (cfg.get("ensemble") or {}).items() if k in known})
        return cls(prompt, image, stats, per_task_bounds=cfg.get("per_task_bounds", False),
                   gripper_dim=cfg.get("gripper_dim", 6), ensemble=ensemble, decoding=decoding or DecodingConfig(),
                   meta={k: cfg[k] for k in META_KEYS if k in cfg})

    def to_json(self) -> dict:
        """What policy.json records about how this policy reads and writes (saving adds versions and the recipe)."""
        codec = self.codec()
        return {
            "format": POLICY_FORMAT,
            "horizon": self.prompt.horizon,
            "dim": self.prompt.dim,
            "bins": self.prompt.bins,
            "system_prompt": self.prompt.system,
            "instruction_position": self.prompt.instruction_position,
            "vision_id": self.prompt.vision_id,
            "image": self.image.to_dict(),
            "action_stats": self.stats.to_dict(),
            "per_task_bounds": codec.per_task_bounds,
            "gripper_dim": codec.gripper_dim,
            "ensemble": self.ensemble.to_dict(),
            **self.meta,
        }


    def protocol_record(self) -> dict:
        """What results.json records about the policy's side of an evaluation: how it decoded, the colour jitter
        it was trained with, whether its prompt labels images ("Picture N: ")."""
        jitter = "off" if not self.image.color_jitter else ("per_view" if self.image.jitter_per_view else "shared")
        return {"decoding": self.decoding.record(), "training_color_jitter": jitter,
                "vision_id": self.prompt.vision_id}


def specs_from_recipe(recipe) -> tuple[PromptSpec, ImageSpec]:
    """The prompt and image layout a recipe trains with."""
    a, d = recipe.actions, recipe.data
    return (PromptSpec(horizon=a.horizon, dim=a.dim, bins=a.bins, tile_views=d.tile_views,
                       instruction_position=d.instruction_position, vision_id=d.vision_id,
                       system_prompt=d.system_prompt,
                       num_views=len(d.cameras) if d.cameras else 2),
            ImageSpec(image_size=d.image_size, crop_scale=d.crop_scale, color_jitter=d.color_jitter,
                      tile_views=d.tile_views, jitter_per_view=d.jitter_per_view,
                      cameras=tuple(d.cameras) if d.cameras else None))


# ----------------------------------------------------------------------------------------------------------------------
# Saving


def save_policy_dir(policy, out: str | Path, recipe: dict | None = None, merge_lora: bool = False, dtype=None,
                    extra: dict | None = None, state_dict=None) -> Path:
    """Write `policy` (its config, model and processor) to `out` atomically: the directory appears complete or not at
    all. `state_dict`: the full weights when the live module holds only a shard (FSDP: `accelerator.get_state_dict`)."""
    from tinyvla.modeling.loading import save_policy_model

    out = Path(out)
    with atomic_dir(out) as tmp:
        has_adapter = save_policy_model(policy.model, policy.processor, tmp / "model", merge_lora=merge_lora,
                                        dtype=dtype, state_dict=state_dict, adapter_dir=tmp / "adapter")
        cfg = policy.config.to_json()
        cfg.update({"lora_adapter": has_adapter, "versions": versions(), **(extra or {})})
        cfg.setdefault("trained_on", machine_info())  # an export keeps its source's (META_KEYS)
        if recipe is not None:
            cfg["recipe"] = recipe
        write_json_atomic(tmp / "policy.json", cfg)
        write_json_atomic(tmp / "action_stats.json", policy.config.stats.to_dict())
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Loading


def read_policy_json(path: Path) -> dict:
    file = path / "policy.json"
    if not file.is_file():
        raise UserError(f"{path} is not a policy directory (no policy.json); pass a `tinyvla train` output such as "
                        "runs/NAME/final or an exported policy")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{file} is not valid JSON ({err.msg} at line {err.lineno}); re-export the policy") from None


def check_safe_files(path: Path) -> None:
    """Refuse pickled weights: loading them can execute arbitrary code."""
    pickled = [p for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    if pickled:
        raise UserError(f"{pickled[0]} is a pickle-format file; tinyvla loads safetensors only. Re-save the weights "
                        "with safetensors (model.save_pretrained(dir, safe_serialization=True))")
    if not any((path / "model").glob("*.safetensors")):
        raise UserError(f"{path / 'model'} has no .safetensors weights; export the policy again with tinyvla export")
    for weights in sorted(path.rglob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            raise UserError(f"{weights} is {problem}; copy the policy again or re-export it")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a .safetensors file's framing (cut short, unreadable header), or None. Reads the header only:
    8 bytes of header length, the JSON header, then the tensors, whose byte ranges the header lists."""
    import json
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated ({size} bytes)"
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            return f"truncated ({size} bytes, its header alone says {8 + n})"
        try:
            header = json.loads(f.read(n))
            end = max([v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"], default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            return "not a valid safetensors file (unreadable header)"
    if size != 8 + n + end:
        return f"truncated ({size} of {8 + n + end} bytes)" if size < 8 + n + end else "longer than its header says"
    return None


def resolve_policy_path(path: str | Path) -> Path:
    """A local directory, or a hub repo id downloaded through huggingface_hub."""
    local = Path(path)
    if local.exists():
        return local
    if is_hub_id(path):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(path), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja",
                                                                      "*.md", "*.yaml", "**/*"]))
        except Exception as err:  # offline, missing repo, auth: one line, with the local alternative
            raise UserError(f"could not download policy {path} from the hub ({type(err).__name__}); pass a local "
                            "policy directory instead") from None
    raise UserError(f"policy not found: {path} (pass a directory written by tinyvla train/export, e.g. runs/NAME/final)")


class LoadedPolicy(NamedTuple):
    """Policy(*loaded) builds the policy: the argument order of Policy.__init__."""

    config: PolicyConfig
    model: object
    processor: object
    source: str


def load_policy_dir(path: str | Path, device: str | None = None, dtype: str | None = None,
                    decoding: DecodingConfig | None = None) -> LoadedPolicy:
    """Read and validate a policy directory: its config, the model (on `device`) and processor, where it was found."""
    import torch

    from tinyvla.modeling.loading import load_policy_model

    root = resolve_policy_path(path)
    config = PolicyConfig.from_json(read_policy_json(root), decoding=decoding)
    check_safe_files(root)
    model, processor = load_policy_model(root / "model", dtype=dtype or "fp32")
    if (root / "adapter").is_dir():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(root / "adapter"))
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return LoadedPolicy(config, model, processor, str(root))


# ----------------------------------------------------------------------------------------------------------------------
# model.init_from: a policy's weights as the start of another run


def find_init_policy(path: str | Path) -> Path:
    """The policy directory `model.init_from` names, checked (exists, safetensors, no unmerged adapter)."""
    if not Path(path).exists() and not is_hub_id(path):
        raise UserError(f"model.init_from: no policy at {path}; train the stage it names first (its recipe's header "
                        "says which), or point it elsewhere with --set model.init_from=DIR")
    root = resolve_policy_path(path)
    check_safe_files(root)
    if (root / "adapter").is_dir():
        raise UserError(f"{root} holds an unmerged LoRA adapter; export it merged first (tinyvla export {path} "
                        "--merge-lora) and start from the export")
    return root


def load_weights_from_policy(model, path: str | Path, tokenizer=None) -> None:
    """Copy a tinyvla policy directory's weights into `model` (same architecture): the next stage of a curriculum, or
    fine-tuning a multi-task policy on one suite. Only the weights come over; stats and prompt come from the recipe.

    With `tokenizer` (the run's), the policy's saved vocabulary must equal it: weights mean something only under the
    ids they were trained with, and a rebuilt vocabulary (e.g. new instruction words) would silently scramble the
    embeddings. Checked first, since a new vocabulary usually changes the shapes too."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    root = find_init_policy(path)
    vocab_file = root / "model" / "tokenizer.json"
    if tokenizer is not None and vocab_file.is_file():  # older policy layouts have nothing to compare with
        if Tokenizer.from_file(str(vocab_file)).get_vocab() != tokenizer.get_vocab():
            raise UserError(f"model.init_from {path}: it was trained with another vocabulary than this run's "
                            "tokenizer; retrain that stage with this tinyvla version (or set model.tokenizer to its "
                            "directory)")
    state = {}
    for file in sorted((root / "model").glob("*.safetensors")):
        state.update(load_file(str(file)))
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape)]
    # Tied weights (lm_head = embed_tokens in the tiny models) are saved once; the copy fills both.
    missing = [k for k in own if k not in state and not _is_tied(model, k)]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        first = (wrong or missing or unexpected)[0]
        raise UserError(f"model.init_from {path}: its weights do not fit this model ({len(wrong)} shapes differ, "
                        f"{len(missing)} missing, {len(unexpected)} unexpected; e.g. {first}); use the same "
                        "model.name and model.tiny sizes as the run that wrote it")
    model.load_state_dict(state, strict=False)


def _is_tied(model, key: str) -> bool:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inp = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return key.endswith("lm_head.weight") and out is not None and inp is not None and out.weight is inp.weight
