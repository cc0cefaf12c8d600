"""Chunk-shift speculative decoding: the same text as constrained greedy decoding, in fewer forward passes."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from tinyvla.core.codec import ActionStats
from tinyvla.core.grammar import FINISHED, ActionGrammar
from tinyvla.core.prompt import PromptSpec
from tinyvla.data.transforms import ImageSpec
from tinyvla.modeling.speculative import draft_continuation, shift_chunk, speculative_generate

H, D, B = 4, 7, 1000
INSTRUCTIONS = ["pick up the red block", "pick up the blue block", "pick up the yellow block now"]


def make_policy(name: str, seed: int, bins: int = B, scale: float = 10.0, speculative: bool = False):
    from tinyvla.modeling.loading import load_model
    from tinyvla.policy import Policy
    from tinyvla.policy_dir import DecodingConfig, PolicyConfig

    torch.manual_seed(seed)
    model, processor = load_model(name)
    # At init a random model writes a few numbers over and over ("888 888 ..."), which drafts match too easily.
    # Weights x10 make it write varied numbers that depend on the image, so drafts are rejected at varied places
    # (the cases that can go wrong), and its logits are chaotic: a harsh test of exactness.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.mul_(scale)
    config = PolicyConfig(PromptSpec(H, D, bins), ImageSpec(image_size=64, crop_scale=0.9, color_jitter=False),
                          ActionStats(min=[-1.0] * D, max=[1.0] * D), decoding=DecodingConfig(speculative=speculative))
    return Policy(config, model, processor)


@pytest.fixture(scope="module", params=["tiny-qwen3", "tiny-qwen2.5"])
def policy(request):
    torch.set_num_threads(1)
    return make_policy(request.param, seed=1)


def observations(rng, n):
    ims = [rng.integers(0, 256, (72, 72, 3), dtype=np.uint8) for _ in range(n)]
    wrs = [rng.integers(0, 256, (72, 72, 3), dtype=np.uint8) for _ in range(n)]
    # Instructions of different lengths: the batch is left padded.
    return ims, wrs, [INSTRUCTIONS[i % 3] for i in range(n)]


# ---------------------------------------------------------------------------------------------------------- pure parts
def test_shift_chunk():
    c = np.arange(12).reshape(4, 3)
    assert np.array_equal(shift_chunk(c, 0), c)
    assert np.array_equal(shift_chunk(c, 1), np.array([[3, 4, 5], [6, 7, 8], [9, 10, 11], [9, 10, 11]]))
    assert np.array_equal(shift_chunk(c, 3), np.array([[9, 10, 11]] * 4))
    assert np.array_equal(shift_chunk(c, 9), np.array([[9, 10, 11]] * 4))  # older than the horizon: the last row
    with pytest.raises(ValueError):
        shift_chunk(np.arange(4), 1)


def test_draft_continuation_follows_grammar_state():
    g = ActionGrammar(horizon=1, dim=3, bins=1000)

    def cont(text, draft=(500, 0, 1000), dim=3):
        written = [int(v) for v in text.split(" ")[:-1]]
        return draft_continuation(list(draft), g.advance(g.initial_state(), text), written, dim)

    assert cont("") == "500 0 1000"
    assert cont("500 ") == "0 1000"
    assert cont("99 ") == "0 1000"  # a wrong integer: the draft goes on at the next index
    # Mid-integer: finish it as the draft does when the written digits are a prefix of the draft's integer...
    assert cont("50") == "0 0 1000"
    assert cont("500 0 10") == "00"
    assert cont("500 0 1000") == ""  # complete: only EOS is left to guess
    # ... else as the most common integer of the draft that extends them ("1" -> "1000")...
    assert cont("1") == "000 0 1000"
    # ... else it ends here.
    assert cont("501") == " 0 1000"
    assert cont("7") == " 0 1000"
    assert draft_continuation([500, 0, 1000], FINISHED, [], 3) is None
    assert draft_continuation([500, 0, 1000], (2, -1), [500], 3) is None  # written disagrees with the state


def test_draft_continuation_copies_a_repeated_step():
    g = ActionGrammar(horizon=3, dim=2, bins=1000)
    draft = [5, 6, 5, 6, 5, 6]
    # The answer left the draft at integer 2 and repeated its own first step: the rest repeats it too.
    assert draft_continuation(draft, g.advance(g.initial_state(), "7 8 7 "), [7, 8, 7], 2) == "8 7 8"
    # Left the draft without repeating itself: the draft goes on.
    assert draft_continuation(draft, g.advance(g.initial_state(), "7 8 9 "), [7, 8, 9], 2) == "6 5 6"
    assert draft_continuation(draft, g.advance(g.initial_state(), "7 8 7 "), [7, 8, 7], None) == "6 5 6"


# ------------------------------------------------------------------------------------------------- identity with greedy
def test_identical_to_greedy_on_many_batched_observations(policy):
    rng = np.random.default_rng(0)
    for it in range(3):
        ims, wrs, ins = observations(rng, 5)
        greedy = policy.generate_text(ims, wrs, ins)
        codes = [policy.codec.parse(t) for t in greedy]
        assert len(set(greedy)) == len(greedy)  # a different answer for every input
        drafts = []
        for i, c in enumerate(codes):  # every kind of draft in one batch: right, shifted, one wrong int, random, none
            kind = (i + it) % 5
            if kind == 0:
                drafts.append(c)
            elif kind == 1:
                drafts.append(shift_chunk(c, 1))
            elif kind == 2:
                d = c.copy()
                d[rng.integers(H), rng.integers(D)] = rng.integers(B + 1)
                drafts.append(d)
            elif kind == 3:
                drafts.append(rng.integers(0, B + 1, (H, D)))
            else:
                drafts.append(None)
        assert policy.generate_text(ims, wrs, ins, draft=drafts) == greedy
        # The variant that re-runs the prompt after the first verification, the single-draft one, and the others.
        batch = policy.encode_batch(ims, wrs, ins)
        variants = ({"reuse_cache": False}, {"redraft": False}, {"max_draft_tokens": 5}, {"adaptive": False})
        for options in variants if it == 0 else ():
            tokens, _ = speculative_generate(policy.model, batch, policy.constraint, drafts,
                                             policy.processor.encode_action_text, policy.processor.im_end_token_id,
                                             policy.processor.pad_token_id, **options)
            assert policy.processor.tokenizer.batch_decode(tokens, skip_special_tokens=True) == greedy, options


def test_right_draft_takes_one_forward_pass(policy):
    rng = np.random.default_rng(1)
    ims, wrs, ins = observations(rng, 3)
    before = policy.forward_passes
    greedy = policy.generate_text(ims, wrs, ins)
    greedy_passes = policy.forward_passes - before
    assert greedy_passes >= H * D  # one pass per token: at least one digit per integer
    codes = [policy.codec.parse(t) for t in greedy]
    before = policy.forward_passes
    assert policy.generate_text(ims, wrs, ins, draft=codes) == greedy
    assert policy.forward_passes - before == 1  # the whole answer, EOS included, checked in one pass

    # One wrong integer in the middle costs a few passes, not the whole tail (the draft is offered again after it).
    wrong = [c.copy() for c in codes]
    for c in wrong:
        c[2, 3] = (c[2, 3] + 1) % (B + 1)
    before = policy.forward_passes
    assert policy.generate_text(ims, wrs, ins, draft=wrong) == greedy
    assert policy.forward_passes - before <= 6


def test_forced_tokens_need_no_pass_of_their_own(policy):
    """No drafts at all: the speculative loop is greedy decoding, and with skip_forced the tokens the grammar forces
    (a space after a 3-digit integer, ...) ride along with the next pass: same text, fewer passes."""
    rng = np.random.default_rng(2)
    ims, wrs, ins = observations(rng, 3)
    greedy = policy.generate_text(ims, wrs, ins)
    batch = policy.encode_batch(ims, wrs, ins)
    passes = {}
    for skip in (False, True):
        tokens, stats = speculative_generate(policy.model, batch, policy.constraint, None,
                                             policy.processor.encode_action_text, policy.processor.im_end_token_id,
                                             policy.processor.pad_token_id, skip_forced=skip)
        assert policy.processor.tokenizer.batch_decode(tokens, skip_special_tokens=True) == greedy, skip
        passes[skip] = stats.passes
    forced = sum(t.count(" ") for t in greedy)  # an upper bound: only spaces after a 3- or 4-digit integer
    assert passes[False] > passes[True] >= passes[False] - forced


def test_finished_rows_leave_the_batch(policy):
    """A row done after the first pass (its draft was right) is not computed again: the later passes hold only the
    rows still writing (on a CPU a pass costs rows x columns), and every row's text is still the greedy text."""
    rng = np.random.default_rng(4)
    ims, wrs, ins = observations(rng, 3)
    greedy = policy.generate_text(ims, wrs, ins)
    codes = [policy.codec.parse(t) for t in greedy]
    batch = policy.encode_batch(ims, wrs, ins)
    wrong = codes[2].copy()
    wrong[1, 2] = (wrong[1, 2] + 1) % (B + 1)
    tokens, stats = speculative_generate(policy.model, batch, policy.constraint, [codes[0], None, wrong],
                                         policy.processor.encode_action_text, policy.processor.im_end_token_id,
                                         policy.processor.pad_token_id)
    assert policy.processor.tokenizer.batch_decode(tokens, skip_special_tokens=True) == greedy
    cols = stats.per_pass_tokens
    assert stats.passes > 2
    # pass 1: all 3 rows; then at most the 2 unfinished ones, and at the end only the row without a draft
    assert stats.computed < 3 * sum(cols)
    assert stats.computed <= 3 * cols[0] + 2 * sum(cols[1:])
    assert stats.computed >= 3 * cols[0] + sum(cols[1:])
    assert 0 < stats.needed <= stats.computed


def test_pass_token_budget_is_shared_by_the_rows(policy):
    """pass_token_budget caps the draft tokens of a pass over the batch (a CPU server's setting): right drafts then
    take several passes of budget // rows tokens a row, the text is unchanged; a budget above the drafts is free."""
    rng = np.random.default_rng(5)
    ims, wrs, ins = observations(rng, 3)
    greedy = policy.generate_text(ims, wrs, ins)
    codes = [policy.codec.parse(t) for t in greedy]
    batch = policy.encode_batch(ims, wrs, ins)
    runs = {}
    for budget in (None, 30, 10_000):
        tokens, stats = speculative_generate(policy.model, batch, policy.constraint, codes,
                                             policy.processor.encode_action_text, policy.processor.im_end_token_id,
                                             policy.processor.pad_token_id, pass_token_budget=budget)
        assert policy.processor.tokenizer.batch_decode(tokens, skip_special_tokens=True) == greedy, budget
        runs[budget] = stats
    assert runs[None].passes == runs[10_000].passes == 1
    longest = max(len(policy.processor.encode_action_text(t)) for t in greedy)
    assert runs[30].passes >= longest // 10  # 10 draft tokens a row while all 3 write (more as rows finish)
    assert max(runs[30].per_pass_tokens[1:]) <= 1 + 30  # the pending token + at most the whole budget


# ------------------------------------------------------------------------------------------------------- closed loop
def test_closed_loop_same_actions_fewer_passes():
    from tinyvla.bench import closed_loop

    torch.set_num_threads(1)
    policy = make_policy("tiny-qwen3", seed=2, scale=3.0)  # structured but input-dependent answers
    # Short episodes, so envs restart mid-run: the start-of-episode draft and reset_env are exercised too.
    kw = dict(steps=8, num_envs=2, seed=3, max_episode_steps=3)
    greedy = closed_loop(policy, speculative=False, **kw)
    spec = closed_loop(policy, speculative=True, **kw)
    assert np.array_equal(greedy["actions"], spec["actions"])
    assert greedy["counts"]["calls"] == spec["counts"]["calls"] == 8
    assert spec["counts"]["drafted"] > 0 and greedy["counts"]["drafted"] == 0
    assert spec["counts"]["passes"] < greedy["counts"]["passes"]
    assert policy.speculative is False  # closed_loop restores the policy's setting


def test_policy_drafts_from_previous_chunk():
    torch.set_num_threads(1)
    policy = make_policy("tiny-qwen3", seed=3, scale=1.0, speculative=True)
    policy.reset(2)
    rng = np.random.default_rng(4)
    obs = [{"image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
            "wrist_image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)} for _ in range(2)]
    assert policy.draft_for(0, 0) is None  # nothing to guess from yet
    policy.act_batch(obs, INSTRUCTIONS[:2])
    step, codes = policy._last_codes[1]
    assert step == 0 and codes.shape == (H, D)
    assert np.array_equal(policy.draft_for(1, 1), shift_chunk(codes, 1))
    policy.reset_env(1)
    assert np.array_equal(policy.draft_for(1, 0), policy._start_codes)  # a new episode starts from a start chunk
    assert policy.decode_stats["calls"] == 1 and policy.decode_stats["chunks"] == 2


# ------------------------------------------------------------------------------------------------------ decoding settings
def test_repetition_penalty_speculative_equals_greedy_and_generation_config_is_ignored(policy):
    """Decoding follows the policy's DecodingConfig only: a repetition penalty in the model's generation_config
    changes nothing; the policy's own penalty changes the text, and the speculative path writes that same text."""
    rng = np.random.default_rng(3)
    ims, wrs, ins = observations(rng, 4)
    plain = policy.generate_text(ims, wrs, ins)
    saved = policy.model.generation_config.repetition_penalty
    try:
        policy.model.generation_config.repetition_penalty = 3.0  # what a checkpoint's generation_config may hold
        assert policy.generate_text(ims, wrs, ins) == plain
    finally:
        policy.model.generation_config.repetition_penalty = saved
    with policy.decoding(repetition_penalty=3.0):
        penalized = policy.generate_text(ims, wrs, ins)
        assert penalized != plain  # the setting is applied, not ignored
        codes = [policy.codec.parse(t) for t in penalized]
        # left padding differs per row (instructions of different lengths): the penalty skips it, as generate does
        drafts = [codes[0], shift_chunk(codes[1], 1), rng.integers(0, B + 1, (H, D)), None]
        assert policy.generate_text(ims, wrs, ins, draft=drafts) == penalized
        assert policy.config.decoding.record() == {"method": "constrained_greedy", "repetition_penalty": 3.0,
                                                   "speculative": policy.speculative}
