"""Masked action augmentation (VLA-0, section III.B).

Once the first integers of an answer are out, a language model can often copy or extrapolate the rest without
looking at the image. VLA-0 breaks that shortcut: in 90% of training samples a random fraction p ~ U(0, 0.4) of the
action-text characters is hidden from the INPUT (replaced by a mask character), so the model must predict the next
characters from the observation instead of the text it can no longer see. The LABEL at a masked position is ignored
(-100): the model is never trained to write the mask character. (Training on it is a known bug of one
reimplementation; it teaches the model to emit "?".)

Qwen tokenizes every digit and every space as its own token, so character index == token index inside the action
text and masking works directly on token ids.

Pure: numpy + stdlib.
"""

from __future__ import annotations

import numpy as np

from tinyvla.errors import UserError

IGNORE_INDEX = -100  # the label value cross-entropy skips (PyTorch / transformers convention)


def mask_action_tokens(
    input_ids,
    labels,
    action_start: int,
    action_len: int,
    mask_token_id: int,
    mask_prob: float,
    unmasked_fraction: float = 0.1,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return masked copies (int64 arrays) of input_ids and labels; the arguments are never modified.

    input_ids, labels: one sample, same length, labels aligned with input_ids (the model shifts them).
    action_start, action_len: the token span of the action text (digits and spaces only; the end-of-turn token after
    it is outside the span and stays supervised).
    With probability `unmasked_fraction` the sample is left as is; otherwise p ~ U(0, mask_prob) and round(p * len)
    distinct positions of the span get input = mask_token_id and label = -100. mask_prob = 0 returns plain copies.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise UserError(f"mask_prob must be in [0, 1] (VLA-0 uses 0.4), got {mask_prob!r}")
    if not 0.0 <= unmasked_fraction <= 1.0:
        raise UserError(f"unmasked_fraction must be in [0, 1] (VLA-0 uses 0.1), got {unmasked_fraction!r}")
    ids = np.array(input_ids, dtype=np.int64)  # np.array copies: the caller's arrays stay untouched
    lab = np.array(labels, dtype=np.int64)
    if ids.shape != lab.shape or ids.ndim != 1:
        raise ValueError(f"input_ids {ids.shape} and labels {lab.shape} must be 1-D and of the same length")
    if action_start < 0 or action_len < 0 or action_start + action_len > len(ids):
        raise ValueError(f"action span [{action_start}, {action_start + action_len}) is outside a sequence of "
                         f"length {len(ids)}")
    if mask_prob == 0.0 or action_len == 0:
        return ids, lab
    if rng is None:
        rng = np.random.default_rng()
    if rng.random() < unmasked_fraction:
        return ids, lab
    p = rng.uniform(0.0, mask_prob)
    n_mask = int(round(p * action_len))
    pos = action_start + rng.choice(action_len, size=n_mask, replace=False)
    ids[pos] = mask_token_id
    lab[pos] = IGNORE_INDEX
    return ids, lab
