"""Do small updates survive? Share of weights that change in N optimizer steps at lr 5e-6, per precision mode.

    python scripts/bench_bf16_updates.py --steps 10 50 --seeds 2

Modes (train.precision / train.optimizer), each from the same initial weights on the same batches:
  fp32          fp32 weights, torch AdamW: the reference
  bf16-mixed    fp32 master weights + bf16 autocast, torch AdamW (the GPU recipes' default where memory allows)
  bf16+adamw    bf16 weights stepped by torch AdamW (what the GPU recipes did before)
  bf16+kahan    bf16 weights, torch-optimi AdamW with Kahan summation (train.optimizer=adamw-kahan)

Figures: `changed` = share of weights that differ from their initial value; `realised` = how much of the fp32
reference's update the mode's weights carry (<dw, dw_ref> / |dw_ref|^2; 1.0 = all of it). The tiny Qwen3-VL has the
real architecture and the usual initialisation (std 0.02, norms at 1.0): weights of typical size. Synthetic batches of
the paper's action shape (H = 8, D = 7).
"""

from __future__ import annotations

import argparse
import copy
import statistics

MODES = ("fp32", "bf16-mixed", "bf16+adamw", "bf16+kahan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()

    import torch

    from tinyvla.bench import synthetic_batch
    from tinyvla.recipe import Recipe
    from tinyvla.training import trainer

    torch.set_num_threads(1)
    recipe = Recipe(name="bf16-updates")
    recipe.model.name, recipe.model.dtype, recipe.train.precision = "tiny-qwen3", "fp32", "fp32"
    recipe.data.suite, recipe.data.image_size, recipe.data.crop_scale = "blockfind-reach", 32, 1.0
    recipe.actions.horizon, recipe.train.lr, recipe.train.weight_decay = 8, args.lr, 0.0
    results = {(m, n): [] for m in MODES for n in args.steps}
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        base, processor = trainer.build_model(recipe)
        batches = [synthetic_batch(recipe, processor, args.batch, seed=100 * seed + i) for i in range(max(args.steps))]
        init = {k: v.detach().clone() for k, v in base.named_parameters()}
        snapshots = {}
        for mode in MODES:
            model = copy.deepcopy(base)
            if mode.startswith("bf16+"):
                model = model.to(torch.bfloat16)
            cfg = copy.deepcopy(recipe.train)
            cfg.optimizer = "adamw-kahan" if mode == "bf16+kahan" else "adamw"
            opt = trainer.build_optimizer(model, cfg)
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode != "fp32")
            for step in range(1, max(args.steps) + 1):
                with autocast:
                    loss = trainer.answer_loss(model, batches[step - 1])
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if step in args.steps:
                    snapshots[(mode, step)] = {k: v.detach().float().clone() for k, v in model.named_parameters()}
        for n in args.steps:
            ref = torch.cat([(snapshots[("fp32", n)][k] - init[k]).flatten() for k in init])
            for mode in MODES:
                d = torch.cat([(snapshots[(mode, n)][k] - init[k].to(torch.bfloat16 if mode.startswith("bf16+")
                                                                     else torch.float32).float()).flatten()
                               for k in init])
                results[(mode, n)].append({"changed": (d != 0).float().mean().item(),
                                           "realised": (torch.dot(d.double(), ref.double()) / ref.double().square().sum()).item()})
    print(f"tiny Qwen3-VL, lr {args.lr:g}, batch {args.batch}, {args.seeds} seeds: mean [min .. max]")
    for n in args.steps:
        for mode in MODES:
            rows = results[(mode, n)]
            cells = []
            for key in ("changed", "realised"):
                vals = [r[key] for r in rows]
                cells.append(f"{key} {statistics.mean(vals):6.1%} [{min(vals):.1%} .. {max(vals):.1%}]")
            print(f"  {n:3d} steps  {mode:11s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
