"""A policy = input transforms + model + output transforms. Anything that acts (eval, export, your robot) takes one.

    policy = Policy.from_pretrained("runs/tiny-cpu/final")
    chunk = policy.predict_chunk(image, wrist_image, "pick up the block that is red")   # (H, D) actions
    policy.reset()
    action = policy.act({"image": ..., "wrist_image": ...}, "pick up the block that is red")  # (D,), ensembled

Inputs: both camera frames -> crop/resize/tile -> the VLA-0 chat. Model: constrained greedy decoding, so the output is
always exactly H x D integers in 0..B. Outputs: parse -> decode with the saved action stats -> temporal ensembling.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tinyvla.core.codec import ActionCodec, ActionStats
from tinyvla.core.ensemble import BatchEnsembler
from tinyvla.core.prompt import INSTRUCTION_POSITIONS, PromptSpec
from tinyvla.data.transforms import ImageSpec, observation_views
from tinyvla.errors import UserError

POLICY_FORMAT = 1  # bump when policy.json changes incompatibly


class Policy:
    def __init__(self, model, processor, codec: ActionCodec, prompt: PromptSpec, image_spec: ImageSpec,
                 ensemble: dict | None = None, meta: dict | None = None):
        import torch

        from tinyvla.core.grammar import ActionGrammar, TokenConstraint, vocab_from_tokenizer

        self.model = model.eval()
        self.processor = processor
        self.codec = codec
        self.prompt = prompt
        self.image_spec = image_spec
        self.ensemble_cfg = {"weighting": "vla0", "max_chunks": 8, "exp_w": 0.5, "execute_horizon": 1, **(ensemble or {})}
        self.meta = meta or {}
        self.device = next(model.parameters()).device
        self.grammar = ActionGrammar(prompt.horizon, prompt.dim, prompt.bins)
        self.constraint = TokenConstraint(self.grammar, vocab_from_tokenizer(processor.tokenizer),
                                          eos_ids=list(processor.eos_token_ids))
        self.forward_passes = 0  # model forward calls made while predicting: the speed work's unit
        # Decoding totals since construction (the bench reads them): generate calls, chunks written, forward passes,
        # tokens written, draft tokens fed and kept.
        self.decode_stats = {"calls": 0, "chunks": 0, "passes": 0, "tokens": 0, "drafted": 0, "accepted": 0}
        # Chunk-shift speculative decoding in act_batch (tinyvla/modeling/speculative.py): each env's previous chunk,
        # shifted by the steps since, drafts its next one. Same actions, far fewer forward passes. Off by default;
        # eval turns it on from the recipe's eval.speculative.
        self.speculative = False
        self.spec_options = {"redraft": True, "reuse_cache": True, "adaptive": True, "max_draft_tokens": None}
        # Extra keyword arguments for model.generate on the plain greedy path, e.g. {"cache_implementation": "static"}
        # on a GPU (transformers then compiles the decode step). Empty = transformers' defaults.
        self.generate_kwargs: dict = {}
        self._ensembler: BatchEnsembler | None = None
        self._steps: list[int] = []
        self._last_codes: dict[int, tuple[int, np.ndarray]] = {}  # env -> (query step, (H, D) int codes)
        self._start_codes: np.ndarray | None = None  # the latest chunk written at an episode's first step
        self._torch = torch

    # -- construction -----------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, dtype: str | None = None) -> "Policy":
        """Load a policy directory written by `tinyvla train` or `tinyvla export` (or a hub id of one)."""
        from tinyvla.policy_dir import load_policy_dir

        return load_policy_dir(path, device=device, dtype=dtype)

    # -- prediction -------------------------------------------------------------------------------------------------
    def encode_batch(self, images: list, wrist_images: list | None, instructions: list[str]) -> dict:
        """wrist_images None: each entry of `images` is one observation's list of views (any number of cameras)."""
        from tinyvla.inputs import encode_prompt

        views = images if wrist_images is None else [[im, wr] for im, wr in zip(images, wrist_images)]
        items = [encode_prompt(self.processor, self.prompt, self.image_spec, v, ins)
                 for v, ins in zip(views, instructions)]
        batch = self.processor.collate(items, padding_side="left")
        return {k: v.to(self.device) if hasattr(v, "to") else v for k, v in batch.items()}

    def generate_text(self, images, wrist_images, instructions, draft: list | None = None) -> list[str]:
        """Constrained greedy decoding for a batch of observations -> the action texts.

        draft: per observation a guess of its answer as H*D int codes (a flat list or an (H, D) array), or None. With
        any draft given, decoding is speculative (tinyvla/modeling/speculative.py): the text is the same, the number
        of forward passes is not. Without, this is transformers' `generate`: the reference the speculative path is
        tested against.
        """
        torch = self._torch
        batch = self.encode_batch(images, wrist_images, instructions)
        prompt_len = batch["input_ids"].shape[1]
        counter = _ForwardCounter(self.model)
        speculative = draft is not None and any(d is not None for d in draft)
        with torch.inference_mode(), counter:
            if speculative:
                from tinyvla.modeling.speculative import speculative_generate

                tokens, stats = speculative_generate(
                    self.model, batch, self.constraint, list(draft), self.processor.encode_action_text,
                    eos_draft_id=self.processor.end_of_turn_ids[0], pad_token_id=self.processor.pad_token_id,
                    max_new_tokens=self.grammar.max_chars + 1, **self.spec_options)
                self.decode_stats["drafted"] += stats.drafted
                self.decode_stats["accepted"] += stats.accepted
            else:
                from tinyvla.modeling.constrained import ActionLogitsProcessor

                out = self.model.generate(
                    **batch,
                    logits_processor=[ActionLogitsProcessor(self.constraint)],
                    do_sample=False,
                    max_new_tokens=self.grammar.max_chars + 1,
                    eos_token_id=list(self.processor.eos_token_ids),
                    pad_token_id=self.processor.pad_token_id,
                    **self.generate_kwargs,
                )
                tokens = out[:, prompt_len:].tolist()
        self.forward_passes += counter.calls
        eos = set(self.constraint.eos_ids)
        self.decode_stats["calls"] += 1
        self.decode_stats["chunks"] += len(tokens)
        self.decode_stats["passes"] += counter.calls
        self.decode_stats["tokens"] += sum(next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
                                           for row in tokens)
        return self.processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)

    def predict_codes(self, images, wrist_images, instructions, drafts: list | None = None) -> np.ndarray:
        """(B, H, D) int codes in 0..bins for B observations; `drafts` as in generate_text."""
        texts = self.generate_text(images, wrist_images, instructions, draft=drafts)
        return np.stack([self.codec.parse(t) for t in texts])

    def predict_chunks(self, images, wrist_images, instructions, drafts: list | None = None) -> np.ndarray:
        """(B, H, D) continuous actions for B observations; `drafts` as in generate_text (same result, fewer passes)."""
        codes = self.predict_codes(images, wrist_images, instructions, drafts)
        return np.stack([self.codec.decode(c, ins) for c, ins in zip(codes, instructions)])

    def predict_chunk(self, image: np.ndarray, wrist_image: np.ndarray, instruction: str) -> np.ndarray:
        return self.predict_chunks([image], [wrist_image], [instruction])[0]

    def draft_for(self, env: int, step: int) -> np.ndarray | None:
        """The speculative draft for env `env` at `step`: its previous chunk shifted by the steps since; at an
        episode's start (no previous chunk), the latest chunk any env wrote at its first step (starts look alike, and
        a batch decodes as long as its slowest row). None when there is nothing to guess from."""
        from tinyvla.modeling.speculative import shift_chunk

        last = self._last_codes.get(env)
        if last is not None:
            return shift_chunk(last[1], step - last[0])
        return None if self._start_codes is None else self._start_codes.copy()

    # -- acting with ensembling -------------------------------------------------------------------------------------
    def reset(self, num_envs: int = 1) -> None:
        """Start new episodes: forget every stored chunk."""
        cfg = self.ensemble_cfg
        self._ensembler = BatchEnsembler(num_envs, self.prompt.horizon, self.prompt.dim, weighting=cfg["weighting"],
                                         max_chunks=cfg["max_chunks"], exp_w=cfg["exp_w"],
                                         execute_horizon=cfg["execute_horizon"])
        self._steps = [0] * num_envs
        self._last_codes.clear()

    def reset_env(self, i: int) -> None:
        self._ensembler.reset(i)
        self._steps[i] = 0
        self._last_codes.pop(i, None)

    def act_batch(self, observations: list[dict], instructions: list[str], env_ids: list[int] | None = None) -> np.ndarray:
        """One action per observation; re-queries the model only for envs whose ensembler asks for a new chunk."""
        if self._ensembler is None:
            self.reset(len(observations))
        env_ids = list(range(len(observations))) if env_ids is None else list(env_ids)
        steps = [self._steps[e] for e in env_ids]
        need = [k for k, (e, t) in enumerate(zip(env_ids, steps)) if self._ensembler[e].needs_query(t)]
        if need:
            ins = [instructions[k] for k in need]
            drafts = [self.draft_for(env_ids[k], steps[k]) for k in need] if self.speculative else None
            codes = self.predict_codes([observation_views(observations[k], self.image_spec) for k in need], None,
                                       ins, drafts)
            chunks = np.stack([self.codec.decode(c, i) for c, i in zip(codes, ins)])
            self._ensembler.add([env_ids[k] for k in need], chunks, [steps[k] for k in need])
            for k, c in zip(need, codes):  # kept after the model call, so a failed call changes nothing
                self._last_codes[env_ids[k]] = (steps[k], c)
                if steps[k] == 0:
                    self._start_codes = c
        actions = self._ensembler.action(env_ids, steps)
        for e in env_ids:
            self._steps[e] += 1
        return np.asarray(actions, dtype=np.float32)

    def act(self, observation: dict, instruction: str) -> np.ndarray:
        return self.act_batch([observation], [instruction])[0]

    # -- description ------------------------------------------------------------------------------------------------
    def config(self) -> dict:
        """What policy.json records about how this policy reads and writes."""
        return {
            "format": POLICY_FORMAT,
            "horizon": self.prompt.horizon,
            "dim": self.prompt.dim,
            "bins": self.prompt.bins,
            "system_prompt": self.prompt.system,
            "instruction_position": self.prompt.instruction_position,
            "image": self.image_spec.to_dict(),
            "action_stats": self.codec.stats.to_dict(),
            "per_task_bounds": self.codec.per_task_bounds,
            "gripper_dim": self.codec.gripper_dim,
            "ensemble": self.ensemble_cfg,
            **self.meta,
        }


class _ForwardCounter:
    """Counts model forward calls inside a `with` block (a forward pre-hook on the top module)."""

    def __init__(self, model):
        self.model, self.calls, self.handle = model, 0, None

    def _hook(self, *_):
        self.calls += 1

    def __enter__(self):
        self.handle = self.model.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def policy_from_config(model, processor, cfg: dict, meta: dict | None = None) -> Policy:
    """Rebuild a Policy from a loaded model/processor and a policy.json dict, validating it."""
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
    cameras = cfg["image"].get("cameras")
    prompt = PromptSpec(horizon=cfg["horizon"], dim=cfg["dim"], bins=cfg["bins"],
                        tile_views=cfg["image"].get("tile_views", True), instruction_position=position,
                        num_views=len(cameras) if cameras else 2)
    if "system_prompt" in cfg and cfg["system_prompt"] != prompt.system:
        raise UserError("policy.json: system_prompt does not match horizon/dim/bins; the file was edited by hand")
    image_spec = ImageSpec(**{k: cfg["image"][k] for k in ("image_size", "crop_scale", "color_jitter", "tile_views")
                              if k in cfg["image"]}, cameras=tuple(cameras) if cameras else None)
    codec = ActionCodec(stats, horizon=cfg["horizon"], bins=cfg["bins"], per_task_bounds=cfg.get("per_task_bounds", False),
                        gripper_dim=cfg.get("gripper_dim", 6))
    return Policy(model, processor, codec, prompt, image_spec, ensemble=cfg.get("ensemble"), meta=meta)


def read_policy_json(path: Path) -> dict:
    file = path / "policy.json"
    if not file.is_file():
        raise UserError(f"{path} is not a policy directory (no policy.json); pass a `tinyvla train` output such as "
                        "runs/NAME/final or an exported policy")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{file} is not valid JSON ({err.msg} at line {err.lineno}); re-export the policy") from None
