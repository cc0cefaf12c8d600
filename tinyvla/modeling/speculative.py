"""Chunk-shift speculative decoding: the previous chunk, shifted, drafts the next one; one forward pass checks it.

A policy that re-queries every step writes almost the same answer again: the chunk predicted at step t covers steps
t..t+H-1, the one predicted at t-1 covered t-1..t+H-2, so (when the model is consistent) the new chunk's first H-1
rows are the old chunk's last H-1 rows. Shifting the old chunk's int codes by the steps executed since (drop the first
k rows, repeat the last row k times) gives a draft of the whole answer. Greedy decoding writes ~100 tokens one forward
pass at a time; here every pass feeds the tokens already decided plus a draft of all that is still to come, and keeps
the longest drafted prefix that constrained greedy decoding would also have written.

Exactness: at every drafted position the kept token is the grammar-constrained argmax of the logits there -- the same
rule `Policy.generate_text` applies one token at a time -- so the text is the greedy text. (Up to floating point: a
pass over many tokens and a pass over one do not sum in the same order, so a near-tie between two tokens could in
principle break the other way. fp32 on CPU matched greedy on every observation tested; see tests/test_speculative.py.)

One pass, batched and left padded (B rows, one column per token, shared by all rows):

    [ decided, not yet in the KV cache | draft tokens, right-padded ]
      (the prompt on the first pass;     (each row its own draft, mask 0 on the padding)
       then the one pending token)

Each row then keeps its accepted draft columns; the columns of rejected draft tokens stay in the KV cache as holes
with attention mask 0 (every row has its own accepted length, but a cache column is shared by the batch). Positions
are explicit: Qwen-VL's multimodal RoPE gives the prompt 3-D positions (`_prepare_position_ids_for_generation`, what
`generate` itself calls); every text token after it is one more than the row's last kept token, so holes are skipped
exactly as if the rejected tokens had never been written. The cache is cropped to the longest kept row after each
pass, and a row that has finished leaves the batch (its cache rows too).

Redrafting: after a miss, the row writes one greedy token, and from the next pass on is offered the rest of the draft
again, aligned on the integer index the grammar state names (`draft_continuation`: it also finishes a half-written
integer the way the draft's integers look, and follows the model when it starts repeating its own step). One wrong
integer in the middle of a chunk then costs a pass or two, not the whole tail. A row whose drafts keep failing is
offered shorter and shorter ones (`adaptive`), so a useless draft cannot make every pass long.

The unit of speed is the forward pass: a pass over ~100 tokens costs about as much as a pass over one on a GPU, where
decoding is bound by reading the weights; on a CPU the longer passes cost compute (see scripts/bench_speculative.py).

(Over ~400 lines: the loop, the draft helpers it calls and its stats are read together.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from tinyvla.core.grammar import FINISHED, TokenConstraint


MIN_DRAFT = 32  # draft tokens a row is always offered (about one step of D = 7 integers)


def shift_chunk(codes, k: int) -> np.ndarray:
    """The previous chunk's (H, D) int codes as a guess of the chunk k steps later: drop the first k rows, repeat the
    last row k times (k >= H: every row is the last one)."""
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"chunk codes must be (H, D), got shape {codes.shape}")
    k = max(0, int(k))
    horizon = codes.shape[0]
    if k == 0:
        return codes.copy()
    kept = codes[min(k, horizon):]
    pad = np.repeat(codes[-1:], min(k, horizon), axis=0)
    return np.concatenate([kept, pad], axis=0)


def draft_continuation(draft: list[int], state, written: list[int] = (), dim: int | None = None) -> str | None:
    """The rest of the answer as the draft predicts it from a grammar state on (EOS follows it), or None.

    draft: the flat H*D int codes of the guess. state: (started, value) of ActionGrammar. written: the integers the
    answer has completed so far (the one being written, if any, is `value`). dim: D, the integers per step.

    Where the answer has just left the draft, two cheap guesses do better than giving up:
      * the integer being written: if the draft's integer there does not extend the digits written so far, the most
        common integer of the draft and the answer that does ("1" -> "1000" when 1000 occurs); none: it ends here;
      * what follows: when the answer's last integer disagreed with the draft but equals the integer one step
        (D integers) before it, the model is repeating its own step, so the rest copies the answer's last step
        instead of the draft.
    """
    if state == FINISHED:
        return None
    started, value = state
    n = len(draft)
    seq = [int(v) for v in written]
    if len(seq) != (started if value < 0 else started - 1) or started > n:
        return None  # `written` does not match the state (or the answer is longer than the draft): no guess
    last = len(seq) - 1
    copy_step = bool(dim) and last >= dim and seq[last] != draft[last] and seq[last] == seq[last - dim]

    def guess(k: int) -> int:  # the draft's value for integer k, given the integers before it
        return seq[k - dim] if copy_step else draft[k]

    head = ""
    if value >= 0:  # finish the integer being written
        digits = str(value)
        target = str(guess(len(seq)))
        if not (target.startswith(digits) and len(target) >= len(digits)):
            pool = [str(v) for v in list(draft) + seq if str(v).startswith(digits) and len(str(v)) > len(digits)]
            target = max(pool, key=pool.count) if pool else digits
        head = target[len(digits):]
        seq.append(int(target))
    first = len(seq)
    while len(seq) < n:
        seq.append(guess(len(seq)))
    rest = " ".join(str(v) for v in seq[first:])
    if value >= 0:
        return head + (" " + rest if rest else "")
    return rest if rest else None


@dataclass
class DecodeStats:
    """What one decode did; summed over calls by the caller when it wants totals."""

    passes: int = 0  # model forward calls
    rows: int = 0  # answers written
    tokens: int = 0  # tokens written, EOS included, summed over rows
    drafted: int = 0  # draft tokens fed to the model, summed over rows
    accepted: int = 0  # draft tokens kept
    per_pass_tokens: list = field(default_factory=list)  # input columns per pass (cost on a CPU)
    computed: int = 0  # token positions the model computed: rows in the pass x its input columns, summed over passes
    needed: int = 0  # of those, the ones of rows still writing that hold a real token (the rest is padding)

    def add(self, other: "DecodeStats") -> None:
        for name in ("passes", "rows", "tokens", "drafted", "accepted", "computed", "needed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.per_pass_tokens.extend(other.per_pass_tokens)

    def to_dict(self) -> dict:
        return {"passes": self.passes, "rows": self.rows, "tokens": self.tokens, "drafted": self.drafted,
                "accepted": self.accepted,
                "acceptance": round(self.accepted / self.drafted, 4) if self.drafted else None}


def _base(model):
    """The transformers model under a peft wrapper (for its position-id helper)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _prompt_positions(model, batch: dict) -> torch.Tensor:
    """Position ids of the prompt, exactly as `generate` computes them on its first step: (4, B, L) for Qwen-VL
    (text positions, then the 3 M-RoPE rows), (B, L) for a text-only model."""
    base = _base(model)
    kwargs = {k: batch[k] for k in ("attention_mask", "mm_token_type_ids", "image_grid_thw", "video_grid_thw")
              if batch.get(k) is not None}
    if hasattr(base, "_prepare_position_ids_for_generation"):
        return base._prepare_position_ids_for_generation(batch["input_ids"], kwargs)
    mask = batch["attention_mask"].long()
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _crop(cache, keep: int) -> None:
    """Shrink a transformers KV cache to its first `keep` columns (negative = tokens to remove, in v5's API)."""
    remove = cache.get_seq_length() - keep
    if remove > 0:
        cache.crop(-remove)


def _vocab_size(model) -> int:
    emb = _base(model).get_output_embeddings()
    return int(emb.weight.shape[0]) if emb is not None else 1 << 62


def _accepts_logits_to_keep(model) -> bool:
    import inspect

    return "logits_to_keep" in inspect.signature(_base(model).forward).parameters


class _Row:
    """One answer being written: grammar state, tokens so far, its draft."""

    __slots__ = ("state", "tokens", "draft", "done", "budget", "forced_only")

    def __init__(self, state, draft):
        self.state, self.tokens, self.draft, self.done = state, [], draft, False
        self.forced_only = False  # this pass offers only grammar-forced tokens (`skip_forced`), not a guess
        self.budget = 1 << 30  # draft tokens offered per pass: no limit until a draft is rejected (`adaptive`)


@torch.inference_mode()
def speculative_generate(
    model,
    batch: dict,
    constraint: TokenConstraint,
    drafts: list | None,
    encode_text,
    eos_draft_id: int,
    pad_token_id: int,
    max_new_tokens: int | None = None,
    redraft: bool = True,
    reuse_cache: bool = True,
    max_draft_tokens: int | None = None,
    pass_token_budget: int | None = None,
    adaptive: bool = True,
    skip_forced: bool = True,
    repetition_penalty: float = 1.0,
) -> tuple[list[list[int]], DecodeStats]:
    """Constrained greedy decoding with chunk drafts. Returns each row's generated token ids (EOS included) and stats.

    batch: the left-padded prompt batch `Policy.encode_batch` builds (input_ids, attention_mask, mm_token_type_ids,
      pixel_values, image_grid_thw). drafts: per row the flat H*D int codes of a guessed answer, or None (plain greedy
      for that row); None for all rows = plain greedy with this loop.
    encode_text: str -> token ids (the processor's `encode_action_text`). eos_draft_id: the EOS token a draft ends
      with (the end-of-turn token the model was trained to write).
    redraft: offer the rest of the draft again after a miss (False: the draft is used on the first pass only).
    reuse_cache: False drops the KV cache after the first pass and recomputes prompt + accepted tokens on the
      next one (the "verify, then generate again from prompt + accepted" variant), then decodes without drafts. Same
      passes as reuse_cache=True with redraft=False, each second pass a full prefill; kept to measure against.
    max_draft_tokens: cap on draft tokens per row per pass (None: the whole remaining draft).
    pass_token_budget: draft tokens per pass over the whole batch: each row still writing is offered at most
      budget // rows of them (None: no such cap). For a compute-bound device (a CPU): there a pass costs rows x
      columns, and at batch 8 half the computed tokens were rejected drafts; a budget above one row's draft
      changes nothing for a batch of 1 (a right draft still takes one pass). scripts/profile_serve.py, BENCHMARKS.md.
    adaptive: halve a row's draft budget after a pass that rejected its draft, double it after one that kept all of
      it (floor MIN_DRAFT). A right draft still goes through in one pass; a wrong one stops making every pass long
      (each drafted position costs a full-vocabulary lm_head row: for Qwen's 151k vocabulary the main cost of a
      long pass).
    skip_forced: where the grammar allows exactly one token next (the space after a 3-digit integer, the EOS after
      the last one) and a row has no draft tokens to offer, offer those forced tokens as its draft: the argmax over a
      one-token set is that token, so they are always kept and need no pass of their own. Plain greedy decoding
      (no drafts at all) then takes one pass per non-forced token.
    repetition_penalty: as `generate`'s (DecodingConfig.repetition_penalty): applied before the grammar's argmax at every position to
      the tokens of the row's prompt (not its left padding, as `generate` does) and of its answer so far.
    """
    device = batch["input_ids"].device
    n_rows, prompt_len = batch["input_ids"].shape
    max_new = max_new_tokens or constraint.max_new_tokens
    drafts = list(drafts) if drafts is not None else [None] * n_rows
    if len(drafts) != n_rows:
        raise ValueError(f"{len(drafts)} drafts for {n_rows} prompts")
    rows = [_Row(constraint.initial_state(), None if d is None else [int(v) for v in np.asarray(d).reshape(-1)])
            for d in drafts]
    stats = DecodeStats(rows=n_rows)
    # Only the grammar's tokens (digits, space, EOS: a few hundred of Qwen's 151k) can ever be chosen, so only their
    # logits are read: `vocab` lists them in id order, and each state's allowed set is kept as positions into it
    # (same order, so argmax breaks ties towards the lower id, as it does over the full vocabulary).
    vocab_size = _vocab_size(model)
    vocab = sorted(i for i in set(constraint.candidates) | set(constraint.eos_ids) if i < vocab_size)
    vocab_t = torch.tensor(vocab, dtype=torch.long, device=device)
    local = {tok: k for k, tok in enumerate(vocab)}
    allowed_cache: dict = {}

    def allowed(state) -> np.ndarray:
        # numpy, not torch: the walk below reads one logit row per written token, where a torch op's fixed cost
        # (~5 us) times rows x tokens was a fifth of a served request's time on a CPU (scripts/profile_serve.py).
        key = constraint.cache_key(state)
        ids = allowed_cache.get(key)
        if ids is None:
            ids = np.asarray([local[i] for i in constraint.allowed_token_ids(state) if i in local], dtype=np.int64)
            allowed_cache[key] = ids
        return ids

    # Repetition penalty: which grammar tokens each row has seen (prompt, then every token it writes).
    penalty = float(repetition_penalty)
    if penalty != 1.0:
        from tinyvla.modeling.constrained import apply_repetition_penalty

        prompt_rows, prompt_mask = batch["input_ids"].cpu(), batch["attention_mask"].cpu().bool()
        # The left padding is not part of the prompt (transformers skips it too: `prompt_ignore_length`).
        seen = torch.stack([torch.isin(vocab_t.cpu(), prompt_rows[b][prompt_mask[b]]) for b in range(n_rows)])

    keep_arg = _accepts_logits_to_keep(model)
    dim = constraint.grammar.dim

    def forced_tokens(state) -> list[int]:
        """The tokens the grammar forces from `state` on (none when two or more are allowed)."""
        out = []
        while state is not None and state != FINISHED and len(out) < max_new:
            ids = constraint.allowed_token_ids(state)
            if len(ids) != 1 or ids[0] not in local:
                break
            out.append(ids[0])
            state = constraint.advance_token(state, ids[0])
        return out

    def draft_tokens(row: _Row, pass_index: int) -> list[int]:
        if row.done:
            return []
        ids = guessed_tokens(row, pass_index)
        row.forced_only = not ids and skip_forced
        return ids if not row.forced_only else forced_tokens(row.state)

    char_ids: dict[str, int] = {}

    def encode_guess(text: str) -> list[int]:
        """The draft text's tokens. Qwen's tokenizers write every digit and space as its own token; once a guess
        has tokenized that way (as many tokens as characters), its characters' ids are reused instead of calling
        the tokenizer (~0.2 ms a call, ~15 calls a request). A draft only decides how many passes a row takes,
        never which tokens it gets, so even a tokenizer that merged digits would only lose drafts, not change text."""
        if char_ids and all(c in char_ids for c in text):
            return [char_ids[c] for c in text]
        ids = list(encode_text(text))
        if len(ids) == len(text):
            char_ids.update(zip(text, ids))
        return ids

    def guessed_tokens(row: _Row, pass_index: int) -> list[int]:
        if row.draft is None or (pass_index > 0 and not (redraft and reuse_cache)):
            return []
        # The integers completed so far: the answer's text up to its last space.
        text = "".join(constraint.candidates.get(t, "") for t in row.tokens)
        written = [int(v) for v in text.split(" ")[:-1]]
        guess = draft_continuation(row.draft, row.state, written, dim)
        if guess is None:
            return []
        ids = encode_guess(guess) if guess else []
        ids.append(int(eos_draft_id))  # a guess always runs to the end of the answer
        cap = min(c for c in (max_draft_tokens, row.budget if adaptive else None, share, len(ids)) if c is not None)
        return ids[:cap]

    # The whole sequence so far, holes included: ids, mask and positions per column. The KV cache holds the first
    # `cached` columns. Positions have a leading dim for Qwen-VL's 4 rows (text + 3 M-RoPE); a 2-D (B, L) tensor for
    # text-only models is handled by viewing it as (1, B, L).
    ids = batch["input_ids"]
    mask = batch["attention_mask"].long()
    pos = _prompt_positions(model, batch)
    squeeze_pos = pos.ndim == 2
    if squeeze_pos:
        pos = pos[None]
    next_pos = pos[:, :, -1] + 1  # (P, B): position of each row's next token
    cache, cached = None, 0
    first_inputs = {k: v for k, v in batch.items() if k in ("pixel_values", "image_grid_thw", "pixel_values_videos",
                                                            "video_grid_thw")}
    pass_index = 0
    # The tensors above hold the rows still writing (`live`: their indices into `rows`); a row that finishes leaves
    # them, KV cache included, so the passes after it compute nothing for it (on a CPU a pass costs rows x columns).
    # Not with reuse_cache=False, whose second pass re-reads the prompt (and images) of every row.
    live = list(range(n_rows))
    while live:
        # Draft columns for this pass, right-padded; mask 0 on padding.
        writing = sum(1 for b in live if not rows[b].done)
        share = None if pass_token_budget is None else max(1, pass_token_budget // max(1, writing))
        row_drafts = [draft_tokens(rows[b], pass_index) for b in live]
        width = max(len(d) for d in row_drafts)
        n_live = len(live)
        d_ids = torch.full((n_live, width), pad_token_id, dtype=torch.long, device=device)
        d_mask = torch.zeros((n_live, width), dtype=torch.long, device=device)
        for k, d in enumerate(row_drafts):
            if d:
                d_ids[k, : len(d)] = torch.tensor(d, dtype=torch.long, device=device)
                d_mask[k, : len(d)] = 1
        d_pos = next_pos[:, :, None] + torch.arange(width, device=device)  # a draft token follows the pending one
        decided = ids.shape[1]  # columns decided so far (the pending one included)
        all_ids = torch.cat([ids, d_ids], dim=1)
        all_mask = torch.cat([mask, d_mask], dim=1)
        all_pos = torch.cat([pos, d_pos], dim=2)

        if not reuse_cache and pass_index == 1:
            cache, cached = None, 0  # recompute everything: the "second prefill" variant
        inputs = {
            "input_ids": all_ids[:, cached:],
            "attention_mask": all_mask,
            "position_ids": (all_pos[0] if squeeze_pos else all_pos)[..., cached:],
            "past_key_values": cache,
            "use_cache": True,
        }
        if keep_arg:
            inputs["logits_to_keep"] = width + 1  # logits for the last decided column and the draft only
        if cached == 0:  # the prompt is in this pass: the images too
            inputs.update(first_inputs)
            if "mm_token_type_ids" in batch:
                mm = torch.zeros_like(all_ids)
                mm[:, :prompt_len] = batch["mm_token_type_ids"]
                inputs["mm_token_type_ids"] = mm
        out = model(**inputs)
        stats.passes += 1
        stats.per_pass_tokens.append(int(inputs["input_ids"].shape[1]))
        stats.computed += int(inputs["input_ids"].numel())
        stats.needed += sum(len(d) for d in row_drafts) + (
            int(batch["attention_mask"].sum()) if cached == 0 else sum(1 for b in live if not rows[b].done))
        cache = out.past_key_values
        # generate casts the last-step logits to float32 before the processors; do the same (exact for bf16), on
        # the grammar's columns only, and on the CPU, where the per-token walk below reads them.
        logits = out.logits[:, -(width + 1):].index_select(-1, vocab_t).float().cpu()
        logits_np = logits.numpy()

        # Walk each row: column j's logits choose the token after column (decided - 1 + j).
        kept = [0] * n_live  # accepted draft tokens per row
        pending = [pad_token_id] * n_live
        for k, b in enumerate(live):
            r = rows[b]
            if r.done:
                continue
            d = row_drafts[k]
            stats.drafted += len(d)
            for j in range(width + 1):
                cand = allowed(r.state)
                if penalty != 1.0:
                    scores = apply_repetition_penalty(logits[k, j], seen[b], penalty).numpy()
                else:
                    scores = logits_np[k, j]
                tok = vocab[int(cand[int(scores[cand].argmax())])]  # the first maximum, as torch.argmax
                if penalty != 1.0:
                    seen[b, local[tok]] = True
                r.tokens.append(tok)
                r.state = constraint.advance_token(r.state, tok)
                finished = r.state == FINISHED or len(r.tokens) >= max_new
                if j < len(d) and tok == d[j] and not finished:
                    kept[k] += 1
                    continue
                if j < len(d) and tok == d[j]:
                    kept[k] += 1  # the draft's own EOS (or last token) was right: nothing pending
                    r.done = True
                else:
                    r.done = finished
                    pending[k] = tok
                break
            stats.accepted += kept[k]
            if d and not r.forced_only:  # halve on a rejection, double on a full acceptance: see `adaptive`
                r.budget = min(2 * r.budget, 1 << 30) if kept[k] == len(d) else max(MIN_DRAFT, len(d) // 2)

        still = [k for k, b in enumerate(live) if not rows[b].done]
        if not still:
            break
        # Rejected draft columns become holes; crop every column past the longest kept row still writing (a
        # finished row's columns are never read again).
        keep_cols = max(kept[k] for k in still)
        d_mask_kept = (torch.arange(width, device=device)[None, :] < torch.tensor(kept, device=device)[:, None]).long()
        d_mask_kept = d_mask_kept * d_mask
        ids = torch.cat([ids, d_ids[:, :keep_cols]], dim=1)
        mask = torch.cat([mask, d_mask_kept[:, :keep_cols]], dim=1)
        pos = torch.cat([pos, d_pos[:, :, :keep_cols]], dim=2)
        cached = decided + keep_cols
        _crop(cache, cached)
        next_pos = next_pos + torch.tensor(kept, device=device)[None, :]
        if reuse_cache and len(still) < n_live:  # finished rows leave the batch
            sel = torch.tensor(still, dtype=torch.long, device=device)
            ids, mask, pos, next_pos = ids[sel], mask[sel], pos[:, sel], next_pos[:, sel]
            cache.reorder_cache(sel)
            live, pending = [live[k] for k in still], [pending[k] for k in still]
        # The pending token of each unfinished row becomes the next decided column (finished rows: a masked pad).
        flags = torch.tensor([0 if rows[b].done else 1 for b in live], dtype=torch.long, device=device)
        ids = torch.cat([ids, torch.tensor(pending, dtype=torch.long, device=device)[:, None]], dim=1)
        mask = torch.cat([mask, flags[:, None]], dim=1)
        pos = torch.cat([pos, next_pos[:, :, None]], dim=2)
        next_pos = next_pos + 1
        pass_index += 1

    stats.tokens = sum(len(r.tokens) for r in rows)
    return [r.tokens for r in rows], stats
