"""The action grammar: what a model may write as its answer.

VLA-0 decodes greedily with only digits, the space and EOS allowed, but nothing stops the model from writing 55
integers, 57, "1200" with B = 1000 or "007". This module makes those impossible: the answer must be exactly
H*D integers, each in 0..B, written without leading zeros ("0" is fine, "05" is not), separated by single spaces,
with no leading or trailing space, then EOS.

Two levels:
  * ActionGrammar: a character automaton. States are small hashable tuples, so callers can cache on them.
  * TokenConstraint: the same automaton lifted to a tokenizer's vocabulary. It keeps only the tokens whose text is
    made of digits and spaces (a few hundred of Qwen's 151k), and caches the allowed token ids per state, so a decode
    step costs one dict lookup.

Pure: stdlib only. The torch side (a transformers LogitsProcessor) lives in tinyvla/modeling/constrained.py.
"""

from __future__ import annotations

from tinyvla.errors import UserError

DIGITS = "0123456789"
SPACE = " "

# A state is (started, value):
#   started = how many integers have been begun so far (0..N, N = H*D)
#   value   = the value of the integer being written, or -1 right after a space (or at the very start), when a digit
#             must come next.
# Because leading zeros are banned, the value alone tells whether more digits may follow: value 0 is exactly "0".
# FINISHED is the state after EOS; every later token (the pad HF writes into finished rows) keeps it there.
State = tuple[int, int]
FINISHED: State = (-1, -1)


class ActionGrammar:
    """Character automaton for "exactly horizon*dim integers in 0..bins, single spaces, then EOS"."""

    def __init__(self, horizon: int, dim: int, bins: int):
        for name, v in (("horizon", horizon), ("dim", dim), ("bins", bins)):
            if not isinstance(v, int) or v < 1:
                raise UserError(f"action grammar: {name} must be a positive integer, got {v!r}")
        self.horizon, self.dim, self.bins = horizon, dim, bins
        self.n_ints = horizon * dim
        # Longest accepted text: every integer at full width, single spaces in between.
        self.max_chars = self.n_ints * len(str(bins)) + self.n_ints - 1

    def initial_state(self) -> State:
        return (0, -1)

    def step_char(self, state: State, ch: str) -> State | None:
        """One character; None means the text is rejected."""
        started, value = state
        if state == FINISHED:
            return None
        if ch == SPACE:
            # A space ends an integer; only legal if there is one to end and another one to come.
            if value >= 0 and started < self.n_ints:
                return (started, -1)
            return None
        if len(ch) == 1 and ch in DIGITS:
            d = ord(ch) - 48
            if value < 0:  # first digit of a new integer (with B < 9 even one digit can be out of range)
                return (started + 1, d) if started < self.n_ints and d <= self.bins else None
            if value == 0:  # "0" followed by a digit would be a leading zero
                return None
            value = value * 10 + d
            return (started, value) if value <= self.bins else None
        return None

    def advance(self, state: State, text: str) -> State | None:
        """Feed a string; None as soon as any character is rejected."""
        for ch in text:
            state = self.step_char(state, ch)
            if state is None:
                return None
        return state

    def is_complete(self, state: State) -> bool:
        """All integers begun and the last one has at least one digit: the text so far is an answer and EOS may come
        next (so may more digits of the last integer, while it stays <= B)."""
        return state != FINISHED and state[0] == self.n_ints and state[1] >= 0

    def can_end(self, state: State) -> bool:
        # Same as is_complete; kept as its own name because callers ask "may EOS come now?".
        return self.is_complete(state)

    def allowed_chars(self, state: State) -> set[str]:
        return {ch for ch in DIGITS + SPACE if self.step_char(state, ch) is not None}

    def accepts(self, text: str) -> bool:
        """True if `text` (without EOS) is a complete answer."""
        state = self.advance(self.initial_state(), text)
        return state is not None and self.is_complete(state)


class TokenConstraint:
    """The grammar over a tokenizer's vocabulary.

    vocab: token id -> decoded text. Only ids whose text is non-empty and made of digits and spaces matter; others
    may be present (they are dropped) or absent (see vocab_from_tokenizer, which returns only those).
    eos_ids: the token ids that end the answer (for a chat model the end-of-turn token, e.g. <|im_end|>).
    """

    def __init__(self, grammar: ActionGrammar, vocab: dict[int, str], eos_ids):
        self.grammar = grammar
        ids = eos_ids if hasattr(eos_ids, "__iter__") else [eos_ids]  # one id or several
        self.eos_ids = tuple(sorted({int(i) for i in ids}))
        if not self.eos_ids:
            raise UserError("constrained decoding needs at least one EOS token id; pass the tokenizer's eos id")
        allowed = set(DIGITS + SPACE)
        # A token with two spaces in a row can never be legal (Qwen has dozens of pure-whitespace tokens): drop it.
        self.candidates: dict[int, str] = {
            int(i): s
            for i, s in vocab.items()
            if s and set(s) <= allowed and "  " not in s and int(i) not in self.eos_ids
        }
        # Liveness: with a one-character token for every digit and for the space, every unfinished state has a
        # legal continuation (a digit after a space, a space after a digit, EOS when complete), so generation can
        # never get stuck with every logit at -inf.
        singles = {s for s in self.candidates.values() if len(s) == 1}
        missing = sorted(set(DIGITS + SPACE) - singles)
        if missing:
            raise UserError(
                f"the tokenizer has no single-character token for {missing!r}; constrained action decoding needs one "
                "token per digit and one for the space (use a Qwen or byte-level tokenizer)"
            )
        # How many integers a single token can begin at most: the allowed set depends on the number of integers
        # still to write only up to that many, which bounds the number of distinct cache entries.
        self._reach = 1 + max(s.count(SPACE) + 1 for s in self.candidates.values())
        self._cache: dict[State, tuple[int, ...]] = {}
        # Upper bound on generated tokens: every token carries at least one character, plus the EOS.
        self.max_new_tokens = grammar.max_chars + 1

    def cache_key(self, state: State) -> State:
        """States with the same allowed token set share a key (used for caching here and in the torch adapter)."""
        if state == FINISHED:
            return FINISHED
        started, value = state
        # Only "how many integers are left, up to what one token can begin" matters, not the exact count.
        return (min(self.grammar.n_ints - started, self._reach), value)

    def allowed_token_ids(self, state: State) -> tuple[int, ...]:
        """Sorted token ids legal in `state`. EOS only once every integer is written; then the last integer may
        still grow while it stays in range ("1" -> "10" -> "100"), so digits stay allowed next to EOS until it
        cannot ("0", or a value whose next digit would pass B), where EOS is the only choice."""
        key = self.cache_key(state)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        if state == FINISHED:
            ids = self.eos_ids
        else:
            ids = [i for i, s in self.candidates.items() if self.grammar.advance(state, s) is not None]
            if self.grammar.is_complete(state):
                ids += self.eos_ids
            ids = tuple(sorted(ids))
        self._cache[key] = ids
        return ids

    def advance_token(self, state: State, token_id: int) -> State | None:
        """State after one token; None if the token is not allowed there."""
        if state == FINISHED:
            return FINISHED  # HF writes pad into rows that are done; they stay done.
        token_id = int(token_id)
        if token_id in self.eos_ids:
            return FINISHED if self.grammar.is_complete(state) else None
        text = self.candidates.get(token_id)
        if text is None:
            return None
        return self.grammar.advance(state, text)

    def initial_state(self) -> State:
        return self.grammar.initial_state()


# GPT-2 style byte-level BPE writes the space byte as "Ġ" (U+0120); SentencePiece writes a word boundary as "▁".
# Digits are themselves in both. A raw token made only of these characters decodes by plain substitution.
_RAW_TO_TEXT = {**{d: d for d in DIGITS}, " ": " ", "\u0120": " ", "\u2581": " "}


def vocab_from_tokenizer(tok) -> dict[int, str]:
    """Token id -> decoded text, for the tokens that decode to digits and spaces only.

    Reads the raw vocabulary once (`get_vocab()`, one call even for 151k entries) and keeps the tokens whose raw
    spelling uses only digits, " ", "Ġ" or "▁"; everything else can never be part of an answer, so it is not decoded.
    Added/special tokens (<|im_end|> ...) are spelled with other characters and drop out here. Accepts a tokenizer or a
    processor (uses its `.tokenizer`).
    """
    tok = getattr(tok, "tokenizer", tok)
    out: dict[int, str] = {}
    for raw, idx in tok.get_vocab().items():
        if raw and all(ch in _RAW_TO_TEXT for ch in raw):
            out[int(idx)] = "".join(_RAW_TO_TEXT[ch] for ch in raw)
    return out
