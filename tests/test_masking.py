"""Masked action augmentation: inputs masked, labels ignored there, nothing else touched, VLA-0 statistics."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyvla.core.masking import IGNORE_INDEX, mask_action_tokens
from tinyvla.errors import UserError

MASK = 30  # "?" in the byte-level / Qwen vocab


def make_sample(rng, prompt_len, action_len, tail_len=2):
    """prompt (labels ignored) + action digits/spaces (supervised) + end-of-turn tokens (supervised)."""
    prompt = rng.integers(100, 200, size=prompt_len)
    action = rng.choice([15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 220], size=action_len)
    tail = np.array([151645, 198][:tail_len])
    ids = np.concatenate([prompt, action, tail])
    labels = np.concatenate([np.full(prompt_len, IGNORE_INDEX), action, tail])
    return ids, labels


@settings(max_examples=200, deadline=None)
@given(
    prompt_len=st.integers(0, 20),
    action_len=st.integers(0, 60),
    mask_prob=st.floats(0.0, 1.0),
    unmasked=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
    as_list=st.booleans(),
)
def test_masked_positions_and_nothing_else(prompt_len, action_len, mask_prob, unmasked, seed, as_list):
    rng = np.random.default_rng(seed)
    ids, labels = make_sample(rng, prompt_len, action_len)
    ids_in, labels_in = (ids.tolist(), labels.tolist()) if as_list else (ids.copy(), labels.copy())
    new_ids, new_labels = mask_action_tokens(ids_in, labels_in, prompt_len, action_len, MASK, mask_prob, unmasked, rng)
    # Inputs are not mutated in place.
    assert list(ids_in) == ids.tolist() and list(labels_in) == labels.tolist()
    assert new_ids.dtype == np.int64 and new_labels.dtype == np.int64
    changed = np.flatnonzero(new_ids != ids)
    # Only inside the action span; the end-of-turn token after it stays as is and supervised.
    assert np.all((changed >= prompt_len) & (changed < prompt_len + action_len))
    assert np.array_equal(new_labels[prompt_len + action_len:], labels[prompt_len + action_len:])
    assert np.array_equal(new_labels[:prompt_len], labels[:prompt_len])
    # Masked positions: input is the mask token, label ignored (never the mask token).
    assert np.all(new_ids[changed] == MASK)
    assert np.all(new_labels[changed] == IGNORE_INDEX)
    assert not np.any((new_ids == MASK) & (new_labels == MASK))
    # Labels change exactly where inputs change.
    assert np.array_equal(np.flatnonzero(new_labels != labels), changed)
    # Never more than mask_prob of the span.
    assert len(changed) <= int(round(mask_prob * action_len))


def test_mask_prob_zero_is_identity():
    rng = np.random.default_rng(0)
    ids, labels = make_sample(rng, 5, 56)
    for _ in range(50):
        a, b = mask_action_tokens(ids, labels, 5, 56, MASK, 0.0, 0.1, rng)
        assert np.array_equal(a, ids) and np.array_equal(b, labels)


def test_statistics_match_vla0():
    """10% of samples untouched; otherwise p ~ U(0, 0.4) -> mean masked fraction 0.4 / 2 * 0.9 = 0.18."""
    rng = np.random.default_rng(1)
    length = 56 * 4 - 1  # 56 integers at full width
    ids, labels = make_sample(rng, 3, length)
    draws = 6000
    fractions = np.empty(draws)
    for k in range(draws):
        a, _ = mask_action_tokens(ids, labels, 3, length, MASK, 0.4, 0.1, rng)
        fractions[k] = np.mean(a[3:3 + length] == MASK)
    # Untouched also happens when p rounds to 0 masked positions (p < 0.5 / length): a tiny extra share.
    untouched = np.mean(fractions == 0)
    assert 0.08 < untouched < 0.12, untouched
    assert fractions.mean() == pytest.approx(0.4 / 2 * 0.9, abs=0.01)
    assert fractions.max() <= 0.4 + 0.5 / length
    # Masked fractions are spread over (0, 0.4), not a constant.
    masked = fractions[fractions > 0]
    assert masked.min() < 0.05 and masked.max() > 0.35


def test_unmasked_fraction_extremes():
    rng = np.random.default_rng(2)
    ids, labels = make_sample(rng, 2, 100)
    assert all(np.array_equal(mask_action_tokens(ids, labels, 2, 100, MASK, 0.4, 1.0, rng)[0], ids) for _ in range(50))
    n_masked = [np.sum(mask_action_tokens(ids, labels, 2, 100, MASK, 1.0, 0.0, rng)[0] == MASK) for _ in range(400)]
    assert np.mean(n_masked) == pytest.approx(50, abs=4)  # p ~ U(0, 1) over 100 positions


def test_bad_arguments():
    ids, labels = make_sample(np.random.default_rng(3), 2, 10)
    with pytest.raises(UserError, match="mask_prob"):
        mask_action_tokens(ids, labels, 2, 10, MASK, 1.5)
    with pytest.raises(UserError, match="unmasked_fraction"):
        mask_action_tokens(ids, labels, 2, 10, MASK, 0.4, -0.1)
    with pytest.raises(ValueError, match="span"):
        mask_action_tokens(ids, labels, 5, 10, MASK, 0.4)
    with pytest.raises(ValueError, match="same length"):
        mask_action_tokens(ids, labels[:-1], 2, 10, MASK, 0.4)
