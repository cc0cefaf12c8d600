"""The action grammar, its token-level constraint, and constrained generation with a real (tiny, random) HF model."""

import itertools
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyvla.core.grammar import FINISHED, ActionGrammar, TokenConstraint, vocab_from_tokenizer
from tinyvla.errors import UserError


def oracle_accepts(text: str, n: int, bins: int) -> bool:
    """Independent definition: a regex for the shape, then the range check."""
    num = r"(?:0|[1-9][0-9]*)"
    if not re.fullmatch(num + r"(?: " + num + r")*", text):
        return False
    ints = [int(x) for x in text.split(" ")]
    return len(ints) == n and all(v <= bins for v in ints)


def test_examples():
    g = ActionGrammar(2, 3, 1000)
    assert g.accepts("0 1 2 3 4 1000")
    assert g.accepts("999 0 10 100 7 500")
    for bad in ["", "0 1 2 3 4", "0 1 2 3 4 5 6", "05 1 2 3 4 5", "0 1 2 3 4 1001", "0  1 2 3 4 5",
                " 0 1 2 3 4 5", "0 1 2 3 4 5 ", "0 1 2 3 4 -5", "0,1 2 3 4 5", "00 1 2 3 4 5", "0 1 2 3 4 5\n"]:
        assert not g.accepts(bad), bad
    assert g.max_chars == len("1000 " * 6) - 1


def test_allowed_chars_walk():
    g = ActionGrammar(1, 2, 250)
    s = g.initial_state()
    assert g.allowed_chars(s) == set("0123456789")
    s = g.advance(s, "0")
    assert g.allowed_chars(s) == {" "}  # no leading zero, but a space may follow
    s = g.advance(s, " 25")
    assert g.allowed_chars(s) == {"0"}  # 250 is the last bin; 251..259 are out of range
    assert g.can_end(s) and g.is_complete(s)
    s = g.advance(s, "0")
    assert g.allowed_chars(s) == set() and g.is_complete(s)
    assert g.advance(g.initial_state(), "1x") is None


@pytest.mark.parametrize("h,d,b", [(1, 1, 1), (1, 2, 12), (2, 1, 10), (1, 3, 5), (1, 1, 100), (1, 2, 101)])
def test_exhaustive_small(h, d, b):
    """Enumerate the whole language, then compare every prefix's allowed set and every rejection."""
    g = ActionGrammar(h, d, b)
    n = h * d
    language = {" ".join(map(str, vals)) for vals in itertools.product(range(b + 1), repeat=n)}
    prefixes = {t[:k] for t in language for k in range(len(t) + 1)}
    for p in prefixes:
        s = g.advance(g.initial_state(), p)
        assert s is not None, p
        assert g.is_complete(s) == (p in language), p
        assert g.allowed_chars(s) == {c for c in "0123456789 " if p + c in prefixes}, p
    # Strings off the prefix tree are rejected as soon as they leave it.
    for p in list(prefixes)[:200]:
        for c in "0123456789 ":
            if p + c not in prefixes:
                assert g.advance(g.initial_state(), p + c) is None


@settings(max_examples=300, deadline=None)
@given(h=st.integers(1, 4), d=st.integers(1, 4), b=st.integers(1, 2000), data=st.data())
def test_accepts_matches_oracle(h, d, b, data):
    g = ActionGrammar(h, d, b)
    n = h * d
    vals = data.draw(st.lists(st.integers(0, b), min_size=n, max_size=n))
    assert g.accepts(" ".join(map(str, vals)))
    noise = data.draw(st.text(alphabet="0123456789 x", max_size=40))
    assert g.accepts(noise) == oracle_accepts(noise, n, b)
    # Near misses: drop or add one integer, go out of range, pad with a zero.
    assert not g.accepts(" ".join(map(str, vals[:-1])))
    assert not g.accepts(" ".join(map(str, vals + [0])))
    assert not g.accepts(" ".join(map(str, vals[:-1] + [b + 1])))
    assert not g.accepts(" ".join(map(str, vals[:-1] + ["0" + str(vals[-1])])))


# ---------------------------------------------------------------- token level

def rich_vocab():
    """Single chars plus multi-char digit/space tokens (as a BPE vocab may have) and junk."""
    singles = list("0123456789 ")
    multi = ["12", "00", "05", "100", "1000", " 3", "7 ", "  ", "0 0", "9 9 9", "250", " 10", "1 ", "x", "a1", "", "\n"]
    words = ["hello", "<|im_end|>", "Ġ"]
    return {i: s for i, s in enumerate(singles + multi + words)}


def brute_allowed(g, vocab, eos, state):
    allowed = set("0123456789 ")
    ids = [i for i, s in vocab.items() if s and set(s) <= allowed and g.advance(state, s) is not None]
    return tuple(sorted(ids + (list(eos) if g.is_complete(state) else [])))


@pytest.mark.parametrize("h,d,b", [(1, 2, 12), (2, 2, 1000), (1, 4, 3)])
def test_token_allowed_sets_match_brute_force(h, d, b):
    g = ActionGrammar(h, d, b)
    vocab = rich_vocab()
    eos = [500, 501]
    tc = TokenConstraint(g, vocab, eos)
    assert "x" not in tc.candidates.values() and "hello" not in tc.candidates.values()
    n = h * d
    # Every state reachable within the language: (started, value) for value -1..b. Checked twice to hit the cache.
    for _ in range(2):
        for started in range(n + 1):
            for value in range(-1, b + 1):
                if (started == 0 and value >= 0) or (started > 0 and value == -1 and started == n):
                    continue
                s = (started, value)
                assert tc.allowed_token_ids(s) == brute_allowed(g, vocab, eos, s), s
    assert tc.allowed_token_ids(FINISHED) == (500, 501)


@settings(max_examples=100, deadline=None)
@given(h=st.integers(1, 3), d=st.integers(1, 3), b=st.sampled_from([1, 9, 10, 255, 1000, 4000]), seed=st.integers(0, 2**32 - 1))
def test_random_token_walks_are_accepted(h, d, b, seed):
    """Sampling uniformly among allowed tokens always ends in an accepted answer within max_new_tokens."""
    g = ActionGrammar(h, d, b)
    vocab = rich_vocab()
    tc = TokenConstraint(g, vocab, [99])
    rng = np.random.default_rng(seed)
    state, text = tc.initial_state(), ""
    for _ in range(tc.max_new_tokens):
        ids = tc.allowed_token_ids(state)
        assert ids, state
        assert (99 in ids) == g.is_complete(state)
        if g.is_complete(state) and (state[1] == 0 or state[1] * 10 > b):
            assert ids == (99,)  # the last integer cannot grow: only EOS
        t = int(rng.choice(ids))
        state = tc.advance_token(state, t)
        if state == FINISHED:
            break
        text += vocab[t]
    assert state == FINISHED
    assert g.accepts(text), text
    assert oracle_accepts(text, h * d, b)


def test_advance_token_rejects():
    g = ActionGrammar(1, 2, 12)
    vocab = rich_vocab()
    inv = {s: i for i, s in vocab.items()}
    tc = TokenConstraint(g, vocab, [99])
    s0 = tc.initial_state()
    assert tc.advance_token(s0, inv["x"]) is None
    assert tc.advance_token(s0, inv[" "]) is None
    assert tc.advance_token(s0, inv["05"]) is None
    assert tc.advance_token(s0, inv["100"]) is None  # > 12
    assert tc.advance_token(s0, 99) is None  # EOS before anything
    s = tc.advance_token(s0, inv["12"])
    assert tc.advance_token(s, inv["0 0"]) is None  # "120 0": 120 > 12
    s1 = g.advance(s, " 1")
    assert g.is_complete(s1)  # "12 1" is an answer, but "12 10".."12 12" too: digits 0-2 stay allowed next to EOS
    assert {vocab[i] for i in tc.allowed_token_ids(s1) if i != 99} == {"0", "1", "2"}
    assert 99 in tc.allowed_token_ids(s1)
    s = tc.advance_token(s, inv[" 3"])
    assert g.is_complete(s) and tc.allowed_token_ids(s) == (99,)  # 30 > 12: only EOS
    assert tc.advance_token(s, 99) == FINISHED
    assert tc.advance_token(FINISHED, 12345) == FINISHED  # pad after the end keeps it finished


def test_missing_single_tokens_is_user_error():
    g = ActionGrammar(1, 2, 10)
    vocab = {i: str(i) for i in range(10)}  # digits but no space token
    with pytest.raises(UserError, match="single-character"):
        TokenConstraint(g, vocab, [50])


# ---------------------------------------------------------------- real tokenizer + real HF model

def byte_level_tokenizer():
    """A byte-level tokenizer (256 byte symbols, no merges) with chat special tokens, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"], padding_side="left",
    )


def test_vocab_from_byte_level_tokenizer():
    tok = byte_level_tokenizer()
    vocab = vocab_from_tokenizer(tok)
    assert sorted(vocab.values()) == sorted("0123456789 ")
    for i, s in vocab.items():
        assert tok.decode([i]) == s
    # The ids really are what the tokenizer produces for action text.
    text = "5 120 0"
    ids = tok(text).input_ids
    assert "".join(vocab[i] for i in ids) == text


def test_constrained_generate_tiny_qwen2():
    torch = pytest.importorskip("torch")
    # A 32-wide model gains nothing from threads, and on a shared 2-core machine OpenMP spinning made each generate
    # ~50x slower (8 s vs 0.15 s measured): run it on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _generate_checks(torch)
    finally:
        torch.set_num_threads(threads)


def _generate_checks(torch):
    from transformers import LogitsProcessorList, Qwen2Config, Qwen2ForCausalLM

    from tinyvla.modeling.constrained import ActionLogitsProcessor, constrained_generate_kwargs

    torch.manual_seed(0)
    tok = byte_level_tokenizer()
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    h, d, b = 2, 3, 1000
    g = ActionGrammar(h, d, b)
    tc = TokenConstraint(g, vocab_from_tokenizer(tok), [tok.eos_token_id])
    proc = ActionLogitsProcessor(tc, pad_token_id=tok.pad_token_id)
    prompts = ["pick up the red block", "go", "put the bowl on the plate please"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    assert (batch.attention_mask[:, -1] == 1).all()  # left padding
    plen = batch.input_ids.shape[1]

    def answers(out):
        texts = []
        for row in out[:, plen:].tolist():
            assert tok.eos_token_id in row, row  # every row finished with EOS
            texts.append(tok.decode(row[: row.index(tok.eos_token_id)]))
        return texts

    with torch.no_grad():
        # Unconstrained, the random model writes junk: the constraint is what makes it grammatical.
        raw = model.generate(**batch, max_new_tokens=tc.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        raw_text = [tok.decode(r, skip_special_tokens=True) for r in raw[:, plen:].tolist()]
        assert not all(g.accepts(t) for t in raw_text)
        runs = [dict(do_sample=False)] + [dict(do_sample=True, temperature=1.5, top_k=0)] * 4
        for kw in runs:  # the same processor across generates: reset by the kwargs helper
            out = model.generate(**batch, **constrained_generate_kwargs(tc, proc, tok.pad_token_id), **kw)
            for t in answers(out):
                assert g.accepts(t), t
                ints = [int(x) for x in t.split(" ")]
                assert len(ints) == h * d and all(0 <= v <= b for v in ints)
        # Without an explicit reset, a new generate (different batch size) is detected on its own.
        out = model.generate(
            **tok(prompts[:2], return_tensors="pt", padding=True), logits_processor=LogitsProcessorList([proc]),
            max_new_tokens=tc.max_new_tokens, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            do_sample=True, top_k=0,
        )
        plen2 = tok(prompts[:2], return_tensors="pt", padding=True).input_ids.shape[1]
        for row in out[:, plen2:].tolist():
            assert g.accepts(tok.decode(row[: row.index(tok.eos_token_id)]))


def test_processor_masks_rows_and_falls_back_when_all_allowed_are_neg_inf():
    torch = pytest.importorskip("torch")
    from tinyvla.modeling.constrained import ActionLogitsProcessor

    g = ActionGrammar(1, 2, 12)
    vocab = rich_vocab()
    inv = {s: i for i, s in vocab.items()}
    eos, pad, V = 40, 41, 45
    tc = TokenConstraint(g, vocab, [eos])
    proc = ActionLogitsProcessor(tc, pad_token_id=pad)
    prompt = torch.full((2, 4), 30)
    out = proc(prompt, torch.zeros(2, V))
    allowed0 = set(tc.allowed_token_ids(tc.initial_state()))
    for r in range(2):
        assert {i for i in range(V) if out[r, i] == 0} == allowed0
        assert all(torch.isneginf(out[r, i]) for i in range(V) if i not in allowed0)
    # Row 0 writes "12 3" (complete), row 1 writes "1"; then an earlier processor has killed every logit.
    ids = torch.cat([prompt, torch.tensor([[inv["12"]], [inv["1"]]])], 1)
    proc(ids, torch.zeros(2, V))
    ids = torch.cat([ids, torch.tensor([[inv[" 3"]], [inv["0"]]])], 1)
    out = proc(ids, torch.full((2, V), float("-inf")))
    assert {i for i in range(V) if out[0, i] == 0} == {eos}  # complete: only EOS, and it is finite
    # "10": only something starting with a space may follow (" ", " 3", " 10"), never "0 0" or EOS.
    assert {i for i in range(V) if out[1, i] == 0} == {inv[" "], inv[" 3"], inv[" 10"]}
    ids = torch.cat([ids, torch.tensor([[eos], [inv[" "]]])], 1)
    scores = torch.randn(2, V)
    out = proc(ids, scores)
    assert proc.states[0] == FINISHED
    assert {i for i in range(V) if not torch.isneginf(out[0, i])} == {eos, pad}  # finished row: EOS / pad only
    assert out[1, inv["5"]] == scores[1, inv["5"]]  # allowed logits pass through unchanged
    # A token the grammar forbids (something unmasked it) is an error, not silent junk.
    bad = torch.cat([ids, torch.tensor([[pad], [inv["x"]]])], 1)
    with pytest.raises(RuntimeError, match="forbids"):
        proc(bad, scores)


def test_core_modules_do_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, tinyvla.core.grammar, tinyvla.core.ensemble, tinyvla.core.masking; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["tiny", "qwen"])
def test_project_tokenizers(name):
    """The project's tokenizers (the real 151k Qwen BPE and the byte-level one): ids come from the tokenizer."""
    from tinyvla.tokenizers import load_tokenizer

    tok = load_tokenizer(name)
    vocab = vocab_from_tokenizer(tok)
    for i, s in vocab.items():
        assert tok.decode([i], clean_up_tokenization_spaces=False) == s
    g = ActionGrammar(8, 7, 1000)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    tc = TokenConstraint(g, vocab, [eos])
    # Action text is tokenized one digit / one space per token (character index == token index, FACTS §1).
    assert sorted(tc.candidates.values()) == sorted("0123456789 ")
    text = " ".join(str(v) for v in [0, 1000, 57, 3, 250, 999, 10] * 8)
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) == len(text)
    state = tc.initial_state()
    for i in ids + [eos]:
        assert i in tc.allowed_token_ids(state)
        state = tc.advance_token(state, i)
    assert state == FINISHED
