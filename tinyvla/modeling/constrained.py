"""Constrained decoding: a transformers LogitsProcessor that lets the model write only grammatical action text.

The grammar and the per-state allowed token sets live in tinyvla/core/grammar.py (pure); this file only turns them
into -inf logits. Each row of the batch carries its automaton state between calls; on every call only the tokens
generated since the previous call are fed to it, so a step costs O(batch) dictionary lookups plus one masked fill.

Assumptions (what `generate` does with `constrained_generate_kwargs`):
  * left padding, so every row's prompt ends at the same column: the prompt length is input_ids.shape[1] at the first
    call of a generate;
  * greedy or sampling with num_beams = 1 (beam search reorders rows between calls; not supported);
  * the processor runs before temperature / top-k / top-p (transformers appends the sampling warpers after user
    processors), so the warpers only ever see allowed tokens.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from tinyvla.core.grammar import FINISHED, TokenConstraint


def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' repetition penalty on logits `scores` (..., V) at the tokens where `seen` (..., V) is True:
    negative logits multiplied by `penalty`, positive ones divided by it."""
    if penalty == 1.0:
        return scores
    hit = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, hit, scores)


class ActionLogitsProcessor(LogitsProcessor):
    """Masks every token the action grammar forbids, row by row.

    Call `reset()` before each generate (constrained_generate_kwargs does); a new generate is also detected on its
    own when the batch size changes or the sequence did not grow by exactly the tokens seen since the last call.
    """

    def __init__(self, constraint: TokenConstraint, pad_token_id: int | None = None):
        self.constraint = constraint
        # Rows that are done only ever get EOS / pad (HF overwrites their tokens with pad anyway); allowing at least
        # one token keeps a sampling softmax from seeing a row of all -inf (which would give NaN).
        done = set(constraint.eos_ids)
        if pad_token_id is not None:
            done.add(int(pad_token_id))
        self._done_ids = torch.tensor(sorted(done), dtype=torch.long)
        self._ids: dict[tuple[int, int], torch.Tensor] = {}  # cache_key -> allowed ids (CPU LongTensor)
        self.reset()

    def reset(self) -> None:
        self.states: list | None = None  # one grammar state per row
        self._seen = 0  # input_ids columns already fed to the states
        self._last: list[int] | None = None  # the last column seen, to recognise a new generate

    def _allowed(self, state) -> torch.Tensor:
        key = self.constraint.cache_key(state)
        ids = self._ids.get(key)
        if ids is None:
            if state == FINISHED:
                ids = self._done_ids
            else:
                ids = torch.tensor(self.constraint.allowed_token_ids(state), dtype=torch.long)
            self._ids[key] = ids
        return ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch, length = input_ids.shape
        # One host transfer per step: the previous last column (to check continuity) and the new tokens.
        start = max(self._seen - 1, 0)
        cols = input_ids[:, start:].tolist() if self.states is not None and length > self._seen else None
        same_run = (
            cols is not None
            and batch == len(self.states)
            and [row[0] for row in cols] == self._last
        )
        if not same_run:
            # First call of a generate: everything so far is prompt (left padding: all rows end at this column).
            self.states = [self.constraint.initial_state()] * batch
            self._seen = length
            self._last = input_ids[:, -1].tolist()
        else:
            for r, row in enumerate(cols):
                state = self.states[r]
                for tok in row[1:]:
                    nxt = self.constraint.advance_token(state, tok)
                    if nxt is None:
                        raise RuntimeError(
                            f"constrained decoding: row {r} produced token {tok}, which the action grammar forbids "
                            f"in state {state}; use num_beams=1 and no processor that raises masked logits"
                        )
                    state = nxt
                self.states[r] = state
            self._seen = length
            self._last = [row[-1] for row in cols]

        allowed_per_row = [self._allowed(s) for s in self.states]
        rows = torch.cat([torch.full((len(a),), r, dtype=torch.long) for r, a in enumerate(allowed_per_row)])
        cols_t = torch.cat(allowed_per_row)
        keep = cols_t < scores.shape[1]  # a tokenizer may know ids the model's head does not
        rows, cols_t = rows[keep].to(scores.device), cols_t[keep].to(scores.device)
        # Gather the allowed logits, write them into an all -inf copy: one full-size pass, the rest is tiny.
        vals = scores[rows, cols_t]
        # If an earlier processor (min_new_tokens, bad_words...) already set every allowed logit of a row to -inf,
        # fall back to a uniform choice among the allowed tokens rather than let argmax pick a forbidden id or the
        # sampling softmax give NaN.
        row_max = torch.full((batch,), float("-inf"), device=scores.device, dtype=scores.dtype)
        row_max = row_max.scatter_reduce(0, rows, vals, reduce="amax")
        vals = torch.where(torch.isneginf(row_max)[rows], torch.zeros_like(vals), vals)
        out = torch.full_like(scores, float("-inf"))
        out[rows, cols_t] = vals
        return out


def constrained_generate_kwargs(
    constraint: TokenConstraint,
    processor: ActionLogitsProcessor | None = None,
    pad_token_id: int | None = None,
) -> dict:
    """Keyword arguments for `model.generate(**inputs, **kwargs)` that decode grammatical action text.

    Sets the logits processor (reset for this call), max_new_tokens to the longest answer plus EOS (so the answer
    always completes), eos_token_id to the grammar's EOS ids (so HF stops each row there) and num_beams = 1.
    Pass the same `processor` across calls to keep its per-state tensor cache warm.
    """
    if processor is None:
        processor = ActionLogitsProcessor(constraint, pad_token_id=pad_token_id)
    processor.reset()
    kwargs = {
        "logits_processor": LogitsProcessorList([processor]),
        "max_new_tokens": constraint.max_new_tokens,
        "eos_token_id": list(constraint.eos_ids),
        "num_beams": 1,
    }
    if pad_token_id is not None:
        kwargs["pad_token_id"] = int(pad_token_id)
    return kwargs
