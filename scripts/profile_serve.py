"""Where a served request's time goes, at batch 1 vs batch 8: the model thread's work split into its parts.

    python scripts/profile_serve.py runs/tiny-cpu/final --steps 20 --batch 1,8

What it does (one process, one torch thread unless --threads, no sockets): n clients replay their own BlockFind-reach
episodes in lockstep, exactly as `tinyvla serve` sees them in "action" mode with execute_horizon 1 (every step is a
query, drafted from the client's previous chunk); each step's n observations are decoded as one batch (the server's
batch when n clients ask at once). Per batch it times

    wire      msgpack unpack of the n requests and pack of the n replies (the event loop's share)
    encode    Policy.encode_batch: crop/resize/tile, the processor (pixels, chat tokens), collate
    forward   model forward calls inside speculative_generate (torch time; includes the vision tower on pass 1)
    walk      the rest of speculative_generate: drafting, the per-row grammar walk over the logits, cache bookkeeping
    decode    codes -> float actions

and reports CPU ms per request (batch time / n), forward passes per batch, the passes each row would need alone (so
"waiting for the slowest row" is passes per batch minus the mean passes alone), the token positions the model computed
per request and the share of them that was padding; then the CPU ms of one forward pass at batch n and at batch 1
(prefill; 1, 8, 32 and a whole draft's tokens a row): the ideal bound on batching when the forward is all there is.
Variants side by side: --max-draft (tokens a row per pass) and --pass-budget (tokens per pass over the batch).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# CPU time of this thread, not wall time: the machine is shared, and with one torch thread all the work is this
# thread's, so CPU time measures the work without the waits for other people's jobs.
clock = time.thread_time


def profile(policy, episodes, n: int, steps: int) -> dict:
    """Replay the first n episodes in lockstep; return the per-phase totals (seconds) and counts."""
    import torch

    from tinyvla.modeling.speculative import shift_chunk, speculative_generate
    from tinyvla.serving.wire import pack, unpack

    model = policy.model
    fwd = {"t": 0.0, "start": 0.0}

    def pre(*_):
        fwd["start"] = clock()

    def post(*_):
        fwd["t"] += clock() - fwd["start"]

    hooks = [model.register_forward_pre_hook(pre), model.register_forward_hook(post)]
    tot = dict.fromkeys(("wire", "encode", "forward", "walk", "decode"), 0.0)
    passes = rows_alone = computed = needed = 0
    last: list = [None] * n
    try:
        for t in range(steps):
            msgs = [pack({**episodes[c][0][t], "instruction": episodes[c][1], "return": "action"}) for c in range(n)]
            t0 = clock()
            reqs = [unpack(m) for m in msgs]
            t1 = clock()
            batch = policy.encode_batch([r["image"] for r in reqs], [r["wrist_image"] for r in reqs],
                                        [r["instruction"] for r in reqs])
            t2 = clock()
            drafts = [None if last[c] is None else shift_chunk(last[c], 1) for c in range(n)]
            fwd["t"] = 0.0
            with torch.inference_mode():
                tokens, stats = speculative_generate(
                    model, batch, policy.constraint, drafts, policy.processor.encode_action_text,
                    eos_draft_id=policy.processor.end_of_turn_ids[0], pad_token_id=policy.processor.pad_token_id,
                    max_new_tokens=policy.grammar.max_chars + 1, **policy.config.decoding.speculative_options())
            t3 = clock()
            texts = policy.processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)
            codes = [policy.codec.parse(x) for x in texts]
            chunks = [policy.codec.decode(c, r["instruction"]).astype(np.float32) for c, r in zip(codes, reqs)]
            t4 = clock()
            replies = [pack({"actions": ch[:1], "server_timing": {}}) for ch in chunks]
            t5 = clock()
            tot["wire"] += (t1 - t0) + (t5 - t4)
            tot["encode"] += t2 - t1
            tot["forward"] += fwd["t"]
            tot["walk"] += (t3 - t2) - fwd["t"]
            tot["decode"] += t4 - t3
            passes += stats.passes
            computed += stats.computed
            needed += stats.needed
            last = codes
            del replies
            if n > 1:  # the passes each row needs alone (same draft): what the batch waits for beyond them
                for c in range(n):
                    one = policy.encode_batch([reqs[c]["image"]], [reqs[c]["wrist_image"]], [reqs[c]["instruction"]])
                    with torch.inference_mode():
                        _, s1 = speculative_generate(
                            model, one, policy.constraint, [drafts[c]], policy.processor.encode_action_text,
                            eos_draft_id=policy.processor.end_of_turn_ids[0],
                            pad_token_id=policy.processor.pad_token_id,
                            max_new_tokens=policy.grammar.max_chars + 1,
                            **policy.config.decoding.speculative_options())
                    rows_alone += s1.passes
    finally:
        for h in hooks:
            h.remove()
    total = sum(tot.values())
    out = {"batch": n, "requests": n * steps, "ms_per_request": round(1000 * total / (n * steps), 2)}
    out.update({f"{k}_ms_per_request": round(1000 * v / (n * steps), 2) for k, v in tot.items()})
    out["share"] = {k: round(v / total, 3) for k, v in tot.items()}
    out["passes_per_batch"] = round(passes / steps, 2)
    # token positions the model computed per request, and the share of them that was padding or finished rows
    out["computed_per_request"] = round(computed / (n * steps), 1)
    out["padding_share"] = round(1 - needed / computed, 3)
    if n > 1:
        out["passes_alone_per_row"] = round(rows_alone / (n * steps), 2)
    return out


def pass_cost(policy, episodes, n: int, widths: list[int], repeats: int) -> dict:
    """CPU ms of one forward pass at batch n, the model alone (no Python walk): the prefill (prompt + images) and a
    pass of w tokens a row over the cached prompt, for each w in `widths` (a draft being verified)."""
    import torch

    from tinyvla.modeling.speculative import _crop, _prompt_positions

    obs = [episodes[c % len(episodes)][0][0] for c in range(n)]
    ins = [episodes[c % len(episodes)][1] for c in range(n)]
    batch = policy.encode_batch([o["image"] for o in obs], [o["wrist_image"] for o in obs], ins)
    prompt = batch["input_ids"].shape[1]
    draft = torch.full((n, max(widths)), int(policy.processor.encode_action_text("5")[0]), dtype=torch.long)
    ids = torch.cat([batch["input_ids"], draft], 1)
    mask = torch.cat([batch["attention_mask"], torch.ones_like(draft)], 1)
    mm = torch.zeros_like(ids)
    mm[:, :prompt] = batch["mm_token_type_ids"]
    pos = _prompt_positions(policy.model, {**batch, "input_ids": ids, "attention_mask": mask, "mm_token_type_ids": mm})
    out = {"batch": n, "prompt_tokens": prompt}
    with torch.inference_mode():
        times = []
        for _ in range(repeats):
            t0 = clock()
            res = policy.model(input_ids=ids[:, :prompt], attention_mask=mask[:, :prompt],
                               position_ids=pos[..., :prompt], mm_token_type_ids=mm[:, :prompt],
                               pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                               use_cache=True, logits_to_keep=1)
            times.append(clock() - t0)
        out["prefill_ms"] = round(1000 * float(np.median(times)), 2)
        cache = res.past_key_values
        for w in widths:
            times = []
            for _ in range(repeats):
                t0 = clock()
                policy.model(input_ids=ids[:, prompt:prompt + w], attention_mask=mask[:, :prompt + w],
                             position_ids=pos[..., prompt:prompt + w], past_key_values=cache, use_cache=True,
                             logits_to_keep=w)
                times.append(clock() - t0)
                _crop(cache, prompt)
            out[f"pass_{w}_ms"] = round(1000 * float(np.median(times)), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("policy")
    ap.add_argument("--batch", default="1,8", help="client counts (batch sizes) to profile")
    ap.add_argument("--steps", type=int, default=20, help="lockstep steps per batch size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-draft", default="0", help="max draft tokens per row per pass to try (0 = no cap)")
    ap.add_argument("--pass-budget", default="0", help="draft tokens per pass over the batch to try (0 = no cap)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from tinyvla.policy import Policy
    from tinyvla.policy_dir import DecodingConfig

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_serve import episode

    torch.set_num_threads(args.threads)
    policy = Policy.from_pretrained(args.policy, device="cpu", decoding=DecodingConfig(speculative=True))
    sizes = [int(x) for x in args.batch.split(",")]
    episodes = [episode(seed, args.steps) for seed in range(max(sizes))]
    profile(policy, episodes, max(sizes), 2)  # warm up
    rows = []
    for cap in [int(x) for x in args.max_draft.split(",")]:
        for budget in [int(x) for x in args.pass_budget.split(",")]:
            with policy.decoding(max_draft_tokens=cap or None, pass_token_budget=budget or None):
                for n in sizes:
                    rows.append({"max_draft": cap or None, "pass_budget": budget or None,
                                 **profile(policy, episodes, n, args.steps)})
                    print(json.dumps(rows[-1]), flush=True)
    widths = [1, 8, 32, policy.grammar.max_chars + 1]  # one token ... a whole draft
    costs = [pass_cost(policy, episodes, n, widths, 15) for n in sizes]
    for c in costs:
        print(json.dumps(c), flush=True)
    # The ideal bound on batching: what a pass of batch n costs over the same pass of batch 1
    bound = {c["batch"]: {k: round(c[k] / costs[0][k], 2) for k in c if k.endswith("_ms")} for c in costs}
    print("pass cost at batch n / batch 1:", json.dumps(bound))
    if args.json:
        args.json.write_text(json.dumps({"profile": rows, "pass_cost": costs, "pass_cost_ratio": bound}, indent=1))


if __name__ == "__main__":
    main()
