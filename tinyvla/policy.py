"""A policy = input transforms + model + output transforms. Anything that acts (eval, export, your robot) takes one.

    policy = Policy.from_pretrained("runs/tiny-cpu/final")
    chunk = policy.predict_chunk(image, wrist_image, "pick up the block that is red")   # (H, D) actions
    policy.reset()
    action = policy.act({"image": ..., "wrist_image": ...}, "pick up the block that is red")  # (D,), ensembled

Inputs: both camera frames -> crop/resize/tile -> the VLA-0 chat. Model: constrained greedy decoding, so the output is
always exactly H x D integers in 0..B. Outputs: parse -> decode with the saved action stats -> temporal ensembling.
Everything about the format (prompt, images, stats, ensembling, decoding) is in `policy.config`, a
`tinyvla.policy_dir.PolicyConfig`; this class knows nothing about disk. It implements
`tinyvla.interface.PolicyInterface`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np

from tinyvla.core.ensemble import BatchEnsembler, EnsembledActor
from tinyvla.data.transforms import observation_views
from tinyvla.policy_dir import DecodingConfig, PolicyConfig


class Policy(EnsembledActor):
    def __init__(self, config: PolicyConfig, model, processor, source: str | None = None):
        """config: how the policy reads, writes, blends and decodes; model + processor: a loaded pair
        (tinyvla.modeling.loading); source: where it was loaded from, if anywhere (recorded by eval)."""
        import torch

        from tinyvla.core.grammar import ActionGrammar, TokenConstraint, vocab_from_tokenizer

        self.config = config
        self.model = model.eval()
        self.processor = processor
        self.source = source
        self.codec = config.codec()
        self.device = next(model.parameters()).device
        self.grammar = ActionGrammar(config.prompt.horizon, config.prompt.dim, config.prompt.bins)
        self.constraint = TokenConstraint(self.grammar, vocab_from_tokenizer(processor.tokenizer),
                                          eos_ids=list(processor.eos_token_ids))
        # Decoding totals since construction (the bench reads them): generate calls, chunks written, forward passes,
        # tokens written, draft tokens fed and kept.
        self.decode_stats = {"calls": 0, "chunks": 0, "passes": 0, "tokens": 0, "drafted": 0, "accepted": 0}
        self._ensembler: BatchEnsembler | None = None
        self._steps: list[int] = []
        self._last_codes: dict[int, tuple[int, np.ndarray]] = {}  # env -> (query step, (H, D) int codes)
        self._start_codes: np.ndarray | None = None  # the latest chunk written at an episode's first step
        self._torch = torch

    # -- what it is -------------------------------------------------------------------------------------------------
    @property
    def prompt(self):
        return self.config.prompt

    @property
    def image_spec(self):
        return self.config.image

    @property
    def meta(self) -> dict:
        return self.config.meta

    @property
    def forward_passes(self) -> int:
        """Model forward calls made while predicting (the speed work's unit): decode_stats["passes"]."""
        return self.decode_stats["passes"]

    @property
    def speculative(self) -> bool:
        return self.config.decoding.speculative

    @contextlib.contextmanager
    def decoding(self, **changes):
        """Decode with other DecodingConfig settings inside a `with` block (the bench compares modes on one loaded
        model); the policy's own settings come back afterwards, even on error."""
        old = self.config
        self.config = dataclasses.replace(old, decoding=dataclasses.replace(old.decoding, **changes))
        try:
            yield self
        finally:
            self.config = old

    # -- construction -----------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, dtype: str | None = None,
                        decoding: DecodingConfig | None = None) -> "Policy":
        """Load a policy directory written by `tinyvla train` or `tinyvla export` (or a hub id of one)."""
        from tinyvla.policy_dir import load_policy_dir

        return cls(*load_policy_dir(path, device=device, dtype=dtype, decoding=decoding))

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
                    max_new_tokens=self.grammar.max_chars + 1,
                    **self.config.decoding.speculative_options())
                self.decode_stats["drafted"] += stats.drafted
                self.decode_stats["accepted"] += stats.accepted
            else:
                from tinyvla.modeling.constrained import constrained_generate_kwargs

                # Greedy whatever the checkpoint's generation_config says (real Qwen checkpoints default to sampling
                # with a repetition penalty): every decoding setting is passed explicitly.
                out = self.model.generate(**batch, **self.config.decoding.greedy_kwargs(),
                                          **self.config.decoding.generate_kwargs,
                                          **constrained_generate_kwargs(self.constraint,
                                                                        pad_token_id=self.processor.pad_token_id))
                tokens = out[:, prompt_len:].tolist()
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

    # -- acting with ensembling (EnsembledActor: reset / reset_env / act_batch / act) ---------------------------------
    def _forget(self, env: int | None) -> None:
        if env is None:
            self._last_codes.clear()
        else:
            self._last_codes.pop(env, None)

    def predict_for(self, env_ids: list[int], observations: list[dict], instructions: list[str],
                    steps: list[int]) -> np.ndarray:
        """(k, H, D) chunks for the envs the ensembler asked about, drafted from their previous chunks."""
        drafts = [self.draft_for(e, t) for e, t in zip(env_ids, steps)] if self.speculative else None
        codes = self.predict_codes([observation_views(obs, self.image_spec) for obs in observations], None,
                                   instructions, drafts)
        for e, t, c in zip(env_ids, steps, codes):  # kept after the model call, so a failed call changes nothing
            self._last_codes[e] = (t, c)
            if t == 0:
                self._start_codes = c
        return np.stack([self.codec.decode(c, i) for c, i in zip(codes, instructions)])

    def seed_env(self, i: int, seed: int) -> None:
        """Decoding is greedy: nothing to seed (part of the policy interface, for policies that sample)."""

    def bind(self, slots) -> None:
        """A model policy sees observations only, never the envs (part of the policy interface)."""


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
