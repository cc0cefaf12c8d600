"""How the loss weighting depends on the split of a global batch, before and after the token-mean fix.

    python scripts/bench_loss_weighting.py --seeds 3

Before: each micro-batch's loss is the mean over its own labelled tokens, and accumulation + DDP average those means
(what the trainer did): with masked action augmentation the labelled-token count per sample varies, so a heavily
masked micro-batch weighs more. After: `trainer.train_step` divides each micro-batch's summed loss by the global
batch's labelled-token count. Both are compared with the reference, the token mean over the whole global batch in one
forward: loss bias (relative) and gradient direction gap (1 - cosine).

Shape: the qwen3-8b recipe's step (global batch 64 = micro 4 x 8 GPUs x 2 accumulation), H = 8 x D = 7 actions,
mask_prob 0.4, real LIBERO frames (tests/fixtures/libero_v20_tiny, each frame drawn with several masks), the tiny
Qwen3-VL first trained a few steps on the same frames so that it reads the action context: masked context then makes
the remaining tokens harder, which is where the per-micro-batch mean goes wrong. Processes are emulated in one
process: DDP's average over processes is a mean, which the emulation takes explicitly.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--global-batch", type=int, default=64)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--warm-steps", type=int, default=40)
    args = ap.parse_args()

    import torch
    from accelerate import Accelerator

    from pathlib import Path

    from tinyvla.inputs import mask_token_id
    from tinyvla.policy_dir import PolicyConfig
    from tinyvla.recipe import load_recipe
    from tinyvla.training import trainer
    from tinyvla.training.data import ActionSampleDataset, load_training_data

    torch.set_num_threads(1)
    root = Path(__file__).resolve().parents[1]
    recipe = load_recipe(root / "recipes" / "tiny-cpu.yaml",
                         [f"data.repo={root / 'tests/fixtures/libero_v20_tiny'}", "data.suite=null", "data.val_episodes=0",
                          "actions.horizon=8", "actions.mask_prob=0.4", "data.image_size=32", "data.num_workers=0"])
    data = load_training_data(recipe, log=lambda *a, **k: None)
    rows = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model, processor = trainer.build_model(recipe)
        config = PolicyConfig.from_recipe(recipe, data.stats)
        prompt, image_spec, codec = config.prompt, config.image, config.codec()
        dataset = ActionSampleDataset(data.reader, codec, processor, prompt, image_spec, train=True, seed=seed,
                                      mask_prob=0.4, mask_token_id=mask_token_id(processor, recipe.actions.mask_char))
        rng = np.random.default_rng(seed)

        def draw(n, epoch):
            return [dataset[(int(f), epoch)] for f in rng.choice(data.train_frames, size=n)]

        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for i in range(args.warm_steps):  # the model learns to read the action context of these frames
            loss = trainer.answer_loss(model, processor.collate(draw(16, 1000 + i), padding_side="right"))
            loss.backward()
            opt.step()
            opt.zero_grad()
        collate = processor.collate
        items = draw(args.global_batch, 5000 + seed)
        batch = collate(items, padding_side="right")
        micro = [collate(items[i:i + args.micro], padding_side="right") for i in range(0, len(items), args.micro)]
        counts = [int(trainer.labelled_tokens(b)) for b in micro]

        def grad_of(fn):
            model.zero_grad(set_to_none=True)
            value = fn()
            g = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double()
            return value, g

        def reference():  # token mean over the whole global batch, one forward
            loss = trainer.answer_loss(model, batch)
            loss.backward()
            return loss.item()

        def before():  # mean of micro-batch means (accumulation and DDP averaging both take means)
            total = 0.0
            for b in micro:
                loss = trainer.answer_loss(model, b) / len(micro)
                loss.backward()
                total += loss.item()
            return total

        accelerator = Accelerator(cpu=True)

        def after():  # the trainer's own step: one process holding all micro-batches as accumulation steps
            return trainer.train_step(accelerator, model, micro)

        (l_ref, g_ref), (l_old, g_old), (l_new, g_new) = grad_of(reference), grad_of(before), grad_of(after)
        cos = torch.nn.functional.cosine_similarity
        # Under the per-micro-batch mean a token of micro-batch m weighs N / (M x n_m) times what the token mean gives it.
        weights = [sum(counts) / (len(counts) * n) for n in counts]
        rows.append({"tokens": (min(counts), max(counts)), "weight_min": min(weights), "weight_max": max(weights),
                     "bias_before": l_old / l_ref - 1, "bias_after": l_new / l_ref - 1,
                     "gap_before": 1 - cos(g_old, g_ref, dim=0).item(), "gap_after": 1 - cos(g_new, g_ref, dim=0).item()})
        print(f"seed {seed}: labelled tokens per micro-batch {min(counts)}-{max(counts)} (token weights before: "
              f"{min(weights):.3f}-{max(weights):.3f} x, after: 1 x); loss bias "
              f"{rows[-1]['bias_before']:+.4%} before, {rows[-1]['bias_after']:+.1e} after; gradient direction gap "
              f"{rows[-1]['gap_before']:.4%} before, {rows[-1]['gap_after']:.1e} after")

    def fmt(key, pct=True):
        vals = [r[key] for r in rows]
        f = (lambda v: f"{v:+.4%}") if pct else (lambda v: f"{v:.1e}")
        return f"{f(statistics.mean(vals))} [{f(min(vals))} .. {f(max(vals))}]"

    print(f"global batch {args.global_batch} = {args.global_batch // args.micro} micro-batches of {args.micro}, "
          f"{args.seeds} seeds: mean [min .. max]")
    print(f"  loss bias      before {fmt('bias_before')}   after {fmt('bias_after', False)}")
    print(f"  gradient gap   before {fmt('gap_before')}   after {fmt('gap_after', False)}")


if __name__ == "__main__":
    main()
