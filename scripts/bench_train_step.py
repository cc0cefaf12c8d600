"""What each training-step speed-up buys, side by side in one process (these machines are noisy: compare ratios).

    python scripts/bench_train_step.py recipes/tiny-cpu.yaml --repeats 5

Variants, each a forward + backward of the recipe's model on the same synthetic batch (alternated, best of rounds):
  baseline      the model's own loss over every position, the padding mask passed, one SDPA call per image
  packed        + the vision tower attends over all images in one SDPA call
  answer        + logits only at the positions that predict an answer token
  nomask        + no padding mask for a right-padded batch (the trainer's path)
All four give the same loss; the script checks that before timing.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from tinyvla.bench import synthetic_batch
    from tinyvla.modeling.attention import PACKED_VISION_ATTENTION
    from tinyvla.recipe import load_recipe
    from tinyvla.training import trainer

    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, args.overrides)
    model, processor = trainer.build_model(recipe)
    model.train()
    batch = synthetic_batch(recipe, processor, recipe.train.batch_size, recipe.train.seed)
    vision = model.config.vision_config

    def full_loss(m, b):
        return m(**b).loss

    def answer_with_mask(m, b):  # answer_loss, but keeping the padding mask (pretend the batch is left-padded)
        labels = b["labels"]
        keep = (labels[:, 1:] != -100).any(dim=0).nonzero().squeeze(1)
        logits = m(**{k: v for k, v in b.items() if k != "labels"}, logits_to_keep=keep).logits
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels[:, 1:][:, keep].flatten(),
                                                 ignore_index=-100)

    variants = {  # name: (vision attention, loss function)
        "baseline": ("sdpa", full_loss),
        "packed": (PACKED_VISION_ATTENTION, full_loss),
        "answer": (PACKED_VISION_ATTENTION, answer_with_mask),
        "nomask": (PACKED_VISION_ATTENTION, trainer.answer_loss),
    }

    def run(name):
        vision._attn_implementation, loss_fn = variants[name]
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        return loss.item()

    losses = {name: run(name) for name in variants}
    spread = max(losses.values()) - min(losses.values())
    assert spread < 1e-4, f"variants disagree on the loss: {losses}"
    best = {name: float("inf") for name in variants}
    for _ in range(args.rounds):
        for name in variants:
            t = time.perf_counter()
            for _ in range(args.repeats):
                run(name)
            best[name] = min(best[name], (time.perf_counter() - t) / args.repeats)
    vision._attn_implementation = PACKED_VISION_ATTENTION
    seq = batch["input_ids"].shape[1]
    print(f"{args.recipe}: batch {recipe.train.batch_size} x {seq} tokens, {args.threads} thread(s), "
          f"loss {losses['baseline']:.5f} in every variant")
    for name, s in best.items():
        print(f"  {name:9s} {s * 1e3:8.1f} ms per forward+backward   {best['baseline'] / s:5.2f}x baseline")


if __name__ == "__main__":
    main()
