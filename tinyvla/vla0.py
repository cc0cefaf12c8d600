"""Import the released VLA-0 checkpoint (NVlabs/vla0, `ankgoyal/vla0-libero`) as a tinyvla policy directory.

    tinyvla import vla0 runs/vla0 --out policies/vla0-libero
    tinyvla eval policies/vla0-libero --suite libero_goal

What the official code leaves in its run directory (rv_train/train.py, rv_train/models/qwen/model.py):
  config.yaml         the yacs config, dumped as plain YAML (MODEL.QWEN: horizon, action dim, bins, add_vision_id, ...)
  dataset_stats.pkl   a pickle of the dataset stats dict; `out_ori_act` -> min / max / mean_ema / std_ema arrays
  model_last.pth      torch.save of {cfg, epoch, model_state, optimizer_state, lr_sched_state}
  model_last/         the Hugging Face checkpoint: the wrapper has `save_pretrained`, so train.py writes the weights
                      here (safetensors + config + processor) and leaves model_state None
Where model_state does hold the weights (a wrapper without save_pretrained), they are the wrapper's state dict: every
key gets the wrapper's `model.` prefix (and `module.` under DDP) on top of the transformers <= 4.51 layout.

Pickles: the two pickles are the only ones tinyvla ever opens, and only here, because the user asked for this import.
Both go through restricted unpicklers that build tensors, numpy arrays and plain containers and refuse any other
global with one line, before anything runs: torch.load(weights_only=True) for the .pth (tensors, dicts, lists,
tuples, sets, numbers: enough for an AdamW state and a yacs cfg's attributes), `_StatsUnpickler` for the stats.
The .pth is opened only when no model_last/ directory holds the weights.

Parameter names: transformers <= 4.51 kept the text model at `model.*` and the vision tower at `visual.*`; the
current classes nest both under `model.` (`model.language_model.*`, `model.visual.*`). `current_key` maps one to the
other; every mapped key must be one the current class has, and every key it has must be present (the output head may be
missing when it is tied to the embedding).
"""

from __future__ import annotations

import ast
import json
import pickle
import re
from pathlib import Path

import numpy as np

from tinyvla.errors import UserError

# Globals a stats pickle may name: numpy arrays, dtypes and scalars (numpy 1.x and 2.x module paths), and the plain
# containers older pickle protocols build through a global. Nothing that can call out of the process.
_NUMPY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                  ("numpy", "ndarray"), ("numpy", "dtype")}
_PLAIN_GLOBALS = {("builtins", "set"), ("builtins", "frozenset"), ("collections", "OrderedDict")}
ALLOWED_STATS_GLOBALS = frozenset(_NUMPY_GLOBALS | _PLAIN_GLOBALS)


class RefusedPickle(Exception):
    """A pickle asked for a global outside the allowed set."""


class _StatsUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in ALLOWED_STATS_GLOBALS:
            return super().find_class(module, name)
        raise RefusedPickle(f"{module}.{name}")

    def persistent_load(self, pid):  # a plain pickle has no persistent ids; torch's would need torch's loader
        raise RefusedPickle(f"persistent id {pid!r}")


def _refusal(path: Path, what: str) -> UserError:
    return UserError(f"refused to unpickle {path}: it asks for {what}, and tinyvla reads only tensors, numpy arrays "
                     "and plain containers from a pickle; is this really the VLA-0 checkpoint?")


def read_stats_pickle(path: str | Path) -> dict:
    """dataset_stats.pkl -> its dict, through the restricted unpickler."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = _StatsUnpickler(f).load()
    except RefusedPickle as err:
        raise _refusal(path, str(err)) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise UserError(f"{path} is not a readable stats pickle ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a dict of dataset stats, got {type(data).__name__}")
    return data


def read_checkpoint_pth(path: str | Path) -> dict:
    """model_last.pth -> its dict, through torch's weights-only unpickler (memory-mapped: optimizer state is large)."""
    import torch

    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL)\s+([\w.]+)", str(err), re.IGNORECASE)
        raise _refusal(path, found.group(1) if found else "something other than tensors and containers") from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path} is not a readable torch checkpoint ({first})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected the official checkpoint dict (model_state, optimizer_state, ...), "
                        f"got {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------------------------------------------
# The official config


def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def official_settings(config_yaml: str | Path) -> dict:
    """What the imported policy needs from config.yaml: prompt, image and action settings, the base model id."""
    import yaml

    path = Path(config_yaml)
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    qwen = (cfg.get("MODEL") or {}).get("QWEN") or {}
    if not qwen:
        raise UserError(f"{path} has no MODEL.QWEN section: not a VLA-0 config.yaml")
    if str(qwen.get("action_type", "original")).lower() != "original":
        raise UserError(f"{path}: action_type {qwen.get('action_type')!r}; only VLA-0's 'original' actions exist")
    # yacs reads "224,224" as a tuple; the dump writes it back as a list
    size = qwen.get("rgb_img_size", [224, 224])
    size = _literal(size) if isinstance(size, str) else size
    # DATALOADER.ROBOVERSE.cfg_opts: "KEY:VALUE:KEY:VALUE" overrides of the RoboVerse image config
    opts = str(((cfg.get("DATALOADER") or {}).get("ROBOVERSE") or {}).get("cfg_opts", "") or "")
    parts = [p for p in opts.split(":") if p != ""]
    image_opts = {parts[i]: _literal(parts[i + 1]) for i in range(0, len(parts) - 1, 2)}
    num_cam = int(qwen.get("num_cam", 1))
    if num_cam != 2 or int(qwen.get("history", 1)) != 1:
        raise UserError(f"{path}: num_cam={num_cam}, history={qwen.get('history', 1)}; tinyvla's policies read two "
                        "cameras (third-person, wrist) and no history, as the LIBERO checkpoint does")
    return {
        "horizon": int(qwen.get("horizon", 8)),
        "dim": int(qwen.get("original_action_dim", 7)),
        "bins": int(qwen.get("num_bins_actions", 1000)),
        "vision_id": bool(qwen.get("add_vision_id", False)),
        "tile_views": bool(qwen.get("tiled_rgb_imgs", False)),
        "image_size": int(list(size)[0]),
        "crop_scale": float(image_opts.get("IMAGE.crop_img", 1.0)),
        "base_model": str(qwen.get("qwen_model_id", "Qwen/Qwen2.5-VL-3B-Instruct")),
        "use_lora": bool(qwen.get("use_lora", False)),
    }


def official_action_stats(stats: dict, dim: int):
    """The codec's stats from the official dict: `out_ori_act` min / max (mean_ema / std_ema kept for reporting)."""
    from tinyvla.core.codec import ActionStats

    act = stats.get("out_ori_act")
    if not isinstance(act, dict) or "min" not in act or "max" not in act:
        raise UserError(f"dataset_stats.pkl has no out_ori_act min/max (keys: {sorted(map(str, stats))[:8]})")

    def vec(key):
        v = act.get(key)
        return None if v is None else [float(x) for x in np.asarray(v, dtype=np.float64).reshape(-1)]

    out = ActionStats(min=vec("min"), max=vec("max"), mean=vec("mean_ema"), std=vec("std_ema"))
    if out.dim != dim:
        raise UserError(f"dataset_stats.pkl: out_ori_act has {out.dim} dimensions, config.yaml says {dim}")
    return out


# ------------------------------------------------------------------------------------------------------------------
# Parameter names


def current_key(key: str) -> str:
    """One transformers <= 4.51 Qwen2.5-VL parameter name (no wrapper prefix) -> the current class's name."""
    if key.startswith("visual."):
        return "model." + key
    if key.startswith("model.") and not key.startswith(("model.visual.", "model.language_model.")):
        return "model.language_model." + key[len("model."):]
    return key  # lm_head.*, or already the current layout


def to_current_layout(state: dict) -> dict:
    """An official state dict (the wrapper's, a DDP module's, or a save_pretrained one) in the current layout."""
    keys = list(state)
    strip = ""
    if keys and all(k.startswith("module.") for k in keys):
        strip = "module."
    inner = [k[len(strip):] for k in keys]
    # The wrapper (QwenActor) holds the HF model as `self.model`: its own lm_head shows as model.lm_head.
    if "model.lm_head.weight" in inner:
        strip += "model."
    out = {}
    for k, v in state.items():
        new = current_key(k[len(strip):])
        if new in out:
            raise UserError(f"checkpoint parameter {k} maps onto {new} twice: an unknown key layout")
        out[new] = v
    return out


def check_keys(state: dict, expected: set[str], tied: bool) -> None:
    unexpected = sorted(set(state) - expected)
    missing = sorted(expected - set(state) - ({"lm_head.weight"} if tied else set()))
    if unexpected or missing:
        what = []
        if unexpected:
            what.append(f"{len(unexpected)} unknown (e.g. {unexpected[0]})")
        if missing:
            what.append(f"{len(missing)} missing (e.g. {missing[0]})")
        raise UserError(f"checkpoint weights do not fit the Qwen2.5-VL architecture: {', '.join(what)}; "
                        "a LoRA or differently sized checkpoint needs --base pointing at its base model")


# ------------------------------------------------------------------------------------------------------------------
# The import


def _read_safetensors_dir(directory: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _official_weights(src: Path) -> tuple[dict, Path | None]:
    """(state dict in the official layout, the HF directory it came from or None)."""
    hf_dir = src / "model_last"
    if hf_dir.is_dir() and any(hf_dir.glob("*.safetensors")):
        return _read_safetensors_dir(hf_dir), hf_dir
    pth = src / "model_last.pth"
    if not pth.is_file():
        raise UserError(f"{src} has neither model_last/ (safetensors) nor model_last.pth; pass the directory that "
                        "holds the VLA-0 checkpoint (config.yaml, dataset_stats.pkl, model_last.pth)")
    ckpt = read_checkpoint_pth(pth)
    state = ckpt.get("model_state")
    if state is None:
        raise UserError(f"{pth} holds no model_state: the official code then saves the weights in {hf_dir}/; "
                        "download that folder too")
    if not isinstance(state, dict) or not state:
        raise UserError(f"{pth}: model_state is {type(state).__name__}, expected a state dict of tensors")
    return dict(state), None


def _save_safetensors(state: dict, path: Path) -> None:
    """Contiguous, unshared copies where needed (safetensors refuses tensors that share memory)."""
    from safetensors.torch import save_file

    seen, clean = set(), {}
    for k, v in state.items():
        v = v.contiguous()
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset())
        if ptr in seen:
            v = v.clone()
        seen.add(ptr)
        clean[k] = v
    save_file(clean, str(path), metadata={"format": "pt"})


def import_vla0(src: str | Path, out: str | Path, base: str | None = None, repetition_penalty: float | None = None,
                dtype: str | None = None) -> Path:
    """Convert an official VLA-0 run directory into a tinyvla policy directory at `out` (written atomically)."""
    import tempfile

    import torch
    from transformers import AutoConfig

    from tinyvla.modeling import registry
    from tinyvla.modeling.loading import DTYPES, load_policy_model
    from tinyvla.modeling.processor import VLAProcessor
    from tinyvla.policy import Policy
    from tinyvla.policy_dir import PolicyConfig, save_policy_dir

    src, out = Path(src).expanduser(), Path(out)
    if not src.is_dir():
        raise UserError(f"{src} is not a directory; pass the folder with config.yaml, dataset_stats.pkl, model_last.pth")
    for name in ("config.yaml", "dataset_stats.pkl"):
        if not (src / name).is_file():
            raise UserError(f"{src} has no {name}; the VLA-0 checkpoint folder holds config.yaml, dataset_stats.pkl "
                            "and model_last.pth (+ model_last/)")
    if dtype is not None and dtype not in registry.DTYPE_CHOICES:
        raise UserError(f"--dtype must be one of {', '.join(registry.DTYPE_CHOICES)}; got {dtype!r}")
    settings = official_settings(src / "config.yaml")
    if settings["use_lora"]:
        raise UserError("config.yaml says use_lora: True; only full fine-tunes (the released checkpoint) import")
    stats = official_action_stats(read_stats_pickle(src / "dataset_stats.pkl"), settings["dim"])
    state, hf_dir = _official_weights(src)

    # Architecture, tokenizer and image processor: the checkpoint's own folder, else the base model it names.
    model_source = str(hf_dir) if hf_dir is not None else (base or settings["base_model"])
    local = Path(model_source).expanduser()
    try:
        hf_config = AutoConfig.from_pretrained(str(local) if local.is_dir() else model_source, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise UserError(f"could not read the model config from {model_source!r} ({type(err).__name__}); pass "
                        "--base DIR with the base model's files (config.json, tokenizer, preprocessor)") from None
    if hf_config.model_type != "qwen2_5_vl":
        raise UserError(f"{model_source}: model_type {hf_config.model_type!r}; VLA-0 checkpoints are Qwen2.5-VL")
    processor = VLAProcessor.from_pretrained(str(local) if local.is_dir() else model_source)

    state = to_current_layout(state)
    cls = registry.model_class(hf_config)
    with torch.device("meta"):
        expected = set(cls._from_config(hf_config).state_dict())
    tied = bool(getattr(hf_config, "tie_word_embeddings", False) or
                getattr(getattr(hf_config, "text_config", None), "tie_word_embeddings", False))
    check_keys(state, expected, tied)
    if tied:
        state.pop("lm_head.weight", None)
    if dtype is not None:
        state = {k: v.to(DTYPES[dtype]) if v.is_floating_point() else v for k, v in state.items()}
    weights_dtype = next(v.dtype for v in state.values() if v.is_floating_point())
    hf_config.dtype = str(weights_dtype).replace("torch.", "")

    gen_file = (hf_dir if hf_dir is not None else local) / "generation_config.json"
    generation = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    if repetition_penalty is None:
        # The official eval decodes greedily through `generate`, which still applies the checkpoint's
        # generation_config repetition penalty: keep it, so the import decodes as the official eval did.
        repetition_penalty = float(generation.get("repetition_penalty", 1.0))
    if not repetition_penalty > 0:
        raise UserError(f"--repetition-penalty must be > 0 (1.0 = none), got {repetition_penalty}")

    # One recipe says what the official config says; the policy's settings come from it as for a trained policy.
    recipe = _recipe(settings, repetition_penalty, base or settings["base_model"])
    policy_config = PolicyConfig.from_recipe(recipe, stats).replace(meta={"base_model": recipe.model.name})

    with tempfile.TemporaryDirectory(prefix="tinyvla-vla0-") as tmp:
        # The converted weights as an ordinary HF checkpoint, loaded back through the same path `tinyvla eval` uses.
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        hf_config.save_pretrained(str(model_dir))
        _save_safetensors(state, model_dir / "model.safetensors")
        processor.save_pretrained(model_dir)
        del state
        try:
            model, processor = load_policy_model(model_dir, dtype=hf_config.dtype)
        except (RuntimeError, ValueError) as err:  # e.g. a tensor whose shape the config does not have
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"the converted weights do not load into {hf_config.model_type} ({first}); "
                            "a differently sized checkpoint needs --base pointing at its base model") from None
        extra = {"imported_from": {"format": "NVlabs/vla0", "path": str(src.resolve()),
                                   "weights": "model_last/" if hf_dir is not None else "model_last.pth:model_state",
                                   "official_generation_config": generation}}
        save_policy_dir(Policy(policy_config, model, processor), out, recipe=recipe.to_dict(), dtype=weights_dtype,
                        extra=extra)
    return out


def _recipe(settings: dict, repetition_penalty: float, base: str):
    """A tinyvla recipe saying what the official config says (policy.json records it; eval reads its eval section:
    per-task seeding, the repetition penalty). Ensembling keeps the recipe defaults: VLA-0's 8 chunks, re-query
    every step."""
    from tinyvla.recipe import Recipe

    r = Recipe(name="vla0-import", description="imported from an NVlabs/vla0 checkpoint")
    r.model.name = base
    r.data.image_size, r.data.crop_scale = settings["image_size"], settings["crop_scale"]
    r.data.tile_views, r.data.vision_id, r.data.jitter_per_view = settings["tile_views"], settings["vision_id"], False
    r.data.color_jitter, r.data.instruction_position = True, "after_images"
    r.actions.horizon, r.actions.dim, r.actions.bins = settings["horizon"], settings["dim"], settings["bins"]
    r.actions.gripper_dim = settings["dim"] - 1
    r.eval.seeding, r.eval.repetition_penalty = "per_task", float(repetition_penalty)
    return r.validate()
