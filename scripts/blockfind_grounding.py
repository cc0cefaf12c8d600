"""Does a policy read the colour word? Named-colour BlockFind episodes, with how each one ended.

    python scripts/blockfind_grounding.py runs/tiny-cpu-blockfind/final --episodes 40

For each episode: the block the policy's first predicted move points at (cosine with the offset to each block), and
the outcome: success, the wrong block picked up, or out of time. A policy that ignores the instruction picks the named
block one time in three (three blocks on the table); `first move to the named block` near 1/3 means the colour word
is not used, whatever the success rate.

It also prints, per layer, how much the hidden state at the last prompt position (where the first action digit is
predicted) changes with the colour word, relative to how much it changes with the image: one layout under each of its
three instructions. A ratio near 0 means the word never reaches the answer: the saddle the home-layout curriculum
gets the model out of (BENCHMARKS.md). With `instruction_position: end` that position IS the colour word, so layer 0
is large by construction; what matters is whether it survives to the last layer.

Per axis: how often the sign of the first move's dx (dy) agrees with the named block's offset, against how often it
agrees with the other blocks' (offsets under 0.1 and axes the move leaves at 0 skipped). Equal rates = that axis
ignores the word. With the instruction at the end, dx (predicted at the colour word) reads it and dy (four tokens
later) did not; a policy trained on the x-first expert moves along x only at first, so read its dx figure (its
"first move" cosine then points at whichever block lies most along x).
"""

from __future__ import annotations

import argparse
import collections

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("policy", help="a policy directory (tinyvla train output or export)")
    ap.add_argument("--episodes", type=int, default=40)
    ap.add_argument("--seed", type=int, default=5000, help="episode seeds seed, seed+1, ... (not the eval protocol's)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from tinyvla.envs.blockfind import make_env
    from tinyvla.policy import Policy

    policy = Policy.from_pretrained(args.policy, device="cpu")
    env = make_env("blockfind", image_size=64)
    outcomes, first_to_target = collections.Counter(), 0
    agree = np.zeros((2, 2))  # [named, other] x [dx, dy]: sign agreements
    counted = np.zeros((2, 2))
    for ep in range(args.episodes):
        obs, _ = env.reset(seed=args.seed + ep)
        target = env.block_colors.index(env.target_color)
        offsets = env.block_pos - env.gripper_pos
        move = policy.predict_chunk(obs["image"], obs["wrist_image"], env.instruction)[0, :2]
        cosines = offsets @ move / (np.linalg.norm(offsets, axis=1) * np.linalg.norm(move) + 1e-9)
        first_to_target += int(np.argmax(cosines) == target)
        far = (np.abs(offsets) >= 0.1) & (move != 0)  # an axis the policy does not move yet says nothing
        for b in range(len(offsets)):
            kind = 0 if b == target else 1
            agree[kind] += far[b] * (np.sign(move) == np.sign(offsets[b]))
            counted[kind] += far[b]
        policy.reset(1)
        while True:
            action = policy.act_batch([obs], [env.instruction], [0])[0]
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        outcomes["success" if info["success"] else "wrong block" if info.get("grasped") else "out of time"] += 1
    word_vs_image = word_sensitivity(policy, env, layouts=min(args.episodes, 30), seed=args.seed)
    n = args.episodes
    print("hidden state at the answer, variance from the word / from the image, per layer: "
          + "  ".join(f"{i}: {r:.3f}" for i, r in enumerate(word_vs_image)))
    print(f"episodes {n}: " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    rate = [[f"{a / c:.0%}" if c else "n/a" for a, c in zip(agree[k], counted[k])] for k in range(2)]
    print(f"first move's sign agrees with the named block: dx {rate[0][0]} dy {rate[0][1]}; "
          f"with the other blocks: dx {rate[1][0]} dy {rate[1][1]}")
    print(f"first move to the named block: {first_to_target}/{n} ({first_to_target / n:.0%}; ignoring the word: ~33%)")


def word_sensitivity(policy, env, layouts: int, seed: int) -> list[float]:
    """Per layer: mean variance of the last prompt position's hidden state across the instructions of one layout,
    divided by its variance across layouts (the instruction-averaged state)."""
    import torch

    from tinyvla.envs.blockfind import INSTRUCTION

    states = []
    for i in range(layouts):
        obs, _ = env.reset(seed=seed + i)
        n = len(env.block_colors)
        batch = policy.encode_batch([obs["image"]] * n, [obs["wrist_image"]] * n,
                                    [INSTRUCTION.format(color=c) for c in env.block_colors])
        with torch.no_grad():
            out = policy.model(**batch, output_hidden_states=True)
        states.append(torch.stack([h[:, -1] for h in out.hidden_states]).float().numpy())  # layers, n, width
    h = np.stack(states)  # layouts, layers, n, width
    word = ((h - h.mean(2, keepdims=True)) ** 2).mean(axis=(0, 2, 3))
    image = ((h.mean(2) - h.mean(axis=(0, 2))) ** 2).mean(axis=(0, 2))
    return [float(w / max(m, 1e-12)) for w, m in zip(word, image)]


if __name__ == "__main__":
    main()
